import atexit
import os
import shutil
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# The suite runs on two pytest-xdist workers (setup.cfg). Tests check that nothing is left behind in the
# temp folder, so each worker (and the processes it starts) gets its own, removed when the worker ends.
if os.environ.get("PYTEST_XDIST_WORKER"):
    _worker_tmp = tempfile.mkdtemp(prefix=f"pytest_{os.environ['PYTEST_XDIST_WORKER']}_")
    os.environ["TMPDIR"] = _worker_tmp
    tempfile.tempdir = None  # gettempdir() reads TMPDIR again
    atexit.register(shutil.rmtree, _worker_tmp, ignore_errors=True)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import tfcompress as tfc  # noqa: E402


@pytest.fixture(scope="session")
def digits_data():
    return tfc.datasets.digits()


def small_cnn(input_shape=(8, 8, 1), name="small_cnn"):
    import keras

    inputs = keras.Input(input_shape, name="image")
    x = keras.layers.Conv2D(16, 3, padding="same", name="conv1")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU(name="relu1")(x)
    x = keras.layers.Conv2D(32, 3, padding="same", name="conv2")(x)
    x = keras.layers.ReLU(name="relu2")(x)
    x = keras.layers.MaxPooling2D(name="pool")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(32, activation="relu", name="fc1")(x)
    outputs = keras.layers.Dense(10, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


def operation_node_model(seed=0):
    """A Functional model whose graph holds keras.ops operation nodes (not layers): hard-swish written out as
    ``x * (relu6(x + 3.0) / 6.0)``, ``ops.hard_sigmoid``, ``ops.add``, ``x * 3.0``, a LayerScale-like ``(C,)``
    constant multiply and ``ops.mean``."""
    import keras
    from keras import ops

    L = keras.layers
    rng = np.random.default_rng(seed)
    inputs = keras.Input((12, 12, 3), name="image")
    x = L.Conv2D(8, 3, padding="same", name="stem")(inputs)
    x = L.BatchNormalization(name="stem_bn")(x)
    x = x * (ops.relu6(x + 3.0) / 6.0)
    gate = ops.hard_sigmoid(L.Conv2D(8, 1, name="gate_conv")(x))
    x = ops.add(x, x * gate)
    z = L.Conv2D(16, 1, name="expand")(x)
    z = ops.relu(z) * rng.uniform(0.5, 1.5, 16).astype("float32")
    z = L.Conv2D(8, 1, name="project")(z)
    x = x + z * 3.0
    x = ops.mean(x, axis=[1, 2])
    return keras.Model(inputs, L.Dense(4, name="head")(x), name="operation_nodes")


def convnext_style_model(input_shape=(32, 32, 3), dims=(16, 32), classes=10, seed=0):
    """A two-stage ConvNeXt-style Functional model: depthwise conv, LayerNormalization, an inverted MLP with
    GELU, LayerScale as a ``(C,)`` constant multiply operation, ``ops.add`` residuals, ``ops.mean`` head."""
    import keras
    from keras import ops

    L = keras.layers
    rng = np.random.default_rng(seed)
    inputs = keras.Input(input_shape)
    x = L.Conv2D(dims[0], 2, strides=2, name="stem")(inputs)
    x = L.LayerNormalization(epsilon=1e-6, name="stem_ln")(x)
    for stage, dim in enumerate(dims):
        if stage:
            x = L.LayerNormalization(epsilon=1e-6, name=f"down{stage}_ln")(x)
            x = L.Conv2D(dim, 2, strides=2, name=f"down{stage}")(x)
        shortcut = x
        x = L.DepthwiseConv2D(3, padding="same", name=f"s{stage}_dw")(x)
        x = L.LayerNormalization(epsilon=1e-6, name=f"s{stage}_ln")(x)
        x = L.Dense(4 * dim, name=f"s{stage}_pw1")(x)
        x = L.Activation("gelu", name=f"s{stage}_gelu")(x)
        x = L.Dense(dim, name=f"s{stage}_pw2")(x)
        x = ops.add(shortcut, x * rng.uniform(0.5, 1.5, dim).astype("float32"))
    x = L.LayerNormalization(epsilon=1e-6, name="head_ln")(ops.mean(x, axis=[1, 2]))
    return keras.Model(inputs, L.Dense(classes, name="head")(x), name="convnext_style")


def trained_on_digits(build, digits_data, epochs, seed=0):
    """``build()`` after seeding Keras with ``seed``, compiled as a classifier (Adam, 3e-3) and fitted on the
    digits training split in batches of 32: the same seed, builder and epochs give the same weights."""
    import keras

    keras.utils.set_random_seed(seed)
    (x, y), _ = digits_data
    model = tfc.zoo.compile_classifier(build(), learning_rate=3e-3)
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
    return model


@pytest.fixture(scope="session")
def trained_digits_model(digits_data):
    """A small Functional CNN trained on sklearn digits (~97% test accuracy), shared by tests."""
    return trained_on_digits(small_cnn, digits_data, epochs=25)


@pytest.fixture(scope="session")
def digits_tflites(trained_digits_model, digits_data):
    """``trained_digits_model`` as a float32 and an int8 .tflite (calibrated on 64 training images)."""
    (x, _), _ = digits_data
    return {"float32": tfc.to_tflite(trained_digits_model, mode="float32"),
            "int8": tfc.to_tflite(trained_digits_model, mode="int8", representative_data=x[:64])}


def keras_accuracy(model, x, y):
    logits = np.asarray(model.predict(x, verbose=0, batch_size=256))
    return float(np.mean(logits.argmax(1) == y))


TWO_LOGICAL_CPUS = f"""
import json
import sys
sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})  # the helper modules of tests/
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
import numpy as np
import tfcompress as tfc

(x, y), (x_test, y_test) = tfc.datasets.digits()
"""


def run_on_two_logical_cpus(body, timeout=600):
    """Runs ``body`` in a fresh interpreter with two logical CPUs (they must be set before TF starts).

    ``body`` sees ``tf``, ``keras``, ``np``, ``tfc`` and the digits data, can import the helper modules of tests/
    (``replica_checks``), and reports by printing ``"RESULT" + json.dumps(...)``; that JSON is returned.
    """
    import json
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", TWO_LOGICAL_CPUS + body], capture_output=True, text=True,
                          timeout=timeout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT")]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    return json.loads(lines[-1][len("RESULT"):])
