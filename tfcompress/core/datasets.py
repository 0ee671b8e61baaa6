"""Real, offline-friendly datasets used by the demo, the benchmarks and the tests.

Every loader returns ``((x_train, y_train), (x_test, y_test))`` with float32
NHWC images in [0, 1] and int64 labels.
"""

import gzip
import os
import shutil

import numpy as np

DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
_FASHION_FILES = (
    "train-labels-idx1-ubyte.gz",
    "train-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
)

def _keras_datasets_dir():
    base = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return os.path.join(base, "datasets")


def _keras_cache_dir():
    return os.path.join(_keras_datasets_dir(), "fashion-mnist")


def _seed_keras_cache_from_debian(source_dir=None):
    """Copies Debian's Fashion-MNIST files into Keras's cache; True when it did (or they were there)."""
    source_dir = source_dir or DEBIAN_FASHION_MNIST_DIR
    cache = _keras_cache_dir()
    if all(os.path.exists(os.path.join(cache, f)) for f in _FASHION_FILES):
        return True
    if not all(os.path.exists(os.path.join(source_dir, f)) for f in _FASHION_FILES):
        return False
    os.makedirs(cache, exist_ok=True)
    for name in _FASHION_FILES:
        target = os.path.join(cache, name)
        if not os.path.exists(target):
            # Copy under a temporary name first so a half-copied file is never taken for a real one.
            tmp = target + ".part"
            shutil.copyfile(os.path.join(source_dir, name), tmp)
            os.replace(tmp, target)
    return True


def _read_idx(path):
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _to_float_nhwc(images):
    return (images.astype(np.float32) / 255.0)[..., np.newaxis]


def fashion_mnist(limit_train=None, limit_test=None):
    """Loads Fashion-MNIST (60k train / 10k test) as float32 NHWC in [0, 1].

    Works offline when Debian's ``dataset-fashion-mnist`` package is installed
    (its files seed Keras's cache), otherwise falls back to Keras's own download.

    Args:
        limit_train: keep only the first N training samples (None keeps all).
        limit_test: keep only the first N test samples (None keeps all).

    Returns:
        ``((x_train, y_train), (x_test, y_test))``; images of shape (N, 28, 28, 1).

    Raises:
        RuntimeError: neither the Debian files nor a download is available; the
            message names both routes.
    """
    seeded = _seed_keras_cache_from_debian()
    cache = _keras_cache_dir()
    if seeded:
        x_train = _read_idx(os.path.join(cache, "train-images-idx3-ubyte.gz"))
        y_train = _read_idx(os.path.join(cache, "train-labels-idx1-ubyte.gz"))
        x_test = _read_idx(os.path.join(cache, "t10k-images-idx3-ubyte.gz"))
        y_test = _read_idx(os.path.join(cache, "t10k-labels-idx1-ubyte.gz"))
    else:
        import keras

        try:
            (x_train, y_train), (x_test, y_test) = keras.datasets.fashion_mnist.load_data()
        except Exception as exc:  # network errors come in many types
            raise RuntimeError(
                "Fashion-MNIST is not available offline and could not be downloaded "
                f"({type(exc).__name__}: {exc}). Either install Debian's package "
                "(`apt-get install dataset-fashion-mnist`, files land in "
                f"{DEBIAN_FASHION_MNIST_DIR}) or allow Keras to download it into {cache}."
            ) from exc
    x_train, x_test = _to_float_nhwc(x_train), _to_float_nhwc(x_test)
    y_train, y_test = y_train.astype(np.int64), y_test.astype(np.int64)
    if limit_train is not None:
        x_train, y_train = x_train[:limit_train], y_train[:limit_train]
    if limit_test is not None:
        x_test, y_test = x_test[:limit_test], y_test[:limit_test]
    return (x_train, y_train), (x_test, y_test)


def mnist(limit_train=None, limit_test=None):
    """Loads MNIST (60k train / 10k test) through ``keras.datasets.mnist`` as float32 NHWC in [0, 1].

    Keras reads its cache (``$KERAS_HOME/datasets/mnist.npz``), else downloads it.

    Raises:
        RuntimeError: not cached and no download; the message names the cache file to fill.
    """
    import keras

    cached = os.path.join(_keras_datasets_dir(), "mnist.npz")
    try:
        (x_train, y_train), (x_test, y_test) = keras.datasets.mnist.load_data()
    except Exception as exc:  # network errors come in many types
        reason = " ".join(str(exc).split())[:200]
        raise RuntimeError(
            f"MNIST is not in Keras's cache ({cached}) and Keras could not download it "
            f"({type(exc).__name__}: {reason}). Run keras.datasets.mnist.load_data() once on a machine online "
            f"and copy mnist.npz to {cached}.") from None
    x_train, x_test = _to_float_nhwc(x_train)[:limit_train], _to_float_nhwc(x_test)[:limit_test]
    return (x_train, y_train.astype(np.int64)[:limit_train]), (x_test, y_test.astype(np.int64)[:limit_test])


def digits(test_fraction=0.25, seed=0):
    """scikit-learn's bundled 8x8 digits (1,797 images), split into train and test.

    Small enough for unit tests: a model trains on it in seconds.

    Returns:
        ``((x_train, y_train), (x_test, y_test))``; images of shape (N, 8, 8, 1) in [0, 1].
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise RuntimeError(
            "digits() needs scikit-learn, which ships the data: `pip install scikit-learn` "
            "(or `pip install tfcompress[test]`)."
        ) from exc
    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[..., np.newaxis]
    y = bunch.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = int(round(len(x) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    return (x[train], y[train]), (x[test], y[test])


_LOADERS = {"fashion_mnist": fashion_mnist, "mnist": mnist, "digits": digits}
NAMES = tuple(_LOADERS)
_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def from_npz(path):
    """Loads ``((x_train, y_train), (x_test, y_test))`` from an .npz file holding those four arrays.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a readable .npz, or arrays missing; the message lists what it holds.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"data file {path!r} not found.")
    try:
        with np.load(path, allow_pickle=False) as npz:
            files = list(npz.files)
            arrays = {k: npz[k] for k in _NPZ_KEYS if k in files}
    except Exception as exc:  # noqa: BLE001 - zipfile, pickle and format errors of a damaged file
        raise ValueError(f"data file {path!r} is not a readable .npz file ({type(exc).__name__}: {exc}).") from None
    missing = [k for k in _NPZ_KEYS if k not in arrays]
    if missing:
        raise ValueError(f"data file {path!r} lacks arrays {missing}; it must hold x_train, y_train, x_test, y_test "
                         f"(it holds {sorted(files)}).")
    x, y, x_test, y_test = (arrays[k] for k in _NPZ_KEYS)
    return (x.astype("float32"), y), (x_test.astype("float32"), y_test)


def load(name, **kwargs):
    """Loads a dataset by name (one of `NAMES`: ``"fashion_mnist"``, ``"mnist"``, ``"digits"``) or from an .npz path.

    Returns:
        ``((x_train, y_train), (x_test, y_test))``.

    Raises:
        ValueError: an unknown name; FileNotFoundError / ValueError: a bad .npz (see `from_npz`);
        RuntimeError: a named dataset that is not available offline.
    """
    if isinstance(name, (str, os.PathLike)) and os.fspath(name).lower().endswith(".npz"):
        return from_npz(os.fspath(name))
    if name not in _LOADERS:
        hint = " (a file given as data must be an .npz)" if isinstance(name, str) and os.path.isfile(name) else ""
        raise ValueError(
            f"Unknown dataset {name!r}{hint}. Choose one of {', '.join(NAMES)}, or an .npz file holding x_train, "
            "y_train, x_test, y_test."
        )
    return _LOADERS[name](**kwargs)
