"""A BackupAndRestore callback whose backups survive a kill at any moment."""

import json
import os
import re

import keras

from tfcompress.core.files import write_atomic

MANIFEST = "tfcompress_backup.json"
_WEIGHTS_NAME = re.compile(r"^backup-\d+-\d+\.weights\.h5$")
# What keras.callbacks.BackupAndRestore leaves behind; read once so users can switch callbacks mid-run.
_KERAS_WEIGHTS, _KERAS_METADATA = "latest.weights.h5", "training_metadata.json"


class BackupAndRestore(keras.callbacks.Callback):
    """Backs up the training state during `fit` and restores it when `fit` restarts.

    A drop-in for `keras.callbacks.BackupAndRestore` that never leaves a broken
    backup. Keras's callback rewrites ``latest.weights.h5`` in place and then the
    epoch in a second file, so a SIGKILL (preemption, the OOM killer, a closed
    laptop) during a backup leaves a corrupted file (the next run fails to start)
    or weights and epoch that disagree. This callback writes each backup to a
    new file, flushes it to disk, and only then publishes it by atomically
    replacing a small JSON manifest that names the file and the epoch; the
    previous backup is deleted after that. A kill at any moment leaves the old
    or the new backup complete, so backing up every few batches is safe.

    Resuming follows Keras's semantics: weights and optimizer state (including
    ``optimizer.iterations``, which `PruningCallback`'s schedule follows) come
    from the last backup, and `fit` restarts at the start of the epoch that
    backup was taken in. Use a fresh ``backup_dir`` per training run, as with
    Keras's callback. It reads a backup left by `keras.callbacks.BackupAndRestore`
    too, so a run can switch to this callback when it resumes.

    Args:
        backup_dir: folder for the backup (created if missing). Only this
            callback's own files in it are ever written or deleted.
        save_freq: ``"epoch"`` (back up at every epoch end) or a positive
            integer: back up every that many batches.
        delete_checkpoint: delete the backup when `fit` completes.

    Example:
        >>> model.fit(x, y, epochs=3, callbacks=[
        ...     tfc.PruningCallback(tfc.PolynomialDecay(0.0, 0.8, 0, 2000)),
        ...     tfc.BackupAndRestore("run1_backup", save_freq=100)])
        >>> # killed? run the same script again: it continues where the last backup was taken.
    """

    def __init__(self, backup_dir, save_freq="epoch", delete_checkpoint=True):
        super().__init__()
        if not isinstance(backup_dir, (str, os.PathLike)) or not str(backup_dir):
            raise ValueError(f"backup_dir must be a folder path, got {backup_dir!r}.")
        if not (save_freq == "epoch" or (isinstance(save_freq, int) and not isinstance(save_freq, bool)
                                         and save_freq > 0)):
            raise ValueError(f"save_freq must be 'epoch' or a positive number of batches, got {save_freq!r}.")
        self.backup_dir = os.fspath(backup_dir)
        self.save_freq = save_freq
        self.delete_checkpoint = delete_checkpoint
        self._manifest_path = os.path.join(self.backup_dir, MANIFEST)
        self._epoch = 0
        self._last_batch = -1
        self._batches_since_save = 0
        self._saves = 0
        self._restored = False

    def get_config(self):
        return {"backup_dir": self.backup_dir, "save_freq": self.save_freq,
                "delete_checkpoint": self.delete_checkpoint}

    # -- restore ---------------------------------------------------------------

    def on_train_begin(self, logs=None):
        if not self.model.built:
            raise ValueError(
                f"BackupAndRestore needs a built model; {self.model.name!r} is not built. Build it first, "
                "e.g. by calling it on one batch."
            )
        state = self._read_state()
        if state is None:
            return
        weights_path, epoch = state
        optimizer = self.model.optimizer
        if optimizer is not None and not optimizer.built:
            optimizer.build(self.model.trainable_variables)  # its variables must exist to be restored
        try:
            self.model.load_weights(weights_path)
        except Exception as exc:
            raise RuntimeError(
                f"BackupAndRestore could not restore {weights_path!r} ({exc}); it does not fit this model. "
                f"Use a fresh backup_dir for a different model, or delete {self.backup_dir!r} to start over."
            ) from exc
        # Private Keras attribute, set the same way by keras.callbacks.BackupAndRestore: fit() has no
        # public way to start at an epoch from inside a callback.
        self.model._initial_epoch = epoch
        self._restored = True
        self._epoch = epoch

    def _read_state(self):
        if os.path.exists(self._manifest_path):
            try:
                with open(self._manifest_path) as f:
                    state = json.load(f)
                weights_name, epoch = state["weights"], int(state["epoch"])
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise RuntimeError(
                    f"BackupAndRestore: the backup manifest {self._manifest_path!r} is unreadable ({exc}); "
                    f"it was edited or written by something else. Delete {self.backup_dir!r} to start over."
                ) from exc
            return os.path.join(self.backup_dir, os.path.basename(weights_name)), epoch
        keras_weights = os.path.join(self.backup_dir, _KERAS_WEIGHTS)
        if os.path.exists(keras_weights):
            epoch = 0
            metadata = os.path.join(self.backup_dir, _KERAS_METADATA)
            if os.path.exists(metadata):
                with open(metadata) as f:
                    epoch = int(json.load(f).get("epoch", 0))
            return keras_weights, epoch
        return None

    # -- back up ---------------------------------------------------------------

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._last_batch = -1

    def on_train_batch_end(self, batch, logs=None):
        if self.save_freq == "epoch":
            return
        # With steps_per_execution > 1 Keras reports only every k-th batch index.
        self._batches_since_save += batch - self._last_batch if batch > self._last_batch else batch + 1
        self._last_batch = batch
        if self._batches_since_save >= self.save_freq:
            self._batches_since_save = 0
            steps = (self.params or {}).get("steps")
            if steps and batch + 1 >= steps:  # the epoch's last batch: a restart begins the next epoch
                self._save(epoch=self._epoch + 1)
            else:
                self._save(epoch=self._epoch)

    def on_epoch_end(self, epoch, logs=None):
        if self.save_freq == "epoch":
            self._save(epoch=epoch + 1)

    def _save(self, epoch):
        os.makedirs(self.backup_dir, exist_ok=True)
        self._saves += 1
        name = f"backup-{os.getpid()}-{self._saves:08d}.weights.h5"
        path = os.path.join(self.backup_dir, name)
        # Keras writes the .h5 in place; under a new name a kill here only leaves an orphan that
        # the next backup removes, never a damaged published backup.
        self.model.save_weights(path, overwrite=True)
        with open(path, "rb") as f:
            os.fsync(f.fileno())
        # "epoch" is where fit restarts: a mid-epoch backup replays its epoch from the start.
        manifest = {"weights": name, "epoch": epoch}
        write_atomic(self._manifest_path, json.dumps(manifest), overwrite=True, argument="backup_dir")
        self._remove_backups(keep=name)

    def _remove_backups(self, keep=None):
        for entry in os.listdir(self.backup_dir):
            if entry != keep and _WEIGHTS_NAME.match(entry):
                try:
                    os.remove(os.path.join(self.backup_dir, entry))
                except FileNotFoundError:
                    pass

    def on_train_end(self, logs=None):
        if self._restored:
            # Keras never clears it, so a later fit() on the same model would skip epochs.
            self.model._initial_epoch = None
            self._restored = False
        if self.delete_checkpoint:
            self.delete_backup()

    def delete_backup(self):
        """Deletes this callback's backup files (and ``backup_dir`` if nothing else is in it)."""
        if not os.path.isdir(self.backup_dir):
            return
        # Manifest first: from here on the folder holds no backup that a restart would use.
        for name in (MANIFEST, _KERAS_METADATA, _KERAS_WEIGHTS):
            path = os.path.join(self.backup_dir, name)
            if os.path.exists(path):
                os.remove(path)
        self._remove_backups()
        try:
            os.rmdir(self.backup_dir)  # only if nothing of the user's is in it
        except OSError:
            pass
