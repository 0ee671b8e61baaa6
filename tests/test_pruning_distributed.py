"""PruningCallback under tf.distribute.MirroredStrategy with two logical CPU devices.

The logical devices must be configured before TensorFlow initialises its
devices, so the body runs in a fresh interpreter.
"""

import json
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import json
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    import numpy as np
    import tfcompress as tfc

    (x, y), (x_test, y_test) = tfc.datasets.digits()
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

    class PerReplicaCheck(keras.callbacks.Callback):
        exact = []
        def on_train_batch_end(self, batch, logs=None):
            ok = True
            for entry, mask in zip(cb.pruner.targets, cb.pruner.masks):
                for replica_value in strategy.experimental_local_results(entry.variable.value):
                    ok &= bool(np.all(replica_value.numpy()[mask.numpy() == 0] == 0))
            self.exact.append(ok)

    model.fit(x, y, epochs=2, batch_size=64, verbose=0, callbacks=[cb, PerReplicaCheck()])
    replicas = {
        e.path: len(strategy.experimental_local_results(e.variable.value)) for e in cb.pruner.targets
    }
    mask_replicas = [len(strategy.experimental_local_results(m.value)) for m in cb.pruner.masks]
    print("RESULT" + json.dumps({
        "exact": PerReplicaCheck.exact,
        "overall": tfc.sparsity_report(model).overall,
        "replicas": replicas,
        "mask_replicas": mask_replicas,
        "steps": cb.pruner.step,
        "accuracy": float(np.mean(model.predict(x_test, verbose=0).argmax(-1) == y_test)),
    }))
""")


def test_mirrored_strategy_two_logical_cpus():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT")]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    result = json.loads(lines[-1][len("RESULT"):])
    assert result["replicas"] == {"conv/kernel": 2, "fc/kernel": 2, "logits/kernel": 2}
    assert result["mask_replicas"] == [2, 2, 2]
    assert len(result["exact"]) == 2 * 22 and all(result["exact"])
    assert result["steps"] == 2 * 22
    assert abs(result["overall"] - 0.75) < 2e-3
    assert result["accuracy"] > 0.8
