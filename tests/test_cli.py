"""The command line, run as a user would: in a subprocess, checking exit codes, files and messages."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")


def tfcompress(*args, cwd=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "tfcompress", *args], capture_output=True, text=True,
                          env=ENV, cwd=cwd, timeout=timeout)


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory, trained_digits_model):
    path = tmp_path_factory.mktemp("cli") / "digits.keras"
    trained_digits_model.save(path)
    return path


def test_usage_lists_commands():
    result = tfcompress("--help")
    assert result.returncode == 0
    for command in ("convert", "evaluate", "demo"):
        assert command in result.stdout


def test_unknown_command_exits_2():
    result = tfcompress("shrink")
    assert result.returncode == 2 and "unknown command 'shrink'" in result.stderr


def test_command_help_shows_every_flag_with_default():
    result = tfcompress("convert", "--help")
    assert result.returncode == 0
    for flag in ("--mode", "--output", "--[no]overwrite", "--io_type", "--keep_float", "--[no]strict", "--data", "--[no]unsafe"):
        assert flag in result.stdout
    assert "(default: 'int8')" in result.stdout


def test_convert_then_evaluate(saved_model, tmp_path):
    out = tmp_path / "digits_int8.tflite"
    result = tfcompress("convert", str(saved_model), "--mode=int8", "--data=digits", f"--output={out}", "--strict")
    assert result.returncode == 0, result.stderr
    assert out.read_bytes()[4:8] == b"TFL3"

    again = tfcompress("convert", str(saved_model), "--mode=int8", "--data=digits", f"--output={out}")
    assert again.returncode == 1
    last = again.stderr.strip().splitlines()[-1]
    assert "already exists" in last and "--overwrite" in last and "Traceback" not in again.stderr

    report_json = tmp_path / "r.json"
    result = tfcompress("evaluate", str(out), "--data=digits", "--threads=1,2", "--runs=5", f"--json={report_json}")
    assert result.returncode == 0, result.stderr
    assert "| xnnpack | 2 |" in result.stdout
    report = json.loads(report_json.read_text())
    assert report["accuracy"] > 0.9 and report["accuracy_samples"] == 449


def test_npz_data_and_bad_npz(saved_model, tmp_path, digits_data):
    (x, y), (xt, yt) = digits_data
    good = tmp_path / "d.npz"
    np.savez(good, x_train=x, y_train=y, x_test=xt, y_test=yt)
    out = tmp_path / "m.tflite"
    result = tfcompress("convert", str(saved_model), f"--data={good}", f"--output={out}")
    assert result.returncode == 0, result.stderr

    partial = tmp_path / "p.npz"
    np.savez(partial, x_train=x)
    result = tfcompress("convert", str(saved_model), f"--data={partial}", f"--output={tmp_path / 'n.tflite'}")
    assert result.returncode == 2 and "lacks arrays ['y_train', 'x_test', 'y_test']" in result.stderr

    garbage = tmp_path / "g.npz"
    garbage.write_bytes(b"not a zip")
    result = tfcompress("convert", str(saved_model), f"--data={garbage}", f"--output={tmp_path / 'n.tflite'}")
    assert result.returncode == 2 and "not a readable .npz" in result.stderr
    assert not (tmp_path / "n.tflite").exists()


def test_missing_model_and_corrupt_tflite(tmp_path):
    result = tfcompress("convert", str(tmp_path / "nope.keras"))
    assert result.returncode == 2 and "not found" in result.stderr
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"\x00" * 100)
    result = tfcompress("evaluate", str(bad), "--no_data")
    assert result.returncode == 1 and "Not a TFLite model" in result.stderr and "Traceback" not in result.stderr


def test_unsafe_lambda_model_is_refused(tmp_path):
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Lambda(lambda t: t * 2.0)(inputs))
    path = tmp_path / "lambda.keras"
    model.save(path)
    result = tfcompress("convert", str(path), "--mode=float32", f"--output={tmp_path / 'l.tflite'}")
    assert result.returncode == 2 and "--unsafe" in result.stderr
    result = tfcompress("convert", str(path), "--mode=float32", "--unsafe", f"--output={tmp_path / 'l.tflite'}")
    assert result.returncode == 0, result.stderr


def test_demo_quick(tmp_path):
    out = tmp_path / "demo"
    result = tfcompress("demo", "--quick", f"--out={out}", f"--cache_dir={tmp_path / 'cache'}", "--threads=1",
                        timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    files = sorted(os.listdir(out))
    expected = {"float32", "float16", "dynamic", "int8", "prune50-int8", "prune75-int8", "prune90-int8",
                "distill-int8", "distill-prune50-int8", "qat-int8", "prune75-qat-int8"}
    assert {"report.md", "report.json", "report.png"} | {f"{v}.tflite" for v in expected} <= set(files)
    report = json.loads((out / "report.json").read_text())
    assert set(report["variants"]) == expected
    assert report["keras_accuracy"] > 0.75
    variants = report["variants"]
    assert abs(variants["int8"]["accuracy"] - report["keras_accuracy"]) < 0.03
    assert variants["prune75-int8"]["sparsity"] == pytest.approx(0.75, abs=0.02)
    assert variants["prune75-qat-int8"]["sparsity"] > 0.7  # zeros survive QAT into the int8 file
    assert variants["distill-int8"]["file_bytes"] < variants["int8"]["file_bytes"] / 5
    assert "| prune75-qat-int8 |" in result.stdout
    # A second run refuses to overwrite the folder.
    again = tfcompress("demo", "--quick", f"--out={out}", f"--cache_dir={tmp_path / 'cache'}")
    assert again.returncode == 1 and "--overwrite" in again.stderr


def test_prune_quantize_distill_commands(saved_model, tmp_path):
    pruned, pruned_tflite = tmp_path / "p.keras", tmp_path / "p.tflite"
    result = tfcompress("prune", str(saved_model), "--data=digits", "--sparsity=0.8", "--batch_size=32",
                        f"--output={pruned}", f"--tflite={pruned_tflite}")
    assert result.returncode == 0, result.stderr[-2000:]
    model = keras.models.load_model(pruned)  # plain Keras, no custom objects
    kernel = model.get_layer("fc1").kernel.numpy()
    assert 0.7 < np.mean(kernel == 0) < 0.95
    assert "| result |" in result.stdout

    qat_tflite = tmp_path / "q.tflite"
    result = tfcompress("quantize", str(pruned), "--data=digits", "--batch_size=32", f"--output={tmp_path / 'q.keras'}",
                        f"--tflite={qat_tflite}")
    assert result.returncode == 0, result.stderr[-2000:]
    import tfcompress as tfc

    info = tfc.inspect_tflite(str(qat_tflite))
    assert info.float_compute_ops() == [] and info.sparsity > 0.5  # pruned zeros survive QAT

    result = tfcompress("distill", str(saved_model), "--data=digits")
    assert result.returncode == 2 and "--teacher" in result.stderr
