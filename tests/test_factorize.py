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


def _separable_low_rank_model(padding, strides=(2, 2), rank=5, seed=0, shape=(15, 13, 6)):
    """One Conv2D whose kernel has rank ``rank`` as a (kh*c_in) x (kw*c_out) matrix (Jaderberg's scheme 2)."""
    rng = np.random.default_rng(seed)
    inputs = keras.Input(shape, name="image")
    x = keras.layers.Conv2D(32, 3, strides=strides, padding=padding, activation="relu", name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(10, name="out")(x), name=f"separable_{padding}")
    layer = model.get_layer("conv")
    kh, kw, c_in, c_out = layer.kernel.shape
    matrix = rng.normal(size=(kh * c_in, rank)) @ rng.normal(size=(rank, kw * c_out))
    layer.kernel.assign((0.1 * matrix).reshape(kh, c_in, kw, c_out).transpose(0, 2, 1, 3).astype("float32"))
    return model


def _relative_error(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(a)))


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_separable_form_is_exact_with_stride_two_saves_and_converts(tmp_path, padding):
    model = _separable_low_rank_model(padding)
    x = np.random.default_rng(1).random((16, 15, 13, 6), dtype=np.float32)
    small = tfc.factorize(model, energy=0.999, form="separable", verbose=0)
    (row,) = [r for r in small.factorization_report.rows if r[0] == "conv"]
    assert row[1] == "separable" and row[2] == 5 and row[-1] == "factorized" and row[5] < row[4]
    assert "separable" in small.factorization_report.to_markdown()
    first, second = small.get_layer("conv_low_rank"), small.get_layer("conv")
    assert first.kernel.shape == (3, 1, 6, 5) and first.strides == (2, 1) and not first.use_bias
    assert second.kernel.shape == (1, 3, 5, 32) and second.strides == (1, 2) and second.padding == padding
    assert first.padding == padding and second.activation is model.get_layer("conv").activation
    reference = np.asarray(model(x))
    assert small.get_layer("conv").output.shape == model.get_layer("conv").output.shape
    assert _relative_error(reference, small(x)) < 1e-4
    path = str(tmp_path / "separable.keras")
    small.save(path)
    loaded = keras.models.load_model(path)
    assert _relative_error(reference, loaded(x)) < 1e-4
    float_file = tfc.to_tflite(loaded, mode="float32")
    assert _relative_error(reference, tfc.evaluate.predict(float_file, x)) < 1e-4
    int8_file = tfc.to_tflite(loaded, mode="int8", representative_data=x)
    assert np.mean(tfc.evaluate.predict(int8_file, x).argmax(1) == reference.argmax(1)) >= 0.75


@pytest.mark.parametrize("strides, dilation, kernel", [((1, 2), (1, 1), (3, 5)), ((1, 1), (2, 2), (3, 3))])
@pytest.mark.parametrize("padding", ["same", "valid"])
def test_separable_form_is_exact_for_any_stride_and_dilation(padding, strides, dilation, kernel):
    inputs = keras.Input((14, 13, 4))
    x = keras.layers.Conv2D(12, kernel, strides=strides, dilation_rate=dilation, padding=padding, name="conv")(inputs)
    model = keras.Model(inputs, x)
    x = np.random.default_rng(2).normal(size=(4, 14, 13, 4)).astype("float32")
    kh, kw = kernel
    # A kernel of separable rank 3 is represented exactly at rank 3 (cheaper than the layer, so it is split).
    layer = model.get_layer("conv")
    rng = np.random.default_rng(3)
    matrix = rng.normal(size=(kh * 4, 3)) @ rng.normal(size=(3, kw * 12))
    layer.kernel.assign(matrix.reshape(kh, 4, kw, 12).transpose(0, 2, 1, 3).astype("float32"))
    small = tfc.factorize(model, rank=3, form="separable", verbose=0)
    assert small.factorization_report.rows[0][1] == "separable"
    assert small.get_layer("conv_low_rank").strides == (strides[0], 1)
    assert small.get_layer("conv_low_rank").dilation_rate == (dilation[0], 1)
    assert _relative_error(model(x), small(x)) < 1e-4


def test_auto_picks_the_cheaper_form_per_layer():
    rng = np.random.default_rng(0)
    inputs = keras.Input((12, 12, 16), name="image")
    a = keras.layers.Conv2D(32, 3, padding="same", name="separable_low")(inputs)
    b = keras.layers.Conv2D(32, 3, padding="same", name="pointwise_low")(a)
    model = keras.Model(inputs, b)
    sep = model.get_layer("separable_low")
    matrix = rng.normal(size=(3 * 16, 2)) @ rng.normal(size=(2, 3 * 32))  # separable rank 2
    sep.kernel.assign(matrix.reshape(3, 16, 3, 32).transpose(0, 2, 1, 3).astype("float32"))
    point = model.get_layer("pointwise_low")
    point.kernel.assign((rng.normal(size=(9 * 32, 2)) @ rng.normal(size=(2, 32))).reshape(3, 3, 32, 32)
                        .astype("float32"))  # pointwise rank 2
    x = rng.normal(size=(4, 12, 12, 16)).astype("float32")
    small = tfc.factorize(model, energy=0.9999, verbose=0)
    forms = {r[0]: r[1] for r in small.factorization_report.rows}
    assert forms == {"separable_low": "separable", "pointwise_low": "pointwise"}
    assert _relative_error(model(x), small(x)) < 1e-4
    pointwise_only = tfc.factorize(model, energy=0.9999, form="pointwise", verbose=0)
    assert {r[1] for r in pointwise_only.factorization_report.rows} <= {"pointwise", "—"}


def test_form_is_validated_and_one_wide_kernels_have_no_separable_pair(trained_digits_model):
    with pytest.raises(ValueError, match=r"form='diagonal': choose one of \['auto', 'pointwise', 'separable'\]"):
        tfc.factorize(trained_digits_model, form="diagonal")
    inputs = keras.Input((8, 8, 4))
    model = keras.Model(inputs, keras.layers.Conv2D(8, (1, 3), name="row")(inputs))
    small = tfc.factorize(model, rank=1, form="separable", verbose=0)
    assert small.factorization_report.rows[0][-1].startswith("kept: no separable form")
    assert tfc.factorize(model, rank=1, verbose=0).factorization_report.rows[0][1] == "pointwise"


def _mnist_mlp(with_input=True, seed=0):
    """The MNIST MLP of issue 23 as a Sequential model, its Dense kernels of rank 12 (so energy 0.999 splits them)."""
    layers = [keras.layers.Flatten(), keras.layers.Dense(300, "relu"), keras.layers.Dense(100, "relu"),
              keras.layers.Dense(10)]
    model = keras.Sequential(([keras.Input((28, 28, 1))] if with_input else []) + layers, name="mlp")
    if not with_input:
        model(np.zeros((1, 28, 28, 1), np.float32))  # built by a first call, as fit or predict would
    rng = np.random.default_rng(seed)
    for layer in model.layers[1:3]:
        m, n = layer.kernel.shape
        layer.kernel.assign((0.02 * rng.normal(size=(m, 12)) @ rng.normal(size=(12, n))).astype("float32"))
    return model


@pytest.mark.parametrize("with_input", [True, False], ids=["keras_input", "called_once"])
def test_sequential_in_sequential_out_exact_smaller_and_saved(with_input, tmp_path):
    model = _mnist_mlp(with_input)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.random.default_rng(1).random((16, 28, 28, 1), dtype=np.float32)
    reference = np.asarray(model(x))
    small = tfc.factorize(model, energy=0.999, verbose=0)
    assert isinstance(small, keras.Sequential) and small.name == "mlp" and small.compiled
    rows = small.factorization_report.rows
    assert [row[-1] for row in rows] == ["factorized", "factorized", "kept: the rank is the full rank (no-op)"]
    assert sum(row[5] for row in rows) < 0.2 * sum(row[4] for row in rows)  # MACs after vs before
    assert _relative_error(small(x), reference) < 1e-3
    # At full rank nothing is split, and the model computes the same.
    full = tfc.factorize(model, rank=1000, verbose=0)
    assert isinstance(full, keras.Sequential) and len(full.layers) == len(model.layers)
    assert _relative_error(full(x), reference) < 1e-6
    path = str(tmp_path / "mlp.keras")
    small.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, keras.Sequential) and np.allclose(loaded(x), small(x), atol=1e-6)
    assert np.abs(np.asarray(model(x)) - reference).max() == 0  # the input model is not modified


def test_unbuilt_sequential_is_refused_saying_how_to_build_it():
    model = keras.Sequential([keras.layers.Flatten(), keras.layers.Dense(10)], name="unbuilt_mlp")
    with pytest.raises(ValueError, match=r"'unbuilt_mlp' is not built.*call it once.*keras\.Input"):
        tfc.factorize(model)
