"""evaluate_tflite: what it reports is what the model does."""

import json

import numpy as np
import pytest
from conftest import keras_accuracy

import tfcompress as tfc


@pytest.fixture(scope="module")
def float_and_int8(trained_digits_model, digits_data):
    (x, _), _ = digits_data
    return (
        tfc.to_tflite(trained_digits_model, mode="float32"),
        tfc.to_tflite(trained_digits_model, mode="int8", representative_data=x[:100], io_type="int8"),
    )


def test_report_contents(float_and_int8, trained_digits_model, digits_data):
    _, (x_test, y_test) = digits_data
    f32, _ = float_and_int8
    r = tfc.evaluate_tflite(f32, x=x_test, y=y_test, threads=(1, 2), num_runs=5, warmup_runs=1)
    assert r.file_bytes == len(f32)
    assert 0 < r.gzip_bytes < r.file_bytes
    assert r.weight_bytes_by_dtype["float32"] > 0.9 * trained_digits_model.count_params() * 4 - 4096
    assert {(x.backend, x.threads) for x in r.latency} == {("cpu", 1), ("cpu", 2), ("xnnpack", 1), ("xnnpack", 2)}
    for lat in r.latency:
        assert lat.runs == 5 and 0 < lat.median_ms <= lat.p90_ms + 1e-9 and lat.init_ms > 0
    # Float kernels agree across backends to rounding.
    assert r.parity["backends"]["xnnpack"]["max_abs_diff"] < 1e-3
    assert r.parity["backends"]["xnnpack"]["top1_agreement"] == 1.0
    assert r.accuracy == pytest.approx(keras_accuracy(trained_digits_model, x_test, y_test), abs=0.005)
    assert r.accuracy_samples == len(y_test)
    assert r.op_census["CONV_2D"] == 2
    json.dumps(r.to_dict())
    md = r.to_markdown()
    assert "| xnnpack | 2 |" in md and "gzip" in md


def test_int8_io_accuracy_and_one_hot_labels(float_and_int8, digits_data):
    _, (x_test, y_test) = digits_data
    f32, i8 = float_and_int8
    r32 = tfc.evaluate_tflite(f32, x=x_test, y=y_test, num_runs=2, backends=("xnnpack",))
    r8 = tfc.evaluate_tflite(i8, x=x_test, y=np.eye(10)[y_test], num_runs=2)
    assert r8.inputs[0]["dtype"] == "int8"
    assert abs(r8.accuracy - r32.accuracy) < 0.02
    assert r8.parity["backends"]["xnnpack"]["top1_agreement"] > 0.95


def test_without_data_uses_a_synthetic_input(float_and_int8):
    _, i8 = float_and_int8
    r = tfc.evaluate_tflite(bytes(i8), num_runs=3)
    assert r.accuracy is None and len(r.latency) == 2


def test_reads_a_path(tmp_path, float_and_int8):
    f32, _ = float_and_int8
    path = tmp_path / "m.tflite"
    path.write_bytes(f32)
    assert tfc.evaluate_tflite(str(path), num_runs=1, backends=("cpu",)).file_bytes == len(f32)


def test_compare_table(float_and_int8, digits_data):
    _, (x_test, y_test) = digits_data
    reports = {name: tfc.evaluate_tflite(b, x=x_test, y=y_test, num_runs=3) for name, b in zip(("float32", "int8"), float_and_int8)}
    table = tfc.compare(reports, baseline="float32", reference_accuracy=0.97)
    lines = table.splitlines()
    assert lines[0].startswith("| variant | size | gzip | × smaller")
    assert lines[2].startswith("| float32 |") and "1.00x" in lines[2]
    ratio = float(lines[3].split("|")[4].strip().rstrip("x"))
    assert ratio > 2.5
    with pytest.raises(ValueError, match="baseline='fp32'"):
        tfc.compare(reports, baseline="fp32")


class TestBadInput:
    def test_not_a_tflite(self):
        with pytest.raises(tfc.InvalidTFLiteFileError, match="TFL3"):
            tfc.evaluate_tflite(b"hello world, not a model")

    def test_truncated(self, float_and_int8):
        f32, _ = float_and_int8
        with pytest.raises(tfc.InvalidTFLiteFileError):
            tfc.evaluate_tflite(bytes(f32[: len(f32) // 3]))

    def test_missing_file(self, tmp_path):
        with pytest.raises(FileNotFoundError, match="does not exist"):
            tfc.evaluate_tflite(str(tmp_path / "nope.tflite"))

    def test_unknown_backend(self, float_and_int8):
        with pytest.raises(ValueError, match="'gpu'"):
            tfc.evaluate_tflite(float_and_int8[0], backends=("gpu",))

    def test_bad_threads(self, float_and_int8):
        with pytest.raises(ValueError, match="threads"):
            tfc.evaluate_tflite(float_and_int8[0], threads=(0,))

    def test_labels_do_not_match(self, float_and_int8, digits_data):
        _, (x_test, y_test) = digits_data
        with pytest.raises(ValueError, match="labels but x has"):
            tfc.evaluate_tflite(float_and_int8[0], x=x_test, y=y_test[:10])


def test_evaluate_many_times_models_together(float_and_int8, digits_data):
    _, (x_test, y_test) = digits_data
    f32, i8 = float_and_int8
    reports = tfc.evaluate_many({"float32": f32, "int8": i8}, x=x_test, y=y_test, threads=(1,), num_runs=7)
    assert list(reports) == ["float32", "int8"]
    for r in reports.values():
        assert all(lat.runs == 7 and lat.median_ms > 0 for lat in r.latency)
        assert r.accuracy > 0.9
