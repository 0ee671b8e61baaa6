"""to_tflite: every mode, every model kind, the audit, keep_float, atomic output."""

import os
import sys
import subprocess

import keras
import numpy as np
import pytest
from conftest import keras_accuracy, small_cnn

import tfcompress as tfc
from tfcompress.core import native_stderr
from tfcompress.export import tflite as convert

MODES = ["float32", "float16", "dynamic", "int8", "int16x8"]


def _calibration(mode, x):
    return x[:64] if mode in ("int8", "int16x8") else None


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_converts_runs_and_keeps_accuracy(mode, trained_digits_model, digits_data):
    (x, _), (x_test, y_test) = digits_data
    b = tfc.to_tflite(trained_digits_model, mode=mode, representative_data=_calibration(mode, x))
    assert isinstance(b, bytes) and b[4:8] == b"TFL3"
    report = tfc.evaluate_tflite(b, x=x_test, y=y_test, num_runs=3, warmup_runs=1)
    reference = keras_accuracy(trained_digits_model, x_test, y_test)
    assert abs(report.accuracy - reference) <= 0.02, (mode, report.accuracy, reference)
    dtypes = report.weight_bytes_by_dtype
    expected_weight_dtype = {"float32": "float32", "float16": "float16", "dynamic": "int8",
                             "int8": "int8", "int16x8": "int8"}[mode]
    assert max(dtypes, key=dtypes.get) == expected_weight_dtype


def test_int8_is_integer_only_and_about_4x_smaller(trained_digits_model, digits_data):
    (x, _), _ = digits_data
    f32 = tfc.to_tflite(trained_digits_model, mode="float32")
    i8 = tfc.to_tflite(trained_digits_model, mode="int8", representative_data=x[:100], strict=True)
    assert i8.info.float_compute_ops() == []
    assert any(k.startswith("CONV_2D/int8") for k in i8.info.op_census_by_dtype)
    assert len(f32) / len(i8) > 3.0


@pytest.mark.parametrize("io_type,np_type", [("int8", np.int8), ("uint8", np.uint8)])
def test_integer_io_and_evaluator_quantizes_for_the_user(io_type, np_type, trained_digits_model, digits_data):
    (x, _), (x_test, y_test) = digits_data
    b = tfc.to_tflite(trained_digits_model, mode="int8", representative_data=x[:100], io_type=io_type)
    assert b.info.input_details[0]["dtype"] == io_type
    assert b.info.input_details[0]["scale"] > 0
    float_io = tfc.to_tflite(trained_digits_model, mode="int8", representative_data=x[:100])
    r_int = tfc.evaluate_tflite(b, x=x_test, y=y_test, num_runs=2)
    r_float = tfc.evaluate_tflite(float_io, x=x_test, y=y_test, num_runs=2)
    assert abs(r_int.accuracy - r_float.accuracy) <= 0.01
    assert r_int.inputs[0]["dtype"] == np.dtype(np_type).name


def test_sequential_and_subclassed_models_convert(digits_data):
    (x, _), (x_test, _) = digits_data
    seq = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])

    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.conv = keras.layers.Conv2D(4, 3)
            self.bn = keras.layers.BatchNormalization()
            self.drop = keras.layers.Dropout(0.5)
            self.flat = keras.layers.Flatten()
            self.out = keras.layers.Dense(10)

        def call(self, inputs, training=None):
            h = self.bn(self.conv(inputs), training=training)
            return self.out(self.drop(self.flat(h), training=training))

    sub = Net()
    sub(x[:2])
    for model in (seq, sub):
        expected = np.asarray(model(x_test[:16], training=False))
        for mode in ("float32", "int8"):
            b = tfc.to_tflite(model, mode=mode, representative_data=x[:64] if mode == "int8" else None)
            from ai_edge_litert.interpreter import Interpreter

            it = Interpreter(model_content=b)
            it.allocate_tensors()
            d = it.get_input_details()[0]
            it.set_tensor(d["index"], x_test[:1])
            it.invoke()
            got = it.get_tensor(it.get_output_details()[0]["index"])
            # training=False export: Dropout is off and BN uses moving statistics.
            tol = 1e-4 if mode == "float32" else 0.15 * np.abs(expected[:1]).max() + 0.05
            np.testing.assert_allclose(got, expected[:1], atol=tol)


def test_multi_input_model_with_dict_calibration():
    a = keras.Input((4,), name="left")
    b = keras.Input((3,), name="right")
    h = keras.layers.Concatenate()([keras.layers.Dense(8)(a), keras.layers.Dense(8)(b)])
    model = keras.Model([a, b], keras.layers.Dense(2)(h))
    rng = np.random.default_rng(0)
    data = {"right": rng.random((32, 3), dtype=np.float32), "left": rng.random((32, 4), dtype=np.float32)}
    out = tfc.to_tflite(model, mode="int8", representative_data=data)
    assert out.info.float_compute_ops() == []
    with pytest.raises(tfc.RepresentativeDataError, match=r"Missing: \['right'\]"):
        tfc.to_tflite(model, mode="int8", representative_data={"left": data["left"]})
    with pytest.raises(tfc.RepresentativeDataError, match="2 inputs"):
        tfc.to_tflite(model, mode="int8", representative_data=data["left"])


def test_keep_float_leaves_named_layer_in_float_and_strict_names_it(trained_digits_model, digits_data):
    (x, _), _ = digits_data
    b = tfc.to_tflite(trained_digits_model, mode="int8", representative_data=x[:64], keep_float=["logits"])
    census = b.info.op_census_by_dtype
    assert census.get("FULLY_CONNECTED/float32") == 1
    assert census.get("FULLY_CONNECTED/int8") == 1
    assert census.get("CONV_2D/int8") == 2
    with pytest.raises(tfc.QuantizationAuditError, match="FULLY_CONNECTED"):
        tfc.to_tflite(trained_digits_model, mode="int8", representative_data=x[:64], keep_float=["logits"], strict=True)


def test_sparse_encoding_preserves_per_tensor_sparsity(digits_data):
    (x, _), _ = digits_data
    keras.utils.set_random_seed(1)
    model = small_cnn()
    for layer in model.layers:
        if layer.name in ("conv2", "fc1"):
            w = layer.kernel.numpy()
            w[np.abs(w) < np.quantile(np.abs(w), 0.8)] = 0.0
            layer.kernel.assign(w)
    dense = tfc.to_tflite(model, mode="float32")
    sparse = tfc.to_tflite(model, mode="float32", sparse=True)
    sparse_int8 = tfc.to_tflite(model, mode="int8", representative_data=x[:64], sparse=True)
    for b in (dense, sparse, sparse_int8):
        by_tensor = b.info.sparsity_by_tensor
        conv2 = [v for k, v in by_tensor.items() if "conv2" in k]
        fc1 = [v for k, v in by_tensor.items() if "fc1" in k]
        assert conv2 and fc1, by_tensor
        assert conv2[0] == pytest.approx(0.8, abs=0.01) and fc1[0] == pytest.approx(0.8, abs=0.01)
    assert any(w.sparse_encoded for w in sparse.info.weights)
    assert len(sparse) < 0.8 * len(dense)


def test_output_path_is_atomic_and_never_overwrites(tmp_path, trained_digits_model):
    path = tmp_path / "m.tflite"
    b = tfc.to_tflite(trained_digits_model, output_path=path)
    assert path.read_bytes() == bytes(b)
    path.write_bytes(b"precious")
    with pytest.raises(tfc.OutputExistsError, match="overwrite=True"):
        tfc.to_tflite(trained_digits_model, output_path=path)
    assert path.read_bytes() == b"precious"
    tfc.to_tflite(trained_digits_model, output_path=path, overwrite=True)
    assert path.read_bytes() == bytes(b)
    assert sorted(os.listdir(tmp_path)) == ["m.tflite"]  # no temp files left behind
    with pytest.raises(FileNotFoundError, match="does not exist"):
        tfc.to_tflite(trained_digits_model, output_path=tmp_path / "missing" / "m.tflite")


class TestBadArguments:
    def test_unknown_mode(self, trained_digits_model):
        with pytest.raises(ValueError, match=r"mode='int4'.*float32"):
            tfc.to_tflite(trained_digits_model, mode="int4")

    def test_io_type_not_available_for_mode(self, trained_digits_model):
        with pytest.raises(ValueError, match=r"io_type='int8'.*mode='float16'"):
            tfc.to_tflite(trained_digits_model, mode="float16", io_type="int8")

    def test_int8_without_calibration_data(self, trained_digits_model):
        with pytest.raises(tfc.RepresentativeDataError, match="representative_data is required.*x_train"):
            tfc.to_tflite(trained_digits_model, mode="int8")

    def test_unknown_keep_float_names(self, trained_digits_model, digits_data):
        (x, _), _ = digits_data
        with pytest.raises(ValueError, match=r"unknown layers \['nope'\].*conv1"):
            tfc.to_tflite(trained_digits_model, mode="int8", representative_data=x[:8], keep_float=["nope"])

    def test_keras_tensor(self):
        t = keras.layers.Dense(2)(keras.Input((3,)))
        with pytest.raises(TypeError, match="KerasTensor.*keras.Model\\(inputs, outputs\\)"):
            tfc.to_tflite(t)

    def test_layer_instead_of_model(self):
        with pytest.raises(TypeError, match="got a layer"):
            tfc.to_tflite(keras.layers.Dense(3))

    def test_path_instead_of_model(self):
        with pytest.raises(TypeError, match="load_model"):
            tfc.to_tflite("model.keras")

    def test_subclassed_model_never_called(self):
        class Net(keras.Model):
            def __init__(self):
                super().__init__()
                self.d = keras.layers.Dense(2)

            def call(self, x):
                return self.d(x)

        with pytest.raises(ValueError, match="not built.*call it once"):
            tfc.to_tflite(Net())

    def test_converter_failure_is_readable(self):
        # A string op cannot become a TFLite builtin: the converter fails, we explain.
        inputs = keras.Input((4,))
        outputs = keras.layers.Lambda(lambda t: keras.ops.fft((t, t))[0])(inputs)
        model = keras.Model(inputs, outputs, name="fft_model")
        with pytest.raises(convert.ConversionError, match=r"fft_model.*mode='int8'") as info:
            tfc.to_tflite(model, mode="int8", representative_data=np.ones((4, 4), np.float32))
        assert "Traceback" not in str(info.value)


def test_isolated_conversion_matches_inline_and_reports_failures(trained_digits_model, digits_data):
    (x, _), _ = digits_data
    inline = tfc.to_tflite(trained_digits_model, mode="int8", representative_data=x[:32])
    isolated = tfc.to_tflite(trained_digits_model, mode="int8", representative_data=x[:32], isolate=True)
    assert bytes(inline) == bytes(isolated)  # same seed-free pipeline → identical bytes
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Lambda(lambda t: keras.ops.fft((t, t))[0])(inputs), name="fft_model")
    with pytest.raises(convert.ConversionError, match=r"'fft_model'.*'tf.FFT' op is neither"):
        tfc.to_tflite(model, mode="int8", representative_data=np.ones((4, 4), np.float32), isolate=True)
    with pytest.raises(convert.ConversionError, match="longer than 0.01 s"):
        tfc.to_tflite(trained_digits_model, mode="float32", isolate=True, timeout=0.01)


def test_conversion_config_checks_its_options_once_and_round_trips_through_json(tmp_path):
    import json

    from tfcompress.export.converter import ConversionConfig

    config = ConversionConfig(mode="int8", io_type="int8", keep_float="fc1", output_path=tmp_path / "m.tflite",
                              sparse=np.bool_(True))
    assert config.keep_float == ("fc1",) and config.sparse is True and config.output_path == str(tmp_path / "m.tflite")
    assert ConversionConfig.from_config(json.loads(json.dumps(config.get_config()))) == config
    assert ConversionConfig(mode="int8", keep_float=[]).keep_float is None
    for options, message in [({"mode": "int4"}, r"mode='int4'.*float32"),
                             ({"mode": "float16", "io_type": "int8"}, r"io_type='int8'.*mode='float16'"),
                             ({"keep_float": ["fc1"]}, r"keep_float.*mode='float32'"),
                             ({"mode": "int8", "calibration": "kl"}, r"calibration='kl'.*minmax"),
                             # A calibrated file is always int8: float16 with calibration= is refused.
                             ({"mode": "float16", "calibration": "mse"}, r"calibration='mse'.*mode='int8'.*float16")]:
        with pytest.raises(ValueError, match=message):
            ConversionConfig(**options)
    with pytest.raises(TypeError, match="keep_float must be a layer name or a list of names, got 3"):
        ConversionConfig(mode="int8", keep_float=3)


def test_qat_model_converts_to_int8_without_calibration_data(trained_digits_model, digits_data):
    (x, y), (x_test, y_test) = digits_data
    qat = tfc.quantize_model(trained_digits_model)
    qat.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    qat.fit(x, y, epochs=1, batch_size=64, verbose=0)
    b = tfc.to_tflite(qat, mode="int8", io_type="int8", strict=True)
    assert b.info.input_details[0]["dtype"] == "int8"
    assert any("no calibration" in n for n in b.notes)
    report = tfc.evaluate_tflite(b, x=x_test, y=y_test, num_runs=2)
    assert report.accuracy == pytest.approx(keras_accuracy(qat, x_test, y_test), abs=0.01)
    with pytest.raises(ValueError, match="keep_float.*QAT model"):
        tfc.to_tflite(qat, mode="int8", keep_float=["fc1"])


def test_converter_chatter_is_dropped_but_other_stderr_is_kept(trained_digits_model, digits_data, capfd):
    (x, _), _ = digits_data
    tfc.to_tflite(trained_digits_model, mode="int8", representative_data=x[:16])
    assert "fully_quantize:" not in capfd.readouterr().err

    chatter = b"fully_quantize: 0, inference_type: 6, input_inference_type: FLOAT32, output_inference_type: FLOAT32\n"
    for keep_quiet in (native_stderr.buffered_filter, native_stderr.streaming_filter):
        with keep_quiet(native_stderr.CONVERTER_CHATTER):
            os.write(2, chatter)
            os.write(2, b"W converter: something worth reading\n")
            os.write(2, b"no newline at the end")
        err = capfd.readouterr().err
        assert "something worth reading" in err and "no newline at the end" in err and "fully_quantize:" not in err

        # When the wrapped code fails, everything it printed is passed on.
        with pytest.raises(RuntimeError):
            with keep_quiet(native_stderr.CONVERTER_CHATTER):
                os.write(2, chatter)
                raise RuntimeError("converter failed")
        assert "fully_quantize:" in capfd.readouterr().err


def test_importing_tensorflow_through_tfcompress_prints_no_chatter():
    # A fresh interpreter: TensorFlow's import notices (oneDNN, CUDA, absl) print only once per process.
    result = subprocess.run([sys.executable, "-c", "import tfcompress, sys; print('tfcompress', file=sys.stderr)"],
                            capture_output=True, text=True, timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr
    assert result.stderr == "tfcompress\n"
    # Asking for TensorFlow's INFO lines gets them.
    result = subprocess.run([sys.executable, "-c", "import tfcompress"], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "0"})
    assert "oneDNN" in result.stderr or "cuda" in result.stderr


def test_keep_float_keeps_only_the_named_layer_float(trained_digits_model, digits_data):
    # The op that reads a kept layer's output is the next layer: it stays int8 (a bug kept it float too).
    (x, _), _ = digits_data
    b = tfc.to_tflite(trained_digits_model, mode="int8", representative_data=x[:64], keep_float=["conv2"])
    floats = b.info.float_compute_ops()
    assert [op.type for op in floats] == ["CONV_2D"] and "conv2" in floats[0].output_names[0]


def test_loaded_subclassed_model_converts_from_its_recorded_shape(tmp_path):
    @keras.saving.register_keras_serializable(package="tfcompress_tests")
    class Net(keras.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.conv = keras.layers.Conv2D(2, 3)
            self.flat = keras.layers.Flatten()
            self.dense = keras.layers.Dense(3)

        def call(self, x):
            return self.dense(self.flat(self.conv(x)))

    net = Net(name="net")
    net(np.zeros((2, 9, 9, 1), np.float32))
    path = os.path.join(tmp_path, "net.keras")
    net.save(path)
    loaded = keras.models.load_model(path)
    x = np.random.default_rng(0).random((20, 9, 9, 1), dtype=np.float32)
    flatbuffer = tfc.to_tflite(loaded, mode="int8", representative_data=x)
    assert flatbuffer.info.input_details[0]["shape"][1:] == [9, 9, 1]
