"""PruningCallback / Pruner on real Keras 3 models and real (small) data, also under steps_per_execution and XLA."""

import glob
import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import small_cnn
from keras import layers

import tfcompress as tfc

STEPS_PER_EPOCH = 43  # 1,347 digits training images at batch size 32


def cnn(name="cnn"):
    inputs = keras.Input((8, 8, 1), name="image")
    x = layers.Conv2D(16, 3, padding="same", name="conv1")(inputs)
    x = layers.BatchNormalization(name="bn1")(x)
    x = layers.ReLU(name="relu1")(x)
    x = layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D(name="pool")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(32, activation="relu", name="fc1")(x)
    outputs = layers.Dense(10, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


def compiled(model, learning_rate=3e-3):
    return tfc.zoo.compile_classifier(model, learning_rate=learning_rate)


def schedule(final=0.75, end_step=60, frequency=10):
    return tfc.PolynomialDecay(0.0, final, begin_step=0, end_step=end_step, frequency=frequency)


def accuracy(model, x, y):
    return float(np.mean(np.argmax(model.predict(x, verbose=0), -1) == y))


def zeros_where_masked(pruner):
    return all(
        np.all(entry.variable.numpy()[mask.numpy() == 0] == 0)
        for entry, mask in zip(pruner.targets, pruner.masks)
    )


class ZeroChecker(keras.callbacks.Callback):
    """Records, at every batch end, whether masked weights are exactly zero and the sparsity."""

    def __init__(self, pruning_callback):
        super().__init__()
        self.pruning_callback = pruning_callback
        self.exact, self.trace = [], []

    def on_train_batch_end(self, batch, logs=None):
        pruner = self.pruning_callback.pruner
        self.exact.append(zeros_where_masked(pruner))
        self.trace.append((pruner.step, round(tfc.sparsity_report(self.model).overall, 4)))


def test_fit_leaves_exact_zeros_at_every_batch_and_a_plain_model(digits_data, capsys):
    (x, y), (x_test, y_test) = digits_data
    keras.utils.set_random_seed(0)
    model = compiled(cnn())
    layer_types = [type(layer) for layer in model.layers]
    n_weights = len(model.weights)
    cb = tfc.PruningCallback(schedule(0.75))
    checker = ZeroChecker(cb)
    model.fit(x, y, epochs=3, batch_size=32, verbose=0, callbacks=[cb, checker])

    assert "Pruning plan for 'cnn'" in capsys.readouterr().out
    assert all(checker.exact) and len(checker.exact) == 3 * STEPS_PER_EPOCH
    report = tfc.sparsity_report(model)
    assert report.overall == pytest.approx(0.75, abs=2e-3)
    assert set(report) == {"conv1/kernel", "conv2/kernel", "fc1/kernel", "logits/kernel"}
    assert accuracy(model, x_test, y_test) > 0.85
    # Still the same plain model: no wrappers, no extra weights, constraints restored.
    assert [type(layer) for layer in model.layers] == layer_types
    assert len(model.weights) == n_weights
    assert all(v.constraint is None for v in model.weights)
    # Sparsity rose along the schedule, updating every 10 steps from step 10.
    steps_with_change = [s for (s, a), (_, b) in zip(checker.trace, checker.trace[1:]) if b > a]
    assert steps_with_change[:3] == [9, 19, 29]  # recorded at the end of the step before the update


def test_checkpoints_and_saved_files_are_sparse_and_load_without_custom_objects(digits_data, tmp_path):
    (x, y), (x_test, _) = digits_data
    keras.utils.set_random_seed(1)
    model = compiled(cnn())
    checkpoint = keras.callbacks.ModelCheckpoint(str(tmp_path / "epoch{epoch}.keras"))
    cb = tfc.PruningCallback(schedule(0.8, end_step=40), verbose=0)
    model.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[cb, checkpoint])

    path = str(tmp_path / "final.keras")
    model.save(path)
    for saved in [path] + sorted(glob.glob(str(tmp_path / "epoch*.keras"))):
        loaded = keras.models.load_model(saved)  # no custom_objects
        assert tfc.sparsity_report(loaded).overall >= 0.5
    loaded = keras.models.load_model(path)
    assert tfc.sparsity_report(loaded) == tfc.sparsity_report(model)
    np.testing.assert_allclose(loaded.predict(x_test, verbose=0), model.predict(x_test, verbose=0), atol=1e-5)
    assert "tfcompress" not in json.dumps(loaded.get_config())
    # The loaded model trains on as a dense model: nothing of the pruner is left in it
    # (weights feeding dead ReLUs get no gradient and may stay zero).
    loaded.fit(x, y, epochs=1, batch_size=32, verbose=0)
    assert tfc.sparsity_report(loaded).overall < 0.2


def test_layer_scope_gives_every_weight_the_scheduled_sparsity(digits_data):
    (x, y), _ = digits_data
    model = compiled(cnn())
    cb = tfc.PruningCallback(schedule(0.6, end_step=40), scope="layer", verbose=0)
    model.fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=[cb])
    for path, value in tfc.sparsity_report(model).items():
        assert value == pytest.approx(0.6, abs=0.01), path


def test_global_scope_hits_overall_target_and_keeps_the_floor(digits_data):
    (x, y), _ = digits_data
    model = compiled(cnn())
    cb = tfc.PruningCallback(schedule(0.8, end_step=40), scope="global", min_density=0.15, verbose=0)
    model.fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=[cb])
    report = tfc.sparsity_report(model)
    assert report.overall == pytest.approx(0.8, abs=1e-3)
    assert all(value <= 0.85 + 1e-3 for value in report.values())
    assert len({round(v, 2) for v in report.values()}) > 1  # layers got different sparsities


def test_erk_scope_allocates_by_size(digits_data):
    (x, y), _ = digits_data
    model = compiled(cnn())
    cb = tfc.PruningCallback(schedule(0.9, end_step=40), scope="erk", verbose=0)
    model.fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=[cb])
    report = tfc.sparsity_report(model)
    assert report.overall == pytest.approx(0.9, abs=2e-3)
    # Density ∝ sum(shape) / prod(shape): the small first conv and classifier stay denser.
    assert report["conv1/kernel"] < report["logits/kernel"] < report["conv2/kernel"]
    assert report["fc1/kernel"] > 0.85
    shapes = [(3, 3, 1, 16), (3, 3, 16, 32), (512, 32), (32, 10)]
    densities = tfc.pruning.pruner._erk_densities(shapes, 0.9)
    sizes = np.array([np.prod(s) for s in shapes])
    assert np.sum(densities * sizes) == pytest.approx(0.1 * sizes.sum())
    assert densities[2] / densities[1] == pytest.approx((512 + 32) / 16384 / ((3 + 3 + 16 + 32) / 4608))


def test_pruning_plan_table_names_every_weight_and_why(digits_data):
    model = cnn()
    pruner = tfc.Pruner(model, schedule(), skip=["logits"])
    table = pruner.table()
    rows = {tuple(cell.strip() for cell in line.strip("|").split("|")) for line in table.splitlines()}
    assert ("conv1", "kernel", "3x3x1x16", "144", "pruned: Conv2D.kernel") in rows
    assert ("fc1", "kernel", "512x32", "16384", "pruned: Dense.kernel") in rows
    assert ("logits", "kernel", "32x10", "320", "skipped: named in skip=") in rows
    assert any(r[:2] == ("bn1", "gamma") and r[-1].startswith("skipped") for r in rows)
    assert any(r[:2] == ("conv1", "bias") and r[-1].startswith("skipped") for r in rows)
    assert "21,136 of 21,610 parameters are pruned" in table


class Block(layers.Layer):
    """A layer holding layers: a conv and a list of dense layers."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.conv = layers.Conv2D(8, 3, padding="same", activation="relu", name="inner_conv")
        self.denses = [layers.Dense(16, activation="relu", name=f"inner_dense{i}") for i in range(2)]
        self.flatten = layers.Flatten()

    def call(self, inputs):
        x = self.flatten(self.conv(inputs))
        for dense in self.denses:
            x = dense(x)
        return x


class Subclassed(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.block = Block(name="block")
        self.head = layers.Dense(10, name="head")

    def call(self, inputs):
        return self.head(self.block(inputs))


def nested_model():
    inner = keras.Sequential(
        [keras.Input((8, 8, 1)), layers.Conv2D(8, 3, activation="relu", name="c"), layers.Flatten()],
        name="inner",
    )
    inputs = keras.Input((8, 8, 1))
    x = inner(inputs)
    x = layers.Dense(16, activation="relu", name="d")(x)
    outer = keras.Model(inputs, layers.Dense(10, name="out")(x), name="outer")
    return keras.Sequential([outer], name="wrapper")


@pytest.mark.parametrize("make, expected", [
    (lambda: Subclassed(name="sub"),
     {"block/inner_conv/kernel", "block/inner_dense0/kernel", "block/inner_dense1/kernel", "head/kernel"}),
    (nested_model, {"outer/inner/c/kernel", "outer/d/kernel", "outer/out/kernel"}),
])
def test_subclassed_and_nested_models_are_pruned(digits_data, make, expected):
    (x, y), _ = digits_data
    model = make()
    model(x[:1])
    compiled(model)
    cb = tfc.PruningCallback(schedule(0.7, end_step=30), verbose=0)
    model.fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=[cb])
    report = tfc.sparsity_report(model)
    assert set(report) == expected
    assert report.overall == pytest.approx(0.7, abs=2e-3)
    assert zeros_where_masked(cb.pruner)


class Gate(layers.Layer):
    """A custom layer that names its prunable weight."""

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1], 12), name="w")
        self.unpruned = self.add_weight(shape=(input_shape[-1], 12), name="unpruned")

    def call(self, x):
        return x @ self.w + x @ self.unpruned

    def get_prunable_weights(self):
        return [self.w]


def test_default_targets_depthwise_on_request_and_custom_layers():
    inputs = keras.Input((8, 8, 4))
    x = layers.DepthwiseConv2D(3, name="dw")(inputs)
    x = layers.SeparableConv2D(8, 3, name="sep")(x)
    x = layers.Conv2DTranspose(8, 3, name="convt")(x)
    x = layers.Flatten()(x)
    x = Gate(name="gate")(x)
    x = layers.EinsumDense("ab,bc->ac", output_shape=6, name="einsum")(x)
    tokens = keras.Input((5,), dtype="int32")
    e = layers.Flatten()(layers.Embedding(50, 4, name="embed")(tokens))
    model = keras.Model([inputs, tokens], layers.Concatenate()([x, e]))
    decisions = {e.path: e.reason for e in tfc.Pruner(model, schedule()).entries}
    pruned = {path for path, reason in decisions.items() if reason.startswith("pruned")}
    assert pruned == {"sep/pointwise_kernel", "convt/kernel", "gate/w", "einsum/kernel", "embed/embeddings"}
    assert "name the layer in layers=" in decisions["dw/kernel"]
    assert decisions["sep/depthwise_kernel"].startswith("skipped")
    assert "get_prunable_weights" in decisions["gate/w"]

    opted_in = tfc.Pruner(model, schedule(), layers=["dw", "gate"])
    assert {e.path for e in opted_in.targets} == {"dw/kernel", "gate/w"}


def test_resume_with_backup_and_restore_continues_the_schedule(digits_data, tmp_path):
    (x, y), _ = digits_data
    backup = str(tmp_path / "backup")

    def run(epochs, interrupt_after=None, pre_trained_steps=0):
        keras.utils.set_random_seed(3)
        model = compiled(cnn())
        if pre_trained_steps:  # dense pre-training with the same optimizer is not pruning time
            model.fit(x[: 32 * pre_trained_steps], y[: 32 * pre_trained_steps], batch_size=32, verbose=0)
        cb = tfc.PruningCallback(schedule(0.8, end_step=150, frequency=10), verbose=0)
        checker = ZeroChecker(cb)
        callbacks = [cb, keras.callbacks.BackupAndRestore(backup), checker]
        if interrupt_after is not None:
            class Interrupt(keras.callbacks.Callback):
                def on_epoch_end(self, epoch, logs=None):
                    if epoch + 1 == interrupt_after:
                        raise KeyboardInterrupt
            callbacks.append(Interrupt())
        try:
            model.fit(x, y, epochs=epochs, batch_size=32, verbose=0, callbacks=callbacks)
        except KeyboardInterrupt:
            pass
        return checker.trace

    reference = run(4)
    first_part = run(4, interrupt_after=2, pre_trained_steps=5)
    resumed = run(4)  # a new process would do the same: new model, new callback
    assert [s for s, _ in first_part] == list(range(1, 2 * STEPS_PER_EPOCH + 1))
    assert [s for s, _ in resumed] == list(range(2 * STEPS_PER_EPOCH + 1, 4 * STEPS_PER_EPOCH + 1))
    # Same sparsity at every step as the uninterrupted run: the schedule did not restart.
    assert first_part + resumed == reference
    assert resumed[0][1] >= first_part[-1][1] > 0.5


def test_resume_mid_first_epoch_replays_it_on_the_same_schedule(digits_data, tmp_path):
    # A backup taken inside epoch 0 holds zeros of later steps than the replayed epoch starts at;
    # the restored clock (step 0) must be trusted, not mistaken for a new callback on a sparse model.
    (x, y), _ = digits_data
    backup = str(tmp_path / "backup")

    def run(interrupt_at_batch=None):
        keras.utils.set_random_seed(3)
        model = compiled(cnn())
        cb = tfc.PruningCallback(schedule(0.8, end_step=80, frequency=10), verbose=0)
        ends = []
        callbacks = [cb, tfc.BackupAndRestore(backup, save_freq=5),
                     keras.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: ends.append(cb.pruner.step))]
        if interrupt_at_batch is not None:
            class Interrupt(keras.callbacks.Callback):
                def on_train_batch_end(self, batch, logs=None):
                    if batch == interrupt_at_batch:
                        raise KeyboardInterrupt
            callbacks.append(Interrupt())
        try:
            model.fit(x, y, epochs=3, batch_size=32, verbose=0, callbacks=callbacks)
        except KeyboardInterrupt:
            pass
        return ends, tfc.sparsity_report(model).overall

    reference_ends, reference_sparsity = run()
    assert run(interrupt_at_batch=31) == ([], pytest.approx(reference_sparsity, abs=1.0))  # killed in epoch 0
    resumed_ends, resumed_sparsity = run()
    assert resumed_ends == reference_ends == [STEPS_PER_EPOCH * (e + 1) for e in range(3)]
    assert resumed_sparsity == pytest.approx(reference_sparsity, abs=0.005)


def test_loaded_pruned_model_continues_the_schedule_with_a_new_callback(digits_data, tmp_path, capsys):
    (x, y), (x_test, y_test) = digits_data
    keras.utils.set_random_seed(7)
    model = compiled(cnn())
    ramp = schedule(0.75, end_step=70, frequency=10)
    model.fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=[tfc.PruningCallback(ramp, verbose=0)])
    saved = tfc.sparsity_report(model).overall
    assert 0.6 < saved < 0.72  # mid-ramp: the last update was at step 40 of 70
    model.save(str(tmp_path / "ckpt.keras"))

    # A new process: load, new callback with the same schedule, no initial_epoch.
    loaded = keras.models.load_model(str(tmp_path / "ckpt.keras"))
    capsys.readouterr()
    cb = tfc.PruningCallback(ramp, verbose=1)
    checker = ZeroChecker(cb)
    loaded.fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=[cb, checker])
    out = capsys.readouterr().out
    steps = [s for s, _ in checker.trace]
    # The schedule continued where the weights were (between the saved run's last
    # update and its last step) instead of restarting at step 1 with all-ones masks.
    assert 40 <= steps[0] <= STEPS_PER_EPOCH, steps[:3]
    assert steps == list(range(steps[0], steps[0] + STEPS_PER_EPOCH))
    assert f"weights already {saved:.1%} sparse: continuing the schedule from step {steps[0]}" in out
    assert all(checker.exact)
    assert min(sparsity for _, sparsity in checker.trace) >= round(saved, 4)  # no regrowth, ever
    assert checker.trace[-1][1] == pytest.approx(0.75, abs=2e-3)
    assert accuracy(loaded, x_test, y_test) > 0.85

    # Sparser than the schedule ever asks: nothing regrows, neither past the end of
    # the same schedule nor under a lower constant sparsity that keeps updating.
    final = tfc.sparsity_report(loaded).overall
    for again in (ramp, tfc.ConstantSparsity(0.5, begin_step=0, frequency=10)):
        cb = tfc.PruningCallback(again, verbose=0)
        checker = ZeroChecker(cb)
        loaded.fit(x[:480], y[:480], epochs=1, batch_size=32, verbose=0, callbacks=[cb, checker])
        assert min(sparsity for _, sparsity in checker.trace) >= round(final, 4), again
        assert all(checker.exact)
    assert checker.trace[0][0] == 1  # ConstantSparsity(0.5) never reaches 75%: its clock stays
    assert cb.pruner.start_sparsity == pytest.approx(final) and cb.pruner.skipped_steps == 0


def test_fresh_dense_model_starts_at_step_zero_even_with_a_zero_initialised_head(digits_data, capsys):
    (x, y), _ = digits_data
    keras.utils.set_random_seed(8)
    inputs = keras.Input((8, 8, 1))
    h = layers.Dense(32, activation="relu", name="fc")(layers.Flatten()(inputs))
    model = compiled(keras.Model(inputs, layers.Dense(10, kernel_initializer="zeros", name="head")(h)))
    late = tfc.PolynomialDecay(0.0, 0.6, begin_step=20, end_step=40, frequency=10)
    cb = tfc.PruningCallback(late, verbose=1)
    checker = ZeroChecker(cb)
    model.fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=[cb, checker])
    # An all-zero weight was initialised so, not pruned: it neither counts as sparsity
    # (which would skip the 20 dense steps) nor gets masked (which would freeze it at 0).
    assert [s for s, _ in checker.trace] == list(range(1, STEPS_PER_EPOCH + 1))
    assert checker.trace[18][1] == 0.0  # dense until the first update at step 20
    assert "already" not in capsys.readouterr().out
    assert cb.pruner.skipped_steps == 0 and cb.pruner.start_sparsity is None
    assert tfc.sparsity_report(model).overall == pytest.approx(0.6, abs=2e-3)


def test_first_step_reaching_a_sparsity():
    first = tfc.pruning.schedules.first_step_reaching
    ramp = tfc.PolynomialDecay(0.1, 0.8, begin_step=100, end_step=1100, frequency=7)
    for step in (100, 101, 377, 1099, 1100):
        assert first(ramp, ramp.sparsity(step)) == step
        assert first(ramp, ramp.sparsity(step) - 1e-9) <= step
    assert first(ramp, 0.5, start=900) == 900
    assert first(ramp, 0.81) is None and first(ramp, 0.1, start=1101) is None
    assert first(tfc.ConstantSparsity(0.5, begin_step=30), 0.4) == 30
    assert first(tfc.ConstantSparsity(0.5, begin_step=30), 0.6) is None
    custom = tfc.pruning.schedules.get(lambda step: (step % 10 == 0, min(step / 1000, 0.9)))
    assert first(custom, 0.5) == 500 and first(custom, 0.95) is None


def test_structured_starting_masks_keep_only_the_zeros_the_structure_prunes():
    model = cnn()
    fc1, logits = model.get_layer("fc1"), model.get_layer("logits")
    kernel = np.random.default_rng(0).normal(size=(512, 32)).astype("float32") + 5.0
    kernel[:256] = 0.0  # whole 4x1 blocks, and M:N groups with 4 zeros
    kernel[256:260, 0] = [0.0, 0.0, 1.0, 1.0]  # a half-zero block, a 2:4 group with 2 zeros
    kernel[260:264, 0] = [0.0, 1.0, 1.0, 1.0]  # one zero: neither a block nor a 2:4 group
    fc1.kernel.assign(kernel)
    logits.kernel.assign(np.zeros((32, 10), "float32"))  # initialised so, not pruned
    for structure, kept_half_block in (("block", True), ("2:4", False)):
        pruner = tfc.Pruner(model, schedule(0.3), structure=structure).attach()
        masks = {e.path: m.numpy() for e, m in zip(pruner.targets, pruner.masks)}
        pruner.detach()
        fc1_mask = masks["fc1/kernel"]
        assert not fc1_mask[:256].any() and fc1_mask[264:].all()
        assert fc1_mask[256:260, 0].tolist() == ([1.0] * 4 if kept_half_block else [0.0, 0.0, 1.0, 1.0])
        assert fc1_mask[260:264, 0].all()
        assert masks["logits/kernel"].all()


@pytest.mark.parametrize("structure", ["block", "2:4"])
def test_loaded_structured_model_keeps_its_pattern_with_a_new_callback(digits_data, tmp_path, structure):
    (x, y), _ = digits_data
    keras.utils.set_random_seed(9)
    model = compiled(cnn())
    cb = tfc.PruningCallback(schedule(0.5, end_step=20), structure=structure, verbose=0)
    model.fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=[cb])
    saved = tfc.sparsity_report(model).overall
    model.save(str(tmp_path / "structured.keras"))
    loaded = keras.models.load_model(str(tmp_path / "structured.keras"))

    class PatternChecker(ZeroChecker):
        def on_train_batch_end(self, batch, logs=None):
            super().on_train_batch_end(batch, logs)
            for entry in self.pruning_callback.pruner.targets:
                value = entry.variable.numpy()
                if structure == "block":
                    matrix = value.reshape(-1, entry.shape[-1])
                    groups = matrix[: matrix.shape[0] // 4 * 4].reshape(-1, 4, matrix.shape[1])
                    self.exact[-1] &= set(np.unique((groups == 0).sum(axis=1))) <= {0, 4}
                else:
                    groups = np.moveaxis(value, -2, -1).reshape(-1, 4)
                    self.exact[-1] &= bool(np.all((groups == 0).sum(axis=1) >= 2))

    cb = tfc.PruningCallback(schedule(0.5, end_step=20), structure=structure, verbose=0)
    checker = PatternChecker(cb)
    loaded.fit(x[:640], y[:640], epochs=1, batch_size=32, verbose=0, callbacks=[cb, checker])
    assert all(checker.exact)
    assert min(sparsity for _, sparsity in checker.trace) >= round(saved, 4) - 1e-3


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision(digits_data, policy):
    (x, y), (x_test, y_test) = digits_data
    keras.mixed_precision.set_global_policy(policy)
    try:
        keras.utils.set_random_seed(4)
        model = compiled(cnn())
        cb = tfc.PruningCallback(schedule(0.75, end_step=60), verbose=0)
        checker = ZeroChecker(cb)
        model.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[cb, checker])
        if policy == "mixed_float16":
            assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        assert all(checker.exact)
        assert all(m.dtype == e.variable.dtype == "float32" for e, m in zip(cb.pruner.targets, cb.pruner.masks))
        assert tfc.sparsity_report(model).overall == pytest.approx(0.75, abs=2e-3)
        assert accuracy(model, x_test, y_test) > 0.8
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_block_structure_prunes_whole_blocks(digits_data):
    (x, y), _ = digits_data
    model = compiled(cnn())
    cb = tfc.PruningCallback(schedule(0.5, end_step=20), structure="block", block_shape=(4, 1), verbose=0)
    model.fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=[cb])
    for entry in cb.pruner.targets:
        matrix = entry.variable.numpy().reshape(-1, entry.shape[-1])
        rows = matrix.shape[0] // 4 * 4
        blocks = (matrix[:rows].reshape(-1, 4, matrix.shape[1]) == 0).sum(axis=1)
        assert set(np.unique(blocks)) <= {0, 4}, entry.path  # a block is all zero or all kept
    assert tfc.sparsity_report(model).overall == pytest.approx(0.5, abs=0.02)


def test_2_by_4_structure_along_input_channels(digits_data):
    (x, y), _ = digits_data
    model = compiled(cnn())
    cb = tfc.PruningCallback(schedule(0.3, end_step=20), structure="2:4", verbose=0)
    model.fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=[cb])
    decisions = {e.path: e.reason for e in cb.pruner.entries}
    assert "1 input channels are not a multiple of 4" in decisions["conv1/kernel"]
    for entry in cb.pruner.targets:
        kernel = np.moveaxis(entry.variable.numpy(), -2, -1)  # input channels last
        zeros_per_group = (kernel.reshape(-1, 4) == 0).sum(axis=1)
        assert np.all(zeros_per_group >= 2), entry.path
        assert np.mean(zeros_per_group == 2) > 0.99
    assert tfc.sparsity_report(model)["conv1/kernel"] == 0.0


def test_custom_training_loop_api(digits_data):
    (x, y), _ = digits_data
    keras.utils.set_random_seed(5)
    model = cnn()
    optimizer = keras.optimizers.Adam(3e-3)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def make_train_step():  # traced after attach(), so the masking constraints are compiled in
        @tf.function
        def train_step(xb, yb):
            with tf.GradientTape() as tape:
                loss = loss_fn(yb, model(xb, training=True))
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply(grads, model.trainable_variables)
            return loss
        return train_step

    train_step = make_train_step()
    pruner = tfc.Pruner(model, schedule(0.75, end_step=40))
    updates = []
    with pruner:  # installs the masking constraints before train_step is traced
        for step in range(1, 61):
            i = (step * 32) % (len(x) - 32)
            updates.append(pruner.on_step())
            train_step(x[i: i + 32], y[i: i + 32])
            assert zeros_where_masked(pruner)
    assert [s for s, updated in enumerate(updates, 1) if updated] == [10, 20, 30, 40]
    assert pruner.step == 60
    assert all(v.constraint is None for v in model.weights)
    assert tfc.sparsity_report(model).overall == pytest.approx(0.75, abs=2e-3)

    # Weights changed outside a Keras optimizer: apply_masks() restores the zeros.
    for entry in pruner.targets:
        entry.variable.assign(entry.variable + 0.01)
    pruner.apply_masks()
    assert tfc.sparsity_report(model).overall == pytest.approx(0.75, abs=2e-3)

    # A new Pruner on the already-pruned model, steps counted from 1 again: its schedule
    # continues from where it asks for 75% (step ~37 of 80) instead of regrowing weights.
    pruner = tfc.Pruner(model, schedule(0.9, end_step=80))
    with pruner:
        train_step = make_train_step()
        trace = []
        for step in range(1, 21):
            i = (step * 32) % (len(x) - 32)
            pruner.on_step(step)
            train_step(x[i: i + 32], y[i: i + 32])
            trace.append(tfc.sparsity_report(model).overall)
    assert pruner.start_sparsity == pytest.approx(0.75, abs=2e-3)
    assert 30 < pruner.skipped_steps < 40 and pruner.step == 20 + pruner.skipped_steps
    assert min(trace) >= pruner.start_sparsity and trace[-1] > 0.8


def test_log_dir_writes_per_layer_sparsity_for_tensorboard(digits_data, tmp_path):
    (x, y), _ = digits_data
    model = compiled(cnn())
    cb = tfc.PruningCallback(schedule(0.5, end_step=30), log_dir=str(tmp_path), verbose=0)
    model.fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=[cb])
    values = {}
    for path in glob.glob(str(tmp_path / "events.out.tfevents*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                values.setdefault(value.tag, []).append((event.step, float(tf.make_ndarray(value.tensor))))
    assert {"pruning/conv2/kernel", "pruning/logits/kernel", "pruning/overall",
            "pruning/scheduled_sparsity"} <= set(values)
    assert values["pruning/overall"][-1] == (STEPS_PER_EPOCH, pytest.approx(0.5, abs=2e-3))
    assert [s for s, _ in values["pruning/scheduled_sparsity"]][:3] == [10, 20, 30]


def test_bad_arguments_raise_clear_errors():
    model = cnn()
    with pytest.raises(ValueError, match=r"layers=\['conv9'\]: no layer of model 'cnn'.*conv1"):
        tfc.Pruner(model, schedule(), layers=["conv9"])
    with pytest.raises(ValueError, match=r"skip=\['nope'\]"):
        tfc.Pruner(model, schedule(), skip="nope")
    with pytest.raises(ValueError, match="Nothing to prune in model 'cnn'"):
        tfc.Pruner(model, schedule(), layers=["bn1"])
    only_bn = keras.Sequential([keras.Input((4,)), layers.BatchNormalization()], name="bn_only")
    with pytest.raises(ValueError, match="Nothing to prune in model 'bn_only'"):
        tfc.Pruner(only_bn, schedule())
    tensor = keras.Input((8, 8, 1))
    with pytest.raises(TypeError, match="got a KerasTensor"):
        tfc.Pruner(layers.Dense(3)(tensor), schedule())
    with pytest.raises(TypeError, match="got a KerasTensor"):
        tfc.sparsity_report(tensor)
    with pytest.raises(ValueError, match="is not built"):
        tfc.Pruner(Subclassed(), schedule())
    with pytest.raises(ValueError, match="structure must be .* got '3:2'"):
        tfc.PruningCallback(schedule(), structure="3:2")
    with pytest.raises(ValueError, match=r"block_shape must be two positive integers.*got \(0, 4\)"):
        tfc.PruningCallback(schedule(), structure="block", block_shape=(0, 4))
    with pytest.raises(ValueError, match=r"scope must be one of \('erk', 'global', 'layer'\), got 'model'"):
        tfc.PruningCallback(schedule(), scope="model")
    with pytest.raises(TypeError, match="Pass layer.name rather than the layer"):
        tfc.Pruner(model, schedule(), layers=[model.layers[1]])


def test_sparse_tflite_export_keeps_per_tensor_sparsity(digits_data):
    (x, y), _ = digits_data
    keras.utils.set_random_seed(6)
    model = compiled(cnn())
    cb = tfc.PruningCallback(schedule(0.75, end_step=40), scope="layer", verbose=0)
    model.fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=[cb])
    keras_sparsity = sorted(tfc.sparsity_report(model).values())
    for mode in ("float32", "int8"):
        data = tfc.to_tflite(model, mode=mode, representative_data=x[:100], sparse=True)
        kernels = tfc.inspect_tflite(data).kernels
        assert len(kernels) == len(keras_sparsity), [k.name for k in kernels]
        np.testing.assert_allclose(sorted(k.zero_fraction for k in kernels), keras_sparsity, atol=1e-6)
        dense = tfc.to_tflite(model, mode=mode, representative_data=x[:100])
        assert len(data) < len(dense)


# --- PruningCallback with steps_per_execution > 1 and with XLA -----------------------------------


LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


class _ClockAndZeros(keras.callbacks.Callback):
    """After PruningCallback in the callback list: records its clock and checks its zeros at every batch boundary."""

    def __init__(self, pruning):
        super().__init__()
        self.pruning = pruning
        self.begins = []  # (epoch, batch, optimizer.iterations, schedule step, overall sparsity)
        self.regrown = 0
        self._epoch = 0

    def _sparsity(self):
        weights = [e.variable.numpy() for e in self.pruning.pruner.targets]
        return sum(int(np.sum(w == 0)) for w in weights) / sum(w.size for w in weights)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        self.begins.append((self._epoch, batch, int(self.model.optimizer.iterations.numpy()),
                            self.pruning.pruner.step, self._sparsity()))

    def on_train_batch_end(self, batch, logs=None):
        for entry, mask in zip(self.pruning.pruner.targets, self.pruning.pruner.masks):
            self.regrown += int(np.sum(entry.variable.numpy()[mask.numpy() == 0] != 0))


def _prune_from_scratch(digits_data, steps_per_execution=1, jit_compile=False, epochs=3):
    (x, y), _ = digits_data
    keras.utils.set_random_seed(0)
    model = small_cnn()
    model.compile(keras.optimizers.Adam(1e-3), LOSS, metrics=["accuracy"], steps_per_execution=steps_per_execution,
                  jit_compile=jit_compile)
    # Mask updates due at steps 10, 20, ..., 50: with 4 steps per execution every one falls inside an
    # execution (steps 9-12, 17-20, ...), never on the boundary where the callback runs.
    schedule = tfc.PolynomialDecay(0.0, 0.7, begin_step=0, end_step=50, frequency=10)
    pruning = tfc.PruningCallback(schedule, verbose=0)
    check = _ClockAndZeros(pruning)
    history = model.fit(x, y, epochs=epochs, batch_size=32, verbose=0, callbacks=[pruning, check])
    return model, schedule, pruning, check, history, len(x)


def _assert_pruned_on_the_optimizer_clock(model, schedule, pruning, check, history, steps_per_epoch, epochs,
                                          steps_per_execution):
    assert int(model.optimizer.iterations.numpy()) == epochs * steps_per_epoch
    begins = check.begins
    assert len(begins) == epochs * -(-steps_per_epoch // steps_per_execution)
    assert [b for e, b, *_ in begins if e == 0] == list(range(0, steps_per_epoch, steps_per_execution))
    previous = 0
    expected = 0.0
    for epoch, batch, iterations, step, sparsity in begins:
        # The schedule's clock is the optimizer's: step n is about to run after n - 1 updates.
        assert step == iterations + 1 == epoch * steps_per_epoch + batch + 1, (epoch, batch, iterations, step)
        if any(schedule.should_prune(s) for s in range(previous + 1, step + 1)):
            expected = schedule.sparsity(step)  # a due step skipped inside an execution still updates
        assert sparsity == pytest.approx(expected, abs=2e-3), (step, sparsity, expected)
        previous = step
    assert expected == pytest.approx(0.7)
    assert check.regrown == 0, "pruned weights must stay exactly zero at every batch boundary"
    final = [e.variable.numpy() for e in pruning.pruner.targets]
    assert sum(int(np.sum(w == 0)) for w in final) / sum(w.size for w in final) == pytest.approx(0.7, abs=2e-3)
    for entry, mask in zip(pruning.pruner.targets, pruning.pruner.masks):
        assert np.all(entry.variable.numpy()[mask.numpy() == 0] == 0), entry.path
    assert history.history["accuracy"][-1] > 0.8


def test_pruning_with_steps_per_execution_follows_the_optimizer_clock(digits_data):
    model, schedule, pruning, check, history, n = _prune_from_scratch(digits_data, steps_per_execution=4)
    steps_per_epoch = -(-n // 32)
    assert steps_per_epoch % 4 != 0  # every epoch ends on a short execution, which must not shift the clock
    _assert_pruned_on_the_optimizer_clock(model, schedule, pruning, check, history, steps_per_epoch, 3, 4)


def test_pruning_and_qat_under_jit_compile_give_a_sparse_int8_model(digits_data):
    (x, y), (x_test, y_test) = digits_data
    model, schedule, pruning, check, history, n = _prune_from_scratch(digits_data, jit_compile=True)
    assert model.jit_compile is True  # Keras did not fall back to a plain tf.function
    _assert_pruned_on_the_optimizer_clock(model, schedule, pruning, check, history, -(-n // 32), 3, 1)
    pruned_sparsity = tfc.to_tflite(model, mode="int8", representative_data=x[:64]).info.sparsity

    qat = tfc.quantize_model(model)
    qat.compile(keras.optimizers.Adam(1e-4), LOSS, metrics=["accuracy"], jit_compile=True)
    assert qat.jit_compile is True
    qat.fit(x, y, epochs=1, batch_size=32, verbose=0)
    flatbuffer = tfc.to_tflite(qat, mode="int8", strict=True)
    assert flatbuffer.info.float_compute_ops() == []
    assert flatbuffer.info.op_census_by_dtype.get("FULLY_CONNECTED/int8") == 2
    assert flatbuffer.info.sparsity == pytest.approx(pruned_sparsity, abs=0.01), "QAT under XLA kept the zeros"
    keras_top1 = float(np.mean(np.asarray(qat.predict(x_test, verbose=0)).argmax(1) == y_test))
    report = tfc.evaluate_tflite(flatbuffer, x=x_test, y=y_test, num_runs=1, backends=("cpu",))
    assert report.accuracy > 0.85
    assert report.accuracy == pytest.approx(keras_top1, abs=0.02)
