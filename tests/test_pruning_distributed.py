"""PruningCallback under tf.distribute.MirroredStrategy with two logical CPU devices.

The logical devices must be configured before TensorFlow initialises its
devices, so the body runs in a fresh interpreter.
"""

import textwrap

from conftest import run_on_two_logical_cpus

SCRIPT = textwrap.dedent("""
    from replica_checks import mask_held_callback

    keras.utils.set_random_seed(0)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        model = keras.Sequential([
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv"),
            keras.layers.Flatten(),
            keras.layers.Dense(32, activation="relu", name="fc"),
            keras.layers.Dense(10, name="logits"),
        ])
        tfc.zoo.compile_classifier(model, learning_rate=3e-3)

    cb = tfc.PruningCallback(
        tfc.PolynomialDecay(0.0, 0.75, begin_step=0, end_step=40, frequency=10), verbose=0)

    per_replica_check = mask_held_callback(strategy, cb)
    model.fit(x, y, epochs=2, batch_size=64, verbose=0, callbacks=[cb, per_replica_check])
    replicas = {
        e.path: len(strategy.experimental_local_results(e.variable.value)) for e in cb.pruner.targets
    }
    mask_replicas = [len(strategy.experimental_local_results(m.value)) for m in cb.pruner.masks]
    print("RESULT" + json.dumps({
        "exact": per_replica_check.held,
        "overall": tfc.sparsity_report(model).overall,
        "replicas": replicas,
        "mask_replicas": mask_replicas,
        "steps": cb.pruner.step,
        "accuracy": float(np.mean(model.predict(x_test, verbose=0).argmax(-1) == y_test)),
    }))
""")


def test_mirrored_strategy_two_logical_cpus():
    result = run_on_two_logical_cpus(SCRIPT)
    assert result["replicas"] == {"conv/kernel": 2, "fc/kernel": 2, "logits/kernel": 2}
    assert result["mask_replicas"] == [2, 2, 2]
    assert len(result["exact"]) == 2 * 22 and all(result["exact"])
    assert result["steps"] == 2 * 22
    assert abs(result["overall"] - 0.75) < 2e-3
    assert result["accuracy"] > 0.8
