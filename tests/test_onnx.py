"""ONNX export (float through Keras' exporter, int8 from the int8 .tflite via tf2onnx) and ONNX Runtime evaluation.

Real TensorFlow, tf2onnx and ONNX Runtime; tiny models so the whole file runs in seconds.
"""

import os
import sys

import numpy as np
import pytest

import tfcompress as tfc
from tfcompress.core.extras import MissingExtraError
from tfcompress.evaluation import litert as evaluate, onnxruntime
from tfcompress.export import onnx as onnx_export

pytest.importorskip("tf2onnx")
pytest.importorskip("onnxruntime")

from conftest import small_cnn, trained_on_digits  # noqa: E402


@pytest.fixture(scope="module")
def trained_cnn(digits_data):
    """The shared small CNN, trained briefly (a few seconds) so accuracy and int8 ranges mean something."""
    return trained_on_digits(lambda: small_cnn(name="onnx_cnn"), digits_data, epochs=3)


@pytest.fixture(scope="module")
def int8_onnx(trained_cnn, digits_data):
    (x, _), _ = digits_data
    return onnx_export.to_onnx(trained_cnn, mode="int8", representative_data=x[:200])


def _two_input_model():
    import keras

    keras.utils.set_random_seed(1)
    image = keras.Input((8, 8, 1), name="image")
    meta = keras.Input((3,), name="meta")
    h = keras.layers.Conv2D(4, 3, activation="relu")(image)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Concatenate()([h, keras.layers.Dense(4, activation="relu")(meta)])
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.Dropout(0.5)(h)  # inference mode in the export: no effect
    return keras.Model([image, meta], [keras.layers.Dense(10, name="logits")(h),
                                       keras.layers.Dense(2, name="aux")(h)], name="two_in_two_out")


def test_float_sequential_matches_keras():
    import keras

    keras.utils.set_random_seed(0)
    # Built by keras.Input but never called: Keras' own exporter refuses that without an input signature.
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(8, 3, activation="relu"),
                              keras.layers.BatchNormalization(), keras.layers.MaxPooling2D(),
                              keras.layers.Flatten(), keras.layers.Dense(10)], name="seq")
    x = np.random.default_rng(0).random((32, 8, 8, 1), dtype=np.float32)
    result = onnx_export.to_onnx(model)
    assert isinstance(result, bytes) and result.mode == "float32" and result.model_name == "seq"
    diff = np.abs(onnxruntime.predict_onnx(result, x) - model.predict(x, verbose=0))
    assert diff.max() < 1e-4, diff.max()


def test_float_two_input_functional_matches_keras():
    model = _two_input_model()
    rng = np.random.default_rng(0)
    x = [rng.random((20, 8, 8, 1), dtype=np.float32), rng.random((20, 3), dtype=np.float32)]
    result = onnx_export.to_onnx(model)
    expected = model.predict(x, verbose=0)
    for head in (0, 1):
        got = onnxruntime.predict_onnx(result, x, output=head)
        assert np.abs(got - expected[head]).max() < 1e-4
    # A dict keyed by the Keras input names works too, in any order.
    by_name = onnxruntime.predict_onnx(result, {"meta": x[1], "image": x[0]})
    assert np.abs(by_name - expected[0]).max() < 1e-4


def _onnx_input_names(result):
    import onnx

    return [i.name for i in onnx.load_from_string(bytes(result)).graph.input]


def _assert_int8_onnx_matches_tflite(result, x):
    """The int8 ONNX model's outputs are the int8 .tflite's up to requantization rounding, as in
    test_int8_matches_int8_tflite: most equal, none more than two output steps apart. (The int8
    LayerNormalization's many requantizations are where they part: Dense → GELU alone agrees exactly.)"""
    step = result.tflite.info.output_steps[0]
    steps = np.abs(onnxruntime.predict_onnx(result, x) - evaluate.predict(bytes(result.tflite), x)) / step
    assert steps.max() <= 2 + 1e-4 and np.mean(steps < 0.5) >= 0.95, (steps.max(), np.mean(steps < 0.5))


@pytest.mark.parametrize("adapted", [False, True], ids=["mean_variance_given", "adapted"])
def test_normalization_constants_are_not_graph_inputs(adapted):
    """Normalization keeps its mean and variance as plain tensors, which the traced function captures: they
    must be constants in the ONNX model, not inputs ONNX Runtime asks the caller for (as in EfficientNet)."""
    import keras

    keras.utils.set_random_seed(3)
    rng = np.random.default_rng(3)
    x = rng.normal(5.0, 3.0, (32, 4, 4, 3)).astype(np.float32)
    if adapted:
        normalization = keras.layers.Normalization()
        normalization.adapt(x)
    else:
        normalization = keras.layers.Normalization(mean=[5.0, 4.0, 6.0], variance=[9.0, 4.0, 1.0])
    image = keras.Input((4, 4, 3), name="image")
    h = keras.layers.Conv2D(4, 3, activation="relu")(normalization(image))
    model = keras.Model(image, keras.layers.Dense(3)(keras.layers.Flatten()(h)), name="normalized")

    result = onnx_export.to_onnx(model)
    assert _onnx_input_names(result) == ["image"]
    expected = model.predict(x, verbose=0)
    got = onnxruntime.predict_onnx(result, x)  # the image alone, as a user passes it
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()
    report = onnxruntime.evaluate_onnx(result, x=x, y=expected.argmax(1), num_runs=1)
    assert report.accuracy == pytest.approx(float(np.mean(got.argmax(1) == expected.argmax(1))))

    int8 = onnx_export.to_onnx(model, mode="int8", representative_data=x)
    assert len(_onnx_input_names(int8)) == 1
    _assert_int8_onnx_matches_tflite(int8, x)


def test_exact_gelu_exports():
    """Exact GELU computes TF's Erfc, which tf2onnx cannot translate, and its int8 .tflite a GELU op tf2onnx
    has no handler for: both are translated (1 - Erf; GELU in float between its QDQ pair)."""
    import keras

    keras.utils.set_random_seed(4)
    tokens = keras.Input((6, 8), name="tokens")
    h = keras.layers.LayerNormalization()(tokens)
    h = keras.layers.Dense(16, activation="gelu", name="mlp_exact")(h)
    h = keras.layers.Dense(16, activation=lambda t: keras.activations.gelu(t, approximate=True), name="mlp_tanh")(h)
    model = keras.Model(tokens, keras.layers.Dense(4)(keras.layers.Flatten()(h)), name="gelu_block")
    # Wide enough that exact and tanh GELU differ (up to ~1e-3 near |x| = 2) and both tails are reached.
    x = np.random.default_rng(4).normal(0.0, 3.0, (64, 6, 8)).astype(np.float32)

    result = onnx_export.to_onnx(model)
    assert _onnx_input_names(result) == ["tokens"]
    expected = model.predict(x, verbose=0)
    diff = np.abs(onnxruntime.predict_onnx(result, x) - expected).max()
    assert diff <= 1e-4 * np.abs(expected).max(), diff

    int8 = onnx_export.to_onnx(model, mode="int8", representative_data=x)
    assert "GELU" in {op.type for op in int8.tflite.info.operators}  # the .tflite's own op, not a decomposition
    _assert_int8_onnx_matches_tflite(int8, x)


def test_int8_matches_int8_tflite(int8_onnx, digits_data, tmp_path):
    _, (x_test, _) = digits_data
    assert int8_onnx.mode == "int8" and int8_onnx.tflite.mode == "int8"
    onnx_out = onnxruntime.predict_onnx(int8_onnx, x_test)
    tflite_out = evaluate.predict(bytes(int8_onnx.tflite), x_test)
    assert np.array_equal(onnx_out.argmax(1), tflite_out.argmax(1))
    # The same int8 arithmetic up to rounding. Each runtime requantizes a layer's int32 accumulator to int8 its
    # own way (XNNPACK: float scale, round half to even; ONNX Runtime's MLAS: its own kernels per instruction set),
    # so an int8 value near a rounding tie lands one step apart here and there (measured on an AVX2-only EPYC:
    # 0.9% of the outputs, by exactly one step; on AVX-512 VNNI: none). The output layer's own rounding gives at
    # most one step; a step flipped upstream can add about one more. The step is that of the int8 tensor the
    # float output is dequantized from (the float output itself has no scale).
    step = int8_onnx.tflite.info.output_steps[0]
    assert step > 0
    steps = np.abs(onnx_out - tflite_out) / step
    assert steps.max() <= 2 + 1e-4 and np.mean(steps < 0.5) >= 0.95, (steps.max(), np.mean(steps < 0.5))
    # A .tflite path (not our ConvertedModel) is translated the same way.
    path = tmp_path / "m.tflite"
    path.write_bytes(bytes(int8_onnx.tflite))
    again = onnx_export.to_onnx(str(path), mode="int8")
    assert np.array_equal(onnxruntime.predict_onnx(again, x_test[:50]), onnx_out[:50])


def test_int8_io_and_output_order_match_tflite():
    """int8 inputs are quantized for the caller, and several outputs keep the Keras order."""
    import keras

    keras.utils.set_random_seed(2)
    image = keras.Input((8, 8, 1), name="image")
    h = keras.layers.Flatten()(keras.layers.Conv2D(4, 3, activation="relu")(image))
    # Two heads the converter lists in the other order: the file's signature gives the Keras order back.
    model = keras.Model(image, [keras.layers.Dense(10, name="wide")(h), keras.layers.Dense(2, name="narrow")(h)])
    x = np.random.default_rng(0).random((64, 8, 8, 1), dtype=np.float32)
    result = onnx_export.to_onnx(model, mode="int8", representative_data=x, io_type="int8")
    assert [d["dtype"] for d in onnxruntime.evaluate_onnx(result, num_runs=1).inputs] == ["int8"]
    for head, width in ((0, 10), (1, 2)):
        got = onnxruntime.predict_onnx(result, x, output=head)
        expected = evaluate.predict(bytes(result.tflite), x, output=head)
        assert got.shape == expected.shape == (64, width) and np.array_equal(got, expected)


def test_evaluate_onnx_report(int8_onnx, trained_cnn, digits_data):
    _, (x_test, y_test) = digits_data
    report = onnxruntime.evaluate_onnx(int8_onnx, x=x_test, y=y_test, threads=(1, 2), num_runs=5)
    assert isinstance(report, tfc.EvaluationReport)
    predicted = onnxruntime.predict_onnx(int8_onnx, x_test).argmax(1)
    assert report.accuracy == pytest.approx(float(np.mean(predicted == y_test)))
    assert report.accuracy_samples == len(y_test) and report.accuracy_backend == "onnxruntime"
    assert [r.key for r in report.latency] == ["onnxruntime/1t", "onnxruntime/2t"]
    assert all(r.runs == 5 and r.median_ms > 0 for r in report.latency)
    assert report.file_bytes == len(int8_onnx) and 0 < report.gzip_bytes
    assert report.op_census["QuantizeLinear"] >= 1 and "Conv" in report.op_census
    assert report.weight_bytes_by_dtype["int8"] > report.weight_bytes_by_dtype.get("float32", 0)
    assert report.parity == {} and report.name == "int8"
    assert "onnxruntime" in report.to_markdown()
    assert report.to_dict()["latency"][0]["backend"] == "onnxruntime"
    # In one table with the LiteRT rows.
    litert = tfc.evaluate_tflite(int8_onnx.tflite, x=x_test, y=y_test, num_runs=5, name="int8 tflite")
    assert "int8 tflite" in tfc.compare([litert, report])
    # The float file is close to the Keras model's accuracy.
    float_report = onnxruntime.evaluate_onnx(onnx_export.to_onnx(trained_cnn), x=x_test, y=y_test, num_runs=2)
    keras_accuracy = float(np.mean(trained_cnn.predict(x_test, verbose=0).argmax(1) == y_test))
    assert float_report.accuracy == pytest.approx(keras_accuracy)


def test_bad_x_is_named(int8_onnx):
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"x has shape \(4, 1, 8, 8\).*takes samples of shape \(8, 8, 1\)"):
        onnxruntime.evaluate_onnx(int8_onnx, x=rng.random((4, 1, 8, 8), dtype=np.float32))
    x = rng.random((6, 8, 8, 1), dtype=np.float32)
    x[3, 2, 2, 0] = np.nan
    with pytest.raises(ValueError, match=r"sample 3 of model input .* contains NaN"):
        onnxruntime.evaluate_onnx(int8_onnx, x=x)
    with pytest.raises(ValueError, match=r"y has 2 labels but x has 6 samples"):
        onnxruntime.evaluate_onnx(int8_onnx, x=np.nan_to_num(x), y=[1, 2])
    with pytest.raises(onnxruntime.InvalidONNXFileError, match="Could not parse the ONNX model"):
        onnxruntime.evaluate_onnx(b"not an onnx model at all")


def test_int8_needs_representative_data(trained_cnn):
    with pytest.raises(tfc.RepresentativeDataError, match=r"representative_data is required for to_onnx\(mode='int8'\)"):
        onnx_export.to_onnx(trained_cnn, mode="int8")
    with pytest.raises(ValueError, match="mode='int8x' is not an ONNX export mode"):
        onnx_export.to_onnx(trained_cnn, mode="int8x")


def test_tflite_input_checks(int8_onnx, digits_data):
    (x, _), _ = digits_data
    with pytest.raises(ValueError, match="this .tflite is quantized.*pass mode='int8'"):
        onnx_export.to_onnx(int8_onnx.tflite, mode="float32")
    with pytest.raises(ValueError, match="representative_data: not used for a .tflite input"):
        onnx_export.to_onnx(int8_onnx.tflite, mode="int8", representative_data=x[:10])
    with pytest.raises(onnxruntime.InvalidONNXFileError, match="This is a .tflite model, not ONNX"):
        onnxruntime.evaluate_onnx(bytes(int8_onnx.tflite))


def test_output_path_is_not_overwritten(trained_cnn, tmp_path):
    path = tmp_path / "model.onnx"
    first = onnx_export.to_onnx(trained_cnn, output_path=str(path))
    assert path.read_bytes() == bytes(first)
    path.write_bytes(b"keep me")
    with pytest.raises(tfc.OutputExistsError, match="overwrite=True"):
        onnx_export.to_onnx(trained_cnn, output_path=str(path))
    assert path.read_bytes() == b"keep me"
    onnx_export.to_onnx(trained_cnn, output_path=str(path), overwrite=True)
    # tf2onnx numbers the nodes it inserts from a process-wide counter, so a second export is the same model
    # under other node names: compare what it computes, not its bytes.
    x = np.random.default_rng(0).random((4, *trained_cnn.input_shape[1:]), dtype=np.float32)
    np.testing.assert_allclose(onnxruntime.predict_onnx(str(path), x), onnxruntime.predict_onnx(first, x), atol=1e-6)
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # no temp file left behind


def test_export_failure_is_one_line():
    import keras

    inputs = keras.Input((4,))
    # tf2onnx has no translation of TensorFlow's Erfinv: Keras' exporter writes a file ONNX Runtime cannot load.
    outputs = keras.layers.Lambda(lambda t: keras.ops.erfinv(keras.ops.tanh(t) * 0.5))(inputs)
    model = keras.Model(inputs, outputs, name="uses_erfinv")
    with pytest.raises(onnx_export.ONNXExportError) as info:
        onnx_export.to_onnx(model)
    message = str(info.value)
    assert "\n" not in message and "uses_erfinv" in message and "Erfinv" in message, message
    assert isinstance(info.value, tfc.ConversionError)


def test_missing_extra_is_named(monkeypatch, int8_onnx, trained_cnn):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    with pytest.raises(MissingExtraError, match=r"tfcompress\[onnx\]"):
        onnxruntime.evaluate_onnx(int8_onnx)
    monkeypatch.setitem(sys.modules, "tf2onnx", None)
    with pytest.raises(MissingExtraError, match=r"tfc.to_onnx needs the optional package 'tf2onnx'"):
        onnx_export.to_onnx(trained_cnn)


def test_no_temp_files_left(trained_cnn, digits_data):
    import tempfile

    (x, _), _ = digits_data
    before = set(os.listdir(tempfile.gettempdir()))
    onnx_export.to_onnx(trained_cnn, mode="int8", representative_data=x[:50])
    leftovers = {n for n in set(os.listdir(tempfile.gettempdir())) - before if n.startswith("tfcompress_")}
    assert not leftovers
