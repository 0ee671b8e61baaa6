"""``PruningCallback``: magnitude pruning during ``model.fit``, on the plain model."""

import warnings

import keras
import numpy as np

from tfcompress.pruning import pruner as pruner_module
from tfcompress.pruning import schedules as schedules_module


class PruningCallback(keras.callbacks.Callback):
    """Prunes a plain Keras 3 model during ``fit``: the model you prune is the model you ship.

    No wrapper layers and nothing to strip: masks live beside the weights and
    are applied inside the compiled train step after every optimizer update,
    so every batch boundary, checkpoint and saved ``.keras`` file is sparse and
    loads with plain ``keras.models.load_model``. Masks are recomputed from
    weight magnitudes every ``schedule.frequency`` steps (in Python, between
    steps), which keeps the per-step overhead near zero.

    The schedule's clock counts optimizer steps since pruning started, 1 for
    the first step as in tfmot. On the first batch it sees, the callback
    places the clock from the epoch ``fit`` starts at (``initial_epoch`` x
    steps per epoch, which ``fit(initial_epoch=...)`` and
    ``keras.callbacks.BackupAndRestore`` set when resuming), then follows
    ``optimizer.iterations``, which Keras saves with the optimizer. So a
    resumed run continues the schedule, also with a fresh optimizer, and
    dense pre-training with the same optimizer does not count as pruning.
    Calling ``fit`` again with the same callback continues the clock.

    Weights that are already sparser than the schedule asks when pruning
    starts (a pruned model saved and loaded with ``load_model`` and fitted
    with a new callback and no ``initial_epoch``, or an already-pruned model
    fine-tuned) keep their zeros: masks start from them instead of all ones,
    the schedule continues from the first step at which it asks for their
    sparsity (past its end if they are sparser than ``final_sparsity``), and
    mask updates never make them denser. With ``verbose`` one line says so.
    Structured modes count only the zeros the structure could have pruned
    (whole blocks, M:N groups with at least M zeros); M:N keeps its clock.
    A fresh dense model starts at step 0 as before.

    Args:
        schedule: ``PolynomialDecay``, ``ConstantSparsity``, a tfmot schedule or a
            callable ``step -> (should_prune, sparsity)``.
        structure: ``"unstructured"``, ``"block"`` (see ``block_shape``) or
            ``"2:4"`` (any ``"M:N"``: M zeros in every N weights along the
            input-channel axis).
        block_shape: (rows, cols) blocks on the (inputs, outputs) view of each
            kernel for ``structure="block"``.
        scope: ``"erk"`` (default: density by weight size, small layers stay
            dense), ``"global"`` (one magnitude ranking across weights) or
            ``"layer"`` (every weight at the schedule's sparsity, like tfmot).
            See ``Pruner``.
        min_density: for ``scope="global"``, the smallest fraction of weights
            any one weight keeps.
        layers: names of the only layers to prune (DepthwiseConv opts in here).
        skip: names of layers never to prune.
        log_dir: if set, per-weight sparsity and the scheduled sparsity are
            written there for TensorBoard at every mask update and epoch end.
        verbose: 1 prints the pruning plan table when training starts, and a
            line when the weights were already sparse and the schedule skips ahead.

    Example:
        >>> cb = PruningCallback(PolynomialDecay(0.0, 0.75, begin_step=0, end_step=2000))
        >>> model.fit(x, y, epochs=3, callbacks=[cb])
        >>> print(sparsity_report(model))
    """

    def __init__(self, schedule, structure="unstructured", block_shape=(4, 1), scope="erk",
                 min_density=0.05, layers=None, skip=None, log_dir=None, verbose=1):
        super().__init__()
        # Validate now so mistakes surface at construction, not after an epoch of data loading.
        self.schedule = schedules_module.get(schedule)
        pruner_module.parse_structure(structure, block_shape)
        if scope not in pruner_module.SCOPES:
            raise ValueError(f"scope must be one of {pruner_module.SCOPES}, got {scope!r}.")
        if log_dir is not None and not isinstance(log_dir, str):
            raise TypeError(f"log_dir must be a folder path (str) or None, got {log_dir!r}.")
        self._pruner_kwargs = dict(
            structure=structure, block_shape=block_shape, scope=scope,
            min_density=min_density, layers=layers, skip=skip,
        )
        self.log_dir = log_dir
        self.verbose = verbose
        self.pruner = None
        self._offset = None
        self._epoch = 0
        self._started = False
        self._announce = False
        self._writer = None

    def on_train_begin(self, logs=None):
        if self.pruner is None or self.pruner.model is not self.model:
            self.pruner = pruner_module.Pruner(self.model, self.schedule, **self._pruner_kwargs)
            self._offset = None
            self._announce = bool(self.verbose)
            if self.verbose:
                self.pruner.summary()
        self._started = False

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def _iterations(self):
        return int(self.model.optimizer.iterations.numpy())

    def _start(self, batch):
        # Runs at the first batch, not in on_train_begin: BackupAndRestore restores
        # the optimizer's iterations in its own on_train_begin, which may run after ours.
        iterations = self._iterations()
        if self._offset is None:
            steps_per_epoch = self.params.get("steps") if self.params else None
            done = self._epoch * steps_per_epoch + batch if steps_per_epoch else batch
            self._offset = iterations - done
            self.pruner.step = done
            # Keras's BackupAndRestore and ours record the restored epoch in the model's private
            # `_initial_epoch` (None otherwise); a restore mid-epoch 0 must not look like a fresh start.
            self.pruner.resumed = getattr(self.model, "_initial_epoch", None) is not None
        self.pruner.attach()
        # fit() builds its train function before on_train_begin and reuses it
        # across fit() calls; retrace so the masking constraints are compiled in.
        self.model.make_train_function(force=True)
        self._started = True

    def on_train_batch_begin(self, batch, logs=None):
        if not self._started:
            self._start(batch)
        step = self._iterations() - self._offset + 1
        updated = self.pruner.on_step(step)  # may skip the schedule ahead, see Pruner.on_step
        if self._announce:
            self._announce = False
            if self.pruner.start_sparsity is not None:
                print(f"Pruning: weights already {self.pruner.start_sparsity:.1%} sparse: "
                      f"continuing the schedule from step {self.pruner.step}")
        if updated:
            self._log(self.pruner.step)

    def on_epoch_end(self, epoch, logs=None):
        if self._started:
            self._log(self.pruner.step)

    def on_train_end(self, logs=None):
        if not self._started:
            return
        # fit() may have overwritten weights after the last step (optimizer EMA).
        self.pruner.apply_masks()
        self.pruner.detach()
        self.model.make_train_function(force=True)
        self._started = False
        shortfall = self.pruner.shortfall()
        if shortfall:
            warnings.warn(f"PruningCallback: {shortfall}", UserWarning, stacklevel=2)
        if self._writer is not None:
            self._writer.flush()

    def _log(self, step):
        if self.log_dir is None:
            return
        import tensorflow as tf

        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        sparsities = self.pruner.sparsities()
        sizes = {e.path: int(np.prod(e.shape)) for e in self.pruner.targets}
        scalars = {f"pruning/{path}": value for path, value in sparsities.items()}
        scalars["pruning/overall"] = sum(sparsities[p] * sizes[p] for p in sizes) / sum(sizes.values())
        scalars["pruning/scheduled_sparsity"] = self.schedule.sparsity(step)
        # tf.summary.scalar needs the tensorboard package; tf.summary.write with the
        # scalars plugin's metadata writes the same event without it.
        metadata = tf.compat.v1.SummaryMetadata(
            plugin_data=tf.compat.v1.SummaryMetadata.PluginData(plugin_name="scalars")
        )
        with self._writer.as_default(step=step):
            for tag, value in scalars.items():
                tf.summary.write(tag, tf.constant(value, tf.float32), metadata=metadata)
