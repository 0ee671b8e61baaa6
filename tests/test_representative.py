"""Calibration data: every accepted form works, every problem is named before the converter runs."""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfcompress as tfc
from tfcompress.core.representative import InputSpec, prepare

SPEC = [InputSpec("image", (None, 8, 8, 1))]


def _x(n=10):
    return np.random.default_rng(0).random((n, 8, 8, 1), dtype=np.float32)


def test_array_is_split_into_single_samples():
    samples = prepare(_x(10), SPEC)
    assert len(samples) == 10
    assert samples[0][0].shape == (1, 8, 8, 1) and samples[0][0].dtype == np.float32


def test_missing_batch_dimension_is_added():
    samples = prepare(_x(1)[0], SPEC)
    assert len(samples) == 1 and samples[0][0].shape == (1, 8, 8, 1)


def test_float64_and_integer_data_are_cast():
    assert prepare(_x(3).astype(np.float64), SPEC)[0][0].dtype == np.float32
    assert prepare((_x(3) * 16).astype(np.uint8), SPEC)[0][0].dtype == np.float32


def test_dataset_of_batched_xy_pairs():
    ds = tf.data.Dataset.from_tensor_slices((_x(10), np.arange(10))).batch(4)
    assert len(prepare(ds, SPEC)) == 10


def test_generator_function_yielding_lists_tflite_style():
    x = _x(6)

    def gen():
        for i in range(6):
            yield [x[i: i + 1]]

    samples = prepare(gen, SPEC)
    assert len(samples) == 6
    np.testing.assert_array_equal(samples[5][0], x[5:6])


def test_max_samples_stops_early():
    assert len(prepare(_x(50), SPEC, max_samples=7)) == 7


def test_empty():
    with pytest.raises(tfc.RepresentativeDataError, match="empty.*x_train\\[:200\\]"):
        prepare(np.zeros((0, 8, 8, 1), np.float32), SPEC)


def test_wrong_rank():
    with pytest.raises(tfc.RepresentativeDataError, match=r"shape \(10, 64\).*\(None, 8, 8, 1\)"):
        prepare(_x(10).reshape(10, 64), SPEC)


def test_wrong_shape():
    with pytest.raises(tfc.RepresentativeDataError, match=r"\(9, 9, 1\).*'image' takes samples of shape \(8, 8, 1\)"):
        prepare(np.zeros((2, 9, 9, 1), np.float32), SPEC)


def test_channels_first_gets_a_hint():
    spec = [InputSpec("image", (None, 8, 8, 3))]
    with pytest.raises(tfc.RepresentativeDataError, match="channels-first.*np.transpose"):
        prepare(np.zeros((2, 3, 8, 8), np.float32), spec)


def test_non_castable_dtype():
    with pytest.raises(tfc.RepresentativeDataError, match="dtype <U1.*cannot be cast"):
        prepare(np.full((2, 8, 8, 1), "a"), SPEC)


@pytest.mark.parametrize("bad,word", [(np.nan, "NaN"), (np.inf, "Inf")])
def test_non_finite_values_name_the_sample(bad, word):
    x = _x(5)
    x[3, 2, 2, 0] = bad
    with pytest.raises(tfc.RepresentativeDataError, match=f"sample 3 of model input 'image' contains {word}"):
        prepare(x, SPEC)


def test_unsupported_type():
    with pytest.raises(tfc.RepresentativeDataError, match="unsupported type int"):
        prepare(5, SPEC)


def test_float_model_producing_nan_names_the_sample():
    inputs = keras.Input((8, 8, 1), name="image")
    # sqrt of a negative pixel is NaN: sample 4 is the only one with one.
    outputs = keras.layers.Dense(3)(keras.layers.Flatten()(keras.layers.Lambda(keras.ops.sqrt)(inputs)))
    model = keras.Model(inputs, outputs)
    x = _x(8)
    x[4, 0, 0, 0] = -1.0
    with pytest.raises(tfc.RepresentativeDataError, match="NaN/Inf on sample 4"):
        tfc.to_tflite(model, mode="int8", representative_data=x)


def test_wrong_number_of_arrays_for_multi_input():
    specs = [InputSpec("a", (None, 4)), InputSpec("b", (None, 3)), InputSpec("c", (None, 2))]
    with pytest.raises(tfc.RepresentativeDataError, match="holds 2 arrays.*3 inputs.*dict"):
        prepare([np.zeros((2, 4)), np.zeros((2, 3))], specs)


def test_float64_values_beyond_float32_name_the_sample_not_the_model():
    x = _x(5).astype(np.float64)
    x[2, 1, 1, 0] = 1e39  # finite in float64, Inf once cast to the model's float32
    with pytest.raises(tfc.RepresentativeDataError,
                       match=r"sample 2 of model input 'image' holds values up to 1e\+39, beyond the float32 range.*Scale"):
        prepare(x, SPEC)
    x[2, 1, 1, 0] = 3e38  # large but representable: accepted
    assert np.isfinite(prepare(x, SPEC)[2][0]).all()


class _SubclassedCNN(keras.Model):
    """Built on its first call; with global pooling it also runs (silently) on other image sizes."""

    def __init__(self, pool, name):
        super().__init__(name=name)
        self.conv = keras.layers.Conv2D(4, 3)
        self.reduce = keras.layers.GlobalAveragePooling2D() if pool else keras.layers.Flatten()
        self.dense = keras.layers.Dense(10)

    def call(self, x):
        return self.dense(self.reduce(self.conv(x)))


def _subclassed(pool, name, shape=(8, 8, 1)):
    model = _SubclassedCNN(pool, name)
    model(np.zeros((1,) + shape, np.float32))
    return model


def _digits_x(n=16, size=None):
    (x, _), _ = tfc.datasets.digits()
    x = x[:n]
    if size is not None:  # upsample the 8x8 digits to another size, as a mismatched pipeline would
        x = tf.image.resize(x, (size, size)).numpy()
    return x


@pytest.mark.parametrize("pool", [False, True], ids=["flatten", "global-pooling"])
def test_subclassed_model_recorded_shape_wins_over_calibration_data(pool):
    model = _subclassed(pool, "sub_cnn")
    with pytest.raises(tfc.RepresentativeDataError,
                       match=r"per-sample shape \(9, 9, 1\).*'sub_cnn' was built on.*\(8, 8, 1\).*"
                             r"Pass calibration data of shape \(num_samples,\) \+ \(8, 8, 1\).*input_shape=\(9, 9, 1\)"):
        tfc.to_tflite(model, mode="int8", representative_data=_digits_x(size=9))
    b = tfc.to_tflite(model, mode="int8", representative_data=_digits_x())
    assert b.info.input_details[0]["shape"] == [1, 8, 8, 1]


def test_subclassed_model_dataset_calibration_is_checked_against_the_recorded_shape():
    ds = tf.data.Dataset.from_tensor_slices(_digits_x(size=9)).batch(4)
    with pytest.raises(tfc.RepresentativeDataError,
                       match=r"dataset element 0.*\(9, 9, 1\).*takes samples of shape \(8, 8, 1\).*resize or reshape"):
        tfc.to_tflite(_subclassed(True, "sub_cnn"), mode="int8", representative_data=ds)


def test_explicit_input_shape_converts_a_size_agnostic_subclassed_model_at_that_size():
    b = tfc.to_tflite(_subclassed(True, "sub_pool"), mode="int8", representative_data=_digits_x(size=9),
                      input_shape=(9, 9, 1))
    assert b.info.input_details[0]["shape"] == [1, 9, 9, 1]


def test_recorded_none_dimensions_are_filled_from_the_calibration_data():
    model = _SubclassedCNN(True, "sub_any_size")
    model(keras.KerasTensor((None, None, None, 1)))  # records (None, None, None, 1)
    b = tfc.to_tflite(model, mode="int8", representative_data=_digits_x(size=12))
    assert b.info.input_details[0]["shape"] == [1, 12, 12, 1]


def test_model_that_cannot_run_on_the_data_is_named_with_the_sample_not_a_keras_traceback():
    with pytest.raises(tfc.RepresentativeDataError) as info:
        tfc.to_tflite(_subclassed(False, "sub_flat"), mode="int8", representative_data=_digits_x(size=9),
                      input_shape=(9, 9, 1))
    message = str(info.value)
    assert "model 'sub_flat' raised on sample 0" in message and "(9, 9, 1)" in message
    assert re.search(r"ValueError: .*layer 'dense(_\d+)?' is incompatible", message)  # Keras's reason, condensed
    assert "shape and preprocessing the model was built and trained for" in message
    assert "\x1b" not in message and "Traceback" not in message and "Arguments received" not in message


class _RejectsNegativeInputs(keras.Model):
    def __init__(self):
        super().__init__(name="rejects_negative")
        self.dense = keras.layers.Dense(3)

    def call(self, x):
        if bool(keras.ops.any(x < 0)):
            raise ValueError("negative pixel values are not allowed")
        return self.dense(keras.ops.reshape(x, (-1, 64)))


def test_check_model_outputs_finds_the_sample_the_model_rejects():
    model = _RejectsNegativeInputs()
    x = _digits_x(100)
    model(x[:1])
    x[70, 3, 3, 0] = -1.0  # in the second batch of 64
    samples = prepare(x, SPEC)
    tfc.representative.check_model_outputs(model, samples[:70], SPEC)  # the samples before it run fine
    with pytest.raises(tfc.RepresentativeDataError,
                       match=r"model 'rejects_negative' raised on sample 70 .*ValueError: negative pixel values"):
        tfc.representative.check_model_outputs(model, samples, SPEC)
