"""Structural (channel) pruning: the dependency graph, shrink's exactness, criteria, the callback, bad input."""

import keras
import numpy as np
import pytest

import tfcompress as tfc
from conftest import convnext_style_model, operation_node_model
from tfcompress.core import graph as core_graph
from tfcompress.pruning import channels

L = keras.layers


def _everything_model():
    """Residual (tied) group, BN, DepthwiseConv with depth_multiplier 2, SeparableConv, Concatenate,
    Conv2DTranspose, pooling, Flatten -> Dense."""
    i = keras.Input((8, 8, 3))
    x = L.Conv2D(8, 3, padding="same", name="c1")(i)
    x = L.BatchNormalization(name="bn1")(x)
    x = L.ReLU(name="r1")(x)
    y = L.Conv2D(8, 3, padding="same", name="c2")(x)
    y = L.BatchNormalization(name="bn2")(y)
    x = L.Add(name="add")([x, y])
    d = L.DepthwiseConv2D(3, padding="same", depth_multiplier=2, name="dw")(x)
    d = L.BatchNormalization(name="bn3")(d)
    s = L.SeparableConv2D(12, 3, padding="same", activation="relu", name="sep")(d)
    c = L.Concatenate(name="cat")([s, x])
    t = L.Conv2DTranspose(6, 3, padding="same", name="tr")(c)
    f = L.Flatten(name="flat")(L.MaxPooling2D(name="pool")(t))
    f = L.Dense(16, activation="relu", name="fc")(f)
    return keras.Model(i, L.Dense(4, name="out")(f), name="everything")


def _randomise_batch_norm(model, seed=0):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            gamma, beta, mean, variance = layer.get_weights()
            layer.set_weights([rng.normal(1, 0.2, gamma.shape), rng.normal(0, 0.2, beta.shape),
                               rng.normal(0, 0.3, mean.shape), rng.uniform(0.5, 1.5, variance.shape)])


def _relative_error(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(np.asarray(b))))


class _SubclassedDense(keras.Model):
    def __init__(self):
        super().__init__(name="subclassed_dense")
        self.dense = L.Dense(3)

    def call(self, inputs):
        return self.dense(inputs)


def _subclassed_dense():
    """A built subclassed model (its graph lives in Python code, not in a config)."""
    model = _SubclassedDense()
    model(np.zeros((1, 4), np.float32))
    return model


def _sequential_1d():
    return keras.Sequential([keras.Input((16, 4)), L.Conv1D(8, 3, padding="same", activation="relu", name="c1"),
                             L.BatchNormalization(name="bn"), L.Conv1D(6, 3, name="c2"),
                             L.GlobalAveragePooling1D(name="gap"), L.Dense(12, activation="relu", name="fc"),
                             L.Dense(3, name="out")], name="seq1d")


@pytest.mark.parametrize("make, shape", [(_everything_model, (5, 8, 8, 3)), (_sequential_1d, (5, 16, 4))],
                         ids=["functional-every-kind", "sequential-conv1d"])
def test_shrink_computes_what_the_masked_model_computes(make, shape, tmp_path):
    model = make()
    _randomise_batch_norm(model)
    graph = channels.ChannelGraph(model)
    channels.zero_units(graph, graph.units[::3])
    x = np.random.default_rng(1).random(shape, dtype=np.float32)
    masked = np.asarray(model(x, training=False))
    small = tfc.shrink(model, verbose=0)
    assert type(small) is type(model) and small.count_params() < model.count_params()
    assert _relative_error(small(x, training=False), masked) < 1e-5
    path = str(tmp_path / "small.keras")
    small.save(path)
    loaded = keras.models.load_model(path)  # plain Keras: no custom objects
    assert _relative_error(loaded(x, training=False), masked) < 1e-5


def test_residual_channels_are_tied_and_unknown_layers_keep_theirs():
    graph = channels.ChannelGraph(_everything_model())
    groups = {frozenset(names) for names in graph.groups.values()}
    assert frozenset({"c1", "c2"}) in groups  # Add ties the residual stream's producers
    decisions = {p.layer: p.decision for p in graph.plan}
    assert decisions["out"].startswith("kept: reaches a model output") and decisions["c1"] == "prunable"
    inputs = keras.Input((8, 8, 1))
    x = L.Conv2D(4, 3, name="a")(inputs)
    x = L.Reshape((-1, 4), name="reshape")(x)
    opaque = keras.Model(inputs, L.Dense(2, name="b")(L.Flatten()(x)))
    plan = {p.layer: p.decision for p in channels.ChannelGraph(opaque).plan}
    assert "Reshape is not analysed" in plan["a"], plan


def test_every_criterion_prunes_a_dead_filter_first(digits_data):
    (x, y), _ = digits_data
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    h = L.Conv2D(8, 3, padding="same", name="conv")(inputs)
    h = L.BatchNormalization(name="bn")(h)
    h = L.ReLU()(h)
    model = keras.Model(inputs, L.Dense(10, name="out")(L.GlobalAveragePooling2D()(h)))
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x[:256], y[:256], epochs=2, verbose=0)
    kernel, bias = model.get_layer("conv").get_weights()
    kernel[..., 5] *= 1e-3  # filter 5 is nearly dead
    model.get_layer("conv").set_weights([kernel, bias])
    gamma, beta, mean, variance = model.get_layer("bn").get_weights()
    gamma[5] = 1e-4
    model.get_layer("bn").set_weights([gamma, beta, mean, variance])
    graph = channels.ChannelGraph(model)

    def max_abs(layer):  # a criterion of one's own: the largest magnitude of each filter
        kernel = keras.ops.convert_to_numpy(layer.kernel)
        return np.abs(kernel).max(axis=tuple(range(kernel.ndim - 1)))

    rankings = {}
    for criterion in ("l1", "l2", "bn", "taylor", max_abs):
        scores = tfc.pruning.importance.unit_scores(graph, criterion, data=(x[:128], y[:128]))
        rankings[criterion] = list(np.argsort(scores))
        assert graph.units[rankings[criterion][0]].members == [("conv", 5)], criterion
    assert len({tuple(r) for r in rankings.values()}) > 1  # the criteria are not one ranking under five names
    small = tfc.prune_channels(model, 0.25, importance=max_abs, verbose=0)
    assert small.get_layer("conv").filters == 6  # 2 of the 8 filters (the dead one first) went
    with pytest.raises(ValueError, match=r"importance=<lambda> returned an array of shape \(3,\) for layer 'conv'"):
        tfc.prune_channels(model, 0.25, importance=lambda layer: np.ones(3), verbose=0)
    with pytest.raises(ValueError, match="returned negative or non-finite scores for layer 'conv'"):
        tfc.prune_channels(model, 0.25, importance=lambda layer: -max_abs(layer), verbose=0)


def test_prune_channels_halves_the_reference_cnn_and_converts_in_every_mode(trained_digits_model, digits_data):
    (x, y), (x_test, y_test) = digits_data
    small = tfc.prune_channels(trained_digits_model, 0.5, round_to=4, verbose=0)
    widths = {layer.name: layer.output.shape[-1] for layer in small.layers if isinstance(layer, (L.Conv2D, L.Dense))}
    assert widths["logits"] == 10 and all(w % 4 == 0 for n, w in widths.items() if n != "logits"), widths
    assert small.count_params() < 0.5 * trained_digits_model.count_params()
    for mode in ("float32", "float16", "dynamic", "int8", "int16x8"):
        data = x[:64] if mode in ("int8", "int16x8") else None
        assert tfc.to_tflite(small, mode=mode, representative_data=data)[4:8] == b"TFL3", mode


def test_callback_prunes_during_fit_and_shrink_removes_the_zeroed_channels(digits_data):
    (x, y), (x_test, y_test) = digits_data
    from conftest import small_cnn

    keras.utils.set_random_seed(0)
    model = tfc.zoo.compile_classifier(small_cnn(), learning_rate=3e-3)
    shapes = [tuple(w.shape) for w in model.weights]
    steps = int(np.ceil(len(x) / 64))
    callback = tfc.ChannelPruningCallback(tfc.PolynomialDecay(0.0, 0.5, begin_step=0, end_step=steps, frequency=5),
                                          verbose=0)
    model.fit(x, y, epochs=3, batch_size=64, verbose=0, callbacks=[callback])
    assert [tuple(w.shape) for w in model.weights] == shapes  # the model keeps its shape while training
    assert callback.sparsity == pytest.approx(0.5, abs=0.05)
    small = tfc.shrink(model, verbose=0)
    assert _relative_error(small(x_test, training=False), model(x_test, training=False)) < 1e-5
    assert small.count_params() < 0.6 * model.count_params()
    accuracy = float(np.mean(np.asarray(small(x_test)).argmax(1) == y_test))
    assert accuracy > 0.85


def test_bad_input_is_named():
    model = _sequential_1d()
    with pytest.raises(ValueError, match=r"ratio=1\.0 must be in \[0, 1\)"):
        tfc.prune_channels(model, 1.0)
    with pytest.raises(tfc.ChannelPruningError, match=r"layers=\['nope'\]: model 'seq1d' has no such layer"):
        tfc.prune_channels(model, 0.5, layers=["nope"])
    only_out = keras.Sequential([keras.Input((4,)), L.Dense(3, name="out")], name="tiny")
    with pytest.raises(tfc.ChannelPruningError, match="no prunable channel group: reaches a model output"):
        tfc.prune_channels(only_out, 0.5, verbose=0)
    with pytest.raises(ValueError, match="importance='taylor' needs data"):
        tfc.prune_channels(model, 0.5, importance="taylor")

    with pytest.raises(tfc.ChannelPruningError, match="subclassed.*Functional or Sequential"):
        tfc.shrink(_subclassed_dense())


def _residual_stream_and_wide_layer():
    inputs = keras.Input((8, 8, 3))
    stream = L.Conv2D(8, 1, name="s1")(inputs)
    for i in (2, 3):
        stream = L.Add(name=f"add{i}")([stream, L.Conv2D(8, 3, padding="same", name=f"s{i}")(stream)])
    wide = L.Conv2D(32, 3, padding="same", activation="relu", name="wide")(stream)
    return keras.Model(inputs, L.Dense(3, name="out")(L.GlobalAveragePooling2D()(wide)), name="stream")


def test_max_group_ratio_caps_a_residual_stream_and_takes_the_rest_elsewhere():
    model = _residual_stream_and_wide_layer()
    for name in ("s1", "s2", "s3"):  # the stream's filters are the smallest: a global ranking takes them first
        kernel, bias = model.get_layer(name).get_weights()
        model.get_layer(name).set_weights([kernel * 1e-3, bias])
    graph = channels.ChannelGraph(model)
    stream = next(g for g, names in graph.groups.items() if "s1" in names)
    scores = tfc.pruning.importance.unit_scores(graph, "l2")
    scores[[u.index for u in graph.units if u.group == stream]] -= 10.0  # per-layer normalisation hides the scale

    def removed(**kwargs):
        chosen, note = tfc.pruning.importance.select_units(graph, scores, 0.5, **kwargs)
        in_stream = sum(u.group == stream for u in chosen)
        return in_stream, len(chosen) - in_stream, note

    assert removed() == (7, 13, None)  # uncapped: the stream is cut to one channel
    assert removed(max_group_ratio=0.5) == (4, 16, None)  # capped at half; the wide layer gives the rest
    in_stream, elsewhere, note = removed(max_group_ratio=0.25)
    assert (in_stream, elsewhere) == (2, 8) and "max_group_ratio=0.25" in note  # 20 asked, 10 allowed: said
    small = tfc.prune_channels(model, 0.5, max_group_ratio=0.5, verbose=0)
    assert small.get_layer("s1").filters == 4 and small.get_layer("wide").filters == 16
    for bad in (0.0, 1.5, True):
        with pytest.raises(ValueError, match=f"max_group_ratio={bad!r} must be in \\(0, 1\\]"):
            tfc.ChannelPruningCallback(tfc.ConstantSparsity(0.5, 0), max_group_ratio=bad)
    with pytest.raises(ValueError, match="PruneChannels: max_group_ratio=2"):
        tfc.PruneChannels(0.5, max_group_ratio=2)


def test_shrink_without_zeroed_channels_returns_a_copy_and_says_so(capsys):
    model = _sequential_1d()
    copy = tfc.shrink(model)
    assert copy is not model and copy.count_params() == model.count_params()
    assert "nothing was removed" in capsys.readouterr().out


def test_compress_step_and_cli_prune_channels(trained_digits_model, digits_data, tmp_path):
    import subprocess
    import sys

    result = tfc.compress(trained_digits_model, "digits", [tfc.PruneChannels(0.5, epochs=2), tfc.Convert("int8")],
                          evaluate=False, verbose=0)
    assert result.model.count_params() < 0.6 * trained_digits_model.count_params()
    assert "channels50-int8" in result.artifacts
    path = tmp_path / "m.keras"
    trained_digits_model.save(path)
    out = tmp_path / "m_small.keras"
    run = subprocess.run([sys.executable, "-m", "tfcompress", "prune", str(path), "--channels=0.5", "--epochs=1",
                          "--data=digits", f"--output={out}"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert keras.models.load_model(out).count_params() < 0.6 * trained_digits_model.count_params()


MIRRORED = """

def run(strategy):
    keras.utils.set_random_seed(0)
    with strategy.scope():
        inputs = keras.Input((8, 8, 1))
        h = keras.layers.Conv2D(16, 3, padding="same", name="conv")(inputs)
        h = keras.layers.BatchNormalization(name="bn")(h)
        h = keras.layers.ReLU()(h)
        h = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv2")(h)
        h = keras.layers.Flatten()(h)
        model = keras.Model(inputs, keras.layers.Dense(10, name="logits")(h))
        tfc.zoo.compile_classifier(model, learning_rate=3e-3)
    cb = tfc.ChannelPruningCallback(tfc.PolynomialDecay(0.0, 0.5, begin_step=0, end_step=30, frequency=10), verbose=0)
    model.fit(x, y, epochs=4, batch_size=64, verbose=0, callbacks=[cb])
    small = tfc.shrink(model, verbose=0)
    return sorted(cb.pruned), small.count_params(), float(np.mean(small.predict(x_test, verbose=0).argmax(-1) == y_test))


mirrored = run(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
single = run(tf.distribute.OneDeviceStrategy("/cpu:0"))
print("RESULT" + json.dumps({"mirrored": mirrored, "single": single}))
"""


def test_channel_pruning_under_mirrored_strategy_prunes_what_one_device_prunes():
    from conftest import run_on_two_logical_cpus

    result = run_on_two_logical_cpus(MIRRORED)
    (units, params, accuracy), (single_units, single_params, single_accuracy) = result["mirrored"], result["single"]
    overlap = len(set(units) & set(single_units)) / max(len(single_units), 1)
    assert params == single_params and overlap >= 0.9, result
    assert abs(accuracy - single_accuracy) < 0.05 and accuracy > 0.8, result


def test_shrink_report_counts_parameters_and_macs():
    model = _everything_model()
    small = tfc.prune_channels(model, 0.5, verbose=0)
    costs = channels.layer_costs(model)
    assert costs["c1"] == (3 * 3 * 3 * 8 + 8, 8 * 8 * 3 * 3 * 3 * 8)
    assert costs["dw"][1] == 8 * 8 * 3 * 3 * 8 * 2
    table = tfc.pruning.shrink_report(model, small)
    assert "| c1 " in table and "x fewer" in table.splitlines()[-1]
    total_before = sum(c[0] for c in costs.values())
    assert total_before == model.count_params()


def test_channel_pruning_callback_prunes_a_distillers_student(trained_digits_model, digits_data):
    (x, y), (x_test, _) = digits_data
    # Copies: the Distiller freezes its teacher in place, and the session fixture must stay trainable.
    teacher, student = (keras.models.clone_model(trained_digits_model) for _ in range(2))
    teacher.set_weights(trained_digits_model.get_weights())
    student.set_weights(trained_digits_model.get_weights())
    distiller = tfc.Distiller(teacher=teacher, student=student)
    distiller.compile(optimizer=keras.optimizers.Adam(1e-3), metrics=["accuracy"])
    callback = tfc.ChannelPruningCallback(tfc.PolynomialDecay(0.0, 0.5, begin_step=0, end_step=20, frequency=5),
                                          verbose=0)
    distiller.fit(distiller.cache_teacher(x, y, batch_size=64), epochs=2, verbose=0, callbacks=[callback])
    assert callback.graph.model is student and callback.sparsity == pytest.approx(0.5, abs=0.05)
    small = tfc.shrink(student, verbose=0)
    assert _relative_error(small(x_test), student(x_test)) < 1e-5
    assert small.count_params() < 0.6 * student.count_params()


def test_nested_keras_application_is_entered_pruned_and_rebuilt_flat(digits_data, tmp_path):
    """A Keras application inside a Sequential: its layers join the outer graph; shrink is exact; all criteria work."""
    keras.utils.set_random_seed(0)
    backbone = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None, include_top=False)
    model = keras.Sequential([keras.Input((32, 32, 3)), backbone, L.GlobalAveragePooling2D(name="pool"),
                              L.Dense(5, name="head")], name="nested")
    _randomise_batch_norm(backbone)
    graph = channels.ChannelGraph(model)
    assert graph.source is model and "block_1_project" in {p.layer for p in graph.plan}
    assert {"block_1_project", "block_2_project"} <= next(set(g) for g in graph.groups.values()
                                                           if "block_1_project" in g)  # the residual stream, tied
    channels.zero_units(graph, graph.units[::4])  # masks act on the nested model's own layers
    x = np.random.default_rng(1).random((4, 32, 32, 3), dtype=np.float32)
    masked = np.asarray(model(x, training=False))
    small = tfc.shrink(model, verbose=0)
    assert not any(isinstance(layer, keras.Model) for layer in small.layers)  # one flat Functional model
    assert small.count_params() < 0.9 * model.count_params()
    assert _relative_error(small(x, training=False), masked) < 1e-5
    small.save(tmp_path / "s.keras")
    assert _relative_error(keras.models.load_model(tmp_path / "s.keras")(x, training=False), masked) < 1e-5
    # taylor probes the inner layers' outputs, which must come from the flat graph, not the nested one.
    pruned = tfc.prune_channels(model, 0.3, importance="taylor", data=(x, np.arange(4) % 5), verbose=0)
    assert pruned.count_params() < model.count_params() and pruned.output_shape == (None, 5)
    # The callback trains the nested model itself and masks its layers.
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    xs = np.random.default_rng(2).random((32, 32, 32, 3), dtype=np.float32)
    model.fit(xs, np.arange(32) % 5, epochs=1, batch_size=8, verbose=0,
              callbacks=[tfc.ChannelPruningCallback(tfc.ConstantSparsity(0.5, begin_step=0, frequency=2), verbose=0)])
    assert channels.zeroed_units(channels.ChannelGraph(model))


@pytest.fixture
def mixed_float16():
    keras.mixed_precision.set_global_policy("mixed_float16")
    yield
    keras.mixed_precision.set_global_policy("float32")


def test_mixed_precision_model_is_pruned_shrunk_and_converted(mixed_float16, digits_data):
    (x, y), _ = digits_data
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 1)), L.Conv2D(16, 3, activation="relu", name="c1"),
                              L.BatchNormalization(name="bn"), L.Conv2D(16, 3, activation="relu", name="c2"),
                              L.GlobalAveragePooling2D(), L.Dense(10, name="out"),
                              L.Activation("linear", dtype="float32", name="logits")], name="mixed")
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    callback = tfc.ChannelPruningCallback(tfc.ConstantSparsity(0.5, begin_step=0, frequency=2), verbose=0)
    model.fit(x[:256], y[:256], epochs=1, batch_size=32, verbose=0, callbacks=[callback])
    assert model.get_layer("c1").compute_dtype == "float16" and callback.sparsity == 0.5
    masked = np.asarray(model(x[:64], training=False))
    small = tfc.shrink(model, verbose=0)
    assert small.get_layer("c1").compute_dtype == "float16"  # the user's policy is kept
    assert small.get_layer("c1").filters + small.get_layer("c2").filters == 16
    assert _relative_error(small(x[:64], training=False), masked) < 1e-5
    # TFLite has no float16 compute: the file is converted from a float32-compute copy with the same weights.
    file = tfc.to_tflite(small, mode="float32")
    report = tfc.evaluate_tflite(file, x=x[:64], backends=("cpu",), num_runs=1)
    assert set(report.op_census_by_dtype) >= {"CONV_2D/float32", "FULLY_CONNECTED/float32"}
    assert _relative_error(tfc.evaluate.predict(file, x[:64]), masked) < 1e-2  # Keras computes in float16
    int8 = tfc.to_tflite(small, mode="int8", representative_data=x[:100], verify=x[:200])
    assert int8.agreement > 0.9
    with pytest.raises(tfc.ConversionError, match="mixed precision and is subclassed.*set_global_policy\\('float32'\\)"):
        tfc.to_tflite(_subclassed_dense(), mode="float32")


# --- keras.ops operation nodes ----------------------------------------------------------------


def test_operation_nodes_carry_and_tie_channels_and_shrink_exactly(tmp_path):
    model = operation_node_model()
    _randomise_batch_norm(model)
    graph = channels.ChannelGraph(model)
    groups = {frozenset(names) for names in graph.groups.values()}
    # hard-swish, x * hard_sigmoid(gate), ops.add and x + z * 3.0 tie the stream; the LayerScale-like
    # constant multiply carries expand's channels (shrink slices the constant).
    assert groups == {frozenset({"stem", "gate_conv", "project"}), frozenset({"expand"})}, groups
    assert [p.layer for p in graph.plan if p.decision.startswith("kept")] == ["head"]
    assert len(graph.sliced_constants) == 1
    channels.zero_units(graph, graph.units[::3])
    x = np.random.default_rng(1).random((5, 12, 12, 3), dtype=np.float32)
    masked = np.asarray(model(x, training=False))
    small = tfc.shrink(model, verbose=0)
    assert small.get_layer("expand").filters < 16 and small.get_layer("stem").filters < 8
    assert _relative_error(small(x, training=False), masked) < 1e-5
    small.save(tmp_path / "small.keras")
    assert _relative_error(keras.models.load_model(tmp_path / "small.keras")(x, training=False), masked) < 1e-5
    pruned = tfc.prune_channels(model, 0.3, verbose=0)
    assert pruned.count_params() < model.count_params()


def test_operation_nodes_that_move_channels_or_make_a_removed_one_non_zero_keep_them():
    inputs = keras.Input((6, 6, 4))
    a = L.Conv2D(4, 1, name="a")(inputs)
    b = L.Conv2D(4, 1, name="b")(inputs)
    c = L.Conv2D(4, 1, name="c")(inputs)
    d = L.Conv2D(4, 1, name="d")(inputs)
    moved = keras.ops.transpose(a, (0, 2, 1, 3))[..., :3]
    reduced = keras.ops.mean(b, axis=-1, keepdims=True)
    shifted = L.Conv2D(2, 1, name="reads_shifted")(c + 1.0)  # a removed channel of c would read 1.0 here
    gated = L.Conv2D(2, 1, name="reads_gated")(d * keras.ops.sigmoid(d))  # 0 * sigmoid(0) is 0 again
    merged = L.Concatenate()([L.Flatten()(t) for t in (moved, reduced, shifted, gated)])
    model = keras.Model(inputs, L.Dense(2, name="out")(merged))
    plan = {p.layer: p.decision for p in channels.ChannelGraph(model).plan}
    assert "operation numpy.Transpose may move or mix channels" in plan["a"], plan
    assert "numpy.Mean reduces over the channel axis" in plan["b"], plan
    assert plan["c"].startswith("kept: read by reads_shifted after") and "numpy.Add" in plan["c"], plan
    assert plan["d"] == "prunable", plan


def test_mobilenet_v3_with_operation_nodes_prunes_and_shrinks_exactly():
    # Keras's MobileNetV3 writes hard-sigmoid/hard-swish as x + 3.0, ReLU(6), x * (1 / 6) operation nodes.
    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV3Small(input_shape=(32, 32, 3), alpha=0.75, weights=None, classes=10)
    assert any(core_graph.is_operation(op) for op in model.operations)
    _randomise_batch_norm(model)
    graph = channels.ChannelGraph(model)
    assert [p.layer for p in graph.plan if p.decision.startswith("kept")] == ["logits"]
    channels.zero_units(graph, graph.units[::3])
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    masked = np.asarray(model(x, training=False))
    small = tfc.shrink(model, verbose=0)
    assert small.count_params() < 0.8 * model.count_params()
    # Softmax outputs: absolute agreement (the masked model's own float rounding is ~1e-7).
    np.testing.assert_allclose(np.asarray(small(x, training=False)), masked, atol=1e-5)


def test_convnext_style_mlp_width_is_pruned_and_its_residual_stream_kept():
    model = convnext_style_model()
    graph = channels.ChannelGraph(model)
    decisions = {p.layer: p.decision for p in graph.plan}
    # The residual stream runs through LayerNormalization (not analysed): kept, and the plan says so.
    assert "LayerNormalization is not analysed" in decisions["s0_pw2"], decisions
    assert sorted(name for names in graph.groups.values() for name in names) == ["s0_pw1", "s1_pw1"]
    channels.zero_units(graph, graph.units[::2])
    x = np.random.default_rng(0).random((3, 32, 32, 3), dtype=np.float32)
    masked = np.asarray(model(x))
    small = tfc.shrink(model, verbose=0)
    assert small.get_layer("s0_pw1").units < 64 and small.get_layer("s1_pw1").units < 128
    assert _relative_error(small(x), masked) < 1e-5


def test_grouped_convolution_keeps_its_input_channels_and_shrinks_exactly():
    # Keras's ConvNeXt runs its 7x7 convolutions as Conv2D(groups=channels): the kernel's input axis holds one
    # group's channels, so neither side can be sliced.
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(8, 1, name="before")(inputs)
    x = L.Conv2D(8, 3, padding="same", groups=4, name="grouped")(x)
    x = L.Conv2D(6, 1, activation="relu", name="after")(x)
    model = keras.Model(inputs, L.Dense(2, name="out")(L.GlobalAveragePooling2D()(x)))
    graph = channels.ChannelGraph(model)
    decisions = {p.layer: p.decision for p in graph.plan}
    assert decisions["before"] == "kept: read by grouped (grouped convolution)", decisions
    assert decisions["grouped"] == "kept: grouped convolution" and decisions["after"] == "prunable", decisions
    channels.zero_units(graph, graph.units[:2])
    x = np.random.default_rng(0).random((2, 8, 8, 3), dtype=np.float32)
    masked = np.asarray(model(x))
    small = tfc.shrink(model, verbose=0)
    assert small.get_layer("after").filters == 4 and small.get_layer("grouped").filters == 8
    assert _relative_error(small(x), masked) < 1e-5


def test_the_guides_graph_table_lists_what_the_channel_graph_handles():
    """docs/guides/channel-pruning.md's table is checked against the code, so it cannot drift."""
    import pathlib
    import re

    from tfcompress.pruning import channels

    guide = pathlib.Path(__file__).resolve().parent.parent / "docs" / "guides" / "channel-pruning.md"
    table = guide.read_text().split("| role in the graph | Keras layers |")[1].split("\n\n")[0]
    rows = {line.split("|")[1].strip(): set(re.findall(r"\b[A-Z][A-Za-z0-9]+\b", line.split("|")[2]))
            for line in table.splitlines()[2:]}

    def names(classes):
        return {c.__name__ for c in classes}

    assert rows["every output channel is a new element"] == names(channels.PRODUCERS)
    assert rows["carry their input's elements"] == names(channels.PASSTHROUGH) | {"DepthwiseConv1D", "DepthwiseConv2D"}
    assert rows["tie their inputs' elements (a residual stream is one group)"] == names(channels.ELEMENTWISE)
