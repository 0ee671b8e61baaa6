"""Quantization and pruning guardrails: paths that used to give a bad model without a word."""

import warnings

import keras
import numpy as np
import pytest

import tfcompress as tfc
from tfcompress.evaluation.litert import make_interpreter, _predict


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


def _pruned_fit(end_step, epochs=1):
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(32, name="d"), keras.layers.Dense(3, name="o")],
                             name="tiny")
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.random.default_rng(0).random((64, 8), dtype=np.float32)
    y = np.arange(64) % 3
    callback = tfc.PruningCallback(tfc.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=end_step, frequency=2),
                                   verbose=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, y, epochs=epochs, batch_size=8, verbose=0, callbacks=[callback])
    return [str(w.message) for w in caught if "PruningCallback" in str(w.message)]


def test_a_schedule_longer_than_training_warns_with_the_numbers():
    messages = _pruned_fit(end_step=2000)  # 8 steps of training
    assert len(messages) == 1
    assert "asks for 80.0%" in messages[0] and "end_step=2000 lies beyond the 8 steps" in messages[0]


def test_a_schedule_that_fits_does_not_warn():
    assert _pruned_fit(end_step=6) == []
