"""Quantization-aware training: numerics, BN folding, layer coverage, int8 conversion, calibration, PQAT, saving,
errors."""

import warnings

import numpy as np
import pytest
import keras
from conftest import convnext_style_model, operation_node_model, trained_on_digits
from keras import layers

import tfcompress as tfc
from tfcompress import quantization as tq
from tfcompress.evaluation.litert import make_interpreter, _predict
from tfcompress.core import graph
from tfcompress.quantization import folding


def _digits_cnn(bn=True):
    inputs = keras.Input((8, 8, 1), name="image")
    x = layers.Conv2D(16, 3, padding="same", use_bias=not bn, name="conv1")(inputs)
    if bn:
        x = layers.BatchNormalization(momentum=0.9, name="bn1")(x)
    x = layers.ReLU(name="relu1")(x)
    x = layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    if bn:
        x = layers.BatchNormalization(momentum=0.9, name="dw_bn")(x)
    x = layers.ReLU(6.0, name="dw_relu")(x)
    x = layers.Conv2D(32, 1, name="pw")(x)
    x = layers.ReLU(name="pw_relu")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = layers.Dense(10, name="logits")(x)
    return keras.Model(inputs, outputs, name="digits_cnn")


@pytest.fixture(scope="module")
def trained_float(digits_data):
    return trained_on_digits(_digits_cnn, digits_data, epochs=25, seed=1)


def _run_tflite(tflite_bytes, x):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=bytes(tflite_bytes))
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    interpreter.resize_tensor_input(inp["index"], x.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], x.astype(np.float32))
    interpreter.invoke()
    return interpreter.get_tensor(out["index"])


def _middle_dequantize_ops(info):
    """DEQUANTIZE ops that feed another op (a float island inside the int8 graph)."""
    consumed = {t for op in info.operators for t in op.inputs}
    return [op for op in info.operators if op.type == "DEQUANTIZE" and any(t in consumed for t in op.outputs)]


# --- numerics -----------------------------------------------------------------------------


def _numpy_symmetric(w, per_channel):
    bound = np.abs(w).max(axis=tuple(range(w.ndim - 1))) if per_channel else np.abs(w).max()
    scale = bound / 127.0
    return np.clip(np.round(w / scale), -127, 127) * scale


@pytest.mark.parametrize("per_channel", [True, False])
def test_weight_fake_quant_matches_numpy_symmetric_int8(per_channel):
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((3, 3, 4, 6)) * np.array([0.01, 0.1, 1, 2, 5, 0.5])).astype(np.float32)
    got = keras.ops.convert_to_numpy(tq.fake_quant_weights(keras.ops.convert_to_tensor(w), per_channel))
    np.testing.assert_allclose(got, _numpy_symmetric(w, per_channel), rtol=1e-5, atol=1e-7)
    # 0 stays exactly 0 (pruned weights survive).
    w[0, 0] = 0.0
    got = keras.ops.convert_to_numpy(tq.fake_quant_weights(keras.ops.convert_to_tensor(w), per_channel))
    assert np.all(got[0, 0] == 0.0)


def _numpy_asymmetric(x, low, high):
    # TF's FakeQuant: nudge the zero point onto the integer grid, then round.
    scale = (high - low) / 255.0
    zero_point = np.clip(np.round(-low / scale), 0, 255)
    nudged_low, nudged_high = -zero_point * scale, (255 - zero_point) * scale
    clipped = np.clip(x, nudged_low, nudged_high)
    return np.floor((clipped - nudged_low) / scale + 0.5) * scale + nudged_low


def test_activation_quantizer_moving_average_and_numerics():
    quantizer = tq.ActivationQuantizer(ema_decay=0.9)
    rng = np.random.default_rng(0)
    first = rng.uniform(-1.0, 3.0, (32, 5)).astype(np.float32)
    quantizer(first, training=True)
    # The first update copies the batch range.
    assert float(quantizer.range_min.numpy()) == pytest.approx(first.min(), rel=1e-6)
    assert float(quantizer.range_max.numpy()) == pytest.approx(first.max(), rel=1e-6)
    # A wider batch widens the range at once (the envelope of the extremes, as min/max calibration)...
    second = rng.uniform(-2.0, 5.0, (32, 5)).astype(np.float32)
    quantizer(second, training=True)
    assert float(quantizer.range_min.numpy()) == pytest.approx(second.min(), rel=1e-6)
    assert float(quantizer.range_max.numpy()) == pytest.approx(second.max(), rel=1e-6)
    # ...a narrower one shrinks it by (1 - decay) of the gap.
    third = rng.uniform(-0.5, 1.0, (32, 5)).astype(np.float32)
    quantizer(third, training=True)
    expected_min = 0.9 * second.min() + 0.1 * third.min()
    expected_max = 0.9 * second.max() + 0.1 * third.max()
    assert float(quantizer.range_min.numpy()) == pytest.approx(expected_min, rel=1e-5)
    assert float(quantizer.range_max.numpy()) == pytest.approx(expected_max, rel=1e-5)
    x = rng.uniform(-4.0, 7.0, (64, 5)).astype(np.float32)
    got = keras.ops.convert_to_numpy(quantizer(x, training=False))
    np.testing.assert_allclose(got, _numpy_asymmetric(x, expected_min, expected_max), atol=1e-5)
    # Inference does not move the range; freezing stops training updates.
    quantizer.frozen.assign(1.0)
    quantizer(x * 10, training=True)
    assert float(quantizer.range_max.numpy()) == pytest.approx(expected_max, rel=1e-5)


def test_fold_math_matches_batch_norm():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 3, 2, 4)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    gamma, beta = rng.uniform(0.5, 2, 4).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    mean, var = rng.standard_normal(4).astype(np.float32), rng.uniform(0.1, 3, 4).astype(np.float32)
    x = rng.standard_normal((2, 6, 6, 2)).astype(np.float32)
    conv = keras.ops.convert_to_numpy(keras.ops.conv(x, w)) + b
    expected = gamma * (conv - mean) / np.sqrt(var + 1e-3) + beta
    scale = keras.ops.convert_to_numpy(folding.fold_scale(gamma, var, 1e-3))
    bias = keras.ops.convert_to_numpy(folding.folded_bias(b, beta, mean, scale))
    got = keras.ops.convert_to_numpy(keras.ops.conv(x, w * scale)) + bias
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_folded_model_matches_float_model_before_training(trained_float, digits_data):
    (x, _), (x_test, _) = digits_data
    qat = tq.quantize_model(trained_float)
    report = qat.quantization_report
    assert ("bn1", "conv1") in report.folded and ("dw_bn", "dw") in report.folded
    names = [layer.name for layer in qat.layers]
    assert "bn1" not in names and "dw_bn" not in names
    tq.calibrate(qat, x[:256])
    float_out = trained_float.predict(x_test, verbose=0)
    qat_out = qat.predict(x_test, verbose=0)
    # Only int8 rounding separates them: small logit error, near-identical decisions.
    spread = float_out.max() - float_out.min()
    assert np.abs(qat_out - float_out).mean() < 0.02 * spread
    assert np.mean(qat_out.argmax(1) == float_out.argmax(1)) >= 0.97


def test_folded_bn_training_step_follows_batch_statistics():
    rng = np.random.default_rng(0)
    inputs = keras.Input((6, 6, 3))
    outputs = layers.BatchNormalization(momentum=0.5, name="bn")(layers.Conv2D(4, 3, name="conv")(inputs))
    model = keras.Model(inputs, outputs)
    bn = model.get_layer("bn")
    bn.moving_mean.assign(rng.standard_normal(4).astype(np.float32))
    bn.moving_variance.assign(rng.uniform(0.5, 2.0, 4).astype(np.float32))
    qat = tq.quantize_model(model)
    x = rng.uniform(0, 1, (16, 6, 6, 3)).astype(np.float32)
    tq.calibrate(qat, x)
    expected = keras.ops.convert_to_numpy(model(x, training=True))
    got = keras.ops.convert_to_numpy(qat(x, training=True))
    # Batch statistics, not moving ones: differences are int8 rounding, plus clipping of the
    # few extremes beyond the output quantizer's moving-average range.
    error, spread = np.abs(got - expected), expected.max() - expected.min()
    assert np.quantile(error, 0.95) < 0.02 * spread
    np.testing.assert_allclose(
        qat.get_layer("conv").bn_moving_mean.numpy(), bn.moving_mean.numpy(), atol=0.02
    )


# --- conversion and coverage --------------------------------------------------------------

_COVERAGE = {
    "conv_bn_relu": lambda x: layers.ReLU()(layers.BatchNormalization()(layers.Conv2D(8, 3)(x))),
    "depthwise_bn_relu6": lambda x: layers.ReLU(6.0)(
        layers.BatchNormalization()(layers.DepthwiseConv2D(3, depth_multiplier=2)(x))
    ),
    "separable_bn_activation": lambda x: layers.Activation("relu")(
        layers.BatchNormalization()(layers.SeparableConv2D(8, 3)(x))
    ),
    "conv2d_transpose": lambda x: layers.Conv2DTranspose(4, 3, strides=2, padding="same")(x),
    "conv1d": lambda x: layers.Conv1D(8, 3, activation="relu")(layers.Reshape((32, 6))(x)),
    "dense_bn_softmax": lambda x: layers.Dense(5, activation="softmax")(
        layers.BatchNormalization()(layers.Dense(8)(layers.Flatten()(x)))
    ),
    "add_concat_relu": lambda x: layers.Concatenate()(
        [layers.ReLU()(layers.Add()([layers.Conv2D(4, 1)(x), layers.Conv2D(4, 1)(x)])), layers.Conv2D(4, 1)(x)]
    ),
    "pooling": lambda x: layers.GlobalAveragePooling2D()(
        layers.AveragePooling2D(2)(layers.MaxPooling2D()(layers.Conv2D(4, 3, padding="same")(x)))
    ),
    "pad_upsample_dropout": lambda x: layers.Dropout(0.2)(
        layers.UpSampling2D()(layers.ZeroPadding2D()(layers.Conv2D(4, 3)(x)))
    ),
    "rescaling_activations": lambda x: layers.Activation("tanh")(
        layers.LeakyReLU(0.1)(layers.Conv2D(4, 3)(layers.Rescaling(2.0, offset=-1.0)(layers.Conv2D(3, 1)(x))))
    ),
    "squeeze_excite": lambda x: layers.Multiply()([
        layers.Conv2D(4, 1, activation="swish")(x),
        layers.Reshape((1, 1, 4))(layers.Dense(4, activation="sigmoid")(layers.GlobalAveragePooling2D()(x))),
    ]),
    "prelu_gelu_hard_activations": lambda x: layers.Activation("hard_sigmoid")(layers.Activation("hard_swish")(
        layers.Activation("gelu")(layers.PReLU()(layers.Conv2D(4, 3)(x)))
    )),
    "subtract_average": lambda x: layers.Concatenate()([
        layers.Subtract()([layers.Conv2D(4, 1)(x), layers.Conv2D(4, 1)(x)]),
        layers.Average()([layers.Conv2D(4, 1)(x), layers.Conv2D(4, 1)(x)]),
    ]),
    "unfolded_bn": lambda x: layers.BatchNormalization()(layers.Add()([layers.Conv2D(4, 1)(x), layers.Conv2D(4, 1)(x)])),
    "maximum_minimum": lambda x: layers.Concatenate()([
        layers.Maximum()([layers.Conv2D(4, 1)(x), layers.Conv2D(4, 1)(x)]),
        layers.Minimum()([layers.Conv2D(4, 1)(x), layers.Conv2D(4, 1)(x)]),
    ]),
    "crop_permute_global_max_softmax": lambda x: layers.Softmax()(layers.Dense(5)(layers.GlobalMaxPooling2D()(
        layers.Permute((2, 1, 3))(layers.Cropping2D(1)(layers.Conv2D(4, 3)(x)))
    ))),
    "one_dimensional": lambda x: layers.GlobalAveragePooling1D()(layers.Cropping1D(1)(layers.ZeroPadding1D(2)(
        layers.UpSampling1D()(layers.SeparableConv1D(8, 3)(layers.DepthwiseConv1D(3)(layers.Reshape((32, 6))(x))))
    ))),
}


@pytest.mark.parametrize("case", sorted(_COVERAGE))
def test_supported_layers_convert_to_int8_ops_only(case):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3), name="x")
    model = keras.Model(inputs, _COVERAGE[case](inputs), name=case)
    x = np.random.default_rng(0).uniform(0, 1, (64, 8, 8, 3)).astype(np.float32)
    qat = tq.quantize_model(model)
    assert qat.quantization_report.float_layers == []
    tq.calibrate(qat, x)
    tflite = tfc.to_tflite(qat, mode="int8", representative_data=x[:16], strict=True)
    info = tflite.info
    assert info.float_compute_ops() == []
    assert _middle_dequantize_ops(info) == []
    # No int8 -> int8 requantization: Keras ranges match what each TFLite kernel produces. (MAXIMUM and
    # MINIMUM keep their inputs' scale in TFLite, so the converter requantizes to the trained output range.)
    requantized = info.op_census_by_dtype.get("QUANTIZE/int8", 0)
    assert requantized == (2 if case == "maximum_minimum" else 0)
    assert any(k.endswith("/int8") for k in info.op_census_by_dtype)
    expected = qat.predict(x, verbose=0)
    got = _run_tflite(tflite, x)
    # The int8 file computes what the QAT model computes, up to a few output quantization steps.
    assert np.abs(got - expected).max() <= 0.08 * (np.abs(expected).max() + 1e-6)


class _Square(layers.Layer):
    def call(self, x):
        return x * x


@pytest.mark.parametrize("make_layer", [lambda: _Square(name="square"), lambda: layers.Lambda(lambda t: t * t, name="square")])
def test_unsupported_layer_is_reported_and_left_float(make_layer):
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(4, 1, name="c1")(inputs)
    x = make_layer()(x)
    outputs = layers.Conv2D(4, 1, name="c2")(x)
    model = keras.Model(inputs, outputs)
    with pytest.warns(UserWarning, match="square"):
        qat = tq.quantize_model(model)
    report = qat.quantization_report
    assert [name for name, _ in report.float_layers] == ["square"]
    assert type(model.get_layer("square")).__name__ in report.float_layers[0][1]
    assert type(qat.get_layer("square")) is type(model.get_layer("square"))
    assert isinstance(qat.get_layer("c2"), tq.quantized_layers.QuantizedConv2D)
    x_data = np.random.default_rng(0).uniform(0, 1, (8, 8, 8, 3)).astype(np.float32)
    tq.calibrate(qat, x_data)
    if isinstance(qat.get_layer("square"), _Square):
        # The float layer computes in float on its int8-ranged input; only its output gets a range.
        probe = keras.Model(qat.inputs, [qat.get_layer("c1_quant").output, qat.get_layer("square").output])
        before, after = probe.predict(x_data, verbose=0)
        np.testing.assert_allclose(after, before * before, rtol=1e-6)


def test_keep_float_forces_float_by_name_in_keras_and_in_the_file(trained_float, digits_data):
    (x, _), (x_test, _) = digits_data
    with pytest.warns(UserWarning, match="keep_float"):
        qat = tq.quantize_model(trained_float, keep_float=["pw"])
    assert type(qat.get_layer("pw")) is layers.Conv2D
    assert ("pw", "listed in keep_float") in qat.quantization_report.float_layers
    assert "pw" not in qat.quantization_report.quantized
    np.testing.assert_array_equal(qat.get_layer("pw").kernel.numpy(), trained_float.get_layer("pw").kernel.numpy())
    tq.calibrate(qat, x[:256])
    # Calibration data given or not, the converter must not quantize the kept layer behind Keras's back.
    for data in (None, x[:32]):
        tflite = tfc.to_tflite(qat, mode="int8", representative_data=data)
        census = tflite.info.op_census_by_dtype
        assert census.get("CONV_2D/float32") == 1 and census.get("CONV_2D/int8") == 1, census
        expected, got = qat.predict(x_test, verbose=0), _run_tflite(tflite, x_test)
        assert np.mean(expected.argmax(1) == got.argmax(1)) >= 0.99
        assert np.abs(got - expected).max() <= 0.05 * np.abs(expected).max()


@pytest.mark.parametrize("layer", [layers.Conv3D(2, 1, name="float_op"), layers.ELU(name="float_op")])
def test_layers_without_int8_kernels_are_reported_float_and_run_float(layer):
    if isinstance(layer, layers.Conv3D):
        inputs = keras.Input((4, 4, 4, 2))
        outputs = layers.Dense(3)(layers.Flatten()(layer(inputs)))
    else:
        inputs = keras.Input((8, 8, 3))
        outputs = layers.Dense(3)(layers.Flatten()(layer(layers.Conv2D(2, 3)(inputs))))
    x = np.random.default_rng(0).uniform(0, 1, (16,) + inputs.shape[1:]).astype(np.float32)
    with pytest.warns(UserWarning, match="float_op"):
        qat = tq.quantize_model(keras.Model(inputs, outputs))
    assert [name for name, _ in qat.quantization_report.float_layers] == ["float_op"]
    tq.calibrate(qat, x)
    info = tfc.to_tflite(qat, mode="int8").info
    # A float layer with weights gets no output range (else the converter quantizes it), so the op
    # reading its output runs float too; a weightless one (ELU) hands an int8 range on.
    expected = {"CONV_3D", "FULLY_CONNECTED"} if isinstance(layer, layers.Conv3D) else {"ELU"}
    assert {op.type for op in info.float_compute_ops()} == expected
    np.testing.assert_allclose(_run_tflite(tfc.to_tflite(qat, mode="int8"), x), qat.predict(x, verbose=0), atol=0.05)


# --- end to end ---------------------------------------------------------------------------


def test_qat_trains_and_int8_file_matches_keras(trained_float, digits_data):
    (x, y), (x_test, y_test) = digits_data
    float_accuracy = np.mean(trained_float.predict(x_test, verbose=0).argmax(1) == y_test)
    qat = tfc.zoo.compile_classifier(tq.quantize_model(trained_float), learning_rate=5e-4)
    parity = tfc.TFLiteParityCallback(every_n_epochs=2, x=x_test, y=y_test)
    history = qat.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[parity])
    assert np.isfinite(history.history["loss"]).all()
    keras_out = qat.predict(x_test, verbose=0)
    keras_accuracy = np.mean(keras_out.argmax(1) == y_test)
    tflite = tfc.to_tflite(qat, mode="int8", representative_data=x[:50], io_type="int8", strict=True)
    assert tflite.info.float_compute_ops() == []
    report = tfc.evaluate_tflite(tflite, x=x_test, y=y_test, backends=("xnnpack",), num_runs=1, warmup_runs=0)
    assert float_accuracy > 0.85
    assert keras_accuracy >= float_accuracy - 0.03
    assert abs(report.accuracy - keras_accuracy) <= 0.01
    assert len(parity.history) == 1 and abs(parity.history[0]["gap"]) <= 1.0


def test_sequential_and_nested_models():
    keras.utils.set_random_seed(0)
    inner = keras.Sequential(
        [keras.Input((8, 8, 4)), layers.Conv2D(4, 3, padding="same", name="inner_conv"),
         layers.BatchNormalization(name="inner_bn"), layers.ReLU(name="inner_relu")],
        name="block",
    )
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(4, 1, name="stem")(inputs)
    x = inner(x)
    outputs = layers.Dense(3, name="head")(layers.Flatten()(x))
    nested = keras.Model(inputs, outputs)
    qat = tq.quantize_model(nested)
    assert ("block/inner_bn", "block/inner_conv") in qat.quantization_report.folded
    assert isinstance(qat.get_layer("block").get_layer("inner_conv"), tq.quantized_layers.QuantizedConv2D)

    sequential = keras.Sequential([keras.Input((8, 8, 3)), layers.Conv2D(4, 3, name="c"), layers.Flatten(), layers.Dense(3)])
    qat_seq = tq.quantize_model(sequential)
    assert isinstance(qat_seq.get_layer("c"), tq.quantized_layers.QuantizedConv2D)
    x_data = np.random.default_rng(0).uniform(0, 1, (32, 8, 8, 3)).astype(np.float32)
    for model in (qat, qat_seq):
        tq.calibrate(model, x_data)
        tflite = tfc.to_tflite(model, mode="int8", representative_data=x_data[:8], strict=True)
        assert tflite.info.float_compute_ops() == []


def test_pruned_model_keeps_its_zeros_through_qat_and_in_int8(trained_float, digits_data):
    (x, y), _ = digits_data
    pruned = keras.models.clone_model(trained_float)
    pruned.set_weights(trained_float.get_weights())
    for name in ("conv1", "pw", "logits"):
        kernel = pruned.get_layer(name).kernel
        values = kernel.numpy()
        threshold = np.quantile(np.abs(values), 0.75)
        kernel.assign(np.where(np.abs(values) < threshold, 0.0, values))
    qat = tq.quantize_model(pruned)
    assert "kernel" in qat.get_layer("pw").qat_options["masked_kernels"]
    tfc.zoo.compile_classifier(qat, learning_rate=1e-3)
    qat.fit(x, y, epochs=1, batch_size=32, verbose=0)
    tflite = tfc.to_tflite(qat, mode="int8", representative_data=x[:50])
    sparsity = {w.shape: w.zero_fraction for w in tflite.info.kernels if w.dtype == "int8"}
    # TFLite stores conv kernels as (out, kh, kw, in) and FC kernels as (out, in).
    assert sparsity[(16, 3, 3, 1)] >= 0.74
    assert sparsity[(32, 1, 1, 16)] >= 0.74
    assert sparsity[(10, 32)] >= 0.74


def test_keras_file_round_trip_with_plain_load_model(trained_float, digits_data, tmp_path):
    (x, y), (x_test, _) = digits_data
    qat = tfc.zoo.compile_classifier(tq.quantize_model(trained_float), learning_rate=1e-4)
    qat.fit(x[:256], y[:256], epochs=1, batch_size=32, verbose=0)
    path = str(tmp_path / "qat.keras")
    qat.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded.predict(x_test, verbose=0), qat.predict(x_test, verbose=0), atol=1e-5)
    conv = loaded.get_layer("conv1")
    np.testing.assert_array_equal(conv.bn_moving_variance.numpy(), qat.get_layer("conv1").bn_moving_variance.numpy())
    loaded.fit(x[:64], y[:64], epochs=1, verbose=0)  # compiled state and QAT behaviour survive


def test_quantization_report_survives_load_model(trained_digits_model, tmp_path):
    qat = tfc.quantize_model(trained_digits_model, keep_float=["fc1"])
    before = tfc.quantization.quantization_report(qat)
    path = str(tmp_path / "qat.keras")
    qat.save(path)
    after = tfc.quantization.quantization_report(keras.models.load_model(path))
    assert after.quantized == before.quantized and after.folded == before.folded == [("bn1", "conv1")]
    assert ("fc1", "listed in keep_float") in after.float_layers
    with pytest.raises(ValueError, match="no quantized layer"):
        tfc.quantization.quantization_report(trained_digits_model)


def test_freeze_stops_range_and_statistics_updates(trained_float, digits_data):
    (x, y), _ = digits_data
    qat = tfc.zoo.compile_classifier(tq.quantize_model(trained_float), learning_rate=1e-3)
    qat.fit(x[:64], y[:64], epochs=1, verbose=0)
    quantizer, conv = qat.get_layer("relu1_quant"), qat.get_layer("conv1")
    assert tq.freeze(qat) > 0
    before = (quantizer.range_max.numpy(), conv.bn_moving_mean.numpy().copy(), conv.kernel.numpy().copy())
    qat.fit(x[:128], y[:128], epochs=1, verbose=0)
    assert quantizer.range_max.numpy() == before[0]
    np.testing.assert_array_equal(conv.bn_moving_mean.numpy(), before[1])
    assert not np.array_equal(conv.kernel.numpy(), before[2])  # weights still train


# --- calibration at conversion ------------------------------------------------------------


def _agreement(flatbuffer, model, x):
    tflite = _predict(make_interpreter(bytes(flatbuffer), "xnnpack", 1), [x], 256)
    return float(np.mean(tflite.argmax(1) == np.asarray(model(x, training=False)).argmax(1)))


def _ranges(model):
    return {layer.name: (float(layer.range_min.numpy()), float(layer.range_max.numpy()))
            for layer in tfc.quantization.quantize.graph.layers_of(model)
            if isinstance(layer, tfc.quantization.ActivationQuantizer)}


def test_untrained_qat_model_is_calibrated_from_the_given_data(trained_digits_model, digits_data):
    (x, _), (x_test, _) = digits_data
    qat = tfc.quantize_model(trained_digits_model)
    before = _ranges(qat)
    assert all(r == (-6.0, 6.0) for r in before.values())
    calibrated = tfc.to_tflite(qat, mode="int8", representative_data=x[:200])
    assert any("calibrated from representative_data" in note for note in calibrated.notes)
    assert _ranges(qat) == before  # converting has no side effect on the model
    ptq = tfc.to_tflite(trained_digits_model, mode="int8", representative_data=x[:200])
    qat_agreement = _agreement(calibrated, trained_digits_model, x_test)
    assert qat_agreement >= 0.95 and qat_agreement >= _agreement(ptq, trained_digits_model, x_test) - 0.03


def test_untrained_qat_model_without_data_is_refused(trained_digits_model):
    qat = tfc.quantize_model(trained_digits_model)
    with pytest.raises(tfc.RepresentativeDataError,
                       match=r"never trained: \d+ activation range\(s\) never saw data.*\[-6, 6\].*"
                             r"representative_data=.*fit.*tfc\.quantization\.calibrate"):
        tfc.to_tflite(qat, mode="int8")


def test_trained_ranges_are_kept_whatever_the_calibration_data(trained_digits_model, digits_data):
    (x, y), _ = digits_data
    qat = tfc.quantize_model(trained_digits_model)
    tfc.zoo.compile_classifier(qat, learning_rate=1e-4)
    qat.fit(x, y, epochs=1, batch_size=64, verbose=0)
    trained = _ranges(qat)
    without = tfc.to_tflite(qat, mode="int8")
    with_odd_data = tfc.to_tflite(qat, mode="int8", representative_data=3.0 * x[:100])
    assert _ranges(qat) == trained
    scales = [sorted((d["name"], tuple(np.atleast_1d(d["quantization_parameters"]["scales"]).tolist()))
                     for d in make_interpreter(bytes(b), "cpu", 1).get_tensor_details()) for b in (without, with_odd_data)]
    assert any(s for _, s in scales[0]) and scales[0] == scales[1]


def test_calibrate_keeps_batch_norm_statistics_and_dropout_off():
    inputs = keras.Input((6,))
    x = keras.layers.Dense(8, activation="relu", name="d1")(inputs)
    x = keras.layers.BatchNormalization(name="bn_after_relu")(x)  # not after a Conv/Dense: not folded
    x = keras.layers.Dropout(0.5, name="drop")(x)
    model = keras.Model(inputs, keras.layers.Dense(3, name="out")(x))
    qat = tfc.quantize_model(model)
    bn = qat.get_layer("bn_after_relu")
    mean, variance = bn.moving_mean.numpy().copy(), bn.moving_variance.numpy().copy()
    data = np.random.default_rng(0).normal(3.0, 2.0, (256, 6)).astype("float32")
    updated = tfc.quantization.calibrate(qat, data, batch_size=64)
    assert updated > 0
    np.testing.assert_array_equal(bn.moving_mean.numpy(), mean)
    np.testing.assert_array_equal(bn.moving_variance.numpy(), variance)
    # With Dropout off, the output range equals the range of the inference-mode outputs.
    quantizer = qat.get_layer("out_quant")
    outputs = np.asarray(qat.predict(data, verbose=0))
    assert float(quantizer.range_max.numpy()) <= float(outputs.max()) * 1.05 + 1e-3


# --- errors -------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors(trained_float):
    with pytest.raises(TypeError, match="keras.Model"):
        tq.quantize_model("model.keras")
    unbuilt = keras.Sequential([layers.Dense(3)], name="unbuilt")
    with pytest.raises(ValueError, match="'unbuilt' is not built"):
        tq.quantize_model(unbuilt)
    with pytest.raises(ValueError, match="'cnov1'.*Did you mean.*conv1"):
        tq.quantize_model(trained_float, keep_float=["cnov1"])
    with pytest.raises(TypeError, match="QATConfig"):
        tq.quantize_model(trained_float, config={"ema_decay": 0.9})
    with pytest.raises(ValueError, match="ema_decay.*1.5"):
        tfc.QATConfig(ema_decay=1.5)

    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = layers.Dense(2)

        def call(self, x):
            return self.dense(x)

    subclassed = Subclassed()
    subclassed(np.zeros((1, 3), np.float32))
    with pytest.raises(TypeError, match="subclassed"):
        tq.quantize_model(subclassed)
    qat = tq.quantize_model(trained_float)
    with pytest.raises(ValueError, match="already quantized"):
        tq.quantize_model(qat)


def _bias_and_swish_model():
    inputs = keras.Input((12, 12, 3), name="image")
    x = layers.Conv2D(16, 3, padding="same", use_bias=False, name="conv")(inputs)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.Activation("swish", name="swish")(x)
    x = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(x)
    x = layers.BatchNormalization(name="dw_bn")(x)
    x = layers.ReLU(6.0, name="dw_relu")(x)
    x = layers.Conv2D(16, 1, activation="swish", name="pw")(x)
    outputs = layers.Conv2D(8, 1, name="head")(x)
    return keras.Model(inputs, outputs, name="bias_and_swish")


def test_int8_file_computes_what_keras_computes_bias_grid_and_swish(tmp_path):
    # Small BN variances make the folded kernels' int8 scales, and so the int32 grid TFLite stores the
    # folded biases on, coarse; swish runs as LOGISTIC (fixed 1/256 grid) + MUL in int8. Simulating
    # neither left ~0.5% (bias) and ~40% (swish) of these outputs a step or more off the .tflite's.
    keras.utils.set_random_seed(3)
    model = _bias_and_swish_model()
    rng = np.random.default_rng(0)
    for name in ("bn", "dw_bn"):
        channels = model.get_layer(name).gamma.shape[0]
        model.get_layer(name).set_weights([
            rng.uniform(0.5, 1.5, channels), rng.normal(0, 0.5, channels),
            rng.normal(0, 0.3, channels), rng.uniform(0.002, 0.02, channels),
        ])
    x = rng.uniform(0, 1, (64, 12, 12, 3)).astype("float32")
    qat = tq.quantize_model(model)
    assert type(qat.get_layer("swish")).__name__ == "QuantizedActivation"
    tq.calibrate(qat, x)
    tflite = tfc.to_tflite(qat, mode="int8", representative_data=x[:16], strict=True)
    step = float(qat.get_layer("head_quant").scale())
    error = np.abs(keras.ops.convert_to_numpy(qat(x)) - _run_tflite(tflite, x)) / step
    assert error.max() <= 2.0 and np.mean(error > 0.5) <= 1e-3, (error.max(), np.mean(error > 0.5))

    # Reloaded, the layers find their input quantizers again (the bias grid depends on them).
    qat.save(tmp_path / "qat.keras")
    reloaded = keras.models.load_model(tmp_path / "qat.keras")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(reloaded(x)), keras.ops.convert_to_numpy(qat(x)))


def test_identity_normalization_gets_no_second_quantizer():
    # An un-adapted Normalization computes x; the converter drops it together with the quantizer
    # after it, so the Keras model must not round its output a second time.
    inputs = keras.Input((8, 8, 3))
    x = layers.Rescaling(1 / 255.0, name="rescale")(inputs)
    x = layers.Normalization(name="norm")(x)
    outputs = layers.Conv2D(4, 3, name="conv")(x)
    qat = tq.quantize_model(keras.Model(inputs, outputs))
    names = [layer.name for layer in qat.layers]
    assert "rescale_quant" in names and "norm_quant" not in names
    adapted = layers.Normalization(mean=[0.5, 0.5, 0.5], variance=[0.1, 0.1, 0.1], name="norm")
    qat = tq.quantize_model(keras.Model(inputs, layers.Conv2D(4, 3, name="conv")(adapted(inputs))))
    assert "norm_quant" in [layer.name for layer in qat.layers]


def test_tflite_converter_used_directly_gives_an_int8_model(trained_float, digits_data):
    # Users who skip to_tflite and call the converter themselves must get the same int8 graph: the QAT
    # model's inference graph is FakeQuant ops around plain Keras ops, nothing the converter cannot read.
    import tensorflow as tf

    (x, _), _ = digits_data
    qat = tq.quantize_model(trained_float)
    tq.calibrate(qat, x[:64])
    converter = tf.lite.TFLiteConverter.from_keras_model(qat)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([x[i: i + 1]] for i in range(16))
    info = tfc.inspect_tflite(converter.convert())
    assert not info.float_compute_ops(), [op.type for op in info.float_compute_ops()]
    assert not _middle_dequantize_ops(info), info.op_census_by_dtype
    ours = tfc.inspect_tflite(bytes(tfc.to_tflite(qat, mode="int8", representative_data=x[:16])))
    assert sorted(op.type for op in info.operators) == sorted(op.type for op in ours.operators)


# --- keras.ops operation nodes ----------------------------------------------------------------


def _qat_to_int8_versus_ptq(model, x, output_quantizer):
    """QAT ``model`` for one step, convert it and the float model to int8; returns (qat, QAT info, PTQ info,
    the QAT Keras model's output error against its .tflite in int8 steps of the output)."""
    qat = tq.quantize_model(model)
    qat.compile(keras.optimizers.SGD(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    qat.fit(x, np.arange(len(x)) % model.output.shape[-1], batch_size=len(x), epochs=1, verbose=0)
    qat_tflite = tfc.to_tflite(qat, mode="int8", representative_data=x[:16])
    ptq_tflite = tfc.to_tflite(model, mode="int8", representative_data=x[:16])
    step = float(qat.get_layer(output_quantizer).scale())
    error = np.abs(keras.ops.convert_to_numpy(qat(x, training=False)) - _run_tflite(qat_tflite, x)) / step
    return qat, qat_tflite.info, ptq_tflite.info, error


def test_operation_nodes_are_quantized_where_their_layers_would_be():
    keras.utils.set_random_seed(0)
    model = operation_node_model()
    x = np.random.default_rng(0).uniform(0, 1, (32, 12, 12, 3)).astype("float32")
    operations = {graph.operation_kind(op): op.name for op in model.operations if graph.is_operation(op)}
    qat, qat_info, ptq_info, error = _qat_to_int8_versus_ptq(model, x, "head_quant")
    assert qat.quantization_report.float_layers == []
    # A plain Functional model that re-calls the operations on the quantized tensors.
    kinds = sorted(graph.operation_kind(op) for op in model.operations if graph.is_operation(op))
    assert graph.is_functional(qat)
    assert sorted(graph.operation_kind(op) for op in qat.operations if graph.is_operation(op)) == kinds
    names = {layer.name for layer in qat.layers}
    # As for layers: an Add followed by a ReLU6 that TFLite fuses into it has no range of its own; the
    # ReLU6, the gate and the mean have theirs.
    plus_three = graph.read_graph(model)[0][operations["nn.Relu6"]].producers[0]
    assert graph.operation_kind(graph.get_operation(model, plus_three)) == "numpy.Add"
    assert f"{plus_three}_quant" not in names
    for kind in ("nn.Relu6", "nn.HardSigmoid", "numpy.Mean", "numpy.TrueDivide"):
        assert f"{operations[kind]}_quant" in names, (kind, sorted(names))
    assert len(qat_info.float_compute_ops()) <= len(ptq_info.float_compute_ops()), qat_info.op_census_by_dtype
    # The converter computes what QAT simulates; one int8 step is rounding at the output, a second one
    # the rounding of intermediate tensors whose scale TFLite rescales with fixed-point multipliers.
    assert error.max() <= 2.0, error.max()


def test_unknown_operation_node_stays_float_and_is_reported():
    inputs = keras.Input((6, 6, 3))
    x = layers.Conv2D(4, 1, name="conv")(inputs)
    x = keras.ops.cumsum(x, axis=-1)
    model = keras.Model(inputs, layers.Dense(2, name="head")(layers.Flatten()(x)))
    name = next(op.name for op in model.operations if graph.operation_kind(op) == "numpy.Cumsum")
    with pytest.warns(UserWarning, match=name):
        qat = tq.quantize_model(model)
    assert qat.quantization_report.float_layers == [(name, "operation numpy.Cumsum (keras.ops) has no int8 rewrite "
                                                           "in tfcompress")]
    x = np.random.default_rng(0).uniform(0, 1, (4, 6, 6, 3)).astype("float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(qat(x)), keras.ops.convert_to_numpy(model(x)), atol=0.2)


@pytest.mark.slow  # converting it twice takes minutes on 2 cores: `python -m pytest -m slow`
def test_mobilenet_v3_operation_nodes_through_qat_to_int8():
    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV3Small(input_shape=(32, 32, 3), alpha=0.75, weights=None, classes=10)
    x = np.random.default_rng(0).uniform(0, 255, (16, 32, 32, 3)).astype("float32")
    qat, qat_info, ptq_info, error = _qat_to_int8_versus_ptq(model, x, "predictions_quant")
    assert qat.quantization_report.float_layers == []
    assert len(qat_info.float_compute_ops()) <= len(ptq_info.float_compute_ops()), qat_info.op_census_by_dtype
    assert error.max() <= 2.0, error.max()


@pytest.mark.slow  # converting it twice takes minutes on 2 cores: `python -m pytest -m slow`
def test_convnext_style_operation_nodes_and_layer_norm_through_qat_to_int8():
    keras.utils.set_random_seed(0)
    model = convnext_style_model()
    x = np.random.default_rng(0).uniform(0, 1, (16, 32, 32, 3)).astype("float32")
    qat, qat_info, ptq_info, error = _qat_to_int8_versus_ptq(model, x, "head_quant")
    assert qat.quantization_report.float_layers == []
    assert len(qat_info.float_compute_ops()) <= len(ptq_info.float_compute_ops()), qat_info.op_census_by_dtype
    # LayerNormalization's inner tensors (MEAN, SQUARED_DIFFERENCE, RSQRT, MUL) get int8 ranges the converter
    # calibrates and QAT does not simulate; five of them in a row add rounding steps (3 measured).
    assert error.max() <= 4.0, error.max()


def test_the_guides_support_table_lists_what_the_registry_quantizes():
    """docs/guides/quantization-aware-training.md's table is checked against the code, so it cannot drift."""
    import pathlib
    import re

    from tfcompress.quantization import registry

    guide = (pathlib.Path(__file__).resolve().parent.parent / "docs" / "guides" / "quantization-aware-training.md")
    table = guide.read_text().split("| QAT layer support |")[1].split("\n\n")[0]
    rows = [line.split("|")[1] for line in table.splitlines()[2:]]
    layer_rows = [r for r in rows if "keras.ops" not in r and "anything else" not in r]
    documented = set(re.findall(r"\b[A-Z][A-Za-z0-9]+\b", " ".join(layer_rows)))
    assert documented == {c.__name__ for c in registry.REGISTRY} - {"InputLayer"}
    activation_row = next(r for r in layer_rows if "Activation" in r)
    assert set(re.findall(r"`(\w+)`", activation_row)) == set(registry.SUPPORTED_ACTIVATIONS)

    def snake(kind):
        return re.sub(r"(?<!^)(?=[A-Z])", "_", kind.split(".")[-1]).lower()

    op_rows = {("passthrough" if "the input's scale" in line else "output"): line.split("|")[1]
               for line in table.splitlines()[2:]
               if "keras.ops" in line.split("|")[1] and "anything else" not in line}
    for kind in ("output", "passthrough"):
        listed = set(re.findall(r"`([a-z_0-9]+)`", op_rows[kind]))
        assert listed == {snake(k) for k, spec in registry.OPERATIONS.items() if spec.kind == kind}, kind


# --- calibrated start: QAT starts where PTQ ends ---------------------------------------------


def _output_step(tflite):
    """The int8 scale of the file's output tensor (the tensor its final DEQUANTIZE reads)."""
    interpreter = make_interpreter(bytes(tflite), "cpu", 1)
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    dequantize = [op for op in tflite.info.operators if op.type == "DEQUANTIZE"][-1]
    return float(details[dequantize.inputs[0]]["quantization_parameters"]["scales"][0])


def _all_conv_digits_cnn():
    # Logits from a 1x1 convolution and a global average: every kernel is per-channel in both files.
    inputs = keras.Input((8, 8, 1), name="image")
    x = layers.Conv2D(16, 3, padding="same", use_bias=False, name="conv1")(inputs)
    x = layers.BatchNormalization(name="bn1")(x)
    x = layers.ReLU(name="relu1")(x)
    x = layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = layers.ReLU(6.0, name="dw_relu")(x)
    x = layers.Conv2D(10, 1, name="head")(x)
    return keras.Model(inputs, layers.GlobalAveragePooling2D(name="logits")(x), name="all_conv")


def test_calibrated_start_converts_to_the_ptq_file(trained_digits_model, digits_data):
    (x, _), (x_test, _) = digits_data
    model = trained_on_digits(_all_conv_digits_cnn, digits_data, epochs=6)
    qat = tfc.quantize_model(model, x[:200])
    assert tq.quantize.untrained_ranges(qat) == []
    qat_file = tfc.to_tflite(qat, mode="int8")
    ptq_file = tfc.to_tflite(model, mode="int8", representative_data=x[:200])
    assert qat_file.info.op_census_by_dtype == ptq_file.info.op_census_by_dtype
    step = _output_step(ptq_file)
    assert _output_step(qat_file) == pytest.approx(step, rel=1e-5)
    # Same ranges, same int8 kernels and biases; one step is left to float32 rounding ties (the folded BN's
    # kernel and the requantization multipliers computed in a different order by the two paths).
    difference = np.abs(_run_tflite(qat_file, x_test) - _run_tflite(ptq_file, x_test))
    assert difference.max() <= step * 1.001
    # With Dense layers: the same ops and activation scales; only the Dense kernels differ, per-tensor in the
    # QAT file (the converter rejects per-channel FakeQuant on FULLY_CONNECTED) and per-channel in PTQ's.
    qat_file = tfc.to_tflite(tfc.quantize_model(trained_digits_model, x[:200]), mode="int8")
    ptq_file = tfc.to_tflite(trained_digits_model, mode="int8", representative_data=x[:200])
    assert qat_file.info.op_census_by_dtype == ptq_file.info.op_census_by_dtype
    assert _output_step(qat_file) == pytest.approx(_output_step(ptq_file), rel=1e-5)


def test_quantize_model_data_argument_and_errors(trained_digits_model, digits_data):
    (x, _), _ = digits_data
    with pytest.raises(TypeError, match=r"looks like layer names.*keep_float=\['fc1'\]"):
        tfc.quantize_model(trained_digits_model, ["fc1"])
    with pytest.raises(ValueError, match=r"calibration='nope'.*minmax"):
        tfc.quantize_model(trained_digits_model, x[:10], calibration="nope")
    with pytest.raises(tfc.RepresentativeDataError, match="representative_data"):
        tfc.quantize_model(trained_digits_model, x[:10, :4])
    # A dataset of (x, y) pairs calibrates as an array does; keep_float and config keep working as keywords.
    import tensorflow as tf
    from_array = _ranges(tfc.quantize_model(trained_digits_model, x[:64], keep_float="fc1"))
    dataset = tf.data.Dataset.from_tensor_slices((x[:64], np.zeros(64))).batch(16)
    from_dataset = _ranges(tfc.quantize_model(trained_digits_model, representative_data=dataset, keep_float=["fc1"],
                                              config=tfc.QATConfig()))
    assert from_array == pytest.approx(from_dataset)


def _raw_pixel_cnn():
    # No BatchNormalization: raw 0..255 inputs make the conv outputs reach hundreds (far beyond [-6, 6]).
    inputs = keras.Input((8, 8, 1))
    h = layers.Conv2D(16, 3, padding="same", activation="relu")(inputs)
    h = layers.Conv2D(32, 3, strides=2, padding="same", activation="relu")(h)
    h = layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, layers.Dense(10)(h), name="raw_pixel_cnn")


def _dense_autoencoder():
    inputs = keras.Input((64,))
    h = layers.Dense(32, activation="relu")(inputs)
    h = layers.Dense(8)(h)
    h = layers.Dense(32, activation="relu")(h)
    return keras.Model(inputs, layers.Dense(64)(h), name="dense_autoencoder")


def _trained_raw_pixel_autoencoder(digits_data, epochs):
    """Digits as 64 raw 0-255 pixels, and `_dense_autoencoder` trained on them (seed 0)."""
    (x, _), (x_test, _) = digits_data
    flat, flat_test = 255.0 * x.reshape(len(x), 64), 255.0 * x_test.reshape(len(x_test), 64)
    keras.utils.set_random_seed(0)
    autoencoder = _dense_autoencoder()
    autoencoder.compile(keras.optimizers.Adam(1e-3), "mse")
    autoencoder.fit(flat, flat, epochs=epochs, batch_size=32, verbose=0)
    return flat, flat_test, autoencoder


def _one_short_qat_epoch(model, x_train):
    """quantize_model with PTQ's data, then one epoch of Adam 1e-5 towards the float model's own outputs."""
    keras.utils.set_random_seed(0)
    qat = tfc.quantize_model(model, x_train[:500])
    qat.compile(keras.optimizers.Adam(1e-5), "mse")
    qat.fit(x_train, model.predict(x_train, verbose=0), epochs=1, batch_size=32, verbose=0)
    return tfc.to_tflite(qat, mode="int8")


def test_short_qat_on_raw_pixels_is_as_good_as_ptq(digits_data):
    (x, y), (x_test, _) = digits_data
    x, x_test = 255.0 * x, 255.0 * x_test
    keras.utils.set_random_seed(0)
    classifier = tfc.zoo.compile_classifier(_raw_pixel_cnn(), learning_rate=1e-3)
    classifier.fit(x, y, epochs=8, batch_size=32, verbose=0)
    reference = classifier.predict(x_test, verbose=0).argmax(1)
    ptq = _run_tflite(tfc.to_tflite(classifier, mode="int8", representative_data=x[:500]), x_test).argmax(1)
    qat = _run_tflite(_one_short_qat_epoch(classifier, x), x_test).argmax(1)
    # One epoch at 1e-5 moves a weight by ~42 x 1e-5, a fraction of its int8 step, and calibrated ranges shrink
    # by at most 1 - 0.999^42 = 4% of their slack: the file can only flip near-ties, a few of the 450 samples.
    assert np.mean(qat == reference) >= np.mean(ptq == reference) - 0.01


def test_short_qat_with_activations_beyond_six_is_as_good_as_ptq(digits_data):
    flat, flat_test, autoencoder = _trained_raw_pixel_autoencoder(digits_data, epochs=15)
    target = autoencoder.predict(flat_test, verbose=0)
    assert np.abs(target).max() > 6.0 * 10

    def relative_error(tflite):
        return np.linalg.norm(_run_tflite(tflite, flat_test) - target) / np.linalg.norm(target)

    ptq_error = relative_error(tfc.to_tflite(autoencoder, mode="int8", representative_data=flat[:500]))
    qat_error = relative_error(_one_short_qat_epoch(autoencoder, flat))
    # 10%: the run-to-run spread of the error from the slightly moved weights. The mean of per-batch extremes
    # (the former moving average) clipped the decoder's output range: 25% worse than PTQ on this model.
    assert qat_error <= 1.10 * ptq_error


def test_parity_callback_warns_when_qat_is_worse_than_ptq(digits_data):
    flat, flat_test, autoencoder = _trained_raw_pixel_autoencoder(digits_data, epochs=5)
    qat = tfc.quantize_model(autoencoder, flat[:500])
    qat.compile(keras.optimizers.Adam(1e-5), "mse")
    targets = autoencoder.predict(flat[:256], verbose=0)

    class Perturb(keras.callbacks.Callback):  # QAT made worse on purpose: every kernel scaled by 1.3
        def on_epoch_end(self, epoch, logs=None):
            for layer in self.model.layers:
                if hasattr(layer, "kernel"):
                    layer.kernel.assign(layer.kernel * 1.3)

    guard = tfc.TFLiteParityCallback(1, flat_test[:200], representative_data=flat[:500], float_model=autoencoder)
    with pytest.warns(UserWarning, match=r"QAT int8 file is worse than post-training int8.*relative error .*"
                                         r"\d\.\d{4} vs \d\.\d{4} for PTQ"):
        qat.fit(flat[:256], targets, epochs=1, batch_size=32, verbose=0, callbacks=[Perturb(), guard])
    record = guard.history[-1]
    assert record["tflite_relative_error"] > 2 * record["ptq_relative_error"]
    # Unperturbed, the same guard (its PTQ score kept) stays quiet.
    guard.tolerance = 10.0
    qat = tfc.quantize_model(autoencoder, flat[:500])
    qat.compile(keras.optimizers.Adam(1e-5), "mse")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        qat.fit(flat[:256], targets, epochs=1, batch_size=32, verbose=0, callbacks=[guard])
    assert guard.history[-1]["tflite_relative_error"] <= 1.1 * record["ptq_relative_error"]
    with pytest.raises(ValueError, match="y is None"):
        tfc.TFLiteParityCallback(1, flat_test)


def test_freeze_keeps_calibrated_ranges_and_thaw_resumes(trained_digits_model, digits_data):
    (x, y), _ = digits_data
    qat = tfc.zoo.compile_classifier(tfc.quantize_model(trained_digits_model, x[:200]), learning_rate=1e-4)
    calibrated = _ranges(qat)
    tq.freeze(qat)
    qat.fit(3.0 * x[:128], y[:128], epochs=1, batch_size=32, verbose=0)  # wider data: would widen every range
    assert _ranges(qat) == calibrated
    tq.freeze(qat, False)
    qat.fit(3.0 * x[:128], y[:128], epochs=1, batch_size=32, verbose=0)
    widened = _ranges(qat)
    assert widened["image_quant"][1] == pytest.approx(3.0 * calibrated["image_quant"][1], rel=1e-5)
