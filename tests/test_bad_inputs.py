"""The bad-input catalogue: every mistake gets the right exception and a message naming culprit and fix.

Each case is (id, callable, exception type, regex the message must match). The regexes
name the culprit (argument, layer, sample, file) and, where there is one, the fix.
"""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import tfcompress as tfc


def _dense_model(name="dense_model"):
    model = keras.Sequential([keras.Input((4,), name="features"), keras.layers.Dense(3, name="d")], name=name)
    model.compile("adam", "mse")
    return model


def _image_model():
    inputs = keras.Input((8, 8, 1), name="image")
    outputs = keras.layers.Dense(10, name="logits")(keras.layers.Flatten()(keras.layers.Conv2D(4, 3, name="conv")(inputs)))
    return keras.Model(inputs, outputs, name="image_model")


def _two_input_model():
    a, b = keras.Input((4,), name="left"), keras.Input((3,), name="right")
    return keras.Model([a, b], keras.layers.Dense(2)(keras.layers.Concatenate()([a, b])), name="two_inputs")


class _NeverCalled(keras.Model):
    def __init__(self):
        super().__init__(name="never_called")
        self.d = keras.layers.Dense(2)

    def call(self, x):
        return self.d(x)


def _tf_keras_model():
    import tf_keras

    return tf_keras.Sequential([tf_keras.layers.Dense(2, input_shape=(3,))])


def _keras_tensor():
    return keras.layers.Dense(2)(keras.Input((3,)))


def _x(n=8, shape=(8, 8, 1)):
    return np.random.default_rng(0).random((n,) + shape, dtype=np.float32)


def _nan_x():
    x = _x()
    x[5, 1, 1, 0] = np.nan
    return x


def _fit_with(callback, model=None):
    model = model or _dense_model()
    model.fit(np.zeros((8, 4)), np.zeros((8, 3)), verbose=0, callbacks=[callback])


def _relu_only():
    model = keras.Sequential([keras.Input((4,)), keras.layers.ReLU()], name="relu_only")
    model.compile("adam", "mse")
    return model


def _digits(n=8, size=None):
    (x, _), _ = tfc.datasets.digits()
    x = x[:n].copy()
    if size is not None:  # 8x8 digits resized, as a pipeline built for another model would produce
        import tensorflow as tf

        x = tf.image.resize(x, (size, size)).numpy()
    return x


def _overflowing_digits():
    x = _digits().astype(np.float64)
    x[3, 4, 4, 0] = 1e39  # finite in float64, Inf once cast to the model's float32
    return x


class _SubclassedCNN(keras.Model):
    def __init__(self, pool):
        super().__init__(name="sub_pool" if pool else "sub_flat")
        self.conv = keras.layers.Conv2D(4, 3)
        self.reduce = keras.layers.GlobalAveragePooling2D() if pool else keras.layers.Flatten()
        self.dense = keras.layers.Dense(10)

    def call(self, x):
        return self.dense(self.reduce(self.conv(x)))


def _subclassed(pool):
    model = _SubclassedCNN(pool)
    model(_digits(1))  # built on 8x8 inputs
    return model


def _tflite_bytes():
    return bytes(tfc.to_tflite(_image_model(), mode="float32"))


ONE_SHOT = tfc.ConstantSparsity(0.5, 0, frequency=1)

CASES = [
    # --- models handed to the wrong place -------------------------------------------------
    ("convert-keras-tensor", lambda: tfc.to_tflite(_keras_tensor()), TypeError, r"KerasTensor.*keras\.Model\(inputs, outputs\)"),
    ("convert-tf-keras-model", lambda: tfc.to_tflite(_tf_keras_model()), TypeError, r"legacy tf_keras object.*rebuild it with `import keras` \(Keras 3\)"),
    ("convert-never-called-subclass", lambda: tfc.to_tflite(_NeverCalled()), ValueError, r"'never_called' is not built.*call it once"),
    ("convert-a-layer", lambda: tfc.to_tflite(keras.layers.Dense(2)), TypeError, r"got a layer.*keras\.Sequential"),
    ("convert-a-path", lambda: tfc.to_tflite("model.keras"), TypeError, r"got str 'model\.keras'\. To convert a saved model, load it first: keras\.models\.load_model\(path\)"),
    ("prune-keras-tensor", lambda: tfc.Pruner(_keras_tensor(), ONE_SHOT), TypeError, r"KerasTensor.*Build the model first"),
    ("prune-tf-keras-model", lambda: tfc.Pruner(_tf_keras_model(), ONE_SHOT), TypeError, r"must be a keras\.Model \(Keras 3\), got a legacy tf_keras object \(Sequential: <tf_keras"),
    ("qat-keras-tensor", lambda: tfc.quantize_model(_keras_tensor()), TypeError, r"model must be a keras\.Model, got a KerasTensor"),
    ("qat-non-keras-object", lambda: tfc.quantize_model("model"), TypeError, r"model must be a keras\.Model, got str 'model'\. To quantize a saved model, load it first"),
    ("qat-tf-keras-model", lambda: tfc.quantize_model(_tf_keras_model()), TypeError, r"legacy tf_keras object.*rebuild it with `import keras` \(Keras 3\)"),
    ("qat-subclassed", lambda: tfc.quantize_model(_NeverCalled()), TypeError, r"subclassed.*Functional or Sequential"),
    ("qat-unbuilt", lambda: tfc.quantize_model(keras.Sequential([keras.layers.Dense(2)])), ValueError, r"not built.*keras\.Input"),
    # --- schedules and callback arguments ------------------------------------------------
    ("schedule-sparsity-1", lambda: tfc.PolynomialDecay(0.0, 1.0, 0, 100), ValueError, r"final_sparsity.*got 1\.0.*0\.9"),
    ("schedule-negative", lambda: tfc.ConstantSparsity(-0.1, 0), ValueError, r"target_sparsity must be in \[0, 1\), got -0\.1.*For 90% sparsity pass 0\.9"),
    ("schedule-end-before-begin", lambda: tfc.PolynomialDecay(0.0, 0.5, 100, 10), ValueError, r"end_step=10 is before begin_step=100; pruning needs begin_step <= end_step"),
    ("callback-scope", lambda: tfc.PruningCallback(ONE_SHOT, scope="model"), ValueError, r"scope must be one of \('erk', 'global', 'layer'\), got 'model'"),
    ("callback-structure", lambda: tfc.PruningCallback(ONE_SHOT, structure="banana"), ValueError, r"structure must be 'unstructured', 'block' \(with block_shape=\) or 'M:N'.*such as '2:4'.*got 'banana'"),
    ("callback-unknown-layer", lambda: _fit_with(tfc.PruningCallback(ONE_SHOT, layers=["nope"])), ValueError, r"layers=\['nope'\].*Its layers are: d"),
    ("callback-nothing-prunable", lambda: _fit_with(tfc.PruningCallback(ONE_SHOT), _relu_only()), ValueError, r"(?s)Nothing to prune in model 'relu_only'.*Prunable by default: kernels of Dense"),
    # --- conversion arguments and calibration data ---------------------------------------
    ("convert-unknown-mode", lambda: tfc.to_tflite(_image_model(), mode="int4"), ValueError, r"mode='int4' is not a conversion mode; choose one of \['float32', 'float16', 'dynamic', 'int8', 'int16x8'\]"),
    ("convert-io-type", lambda: tfc.to_tflite(_image_model(), mode="dynamic", io_type="int8"), ValueError, r"io_type='int8'.*mode='dynamic'"),
    ("convert-int8-without-data", lambda: tfc.to_tflite(_image_model(), mode="int8"), tfc.RepresentativeDataError, r"representative_data is required.*mode='dynamic'"),
    ("calibration-empty", lambda: tfc.to_tflite(_image_model(), mode="int8", representative_data=_x(0)), tfc.RepresentativeDataError, r"representative_data is empty.*Pass a few hundred typical inputs \(e\.g\. x_train\[:200\]\)"),
    ("calibration-wrong-shape", lambda: tfc.to_tflite(_image_model(), mode="int8", representative_data=_x(4, (9, 9, 1))), tfc.RepresentativeDataError, r"\(9, 9, 1\).*'image' takes samples of shape \(8, 8, 1\).*resize or reshape it"),
    ("calibration-nan", lambda: tfc.to_tflite(_image_model(), mode="int8", representative_data=_nan_x()), tfc.RepresentativeDataError, r"sample 5 of model input 'image' contains NaN.*Remove or repair them"),
    ("calibration-strings", lambda: tfc.to_tflite(_image_model(), mode="int8", representative_data=np.full((2, 8, 8, 1), "x")), tfc.RepresentativeDataError, r"dtype <U1, which cannot be cast to float32\. Pass numeric arrays"),
    ("calibration-wrong-multi-input-keys", lambda: tfc.to_tflite(_two_input_model(), mode="int8", representative_data={"right": np.zeros((2, 4)), "lft": np.zeros((2, 3))}), tfc.RepresentativeDataError, r"Unknown: \['lft'\].*Missing: \['left'\]\. Key the dict by the model's input names"),
    ("calibration-swapped-multi-input-order", lambda: tfc.to_tflite(_two_input_model(), mode="int8", representative_data=[np.zeros((2, 3)), np.zeros((2, 4))]), tfc.RepresentativeDataError, r"\(3,\).*'left' takes samples of shape \(4,\).*fits input 'right'.*wrong order.*pass a dict keyed by input name"),
    ("calibration-float64-overflow", lambda: tfc.to_tflite(_image_model(), mode="int8", representative_data=_overflowing_digits()), tfc.RepresentativeDataError, r"sample 3 of model input 'image' holds values up to 1e\+39, beyond the float32 range.*Scale the data as for training"),
    ("convert-subclassed-recorded-shape-vs-data", lambda: tfc.to_tflite(_subclassed(pool=True), mode="int8", representative_data=_digits(size=9)), tfc.RepresentativeDataError, r"per-sample shape \(9, 9, 1\), but subclassed model 'sub_pool' was built on .*\(8, 8, 1\).*Pass calibration data of shape \(num_samples,\) \+ \(8, 8, 1\).*input_shape=\(9, 9, 1\)"),
    ("convert-subclassed-model-raises-on-data", lambda: tfc.to_tflite(_subclassed(pool=False), mode="int8", representative_data=_digits(size=9), input_shape=(9, 9, 1)), tfc.RepresentativeDataError, r"model 'sub_flat' raised on sample 0 \(per-sample shape 'input_0' \(9, 9, 1\)\): ValueError: .*or fix the model's call\(\)"),
    ("convert-keep-float-unknown", lambda: tfc.to_tflite(_image_model(), mode="int8", representative_data=_x(), keep_float=["nope"]), ValueError, r"unknown layers \['nope'\]; model 'image_model' has layers \['conv'"),
    ("qat-keep-float-unknown", lambda: tfc.quantize_model(_dense_model(), keep_float=["nope"]), ValueError, r"'nope'.*Layers: \['d'\]"),
    # --- distillation --------------------------------------------------------------------
    ("distill-temperature", lambda: tfc.Distiller(teacher=_dense_model("t"), student=_dense_model(), temperature=0), ValueError, r"temperature must be > 0.*got temperature=0"),
    ("distill-alpha", lambda: tfc.Distiller(teacher=_dense_model("t"), student=_dense_model(), alpha=1.5), ValueError, r"alpha must be in \[0, 1\].*1\.5"),
    ("distill-shapes", lambda: tfc.Distiller(teacher=keras.Sequential([keras.Input((4,)), keras.layers.Dense(5)], name="t5"), student=_dense_model()), ValueError, r"'t5' output shape \(None, 5\).*\(None, 3\)\. Both must predict the same classes"),
    ("distill-unbuilt-teacher", lambda: tfc.Distiller(teacher=keras.Sequential([keras.layers.Dense(3)], name="raw"), student=_dense_model()), ValueError, r"teacher 'raw' is not built.*give it a keras\.Input"),
    # --- evaluation and files ----------------------------------------------------------------
    ("evaluate-not-tflite", lambda: tfc.evaluate_tflite(b"GIF89a" + bytes(100)), tfc.InvalidTFLiteFileError, r"without the 'TFL3' identifier.*Pass the bytes returned by to_tflite or a \.tflite path"),
    ("evaluate-missing-file", lambda: tfc.evaluate_tflite("/nonexistent/m.tflite"), FileNotFoundError, r"'/nonexistent/m\.tflite' does not exist"),
    ("evaluate-label-range", lambda: tfc.evaluate_tflite(_tflite_bytes(), x=_x(3), y=np.array([1, 12, 3]), num_runs=1), ValueError, r"y\[1\] = 12.*10 outputs.*0\.\.9.*Check the label encoding"),
    ("evaluate-label-count", lambda: tfc.evaluate_tflite(_tflite_bytes(), x=_x(3), y=np.array([1]), num_runs=1), ValueError, r"1 labels but x has 3 samples; pass one label per sample of x"),
    ("evaluate-x-wrong-shape", lambda: tfc.evaluate_tflite(_tflite_bytes(), x=_x(3, (28, 28, 1)), num_runs=1), ValueError, r"x has shape \(3, 28, 28, 1\).*model input 'serve_image:0' takes samples of shape \(8, 8, 1\).*Pass data shaped like the model's input.*--no_data"),
    ("evaluate-two-arrays-one-input", lambda: tfc.evaluate_tflite(_tflite_bytes(), x=[_x(3), _x(3)], num_runs=1), ValueError, r"model has 1 input 'serve_image:0'.*list of 2 arrays.*Pass one array of shape \(num_samples,\) \+ \(8, 8, 1\)"),
    ("evaluate-no-backends", lambda: tfc.evaluate_tflite(_tflite_bytes(), backends=()), ValueError, r"backends is empty: pass one or more of \['cpu', 'xnnpack', 'micro'\]"),
    ("compress-label-range", lambda: tfc.compress(_image_model(), ((_x(4), np.array([0, 1, 2, 10])), (_x(2), np.array([0, 1]))), "int8"), ValueError, r"y_train\[3\] = 10.*10 outputs"),
    ("compress-unknown-recipe", lambda: tfc.compress(_image_model(), ((_x(2), np.zeros(2, int)), (_x(2), np.zeros(2, int))), "shrink"), ValueError, r"recipe='shrink' is not a named recipe; choose one of \['dynamic'.*or pass a list of steps"),
    ("write-into-missing-folder", lambda: tfc.write_atomic("/nonexistent-folder/x.bin", b"x"), FileNotFoundError, r"'/nonexistent-folder' does not exist; create it"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_python_api_bad_input(case):
    _, call, error, pattern = case
    with pytest.raises(error, match=pattern) as info:
        call()
    assert "Traceback" not in str(info.value)
    if error is not tfc.InvalidTFLiteFileError:  # a subclass of ValueError: bad data must not be blamed on the file
        assert not isinstance(info.value, tfc.InvalidTFLiteFileError), str(info.value)


VERBS = {
    "convert": lambda m: tfc.to_tflite(m),
    "prune": lambda m: tfc.Pruner(m, tfc.ConstantSparsity(0.5, 0)),
    "quantize": lambda m: tfc.quantize_model(m),
    "distill": lambda m: tfc.Distiller(teacher=m, student=m),
    "compress": lambda m: tfc.compress(m, "digits"),
}


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_every_verb_rejects_a_path_with_the_same_fix(verb):
    with pytest.raises(TypeError, match=rf"must be a keras\.Model, got str 'm\.keras'\. To {verb}\w* .*saved model, "
                                        r"load it first: keras\.models\.load_model\(path\)"):
        VERBS[verb]("m.keras")


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_every_verb_rejects_a_keras_tensor_the_same_way(verb):
    with pytest.raises(TypeError, match=r"got a KerasTensor .*keras\.Model\(inputs, outputs\)"):
        VERBS[verb](keras.layers.Dense(2)(keras.Input((3,))))


def test_float64_calibration_data_is_accepted_not_rejected():
    b = tfc.to_tflite(_image_model(), mode="int8", representative_data=_x().astype(np.float64))
    assert b.info.float_compute_ops() == []


def test_unsupported_layer_is_reported_not_raised():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.UnitNormalization(name="un")])
    with pytest.warns(UserWarning, match="un"):
        qat = tfc.quantize_model(model)
    assert "un" in str(qat.quantization_report) and "UnitNormalization" in str(qat.quantization_report)


ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")

CLI_CASES = [
    ("cli-unknown-dataset", ["convert", "MODEL", "--data=cifar100", "--output=OUT"], 2, r"Unknown dataset 'cifar100'\. Choose one of fashion_mnist.*or an \.npz file"),
    ("cli-bad-threads", ["evaluate", "TFLITE", "--threads=one", "--no_data"], 2, r"--threads='one'.*1,2"),
    ("cli-bad-mode", ["convert", "MODEL", "--mode=int4"], 2, r"--mode=int4: value should be one of <float32\|float16\|dynamic\|int8\|int16x8>"),
    ("cli-output-exists", ["convert", "MODEL", "--mode=float32", "--output=TFLITE"], 1, r"already exists.*--overwrite"),
    ("cli-wrong-model-extension", ["convert", "TFLITE"], 2, r"is not a \.keras"),
    # The default --data fashion_mnist (28x28) on an 8x8 model: the data is named, not the file.
    ("cli-evaluate-data-does-not-fit", ["evaluate", "TFLITE", "--limit_test=16", "--runs=1"], 1, r"x has shape \(16, 28, 28, 1\).*model input 'serve_image:0' takes samples of shape \(8, 8, 1\).*--no_data"),
]


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad_cli")
    model_path = folder / "m.keras"
    _image_model().save(model_path)
    tflite_path = folder / "m.tflite"
    tflite_path.write_bytes(_tflite_bytes())
    return {"MODEL": str(model_path), "TFLITE": str(tflite_path), "OUT": str(folder / "out.tflite")}


@pytest.mark.parametrize("case", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input(case, cli_files):
    _, args, code, pattern = case
    for key, value in cli_files.items():
        args = [a.replace(key, value) for a in args]
    result = subprocess.run([sys.executable, "-m", "tfcompress", *args], capture_output=True, text=True, env=ENV,
                            timeout=300)
    assert result.returncode == code, result.stderr[-1500:]
    assert "Traceback" not in result.stderr
    import re

    assert re.search(pattern, result.stderr), result.stderr[-1500:]
    assert not os.path.exists(cli_files["OUT"])
