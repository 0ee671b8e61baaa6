"""Calibration data: every accepted form works, every problem is named before the converter runs."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfcompress as tfc
from tfcompress.representative import InputSpec, prepare

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
    with pytest.raises(tfc.RepresentativeDataError, match=r"'image'.*\(9, 9, 1\).*expects \(8, 8, 1\)"):
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
    with pytest.raises(tfc.RepresentativeDataError, match=f"sample 3 of input 'image' contains {word}"):
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
