"""Distiller on real TensorFlow with sklearn's 8x8 digits (seconds per test)."""

import json
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import trained_on_digits

import tfcompress as tfc
from tfcompress.distillation import LABELS_KEY, TEACHER_LOGITS_KEY

INPUT_SHAPE = (8, 8, 1)


def _teacher(num_classes=10, name="teacher"):
    """A conv teacher with BatchNormalization, a 32-wide "gap" (like the student's) and a big head."""
    inputs = keras.Input(INPUT_SHAPE, name="image")
    x = keras.layers.Conv2D(32, 3, padding="same", name="t_conv1")(inputs)
    x = keras.layers.BatchNormalization(momentum=0.9, name="t_bn1")(x)
    x = keras.layers.ReLU(name="t_relu1")(x)
    x = keras.layers.Conv2D(32, 3, padding="same", name="t_conv2")(x)
    x = keras.layers.ReLU(name="t_relu2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    x = keras.layers.Dense(512, activation="relu", name="t_fc")(x)
    outputs = keras.layers.Dense(num_classes, name="t_logits")(x)
    return keras.Model(inputs, outputs, name=name)


def _student(num_classes=10):
    """zoo.small_student's layers, with a BatchNormalization momentum that settles in a few
    hundred digits steps (the default 0.99 needs thousands before evaluation is meaningful)."""
    inputs = keras.Input(INPUT_SHAPE, name="image")
    x = inputs
    for i, filters in enumerate((16, 32), start=1):
        x = keras.layers.Conv2D(filters, 3, padding="same", name=f"conv{i}")(x)
        x = keras.layers.BatchNormalization(momentum=0.9, name=f"bn{i}")(x)
        x = keras.layers.ReLU(name=f"relu{i}")(x)
        x = keras.layers.MaxPooling2D(name=f"pool{i}")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="student")


@pytest.fixture(scope="module")
def teacher(digits_data):
    _, (x_test, y_test) = digits_data
    model = trained_on_digits(_teacher, digits_data, epochs=8)
    accuracy = model.evaluate(x_test, y_test, verbose=0)[1]
    assert accuracy > 0.8, f"test teacher too weak to distil from: accuracy {accuracy:.3f}"
    return model


def _distiller(teacher, **kwargs):
    distiller = tfc.Distiller(teacher, _student(), **kwargs)
    distiller.compile(optimizer=keras.optimizers.Adam(3e-3), metrics=["accuracy"])
    return distiller


def _weights(model):
    return [w.numpy().copy() for w in model.weights]


def _softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def test_is_a_keras_distiller_and_trains_only_the_student(teacher):
    distiller = _distiller(teacher)
    assert isinstance(distiller, keras.distillation.Distiller)
    assert not teacher.trainable
    trainable = {id(w) for w in distiller.trainable_weights}
    assert trainable == {id(w) for w in distiller.student.trainable_weights}


def test_gradients_reach_only_the_student(teacher, digits_data):
    (x, y), _ = digits_data
    distiller = _distiller(teacher, alpha=0.3, feature_layers={"gap": "gap"})
    every_variable = teacher.weights + distiller.student.trainable_weights
    with tf.GradientTape() as tape:
        # Watching the teacher's variables too: only stop_gradient keeps them out.
        tape.watch([v.value for v in teacher.weights])
        loss = distiller.compute_loss(x[:64], y[:64], training=True)
    gradients = tape.gradient(loss, [v.value for v in every_variable])
    teacher_grads = gradients[: len(teacher.weights)]
    student_grads = gradients[len(teacher.weights):]
    assert all(g is None for g in teacher_grads)
    assert all(g is not None and np.any(g.numpy() != 0) for g in student_grads)


def test_fit_leaves_teacher_and_its_batchnorm_statistics_unchanged(teacher, digits_data):
    (x, y), _ = digits_data
    before_teacher = _weights(teacher)
    distiller = _distiller(teacher, feature_layers={"gap": "gap"})
    before_student = _weights(distiller.student)
    distiller.fit(x, y, epochs=1, batch_size=64, verbose=0)
    for before, after in zip(before_teacher, teacher.weights):
        np.testing.assert_array_equal(before, after.numpy(), err_msg=after.path)
    assert any(not np.array_equal(b, a.numpy()) for b, a in zip(before_student, distiller.student.weights))


@pytest.mark.parametrize("temperature, alpha", [(1.0, 0.5), (4.0, 0.1), (8.0, 0.0), (2.0, 1.0)])
def test_loss_is_alpha_hard_plus_one_minus_alpha_t_squared_kl(teacher, digits_data, temperature, alpha):
    (x, y), _ = digits_data
    x, y = x[:50], y[:50]
    distiller = _distiller(teacher, temperature=temperature, alpha=alpha)
    student_logits = distiller.student(x, training=False).numpy().astype(np.float64)
    teacher_logits = teacher(x, training=False).numpy().astype(np.float64)

    hard = -np.mean(np.log(_softmax(student_logits))[np.arange(len(y)), y])
    p_teacher = _softmax(teacher_logits / temperature)
    p_student = _softmax(student_logits / temperature)
    kl = np.mean(np.sum(p_teacher * np.log(p_teacher / p_student), axis=-1))
    expected = alpha * hard + (1 - alpha) * temperature**2 * kl

    loss = distiller.compute_loss(x, y, distiller.student(x, training=False), training=False)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-4)
    np.testing.assert_allclose(float(distiller.student_loss_tracker.result()), hard if alpha > 0 else 0, rtol=1e-4)
    np.testing.assert_allclose(
        float(distiller.distillation_loss_tracker.result()), temperature**2 * kl if alpha < 1 else 0, rtol=1e-4
    )


def test_feature_loss_is_weighted_mse_inside_the_distillation_term(teacher, digits_data):
    (x, y), _ = digits_data
    x, y = x[:40], y[:40]
    temperature, alpha, feature_weight = 3.0, 0.25, 0.5
    distiller = _distiller(
        teacher, temperature=temperature, alpha=alpha, feature_layers={"gap": "gap"}, feature_weight=feature_weight
    )
    student = distiller.student
    student_logits = student(x, training=False).numpy().astype(np.float64)
    teacher_logits = teacher(x, training=False).numpy().astype(np.float64)
    teacher_gap = keras.Model(teacher.input, teacher.get_layer("gap").output)(x).numpy()
    student_gap = keras.Model(student.input, student.get_layer("gap").output)(x).numpy()

    hard = -np.mean(np.log(_softmax(student_logits))[np.arange(len(y)), y])
    p_teacher = _softmax(teacher_logits / temperature)
    kl = np.mean(np.sum(p_teacher * np.log(p_teacher / _softmax(student_logits / temperature)), axis=-1))
    mse = np.mean((teacher_gap.astype(np.float64) - student_gap) ** 2)
    expected = alpha * hard + (1 - alpha) * (temperature**2 * kl + feature_weight * mse)

    loss = distiller.compute_loss(x, y, student(x, training=False), training=False)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-4)


def test_evaluate_with_feature_layers_leaves_student_batchnorm_alone(teacher, digits_data):
    # keras.distillation.Distiller 3.15 runs the student's feature pass with training=True
    # even in evaluate, which moves its BatchNormalization statistics.
    (x, y), (x_test, y_test) = digits_data
    distiller = _distiller(teacher, feature_layers={"gap": "gap"})
    distiller.fit(x, y, epochs=1, batch_size=64, verbose=0)
    before = _weights(distiller.student)
    distiller.evaluate(x_test, y_test, verbose=0)
    for b, a in zip(before, distiller.student.weights):
        np.testing.assert_array_equal(b, a.numpy(), err_msg=a.path)


def test_cached_and_uncached_give_the_same_loss_on_the_same_batch(teacher, digits_data):
    (x, y), _ = digits_data
    distiller = _distiller(teacher, temperature=4.0, alpha=0.2)
    dataset = distiller.cache_teacher(x, y, batch_size=64, shuffle=False)
    images, targets = next(iter(dataset))
    assert set(targets) == {LABELS_KEY, TEACHER_LOGITS_KEY}
    np.testing.assert_array_equal(images.numpy(), x[:64])

    y_pred = distiller.student(images, training=False)
    uncached = distiller.compute_loss(images, y[:64], y_pred, training=False)
    cached = distiller.compute_loss(images, targets, y_pred, training=False)
    np.testing.assert_allclose(float(cached), float(uncached), rtol=1e-6)

    plain = distiller.evaluate(x, y, batch_size=64, verbose=0, return_dict=True)
    from_cache = distiller.evaluate(dataset, verbose=0, return_dict=True)
    for name in ("loss", "accuracy", "student_loss", "distillation_loss"):
        np.testing.assert_allclose(from_cache[name], plain[name], rtol=1e-5, err_msg=name)


def test_fit_on_cached_teacher_learns(teacher, digits_data):
    (x, y), (x_test, y_test) = digits_data
    keras.utils.set_random_seed(1)
    distiller = _distiller(teacher)
    distiller.fit(distiller.cache_teacher(x, y, batch_size=32, seed=1), epochs=4, shuffle=False, verbose=0)
    accuracy = distiller.evaluate(x_test, y_test, verbose=0, return_dict=True)["accuracy"]
    assert accuracy > 0.5


def test_alpha_zero_trains_from_the_teacher_without_labels(teacher, digits_data):
    (x, _), _ = digits_data
    distiller = tfc.Distiller(teacher, _student(), alpha=0.0)
    distiller.compile(optimizer=keras.optimizers.Adam(3e-3))
    history = distiller.fit(distiller.cache_teacher(x, batch_size=64), epochs=2, shuffle=False, verbose=0)
    losses = history.history["loss"]
    assert losses[1] < losses[0]


def test_saving_the_distiller_round_trips(teacher, digits_data, tmp_path):
    (x, y), (x_test, y_test) = digits_data
    distiller = _distiller(
        teacher, temperature=3.0, alpha=0.3, feature_layers={"t_relu1": "relu1"}, feature_weight=0.2,
        feature_loss="attention",
    )
    distiller.fit(x[:256], y[:256], epochs=1, batch_size=64, verbose=0)
    path = tmp_path / "distiller.keras"
    distiller.save(path)
    loaded = keras.models.load_model(path)

    assert isinstance(loaded, tfc.Distiller)
    assert (loaded.temperature, loaded.alpha, loaded.feature_weight) == (3.0, 0.3, 0.2)
    assert loaded.feature_layers == {"t_relu1": "relu1"} and loaded.feature_loss == "attention"
    np.testing.assert_allclose(loaded.predict(x_test, verbose=0), distiller.predict(x_test, verbose=0), atol=1e-6)
    # (Keras warns that it skips the *teacher's* own compiled optimizer; the Distiller's loads.)
    assert len(loaded.optimizer.variables) == len(distiller.optimizer.variables) > 2
    for a, b in zip(distiller.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    expected = distiller.evaluate(x_test, y_test, verbose=0, return_dict=True)
    got = loaded.evaluate(x_test, y_test, verbose=0, return_dict=True)
    np.testing.assert_allclose(got["loss"], expected["loss"], rtol=1e-5)
    np.testing.assert_allclose(got["accuracy"], expected["accuracy"])
    loaded.fit(x[:128], y[:128], epochs=1, verbose=0)  # Still compiled and trainable.


def test_exported_student_holds_no_teacher_weights(teacher, digits_data, tmp_path):
    (x, y), _ = digits_data
    distiller = _distiller(teacher)
    distiller.fit(x[:256], y[:256], epochs=1, verbose=0)
    teacher_names = {layer.name for layer in teacher.layers} - {"image", "gap"}

    path = tmp_path / "student.keras"
    distiller.student.save(path)
    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json"))
    saved_layers = {layer["config"]["name"] for layer in config["config"]["layers"]}
    assert not saved_layers & teacher_names
    reloaded = keras.models.load_model(path)
    assert reloaded.count_params() == distiller.student.count_params()

    teacher_bytes = 4 * teacher.count_params()
    for model in (distiller.student, distiller):  # to_tflite exports a Distiller's student.
        flatbuffer = tfc.to_tflite(model)
        assert len(flatbuffer) < teacher_bytes / 4
        assert not any(name in bytes(flatbuffer).decode("latin-1") for name in ("t_fc", "t_conv1", "t_logits"))


# --- Clear errors ------------------------------------------------------------


def test_output_shapes_must_match(teacher):
    with pytest.raises(ValueError, match=r"output shape \(None, 10\) does not match the student .*\(None, 5\)"):
        tfc.Distiller(teacher, _student(num_classes=5))


def test_teacher_must_be_built():
    unbuilt = keras.Sequential([keras.layers.Flatten(), keras.layers.Dense(10)], name="lazy")
    with pytest.raises(ValueError, match="teacher 'lazy' is not built"):
        tfc.Distiller(unbuilt, _student())


def test_models_must_output_logits(teacher):
    inputs = keras.Input(INPUT_SHAPE)
    probabilities = keras.layers.Dense(10, activation="softmax", name="probs")(keras.layers.Flatten()(inputs))
    with pytest.raises(ValueError, match="ends in a softmax \\(layer 'probs'\\)"):
        tfc.Distiller(keras.Model(inputs, probabilities, name="soft"), _student())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"temperature": 0.0}, r"temperature must be > 0, got temperature=0.0"),
        ({"temperature": -2}, r"temperature must be > 0, got temperature=-2"),
        ({"temperature": float("nan")}, r"temperature must be a finite number, got temperature=nan"),
        ({"temperature": "4"}, r"temperature must be a finite number, got temperature='4'"),
        ({"alpha": 1.5}, r"alpha must be in \[0, 1\], got alpha=1.5"),
        ({"alpha": -0.1}, r"alpha must be in \[0, 1\], got alpha=-0.1"),
        ({"feature_weight": -1}, r"feature_weight must be >= 0, got feature_weight=-1.0\. .*use 0 to turn"),
        ({"feature_weight": float("inf")}, r"feature_weight must be a finite number, got feature_weight=inf"),
        ({"feature_layers": {"nope": "gap"}}, r"teacher layer 'nope', which 'teacher' does not have"),
        ({"feature_layers": {"t_relu1": "relu1"}}, r"needs equal shapes"),
        ({"feature_loss": "l1"}, r"feature_loss must be one of \[.attention., .mse.\], got feature_loss=.l1."),
        ({"feature_layers": {"gap": "gap"}, "feature_loss": "attention"}, r"same height and width"),
    ],
)
def test_bad_arguments_are_named(teacher, kwargs, message):
    with pytest.raises(ValueError, match=message):
        tfc.Distiller(teacher, _student(), **kwargs)


def test_one_hot_labels_with_sparse_loss_are_explained(teacher, digits_data):
    (x, y), _ = digits_data
    distiller = _distiller(teacher)
    with pytest.raises(ValueError, match=r"look one-hot.*CategoricalCrossentropy\(from_logits=True\)"):
        distiller.fit(x[:64], keras.utils.to_categorical(y[:64], 10), epochs=1, verbose=0)


def test_out_of_range_labels_are_explained(teacher, digits_data):
    (x, y), _ = digits_data
    distiller = _distiller(teacher)
    bad = y[:64].copy()
    bad[3] = 12
    with pytest.raises(ValueError, match=r"class indices in \[0, 10\).*labels from 0 to 12"):
        distiller.fit(x[:64], bad, epochs=1, verbose=0)


def test_probability_losses_are_refused(teacher):
    distiller = tfc.Distiller(teacher, _student())
    with pytest.raises(ValueError, match="expects probabilities"):
        distiller.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match="expects probabilities"):
        distiller.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy())


def test_missing_labels_with_positive_alpha_are_explained(teacher, digits_data):
    (x, _), _ = digits_data
    distiller = _distiller(teacher, alpha=0.5)
    with pytest.raises(ValueError, match=r"y is None but alpha=0.5"):
        distiller.cache_teacher(x)


def test_cache_refuses_feature_distillation(teacher, digits_data):
    (x, y), _ = digits_data
    distiller = _distiller(teacher, feature_layers={"gap": "gap"})
    with pytest.raises(ValueError, match="caches only the teacher's logits"):
        distiller.cache_teacher(x, y)


@pytest.mark.parametrize("feature_layers", [None, {"gap": "gap"}])
def test_prune_while_distilling_leaves_a_sparse_student_and_an_intact_teacher(teacher, digits_data, feature_layers):
    (x, y), (x_test, y_test) = digits_data
    before_teacher = _weights(teacher)
    distiller = _distiller(teacher, feature_layers=feature_layers)
    pruning = tfc.PruningCallback(tfc.PolynomialDecay(0.0, 0.5, begin_step=0, end_step=60, frequency=10), verbose=0)
    distiller.fit(x, y, epochs=3, batch_size=32, callbacks=[pruning], verbose=0)

    kernels = [layer.kernel.numpy() for layer in distiller.student.layers if hasattr(layer, "kernel")]
    zeros = sum(int(np.sum(k == 0)) for k in kernels) / sum(k.size for k in kernels)
    assert 0.45 <= zeros <= 0.55
    for before, after in zip(before_teacher, teacher.weights):
        np.testing.assert_array_equal(before, after.numpy(), err_msg=after.path)
    assert distiller.evaluate(x_test, y_test, verbose=0, return_dict=True)["accuracy"] > 0.5


def test_distils_into_a_qat_student_that_exports_to_int8(teacher, digits_data):
    from tfcompress.quantization import quantize_model

    (x, y), (x_test, y_test) = digits_data
    keras.utils.set_random_seed(2)
    qat_student = quantize_model(_student())
    distiller = tfc.Distiller(teacher, qat_student)
    distiller.compile(optimizer=keras.optimizers.Adam(3e-3), metrics=["accuracy"])
    distiller.fit(distiller.cache_teacher(x, y, batch_size=32, seed=2), epochs=4, shuffle=False, verbose=0)
    keras_accuracy = distiller.evaluate(x_test, y_test, verbose=0, return_dict=True)["accuracy"]
    assert keras_accuracy > 0.5

    flatbuffer = tfc.to_tflite(distiller, mode="int8", representative_data=x[:100])
    report = tfc.evaluate_tflite(flatbuffer, x=x_test, y=y_test, backends=("cpu",), num_runs=1, warmup_runs=0)
    assert abs(report.accuracy - keras_accuracy) < 0.05


def test_attention_feature_loss_matches_hand_computation_across_widths(teacher, digits_data):
    (x, y), _ = digits_data
    x, y = x[:30], y[:30]
    alpha, feature_weight, temperature = 0.5, 2.0, 2.0
    # Teacher relu1 is 8x8x32, student relu1 is 8x8x16: only attention transfer can pair them.
    with pytest.raises(ValueError, match="feature_loss='attention'"):
        tfc.Distiller(teacher, _student(), feature_layers={"t_relu1": "relu1"})
    distiller = _distiller(
        teacher, temperature=temperature, alpha=alpha, feature_layers={"t_relu1": "relu1"},
        feature_weight=feature_weight, feature_loss="attention",
    )
    student = distiller.student

    def attention(activations):
        energy = np.mean(activations.astype(np.float64) ** 2, axis=-1).reshape(len(activations), -1)
        return energy / np.linalg.norm(energy, axis=-1, keepdims=True)

    teacher_act = keras.Model(teacher.input, teacher.get_layer("t_relu1").output)(x).numpy()
    student_act = keras.Model(student.input, student.get_layer("relu1").output)(x).numpy()
    transfer = np.mean(np.sum((attention(teacher_act) - attention(student_act)) ** 2, axis=-1))
    student_logits = student(x, training=False).numpy().astype(np.float64)
    p_teacher = _softmax(teacher(x, training=False).numpy().astype(np.float64) / temperature)
    kl = np.mean(np.sum(p_teacher * np.log(p_teacher / _softmax(student_logits / temperature)), axis=-1))
    hard = -np.mean(np.log(_softmax(student_logits))[np.arange(len(y)), y])
    expected = alpha * hard + (1 - alpha) * (temperature**2 * kl + feature_weight * transfer)

    loss = distiller.compute_loss(x, y, student(x, training=False), training=False)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-4)
    assert transfer > 0


def test_feature_weight_above_one_scales_the_feature_loss(teacher, digits_data):
    # Not a share like alpha: a scale between losses in different units (see the docstring).
    (x, y), _ = digits_data
    x, y = x[:40], y[:40]
    student, losses = _student(), {}
    for feature_weight in (0.0, 1.0, 5.0):
        distiller = tfc.Distiller(
            teacher, student, alpha=0.0, feature_layers={"gap": "gap"}, feature_weight=feature_weight
        )
        distiller.compile()
        losses[feature_weight] = float(distiller.compute_loss(x, y, training=False))
    feature = losses[1.0] - losses[0.0]
    assert feature > 0
    np.testing.assert_allclose(losses[5.0] - losses[0.0], 5 * feature, rtol=1e-4)


# --- Subclassed models: checked when the first step is traced ----------------


class _SubclassedStudent(keras.Model):
    def __init__(self, num_classes=10, num_outputs=1, **kwargs):
        super().__init__(**kwargs)
        self.flatten = keras.layers.Flatten()
        self.heads = [keras.layers.Dense(num_classes) for _ in range(num_outputs)]

    def call(self, inputs, training=None):
        features = self.flatten(inputs)
        outputs = [head(features) for head in self.heads]
        return outputs[0] if len(outputs) == 1 else outputs


def _strategy_scope(distributed):
    import contextlib

    return tf.distribute.MirroredStrategy(["/cpu:0"]).scope() if distributed else contextlib.nullcontext()


@pytest.mark.parametrize("mode", ["graph", "eager", "mirrored"])
def test_subclassed_student_with_other_classes_fails_clearly_on_the_first_step(teacher, digits_data, mode):
    (x, y), _ = digits_data
    with _strategy_scope(mode == "mirrored"):
        # Under a strategy the models must be created in its scope; an untrained teacher
        # is enough for a shape check.
        model = teacher if mode != "mirrored" else _teacher()
        distiller = tfc.Distiller(model, _SubclassedStudent(num_classes=5, name="narrow"))
        distiller.compile(optimizer="adam", run_eagerly=mode == "eager")
    with pytest.raises(
        ValueError,
        match=r"teacher 'teacher' output shape \(\d+, 10\) does not match the student 'narrow' output "
        r"shape \(\d+, 5\).*Give the student the teacher's number of outputs",
    ):
        distiller.fit(x[:128], y[:128], epochs=1, batch_size=64, verbose=0)


def test_subclassed_student_that_matches_the_teacher_trains(teacher, digits_data):
    (x, y), _ = digits_data
    distiller = tfc.Distiller(teacher, _SubclassedStudent(name="flat"))
    distiller.compile(optimizer=keras.optimizers.Adam(3e-3))
    history = distiller.fit(x[:256], y[:256], epochs=2, batch_size=64, verbose=0)
    assert np.isfinite(history.history["loss"]).all()


def test_subclassed_student_with_several_outputs_is_explained(teacher, digits_data):
    (x, y), _ = digits_data
    distiller = tfc.Distiller(teacher, _SubclassedStudent(num_outputs=2, name="two_heads"))
    distiller.compile(optimizer="adam")
    with pytest.raises(ValueError, match=r"student 'two_heads' returned list .*single-output.*one logits tensor"):
        distiller.fit(x[:64], y[:64], epochs=1, verbose=0)


@pytest.mark.parametrize("feature_loss", ["mse", "attention"])
def test_feature_shapes_known_only_at_run_time_are_checked_on_the_first_step(digits_data, feature_loss):
    # With free spatial dimensions both layers are (None, None, None, 8) when the Distiller
    # is built; only the data shows that the teacher's has half the resolution.
    (x, y), _ = digits_data

    def model(name, pool):
        inputs = keras.Input((None, None, 1))
        h = keras.layers.Conv2D(8, 3, padding="same")(inputs)
        if pool:
            h = keras.layers.MaxPooling2D()(h)
        h = keras.layers.ReLU(name="feat")(h)
        return keras.Model(inputs, keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(h)), name=name)

    distiller = tfc.Distiller(
        model("teacher", pool=True), model("student", pool=False), feature_layers={"feat": "feat"},
        feature_loss=feature_loss,
    )
    distiller.compile(optimizer="adam")
    with pytest.raises(
        ValueError,
        match=rf"teacher layer 'feat' \(output shape \(\d+, 4, 4, 8\) on this batch\) with student layer "
        rf"'feat' \(output shape \(\d+, 8, 8, 8\) on this batch\); feature_loss='{feature_loss}' needs",
    ):
        distiller.fit(x[:64], y[:64], epochs=1, verbose=0)


# --- One student forward pass per step with feature distillation -------------


class _CountCalls(keras.layers.Layer):
    """Identity that counts how many times it runs (in graphs too)."""

    def build(self, input_shape):
        self.calls = self.add_weight(shape=(), initializer="zeros", trainable=False, name="calls")

    def call(self, inputs):
        self.calls.assign_add(1.0)
        return inputs


def _counted_student():
    inputs = keras.Input(INPUT_SHAPE)
    x = _CountCalls(name="count")(inputs)
    x = keras.layers.Conv2D(16, 3, padding="same", name="conv")(x)
    x = keras.layers.Dropout(0.5, name="drop")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(keras.layers.Conv2D(32, 1, name="proj")(x))
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(x), name="counted")


@pytest.mark.parametrize("distributed", [False, True])
def test_feature_distillation_runs_one_student_pass_per_step(teacher, digits_data, distributed):
    (x, y), _ = digits_data
    with _strategy_scope(distributed):
        student = _counted_student()
        distiller = tfc.Distiller(teacher if not distributed else _teacher(), student, feature_layers={"gap": "gap"})
        distiller.compile(optimizer="adam")
    calls = student.get_layer("count").calls
    distiller.fit(x[:256], y[:256], epochs=1, batch_size=64, verbose=0)  # 4 steps
    assert calls.numpy() == 4
    distiller.evaluate(x[:256], y[:256], batch_size=64, verbose=0)
    assert calls.numpy() == 8
    distiller.predict(x[:64], batch_size=64, verbose=0)
    assert calls.numpy() == 9


def test_one_pass_and_two_pass_feature_losses_agree(teacher, digits_data):
    # evaluate (one pass via call) and a direct compute_loss (a separate feature pass) must
    # give the same loss on the same batch in inference mode.
    (x, y), _ = digits_data
    distiller = _distiller(teacher, alpha=0.3, feature_layers={"gap": "gap"}, feature_weight=2.0)
    evaluated = distiller.evaluate(x[:64], y[:64], batch_size=64, verbose=0, return_dict=True)
    direct = float(distiller.compute_loss(x[:64], y[:64], training=False))
    np.testing.assert_allclose(evaluated["loss"], direct, rtol=1e-5)


def test_the_teacher_freeze_lasts_through_pruned_distillation_until_trainable_is_set(teacher, digits_data):
    # Kept on purpose, as keras.distillation.Distiller does: PruningCallback skips only
    # non-trainable weights, so an unfrozen teacher would be pruned with the student.
    (x, y), _ = digits_data
    own = _teacher()  # the caller's trained model, trainable (the shared fixture stays as it is)
    own.set_weights(teacher.get_weights())
    assert own.trainable and own.trainable_weights
    distiller = _distiller(own)
    assert distiller.teacher is own and not own.trainable and not own.trainable_weights  # frozen in place
    before = _weights(own)
    pruning = tfc.PruningCallback(tfc.ConstantSparsity(0.5, begin_step=0, frequency=4), verbose=0)
    distiller.fit(x[:256], y[:256], epochs=2, batch_size=32, callbacks=[pruning], verbose=0)

    assert not own.trainable and not own.trainable_weights, "the freeze outlasts fit"
    assert not {id(e.variable) for e in pruning.pruner.targets} & {id(w) for w in own.weights}
    for b, after in zip(before, own.weights):
        np.testing.assert_array_equal(b, after.numpy(), err_msg=after.path)  # neither trained nor pruned
    kernels = [e.variable.numpy() for e in pruning.pruner.targets]
    assert sum(int(np.sum(k == 0)) for k in kernels) / sum(k.size for k in kernels) == pytest.approx(0.5, abs=0.01)

    # The way back: trainable=True, and the teacher trains again.
    own.trainable = True
    own.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    own.fit(x[:64], y[:64], epochs=1, batch_size=32, verbose=0)
    assert any(not np.array_equal(b, a.numpy()) for b, a in zip(before, own.weights))


def test_a_list_of_teachers_teaches_their_averaged_soft_targets(teacher, digits_data):
    (x, y), (x_test, y_test) = digits_data
    keras.utils.set_random_seed(3)
    second = tfc.zoo.compile_classifier(_teacher(name="teacher2"), learning_rate=3e-3)
    second.fit(x, y, epochs=4, batch_size=32, verbose=0)
    distiller = _distiller([teacher, second], temperature=3.0)
    ensemble = distiller.teacher
    soft = keras.ops.convert_to_numpy(keras.ops.softmax(ensemble(x_test[:32]) / 3.0))
    expected = np.mean([keras.ops.convert_to_numpy(keras.ops.softmax(t(x_test[:32]) / 3.0)) for t in (teacher, second)],
                       axis=0)
    np.testing.assert_allclose(soft, expected, atol=1e-5)
    assert not teacher.trainable and not second.trainable
    distiller.fit(distiller.cache_teacher(x, y, batch_size=64), epochs=3, verbose=0)
    accuracy = float(np.mean(np.asarray(distiller.student(x_test)).argmax(1) == y_test))
    assert accuracy > 0.7
    wrong = keras.Sequential([keras.Input(INPUT_SHAPE), keras.layers.Flatten(), keras.layers.Dense(5)], name="five")
    with pytest.raises(ValueError, match=r"teacher\[0\] 'teacher' output shape .* teacher\[1\] 'five'"):
        tfc.Distiller([teacher, wrong], _student())


def test_teachers_of_one_name_ensemble_without_renaming_them(teacher, digits_data):
    """Teachers built by one function share a name, which Keras refuses twice in one model; each gets a wrapper."""
    (x, y), (x_test, _) = digits_data
    twin = keras.models.clone_model(teacher)
    twin.set_weights([w * 0.5 for w in teacher.get_weights()])
    assert twin.name == teacher.name
    ensemble = _distiller([teacher, twin], temperature=2.0).teacher
    soft = keras.ops.convert_to_numpy(keras.ops.softmax(ensemble(x_test[:16]) / 2.0))
    expected = np.mean([keras.ops.convert_to_numpy(keras.ops.softmax(t(x_test[:16]) / 2.0)) for t in (teacher, twin)],
                       axis=0)
    np.testing.assert_allclose(soft, expected, atol=1e-5)
    assert twin.name == teacher.name == "teacher"  # not renamed
