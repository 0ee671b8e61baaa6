"""tools/coverage.py, the model-coverage matrix: a fast subset runs here; the whole matrix is a tool."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import keras
import pytest

import tfcompress as tfc

TOOL = pathlib.Path(__file__).resolve().parent.parent / "tools" / "coverage.py"
_spec = importlib.util.spec_from_file_location("coverage_tool", TOOL)
coverage = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(coverage)


def _run_tool(tmp_path, verbs):
    out = tmp_path / "cells.json"
    result = subprocess.run([sys.executable, str(TOOL), "--models=two_io", f"--verbs={','.join(verbs)}",
                             f"--json={out}", "--check"], capture_output=True, text=True, timeout=600,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    cells = json.loads(out.read_text())["two_io"]
    assert {verb: cell["status"] for verb, cell in cells.items()} == {verb: "OK" for verb in verbs}
    return cells, result.stdout


def test_a_two_input_two_output_model_goes_through_the_verbs_that_need_no_training(tmp_path):
    cells, table = _run_tool(tmp_path, ("ptq", "channels", "cluster", "factorize", "onnx", "micro"))
    assert cells["ptq"]["float_ops"] == 0  # fully int8
    assert cells["cluster"]["max_distinct"] <= 16
    assert cells["onnx"]["error"] < 1e-5  # float32 ONNX computes what Keras does
    assert cells["micro"]["arena_bytes"] > 0
    assert "| two_io | OK: 0 float ops |" in table


@pytest.mark.slow  # QAT and pruning train: about a minute more on 2 cores
def test_a_two_input_two_output_model_goes_through_every_verb(tmp_path):
    cells, _ = _run_tool(tmp_path, coverage.VERBS)
    assert cells["qat"]["float_ops"] <= cells["ptq"]["float_ops"] == 0  # both files fully int8
    assert cells["prune"]["sparsity"] == pytest.approx(0.5, abs=0.02)


def test_cells_are_told_apart_refused_from_crash():
    with pytest.raises(tfc.ChannelPruningError) as refused:  # tfcompress's own error, saying what to do
        tfc.prune_channels(keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]), 0.5, verbose=0)
    assert coverage._classify(refused.value)[0] == "refused"
    try:
        {}["add_9"]
    except KeyError as exc:  # a raw KeyError, as channel pruning raised on keras.ops nodes
        assert coverage._classify(exc)[0] == "CRASH"
    results = {"m": {"ptq": {"status": "OK", "float_ops": 5},
                     "qat": {"status": "OK", "float_ops": 110, "ptq_float_ops": 5},
                     "onnx": {"status": "CRASH", "text": "KeyError: 'add_9'"}}}
    assert coverage.problems(results) == ["m/onnx: KeyError: 'add_9'", "m/qat: 110 float ops > PTQ's 5"]
