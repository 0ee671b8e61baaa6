"""evaluate_tflite: what it reports is what the model does."""

import json
import re

import keras
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
    assert re.search(r"\| xnnpack +\| 2 +\|", md) and "gzip" in md


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
    assert [c.strip() for c in lines[0].split("|")[1:5]] == ["variant", "size", "gzip", "× smaller"]
    assert lines[2].split("|")[1].strip() == "float32" and "1.00x" in lines[2]
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

    @pytest.mark.parametrize("verify", [False, "auto"], ids=["in-process", "verified-in-child"])
    def test_fashion_mnist_images_for_a_digits_model_blame_the_data_not_the_file(self, float_and_int8, verify):
        # What `tfcompress evaluate` does with its default --data fashion_mnist on any non-28x28 model.
        _, (x_fashion, y_fashion) = tfc.datasets.fashion_mnist(limit_train=1, limit_test=32)
        with pytest.raises(ValueError) as info:
            tfc.evaluate_tflite(bytes(float_and_int8[0]), x=x_fashion, y=y_fashion, num_runs=1, verify=verify)
        assert not isinstance(info.value, tfc.InvalidTFLiteFileError)
        assert re.search(r"x has shape \(32, 28, 28, 1\).*model input 'serve_image:0' takes samples of shape "
                         r"\(8, 8, 1\).*Pass data shaped like the model's input.*--no_data",
                         str(info.value)), str(info.value)
        assert "corrupted" not in str(info.value)

    def test_two_arrays_for_a_single_input_model(self, float_and_int8, digits_data):
        _, (x_test, _) = digits_data
        with pytest.raises(ValueError, match=r"model has 1 input 'serve_image:0'.*list of 2 arrays.*Pass one array "
                                             r"of shape \(num_samples,\) \+ \(8, 8, 1\)"):
            tfc.evaluate_tflite(float_and_int8[0], x=[x_test, x_test], num_runs=1)

    @pytest.mark.parametrize("make_x,hint", [
        (lambda x: np.transpose(x, (0, 3, 1, 2)), r"channels-first.*np\.transpose\(x, \(0, 2, 3, 1\)\)"),
        (lambda x: x[..., 0], r"channel axis is missing.*x\[\.\.\., np\.newaxis\]"),
        (lambda x: x.reshape(len(x), 64), r"samples of shape \(64,\)"),
    ], ids=["channels-first", "no-channel-axis", "flattened"])
    def test_shape_mismatches_get_a_hint(self, float_and_int8, digits_data, make_x, hint):
        _, (x_test, _) = digits_data
        with pytest.raises(ValueError, match=r"takes samples of shape \(8, 8, 1\)") as info:
            tfc.evaluate_tflite(float_and_int8[1], x=make_x(x_test[:20]), num_runs=1)
        assert re.search(hint, str(info.value)), str(info.value)

    @pytest.mark.parametrize("make_x,pattern", [
        (lambda x: np.where(np.arange(len(x))[:, None, None, None] == 7, np.nan, x), r"sample 7 .*NaN or Inf.*Remove or repair"),
        (lambda x: x.astype(str), r"dtype <U\d+.*Pass numeric arrays"),
        (lambda x: x[:0], r"holds no samples.*Pass at least one sample"),
        (lambda x: {"image": x, "label": x}, r"1 input .*dict with 2 keys \['image', 'label'\].*Pass one array"),
    ], ids=["nan", "strings", "empty", "dict-of-two"])
    def test_unusable_x(self, float_and_int8, digits_data, make_x, pattern):
        _, (x_test, _) = digits_data
        with pytest.raises(ValueError, match=pattern):
            tfc.evaluate_tflite(float_and_int8[0], x=make_x(x_test[:20]), num_runs=1)

    @pytest.mark.parametrize("backends,pattern", [
        ((), r"backends is empty: pass one or more of \['cpu', 'xnnpack', 'micro'\]"),
        (("cpu", "gpu"), r"unknown backend 'gpu'; choose from \['cpu', 'xnnpack', 'micro'\]"),
    ], ids=["empty", "unknown"])
    def test_backends_are_checked_before_the_file(self, float_and_int8, backends, pattern):
        with pytest.raises(ValueError, match=pattern) as info:
            tfc.evaluate_tflite(float_and_int8[0], backends=backends)
        assert not isinstance(info.value, tfc.InvalidTFLiteFileError)

    def test_truncated_file_with_good_data_still_blames_the_file(self, float_and_int8, digits_data):
        _, (x_test, y_test) = digits_data
        f32, _ = float_and_int8
        with pytest.raises(tfc.InvalidTFLiteFileError):
            tfc.evaluate_tflite(bytes(f32[: len(f32) // 3]), x=x_test, y=y_test, num_runs=1)


def test_single_backend_as_a_string_and_a_single_thread_count(float_and_int8, digits_data):
    _, (x_test, _) = digits_data
    r = tfc.evaluate_tflite(float_and_int8[0], x=x_test[:10], backends="cpu", threads=2, num_runs=1)
    assert [lat.key for lat in r.latency] == ["cpu/2t"]


def test_already_quantized_int8_data_is_used_as_is(float_and_int8, digits_data):
    _, (x_test, y_test) = digits_data
    _, i8 = float_and_int8
    r_float = tfc.evaluate_tflite(i8, x=x_test, y=y_test, num_runs=1, backends=("cpu",))
    scale, zero_point = r_float.inputs[0]["scale"], r_float.inputs[0]["zero_point"]
    x_int8 = np.clip(np.round(x_test / scale + zero_point), -128, 127).astype(np.int8)
    r_int8 = tfc.evaluate_tflite(i8, x=x_int8, y=y_test, num_runs=1, backends=("cpu",))
    assert r_float.accuracy > 0.9
    assert r_int8.accuracy == r_float.accuracy


@pytest.fixture(scope="module")
def two_input_tflite():
    import keras

    image, extra = keras.Input((8, 8, 1), name="image"), keras.Input((3,), name="extra")
    x = keras.layers.Concatenate()([keras.layers.Flatten()(image), extra])
    model = keras.Model([image, extra], keras.layers.Dense(10, name="logits")(x), name="two_inputs")
    return tfc.to_tflite(model, mode="float32")


def test_two_input_model_inputs_by_name_and_count(two_input_tflite, digits_data):
    _, (x_test, y_test) = digits_data
    extra = np.random.default_rng(0).random((len(x_test), 3), dtype=np.float32)
    r = tfc.evaluate_tflite(two_input_tflite, x={"image": x_test, "extra": extra}, y=y_test, num_runs=1,
                            backends=("cpu",))
    assert r.accuracy_samples == len(y_test)
    with pytest.raises(ValueError, match=r"2 inputs \['serve_\w+:0', 'serve_\w+:0'\], but x is a list of 3 arrays.*"
                                         r"Pass a list of 2 arrays in that order, or a dict keyed by input name"):
        tfc.evaluate_tflite(two_input_tflite, x=[x_test, extra, extra], num_runs=1)
    with pytest.raises(ValueError, match=r"no entry for model input 'serve_(image|extra):0'; x has keys \['image'\]"
                                         r".*Key x by the model's input names"):
        tfc.evaluate_tflite(two_input_tflite, x={"image": x_test}, num_runs=1)
    with pytest.raises(ValueError, match=r"x\['extra'\] has shape .*\(4,\).*model input 'serve_extra:0' takes samples of shape \(3,\)"):
        tfc.evaluate_tflite(two_input_tflite, x={"image": x_test, "extra": np.zeros((len(x_test), 4))}, num_runs=1)
    with pytest.raises(ValueError, match=r"different numbers of samples.*one entry per sample"):
        tfc.evaluate_tflite(two_input_tflite, x={"image": x_test, "extra": extra[:5]}, num_runs=1)


def test_evaluate_many_times_models_together(float_and_int8, digits_data):
    _, (x_test, y_test) = digits_data
    f32, i8 = float_and_int8
    reports = tfc.evaluate_many({"float32": f32, "int8": i8}, x=x_test, y=y_test, threads=(1,), num_runs=7)
    assert list(reports) == ["float32", "int8"]
    for r in reports.values():
        assert all(lat.runs == 7 and lat.median_ms > 0 for lat in r.latency)
        assert r.accuracy > 0.9


def test_input_with_a_dynamic_dimension_is_resized_to_the_data(digits_data):
    import keras

    # Digits read as sequences of 64 pixels by a model declared for any sequence length.
    pixels = keras.Input((None, 1), name="pixels")
    h = keras.layers.GlobalAveragePooling1D()(keras.layers.Conv1D(8, 1, activation="relu")(pixels))
    model = keras.Model(pixels, keras.layers.Dense(10)(h), name="any_length")
    flatbuffer = tfc.to_tflite(model, mode="float32")
    _, (x_test, y_test) = digits_data
    sequences = x_test[:60].reshape(60, 64, 1)
    r = tfc.evaluate_tflite(flatbuffer, x=sequences, y=y_test[:60], num_runs=1)
    assert r.failed_backends == {}
    keras_top1 = np.asarray(model(sequences, training=False)).argmax(1)
    assert r.accuracy == pytest.approx(float(np.mean(keras_top1 == y_test[:60])))
    assert r.parity["backends"]["xnnpack"]["top1_agreement"] == 1.0
    with pytest.raises(ValueError, match=r"\(60, 64, 2\).*takes samples of shape \(None, 1\)"):
        tfc.evaluate_tflite(flatbuffer, x=np.concatenate([sequences, sequences], axis=-1), num_runs=1)


def _two_input_model(second_shape):
    image = keras.Input((8, 8, 1), name="image")
    other = keras.Input(second_shape, name="other")
    h = keras.layers.Flatten()(keras.layers.Conv2D(4, 3)(image))
    o = keras.layers.Flatten()(other) if len(second_shape) > 1 else other
    out = keras.layers.Dense(5)(keras.layers.Concatenate()([h, keras.layers.Dense(4)(o)]))
    return keras.Model([image, other], out)


def test_multi_input_lists_follow_the_keras_order_though_the_file_reorders_inputs(tmp_path):
    keras.utils.set_random_seed(3)
    rng = np.random.default_rng(0)
    model = _two_input_model((3,))
    x = [rng.random((64, 8, 8, 1), dtype=np.float32), rng.random((64, 3), dtype=np.float32)]
    # The converter puts 'other' first in the file; calibration and evaluation must still feed each input its data.
    int8 = tfc.to_tflite(model, mode="int8", representative_data=x)
    assert [d["name"] for d in int8.info.input_details] == ["serve_other:0", "serve_image:0"]
    expected = model.predict(x, verbose=0)
    np.testing.assert_allclose(tfc.evaluate.predict(int8, x), expected, atol=0.05)
    path = tmp_path / "m.tflite"
    path.write_bytes(int8)
    np.testing.assert_allclose(tfc.evaluate.predict(str(path), x), expected, atol=0.05)  # shapes tell them apart

    same = _two_input_model((8, 8, 1))
    pair = [x[0], rng.random((64, 8, 8, 1), dtype=np.float32)]
    f32 = tfc.to_tflite(same, mode="float32")
    np.testing.assert_allclose(tfc.evaluate.predict(f32, pair), same.predict(pair, verbose=0), atol=1e-5)
    path.write_bytes(f32)
    np.testing.assert_allclose(tfc.evaluate.predict(str(path), {"image": pair[0], "other": pair[1]}),
                               same.predict(pair, verbose=0), atol=1e-5)
    assert [d["name"] for d in f32.info.input_details] == ["serve_other:0", "serve_image:0"]
    with pytest.raises(ValueError, match="same shape.*Pass a dict keyed by input name"):
        tfc.evaluate.predict(str(path), pair)  # the file alone cannot say which array is which


def test_two_headed_model_converts_and_is_scored_on_the_named_head():
    inputs = keras.Input((8,), name="x")
    hidden = keras.layers.Dense(16, activation="relu")(inputs)
    # The converter orders this file's output tensors as [wide, narrow]: the Keras order is restored by name.
    model = keras.Model(inputs, [keras.layers.Dense(3, name="zz_narrow")(hidden),
                                 keras.layers.Dense(5, name="aa_wide")(hidden)])
    x = np.random.default_rng(0).random((40, 8), dtype=np.float32)
    narrow, wide = (np.asarray(o) for o in model(x))
    flatbuffer = tfc.to_tflite(model)
    from tfcompress.evaluation.litert import make_interpreter, _predict

    interpreter = make_interpreter(bytes(flatbuffer), "cpu", 1)
    np.testing.assert_allclose(_predict(interpreter, [x], 16, head=0), narrow, atol=1e-5)
    np.testing.assert_allclose(_predict(interpreter, [x], 16, head=1), wide, atol=1e-5)
    by_index = tfc.evaluate_tflite(flatbuffer, x=x, y=wide.argmax(1), output=1, num_runs=1)
    assert by_index.accuracy == 1.0 and by_index.accuracy_output == "output_1"
    by_name = tfc.evaluate_tflite(flatbuffer, x=x, y=narrow.argmax(1), output="output_0", num_runs=1)
    assert by_name.accuracy == 1.0 and "output_0" in by_name.to_markdown()
    with pytest.raises(ValueError, match=r"2 outputs \['output_0', 'output_1'\].*pass output="):
        tfc.evaluate_tflite(flatbuffer, x=x, y=narrow.argmax(1), num_runs=1)
    with pytest.raises(ValueError, match=r"output=2: pass an index in 0\.\.1"):
        tfc.evaluate_tflite(flatbuffer, x=x, y=narrow.argmax(1), output=2, num_runs=1)


def test_macs_are_counted_from_the_file_on_a_keras_application_and_a_transformer_block():
    """The hardware-independent figure beside every timing: the same as Keras's own count, float32 or int8."""
    mobile = keras.applications.MobileNetV2(input_shape=(96, 96, 3), alpha=0.35, weights=None)
    assert tfc.to_tflite(mobile, mode="float32").info.macs == sum(
        macs for _, macs in tfc.pruning.layer_costs(mobile).values())
    tokens = keras.Input((16, 32))
    h = keras.layers.LayerNormalization()(keras.layers.MultiHeadAttention(4, 8)(tokens, tokens) + tokens)
    h = keras.layers.GlobalAveragePooling1D()(keras.layers.Dense(64, activation="gelu")(h))
    block = keras.Model(tokens, keras.layers.Dense(10)(h))
    # q, k, v and output projections; scores and weighted values per head; the MLP on every token; the head.
    # The MLP's Dense runs on a reshaped input whose row count the file leaves dynamic.
    expected = 4 * 16 * 32 * 32 + 2 * 4 * 16 * 16 * 8 + 16 * 32 * 64 + 64 * 10
    x = np.random.default_rng(0).random((32, 16, 32), dtype=np.float32)
    assert tfc.to_tflite(block, mode="float32").info.macs == expected
    assert tfc.to_tflite(block, mode="int8", representative_data=x).info.macs == expected
