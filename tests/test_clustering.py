"""Weight clustering: at most k values per kernel through training, saving, pruning, QAT and int8 conversion."""

import keras
import numpy as np
import pytest

import tfcompress as tfc
from tfcompress import clustering
from tfcompress.export.sensitivity import tflite_accuracy


def _kernels(model):
    return {e.path: keras.ops.convert_to_numpy(e.variable)
            for e in tfc.pruning.registry.find_weights(model) if e.pruned}


def _max_distinct_per_channel(values):
    return max(np.unique(values[..., c]).size for c in range(values.shape[-1]))


class _EveryStep(keras.callbacks.Callback):
    def __init__(self, k):
        super().__init__()
        self.k, self.worst = k, 0

    def on_train_batch_end(self, batch, logs=None):
        self.worst = max(self.worst, max(_max_distinct_per_channel(v) for v in _kernels(self.model).values()))


def test_clustered_fit_keeps_k_values_after_every_step_and_in_the_saved_file(trained_digits_model, digits_data,
                                                                            tmp_path):
    (x, y), (x_test, y_test) = digits_data
    model = keras.models.clone_model(trained_digits_model)
    model.set_weights(trained_digits_model.get_weights())
    tfc.zoo.compile_classifier(model, learning_rate=1e-3)
    before = [k.copy() for k in _kernels(model).values()]
    watch = _EveryStep(8)
    model.fit(x, y, epochs=2, batch_size=64, verbose=0,
              callbacks=[tfc.ClusteringCallback(num_clusters=8, per_channel=True, verbose=0), watch])
    assert watch.worst <= 8
    after = _kernels(model)
    assert any(not np.array_equal(a, b) for a, b in zip(after.values(), before))  # the centroids trained
    float_accuracy = float(np.mean(np.asarray(trained_digits_model(x_test)).argmax(1) == y_test))
    accuracy = float(np.mean(np.asarray(model(x_test)).argmax(1) == y_test))
    assert accuracy > float_accuracy - 0.02
    path = str(tmp_path / "clustered.keras")
    model.save(path)
    loaded = keras.models.load_model(path)  # plain Keras, nothing to register
    assert all(_max_distinct_per_channel(v) <= 8 for v in _kernels(loaded).values())


def test_pruned_zeros_stay_zero_through_clustering(trained_digits_model, digits_data):
    (x, y), _ = digits_data
    pruned = keras.models.clone_model(trained_digits_model)
    pruned.set_weights(trained_digits_model.get_weights())
    tfc.zoo.compile_classifier(pruned, learning_rate=1e-3)
    pruned.fit(x, y, epochs=1, batch_size=64, verbose=0,
               callbacks=[tfc.PruningCallback(tfc.ConstantSparsity(0.5, 0, frequency=1), verbose=0)])
    zeros = {p: v == 0 for p, v in _kernels(pruned).items()}
    pruned.fit(x, y, epochs=1, batch_size=64, verbose=0, callbacks=[tfc.ClusteringCallback(num_clusters=4, verbose=0)])
    for path, values in _kernels(pruned).items():
        assert np.array_equal(values == 0, zeros[path]), path
        assert np.unique(values).size <= 4


def test_cluster_preserving_qat_keeps_k_int8_values_per_channel(trained_digits_model, digits_data):
    (x, y), (x_test, y_test) = digits_data
    clustered = tfc.cluster_weights(trained_digits_model, 8, per_channel=True)
    qat = tfc.quantize_model(clustered)
    tfc.zoo.compile_classifier(qat, learning_rate=1e-4)
    qat.fit(x, y, epochs=1, batch_size=64, verbose=0,
            callbacks=[tfc.ClusteringCallback(num_clusters=8, per_channel=True, verbose=0)])
    flatbuffer = tfc.to_tflite(qat, mode="int8")
    from tfcompress.evaluation.litert import make_interpreter

    interpreter = make_interpreter(bytes(flatbuffer), "cpu", 1)
    constants = {w.name for w in flatbuffer.info.weights if w.dtype == "int8" and len(w.shape) >= 2}
    checked = 0
    for detail in interpreter.get_tensor_details():
        if detail["name"] in constants:
            try:
                values = interpreter.get_tensor(detail["index"])
            except ValueError:
                continue
            # TFLite kernels are (out, ..., in): the output channel is the first axis.
            per_channel = max(np.unique(values[c]).size for c in range(values.shape[0]))
            assert per_channel <= 8, (detail["name"], per_channel)
            checked += 1
    assert checked >= 3
    accuracy = tflite_accuracy(flatbuffer, x_test, y_test)
    assert accuracy > 0.9


def test_kmeans_and_inits():
    values = np.concatenate([np.full(50, -1.0), np.full(50, 2.0), np.full(50, 5.0)])
    for init in clustering.INITS:
        centroids, assignment = clustering.kmeans_1d(values, 3, init=init)
        np.testing.assert_allclose(centroids, [-1.0, 2.0, 5.0])
        assert np.array_equal(np.bincount(assignment), [50, 50, 50])
    with pytest.raises(ValueError, match=r"num_clusters=1 must be an integer in \[2, 256\]"):
        tfc.ClusteringCallback(num_clusters=1)
    with pytest.raises(ValueError, match=r"num_clusters=300"):
        tfc.cluster_weights(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]), 300)
    with pytest.raises(ValueError, match=r"init='random'"):
        tfc.ClusteringCallback(init="random")


def test_deep_compression_chain_prune_cluster_qat_int8(trained_digits_model):
    result = tfc.compress(trained_digits_model, "digits",
                          [tfc.Prune(0.5, epochs=1), tfc.Cluster(8, epochs=1),
                           tfc.QuantizationAwareTraining(epochs=1), tfc.Convert("int8")], verbose=0, num_runs=3)
    name = "prune50-cluster8-qat-int8"
    assert name in result.reports and result.reports[name].accuracy > 0.85
    assert result.reports[name].sparsity > 0.4  # the pruned zeros survived clustering, QAT and int8


MIRRORED = """

def run(strategy):
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(16, 3, activation="relu", name="conv"),
                                  keras.layers.Flatten(), keras.layers.Dense(10, name="logits")])
        tfc.zoo.compile_classifier(model, learning_rate=3e-3)
    model.fit(x, y, epochs=2, batch_size=64, verbose=0)
    model.fit(x, y, epochs=1, batch_size=64, verbose=0, callbacks=[tfc.ClusteringCallback(8, verbose=0)])
    kernels = [model.get_layer(n).kernel.numpy() for n in ("conv", "logits")]
    return ([int(np.unique(k).size) for k in kernels],
            float(np.mean(model.predict(x_test, verbose=0).argmax(-1) == y_test)))


print("RESULT" + json.dumps({"mirrored": run(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])),
                             "single": run(tf.distribute.OneDeviceStrategy("/cpu:0"))}))
"""


def test_clustering_under_mirrored_strategy():
    from conftest import run_on_two_logical_cpus

    result = run_on_two_logical_cpus(MIRRORED)
    (distinct, accuracy), (single_distinct, single_accuracy) = result["mirrored"], result["single"]
    assert max(distinct) <= 8 and max(single_distinct) <= 8, result
    assert abs(accuracy - single_accuracy) < 0.03 and accuracy > 0.85, result
