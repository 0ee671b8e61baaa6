"""tfc.BackupAndRestore: backups are published atomically and restored like Keras's."""

import json
import os

import keras
import numpy as np
import pytest

import tfcompress as tfc
from tfcompress.core.backup import MANIFEST


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3)])
    model.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype("float32")
    return x, (x[:, 0] > 0).astype("int32") + (x[:, 1] > 0).astype("int32")


class _StopAt(keras.callbacks.Callback):
    """Stands in for a kill: raises out of fit at (epoch, batch) without any cleanup running."""

    def __init__(self, epoch, batch):
        super().__init__()
        self.at = (epoch, batch)
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) == self.at:
            raise KeyboardInterrupt


class _Epochs(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seen = []

    def on_epoch_begin(self, epoch, logs=None):
        self.seen.append(epoch)


def _interrupted_fit(callback, epochs, stop_at):
    """Fits a fresh model with ``callback`` until ``_StopAt(*stop_at)`` interrupts it; returns the model."""
    x, y = _data()
    model = _model()
    with pytest.raises(KeyboardInterrupt):
        model.fit(x, y, epochs=epochs, batch_size=8, verbose=0, callbacks=[callback, _StopAt(*stop_at)])
    return model


def _resumed_fit(callback, epochs, *more_callbacks):
    """Fits a differently initialised model with ``callback``; returns it and the epochs it ran."""
    x, y = _data()
    model, seen = _model(seed=1), _Epochs()
    model.build((None, 8))
    model.fit(x, y, epochs=epochs, batch_size=8, verbose=0, callbacks=[callback, seen, *more_callbacks])
    return model, seen.seen


def test_interrupted_fit_resumes_from_the_mid_epoch_backup(tmp_path):
    backup = tmp_path / "backup"
    model = _interrupted_fit(tfc.BackupAndRestore(backup, save_freq=3), epochs=4, stop_at=(2, 4))
    manifest = json.loads((backup / MANIFEST).read_text())
    # 8 batches per epoch, a backup every 3rd batch counted across epochs: the last one was taken
    # after the 5th batch of epoch 2 (the saved iterations below), just before the interruption.
    assert manifest["epoch"] == 2
    assert [p.name for p in backup.iterdir() if p.name.endswith(".weights.h5")] == [manifest["weights"]]
    saved_iterations = int(model.optimizer.iterations.numpy())
    assert saved_iterations == 2 * 8 + 5

    class _CheckRestored(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if not hasattr(self, "iterations"):
                self.iterations = int(self.model.optimizer.iterations.numpy())

    check = _CheckRestored()
    resumed, epochs = _resumed_fit(tfc.BackupAndRestore(backup, save_freq=3), 4, check)
    assert epochs == [2, 3]
    assert check.iterations == saved_iterations
    assert not backup.exists(), "a completed fit deletes its backup"
    assert resumed._initial_epoch is None, "a later fit() must not skip epochs"


def test_a_half_written_backup_from_a_killed_save_is_ignored_and_cleaned(tmp_path):
    backup = tmp_path / "backup"
    _interrupted_fit(tfc.BackupAndRestore(backup), epochs=3, stop_at=(1, 2))
    # A save killed before publishing leaves only a torn file that no manifest names.
    torn = backup / "backup-99999-00000001.weights.h5"
    torn.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    user_file = backup / "notes.txt"
    user_file.write_text("mine")

    assert _resumed_fit(tfc.BackupAndRestore(backup), 3)[1] == [1, 2]
    assert not torn.exists()
    assert user_file.read_text() == "mine", "only the callback's own files are deleted"
    assert sorted(p.name for p in backup.iterdir()) == ["notes.txt"]


def test_reads_a_backup_left_by_keras_own_callback(tmp_path):
    backup = tmp_path / "backup"
    _interrupted_fit(keras.callbacks.BackupAndRestore(str(backup)), epochs=3, stop_at=(1, 2))
    assert _resumed_fit(tfc.BackupAndRestore(backup), 3)[1] == [1, 2]


def test_a_backup_of_another_model_gives_a_clear_error(tmp_path):
    x, y = _data()
    backup = tmp_path / "backup"
    _interrupted_fit(tfc.BackupAndRestore(backup), epochs=2, stop_at=(1, 0))
    other = keras.Sequential([keras.Input((8,)), keras.layers.Dense(5), keras.layers.Dense(3)])
    other.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with pytest.raises(RuntimeError, match="does not fit this model.*fresh backup_dir"):
        other.fit(x, y, epochs=2, verbose=0, callbacks=[tfc.BackupAndRestore(backup)])


@pytest.mark.parametrize("save_freq", [0, -5, True, "batch", 2.5])
def test_bad_save_freq_is_named(tmp_path, save_freq):
    with pytest.raises(ValueError, match="save_freq"):
        tfc.BackupAndRestore(tmp_path, save_freq=save_freq)


def test_unbuilt_model_is_named(tmp_path):
    model = keras.Sequential([keras.layers.Dense(3)])
    model.compile("adam", "mse")
    callback = tfc.BackupAndRestore(tmp_path / "b")
    callback.set_model(model)
    with pytest.raises(ValueError, match="not built"):
        callback.on_train_begin()
    assert not os.path.exists(tmp_path / "b")
