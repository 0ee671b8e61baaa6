"""Datasets, reference models and atomic files."""

import os

import keras
import numpy as np
import pytest

import tfcompress as tfc
from tfcompress.core import datasets


def test_fashion_mnist_from_debian_files():
    (x, y), (xt, yt) = tfc.datasets.fashion_mnist()
    assert x.shape == (60000, 28, 28, 1) and xt.shape == (10000, 28, 28, 1)
    assert x.dtype == np.float32 and 0.0 <= x.min() and x.max() == 1.0
    assert y.dtype == np.int64 and set(np.unique(yt)) == set(range(10))
    assert np.bincount(yt).tolist() == [1000] * 10


def test_fashion_mnist_error_names_both_routes(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST_DIR", str(tmp_path / "absent"))

    def offline(*args, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(keras.datasets.fashion_mnist, "load_data", offline)
    with pytest.raises(RuntimeError, match="apt-get install dataset-fashion-mnist.*download"):
        tfc.datasets.fashion_mnist()


def test_digits():
    (x, y), (xt, yt) = tfc.datasets.digits()
    assert x.shape[1:] == (8, 8, 1) and len(x) + len(xt) == 1797 and x.max() <= 1.0


def test_reference_cnn_is_exactly_the_specified_architecture():
    model = tfc.zoo.reference_cnn()
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds == [
        "InputLayer",
        "Conv2D", "BatchNormalization", "ReLU", "MaxPooling2D",
        "Conv2D", "BatchNormalization", "ReLU", "MaxPooling2D",
        "Conv2D", "BatchNormalization", "ReLU",
        "GlobalAveragePooling2D", "Dense", "Dense",
    ]
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.filters for c in convs] == [32, 64, 128]
    assert all(c.kernel_size == (3, 3) and c.padding == "same" for c in convs)
    assert model.layers[-2].units == 128 and model.layers[-2].activation.__name__ == "relu"
    assert model.layers[-1].units == 10 and model.layers[-1].activation.__name__ == "linear"
    assert model.count_params() == 111_370
    assert tfc.zoo.reference_cnn(width=2).layers[1].filters == 64


def test_mobilenet_style_uses_depthwise_separable_blocks():
    model = tfc.zoo.mobilenet_style()
    assert sum(isinstance(layer, keras.layers.DepthwiseConv2D) for layer in model.layers) == 5
    assert model.output_shape == (None, 10)


def test_write_atomic(tmp_path):
    path = tmp_path / "out.bin"
    tfc.write_atomic(path, b"one")
    with pytest.raises(tfc.OutputExistsError, match="overwrite=True"):
        tfc.write_atomic(path, b"two")
    assert path.read_bytes() == b"one"
    tfc.write_atomic(path, "three", overwrite=True)
    assert path.read_text() == "three"
    with pytest.raises(IsADirectoryError, match="directory"):
        tfc.write_atomic(tmp_path, b"x")
    assert os.listdir(tmp_path) == ["out.bin"]


def test_write_atomic_gives_normal_permissions(tmp_path):
    path = tmp_path / "perm.bin"
    tfc.write_atomic(path, b"x")
    mask = os.umask(0)
    os.umask(mask)
    assert (os.stat(path).st_mode & 0o777) == (0o666 & ~mask)
