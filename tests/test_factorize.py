"""Low-rank factorization: exact at high energy, smaller at lower energy, a plain Keras model that converts."""

import keras
import numpy as np
import pytest

import tfcompress as tfc


def _low_rank_model(seed=0):
    rng = np.random.default_rng(seed)
    inputs = keras.Input((8, 8, 4), name="image")
    x = keras.layers.Conv2D(64, 3, padding="same", activation="relu", name="conv")(inputs)
    x = keras.layers.Flatten()(keras.layers.MaxPooling2D(4)(x))
    x = keras.layers.Dense(256, activation="relu", name="wide")(x)
    model = keras.Model(inputs, keras.layers.Dense(10, name="out")(x), name="low_rank")
    for name, rank in (("conv", 6), ("wide", 8)):
        layer = model.get_layer(name)
        kernel = layer.kernel.numpy()
        matrix = rng.normal(size=(kernel.reshape(-1, kernel.shape[-1]).shape[0], rank)) @ rng.normal(
            size=(rank, kernel.shape[-1]))
        layer.kernel.assign((0.05 * matrix).reshape(kernel.shape).astype("float32"))
    return model


def test_factorize_is_exact_at_high_energy_and_cuts_macs(tmp_path):
    model = _low_rank_model()
    x = np.random.default_rng(1).random((16, 8, 8, 4), dtype=np.float32)
    small = tfc.factorize(model, energy=0.999, verbose=0)
    decisions = {row[0]: row[-1] for row in small.factorization_report.rows}
    assert decisions["conv"] == decisions["wide"] == "factorized"
    assert small.count_params() < 0.5 * model.count_params()
    reference = np.asarray(model(x))
    assert np.max(np.abs(np.asarray(small(x)) - reference)) / np.max(np.abs(reference)) < 1e-3
    assert small.get_layer("wide_low_rank").units == 8 and small.get_layer("conv_low_rank").filters == 6
    path = str(tmp_path / "f.keras")
    small.save(path)
    keras.models.load_model(path)
    for mode in ("float32", "int8"):
        tfc.to_tflite(small, mode=mode, representative_data=x if mode == "int8" else None)


def test_factorize_says_why_a_layer_is_kept_and_rejects_bad_arguments(trained_digits_model):
    full = tfc.factorize(trained_digits_model, rank=1000, verbose=0)
    assert all("no-op" in row[-1] or "more MACs" in row[-1] for row in full.factorization_report.rows)
    with pytest.raises(ValueError, match=r"energy=1\.5 must be in \(0, 1\]"):
        tfc.factorize(trained_digits_model, energy=1.5)
    with pytest.raises(ValueError, match=r"layers=\['nope'\]"):
        tfc.factorize(trained_digits_model, layers=["nope"])


def test_factorize_step_in_a_recipe(trained_digits_model):
    result = tfc.compress(trained_digits_model, "digits", [tfc.Factorize(0.9, epochs=1), tfc.Convert("int8")],
                          evaluate=False, verbose=0)
    assert "lowrank90-int8" in result.artifacts
    assert result.model.count_params() < trained_digits_model.count_params()
