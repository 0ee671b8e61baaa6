"""Corrupted .tflite files give a clear error and never crash the caller."""

import os
import sys

import pytest

import tfcompress as tfc
from tfcompress.evaluation import tflite_file

# The mutation generator is test tooling, shared with tools/fuzz_evaluator.py.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
import tflite_mutations as fuzz  # noqa: E402


@pytest.fixture(scope="module")
def int8_bytes(digits_tflites):
    return bytes(digits_tflites["int8"])


def test_parser_survives_hundreds_of_mutations(int8_bytes):
    outcomes = {"parsed": 0, "rejected": 0}
    for _, data in fuzz.mutations(int8_bytes, 400, seed=1):
        try:
            tflite_file.inspect(data)
            outcomes["parsed"] += 1
        except tflite_file.InvalidTFLiteFileError as exc:
            assert "re-export" in str(exc) or "TFL3" in str(exc)
            outcomes["rejected"] += 1
    assert outcomes["rejected"] > 20 and sum(outcomes.values()) == 400


def test_evaluator_turns_corruption_into_an_error(int8_bytes):
    outcomes = {"ran": 0, "rejected": 0}
    for kind, data in fuzz.mutations(int8_bytes, 18, seed=2):
        try:
            tfc.evaluate_tflite(data, num_runs=1, warmup_runs=0, backends=("cpu",))
            outcomes["ran"] += 1
        except tfc.InvalidTFLiteFileError as exc:
            assert "Traceback" not in str(exc)
            outcomes["rejected"] += 1
    assert outcomes["rejected"] >= 3, outcomes


def test_check_loads_reports_a_crash_as_an_error(int8_bytes):
    tflite_file.check_loads(int8_bytes)  # a good file passes
    with pytest.raises(tfc.InvalidTFLiteFileError, match="cannot be run|TFL3|parse"):
        data = bytearray(int8_bytes)
        data[8:64] = b"\xff" * 56
        tflite_file.check_loads(bytes(data))
