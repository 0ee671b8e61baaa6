"""tfc.load_model: Keras 2 (TF 2.x) .h5 files load into plain Keras 3 models, or are refused naming the layer and key."""

import json
import os
import shutil
import subprocess
import sys

import h5py
import keras
import numpy as np
import pytest

import tfcompress as tfc
from tfcompress.pipeline.cli import UsageError, load_keras_model

# Written by legacy tf_keras (Keras 2) in a child process, so this process's Keras 3 stays the only Keras here.
KERAS2_WRITER = r"""
import os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np, tf_keras as k2
k2.utils.set_random_seed(0)
inputs = k2.Input((12, 12, 3))
a = k2.layers.Conv2D(8, 3, padding="same")(inputs)
a = k2.layers.BatchNormalization()(a)
a = k2.layers.ReLU(6.0)(a)
b = k2.layers.DepthwiseConv2D(3, padding="same")(a)
a = k2.layers.Add()([a, b])
a = k2.layers.GlobalAveragePooling2D()(a)
a = k2.layers.Reshape((2, 4))(a)
a = k2.layers.LSTM(6)(a)
outputs = k2.layers.Dense(4, activation="softmax")(a)
model = k2.Model(inputs, outputs)
model.compile("adam", "sparse_categorical_crossentropy")
x = np.random.default_rng(0).random((5, 12, 12, 3), dtype=np.float32)
model.save(sys.argv[1])
np.save(sys.argv[2], x)
np.save(sys.argv[3], model.predict(x, verbose=0))
"""


@pytest.fixture(scope="module")
def keras2_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keras2")
    paths = [str(folder / n) for n in ("model.h5", "x.npy", "y.npy")]
    subprocess.run([sys.executable, "-c", KERAS2_WRITER, *paths], check=True, capture_output=True, timeout=300)
    return paths


def _edited(path, tmp_path, edit):
    """A copy of the .h5 file whose model config `edit` changed in place."""
    copy = str(tmp_path / "edited.h5")
    shutil.copyfile(path, copy)
    with h5py.File(copy, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        edit({layer["config"]["name"]: layer for layer in config["config"]["layers"]})
        f.attrs["model_config"] = json.dumps(config)
    return copy


def test_a_keras2_h5_file_keras3_refuses_loads_as_a_plain_keras3_model(keras2_file):
    path, x_path, y_path = keras2_file
    with pytest.raises(Exception, match="groups"):  # what a user hits with Keras 3 alone
        keras.models.load_model(path)
    with pytest.warns(UserWarning, match=r"'depthwise_conv2d' \(DepthwiseConv2D\): dropped groups=1") as caught:
        model = tfc.load_model(path)
    assert "'lstm' (LSTM): dropped time_major=False" in str(caught[0].message)
    # The same weights: Keras 3 computes what Keras 2 did (float32 kernels, same maths).
    np.testing.assert_allclose(model.predict(np.load(x_path), verbose=0), np.load(y_path), atol=1e-5)
    assert all(type(layer).__module__.startswith("keras.") for layer in model.layers)
    assert model.optimizer is not None  # compile=True restores the training configuration
    assert os.path.getsize(path) > 0 and keras.models.load_model  # the original file is left as it was
    with pytest.raises(Exception, match="groups"):
        keras.models.load_model(path)


def test_the_cli_reads_keras2_h5_files(keras2_file):
    with pytest.warns(UserWarning, match="Keras 2 file"):
        model = load_keras_model(keras2_file[0])
    assert isinstance(model, keras.Model) and getattr(model, "optimizer", None) is None  # loaded without compiling


def test_a_setting_keras3_cannot_express_is_refused_naming_layer_and_key(keras2_file, tmp_path):
    def grouped(layers):
        layers["depthwise_conv2d"]["config"]["groups"] = 2
    with pytest.raises(tfc.ModelLoadError, match=r"'depthwise_conv2d' \(DepthwiseConv2D\) has groups=2"):
        tfc.load_model(_edited(keras2_file[0], tmp_path, grouped))


def test_an_unknown_key_and_an_unknown_class_are_named(keras2_file, tmp_path):
    def unknown_key(layers):
        layers["depthwise_conv2d"]["config"].pop("groups")
        layers["dense"]["config"]["sharpness"] = 3
    with pytest.raises(tfc.ModelLoadError, match=r"'dense' \(Dense\) has key\(s\) \['sharpness'\]"):
        tfc.load_model(_edited(keras2_file[0], tmp_path, unknown_key))

    def custom_class(layers):
        layers["re_lu"]["class_name"] = "SwishBlock"
    with pytest.raises(tfc.ModelLoadError, match=r"'re_lu' is a 'SwishBlock'.*custom_objects=\{'SwishBlock'"):
        tfc.load_model(_edited(keras2_file[0], tmp_path, custom_class))
    with pytest.raises(UsageError, match="SwishBlock"):
        load_keras_model(_edited(keras2_file[0], tmp_path, custom_class))


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.h5"):
        tfc.load_model(tmp_path / "nothing.h5")
