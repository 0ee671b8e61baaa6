"""tfc.datasets: Fashion-MNIST from the Debian package or a download, the bundled digits, and .npz files."""

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


def test_datasets_load_reads_npz_and_names_what_is_missing(tmp_path):
    path = str(tmp_path / "d.npz")
    np.savez(path, x_train=np.zeros((4, 2, 2, 1)), y_train=np.zeros(4), x_test=np.zeros((2, 2, 2, 1)), y_test=np.zeros(2))
    (x, _), (x_test, _) = datasets.load(path)
    assert x.dtype == np.float32 and x_test.shape == (2, 2, 2, 1)
    bad = str(tmp_path / "bad.npz")
    np.savez(bad, x_train=np.zeros(2))
    with pytest.raises(ValueError, match=r"lacks arrays \['y_train', 'x_test', 'y_test'\]"):
        datasets.load(bad)
    with pytest.raises(ValueError, match="Unknown dataset 'cifar'"):
        datasets.load("cifar")
