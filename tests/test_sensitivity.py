"""Per-layer quantization sensitivity, the accuracy budget, calibration methods and the agreement check."""

import os
import sys
import warnings

import keras
import numpy as np
import pytest

import tfcompress as tfc
from tfcompress.evaluation.litert import make_interpreter, _predict
from tfcompress.export import sensitivity

# The model per-tensor int8 breaks (one fc1 unit scaled up, the float function unchanged) is shared with
# tools/bench_sensitivity.py.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
from bench_common import with_outlier_unit as _with_outlier_unit  # noqa: E402


def _nested_model():
    inputs = keras.Input((8, 8, 1), name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", name="stem")(inputs)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.ReLU(name="stem_relu")(x)
    inner_in = keras.Input((8, 8, 8))
    y = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="inner_conv")(inner_in)
    block = keras.Model(inner_in, keras.layers.Add(name="inner_add")([inner_in, y]), name="block")
    x = block(x)
    x = keras.layers.Concatenate(name="concat")([x, x])
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(x), name="nested")


def test_one_row_per_quantizable_layer_nested_included(digits_data):
    (x, _), _ = digits_data
    model = _nested_model()
    report = tfc.quantization_sensitivity(model, x[:64])
    assert sorted(r.layer for r in report.rows) == sorted(
        ["stem", "stem_relu", "block/inner_conv", "block/inner_add", "concat", "gap", "logits"])
    assert all(np.isfinite(r.local_sqnr_db) and r.local_sqnr_db > 10 for r in report.rows)
    assert [r.local_sqnr_db for r in report.rows] == sorted(r.local_sqnr_db for r in report.rows)
    assert report.to_dict()["rows"][0]["layer"] == report.rows[0].layer
    assert "block/inner_conv" in report.to_markdown()


def test_the_broken_layer_is_ranked_first_and_the_accuracy_columns_show_it(trained_digits_model, digits_data, tmp_path):
    (x, _), (x_test, y_test) = digits_data
    broken = _with_outlier_unit(trained_digits_model, 1e3)
    report = tfc.quantization_sensitivity(broken, x[:200], x_test, y_test, accuracy_layers=2)
    assert set(report.most_sensitive(2)) == {"fc1", "logits"}  # the two layers the outlier unit breaks
    assert report.float_accuracy - report.int8_accuracy > 0.2  # int8 collapses
    measured = [r for r in report.rows if r.accuracy_kept_float is not None]
    assert [r.layer for r in measured] == report.most_sensitive(2)
    # The outlier tensor between fc1 and the logits breaks int8 wherever it is written or read in int8: each
    # layer alone in int8 collapses, and keeping only one of them float is not enough (the budget keeps both).
    assert all(r.accuracy_only_int8 < 0.5 and r.accuracy_kept_float < 0.5 for r in measured), report.to_markdown()
    assert report.plot(str(tmp_path / "s.png")) and (tmp_path / "s.png").stat().st_size > 1000


def test_the_budget_keeps_the_fewest_layers_float(trained_digits_model, digits_data):
    (x, _), (x_test, y_test) = digits_data
    # Fine as it is: plain int8, nothing kept float.
    plain = tfc.to_tflite(trained_digits_model, mode="int8", representative_data=x[:200], max_accuracy_drop=1.0,
                          validation_data=(x_test, y_test))
    assert plain.budget["kept_float"] == [] and plain.budget["mode"] == "int8"
    broken = _with_outlier_unit(trained_digits_model, 1e3)
    chosen = tfc.to_tflite(broken, mode="int8", representative_data=x[:200], max_accuracy_drop=1.0,
                           validation_data=(x_test, y_test))
    assert chosen.budget["drop"] <= 1.0 and sorted(chosen.budget["kept_float"]) == ["fc1", "logits"]
    assert len(chosen.info.float_compute_ops()) == 2  # exactly the two kept layers run float
    assert len(chosen.budget["tries"]) >= 2 and chosen.budget["tries"][0]["kept_float"] == []
    accuracy = sensitivity.tflite_accuracy(chosen, x_test, y_test)
    assert accuracy == pytest.approx(chosen.budget["accuracy"])


def test_a_budget_that_cannot_be_met_says_what_was_tried(trained_digits_model, digits_data):
    (x, _), (x_test, y_test) = digits_data
    broken = _with_outlier_unit(trained_digits_model, 1e6)
    with pytest.raises(tfc.AccuracyBudgetError, match=r"max_accuracy_drop=0\.5: no file stayed within.*Tried int8: "
                                                      r".*int8 with logits float: .*int16x8: .*quantization-aware"):
        sensitivity.convert_within_budget(broken, x[:200], (x_test, y_test), 0.5, max_float_layers=1)
    with pytest.raises(ValueError, match="max_accuracy_drop and validation_data go together"):
        tfc.to_tflite(broken, mode="int8", representative_data=x[:10], max_accuracy_drop=0.5)
    # int8 inputs/outputs close the int16x8 resort (it has none): said, not a raw io_type error from the
    # last try.
    with pytest.raises(tfc.AccuracyBudgetError, match=r"Tried int8: .*int16x8 was not tried: it has no "
                                                      r"io_type='int8'"):
        sensitivity.convert_within_budget(broken, x[:200], (x_test, y_test), 0.5, max_float_layers=1, io_type="int8")
    # A calibration method sets int8 ranges: the int16x8 try converts without it (it used to be an int8 file).
    with pytest.raises(tfc.AccuracyBudgetError, match=r"int16x8: "):
        sensitivity.convert_within_budget(broken, x[:200], (x_test, y_test), 0.5, max_float_layers=1,
                                          calibration="minmax")


def test_percentile_and_mse_calibration_beat_minmax_on_outliers(trained_digits_model, digits_data):
    (x, _), (x_test, _) = digits_data
    calibration = x[:500].copy()
    calibration[0, 4, 4, 0] = 60.0  # one glitched pixel in the calibration set (pixels are in [0, 1])
    reference = np.asarray(trained_digits_model(x_test, training=False))
    errors = {}
    for method in ("minmax", "percentile", "mse"):
        flatbuffer = tfc.to_tflite(trained_digits_model, mode="int8", representative_data=calibration,
                                   calibration=method)
        assert flatbuffer.info.float_compute_ops() == []
        out = _predict(make_interpreter(bytes(flatbuffer), "xnnpack", 1), [x_test], 256)
        errors[method] = float(np.mean((out - reference) ** 2))
    # Min-max spends the input's whole int8 range on the glitch; the 99.9th percentile clips it. MSE weighs the
    # glitch's own clipping error too, so it clips less, but never does worse than min-max on its sample.
    assert errors["percentile"] < 0.2 * errors["minmax"] and errors["mse"] <= 1.05 * errors["minmax"], errors
    with pytest.raises(ValueError, match="calibration='kl'"):
        tfc.to_tflite(trained_digits_model, mode="int8", representative_data=x[:10], calibration="kl")


def test_verify_warns_when_the_file_disagrees_with_keras(trained_digits_model, digits_data):
    (x, _), (x_test, _) = digits_data
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        good = tfc.to_tflite(trained_digits_model, mode="int8", representative_data=x[:200], verify=x_test)
        bad = tfc.to_tflite(_with_outlier_unit(trained_digits_model, 1e3), mode="int8", representative_data=x[:200],
                            verify=(x_test,))
    messages = [str(w.message) for w in caught if "agrees with the Keras model" in str(w.message)]
    assert good.agreement >= 0.97 and bad.agreement < 0.9
    assert len(messages) == 1 and "tfc.quantization_sensitivity" in messages[0]
