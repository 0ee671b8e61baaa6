"""``ChannelPruningCallback``: structural (channel) pruning during ``model.fit``, then `shrink`."""

import warnings

import keras
import numpy as np

from tfcompress.pruning import channels, importance as importance_module
from tfcompress.pruning import schedules as schedules_module
from tfcompress.pruning.pruner import MaskConstraint


class ChannelPruningCallback(keras.callbacks.Callback):
    """Zeroes whole channel groups while the model trains; `tfc.shrink` then removes them.

    The schedule's sparsity is the fraction of removable channels (units) that are
    zeroed. At each of its mask updates the units are ranked by ``importance`` and
    the lowest ones are masked: their filters, biases and the BatchNormalization
    gamma/beta on them are multiplied by a mask inside the compiled train step, as
    `PruningCallback` does for single weights (no wrapper layers; the model keeps its
    shape while it trains). A pruned unit stays pruned. The clock is the optimizer's
    iterations, so a run resumed by `BackupAndRestore` continues the schedule, and a
    model that already has zeroed units starts with them masked.

    Args:
        schedule: ``PolynomialDecay``, ``ConstantSparsity``, a tfmot schedule, or a
            callable ``step -> (should_prune, sparsity)``; sparsity = fraction of channels.
        importance: ``"l1"``, ``"l2"``, ``"bn"`` or ``"taylor"`` (``"taylor"`` needs ``data``), or a function
            ``layer -> scores`` (see `importance`).
        scope: ``"global"`` or ``"layer"`` (see `prune_channels`).
        round_to: kept widths are multiples of this where possible.
        max_group_ratio: at most this fraction of any one group's channels is removed (None: no cap); e.g.
            0.6 keeps residual streams from being cut to the ``round_to`` floor.
        layers: names of the only producers to prune.
        skip: names of producers never to prune.
        data: ``(x, y)`` for ``importance="taylor"``.
        verbose: 1 prints the plan table when training starts.

    Example:
        >>> cb = tfc.ChannelPruningCallback(tfc.PolynomialDecay(0.0, 0.5, begin_step=0, end_step=1000))
        >>> model.fit(x, y, epochs=3, callbacks=[cb])
        >>> small = tfc.shrink(model)           # a smaller plain Keras model, same outputs
    """

    def __init__(self, schedule, importance="l2", scope="global", round_to=1, layers=None, skip=None, data=None,
                 verbose=1, max_group_ratio=None):
        super().__init__()
        self.schedule = schedules_module.get(schedule)
        importance_module.check_criterion(importance, data)
        importance_module.check_selection(scope, round_to, max_group_ratio)
        self.importance, self.scope, self.round_to = importance, scope, round_to
        self.max_group_ratio = max_group_ratio
        self.layers, self.skip, self.data, self.verbose = layers, skip, data, verbose
        self.graph = None
        self.pruned = set()  # unit indices
        self.notes = []
        self._masks = {}
        self._saved_constraints = {}

    def _pruned_model(self):
        """The model whose channels are pruned: the one being fit, or a `Distiller`'s student."""
        student = getattr(self.model, "student", None)
        if student is not None and getattr(self.model, "teacher", None) is not None:
            return student
        return self.model

    def on_train_begin(self, logs=None):
        target = self._pruned_model()
        if self.graph is None or self.graph.source is not target:
            self.graph = channels.ChannelGraph(target, layers=self.layers, skip=self.skip)
            if not self.graph.units:
                reasons = sorted(set(self.graph.reasons.values())) or ["it has no Conv/Dense layer"]
                raise channels.ChannelPruningError(
                    f"Model {target.name!r} has no prunable channel group: {'; '.join(reasons)}.")
            if self.verbose:
                print(self.graph.plan_table())
            self.pruned = {u.index for u in channels.zeroed_units(self.graph)}
        self._attach()

    def _attach(self):
        with self._pruned_model().distribute_strategy.scope():  # masks are mirrored like the weights they mask
            for unit in self.graph.units:
                for variable, _, _ in channels.unit_slices(self.graph, unit):
                    if id(variable) not in self._masks:
                        mask = keras.Variable(np.ones(variable.shape, variable.dtype), trainable=False,
                                              dtype=variable.dtype)
                        self._masks[id(variable)] = (variable, mask)
        for variable, mask in self._masks.values():
            if id(variable) not in self._saved_constraints:
                self._saved_constraints[id(variable)] = variable.constraint
                variable.constraint = MaskConstraint(mask, variable.constraint)
        self._update_masks()
        # fit() built its train function before on_train_begin: retrace so the constraints are compiled in.
        self.model.make_train_function(force=True)

    def _update_masks(self):
        values = {key: np.ones(variable.shape, variable.dtype) for key, (variable, _) in self._masks.items()}
        for unit in self.graph.units:
            if unit.index in self.pruned:
                for variable, axis, index in channels.unit_slices(self.graph, unit):
                    np.moveaxis(values[id(variable)], axis, 0)[index] = 0
        for key, (variable, mask) in self._masks.items():
            mask.assign(values[key])
            variable.assign(keras.ops.multiply(variable, mask))

    def on_train_batch_begin(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy()) + 1
        should_prune, sparsity = self.schedule(step)
        if not should_prune:
            return
        scores = importance_module.unit_scores(self.graph, self.importance, self.data)
        scores[list(self.pruned)] = -np.inf  # pruned units stay pruned
        chosen, note = importance_module.select_units(self.graph, scores, sparsity, self.scope, self.round_to,
                                                    self.max_group_ratio)
        if note and note not in self.notes:
            self.notes.append(note)
            if self.verbose:
                print(f"ChannelPruningCallback: {note}")
        new = {u.index for u in chosen} | self.pruned
        if new != self.pruned:
            self.pruned = new
            self._update_masks()

    def on_train_end(self, logs=None):
        if self.graph is None:
            return
        self._update_masks()  # fit() may have overwritten weights after the last step
        for key, (variable, _) in self._masks.items():
            variable.constraint = self._saved_constraints.pop(key, None)
        self.model.make_train_function(force=True)
        # Kept widths are rounded (round_to, group floors and caps, which `notes` explain): only a shortfall
        # beyond that is the schedule's, e.g. masks updated every 100 steps in a 30-step run.
        shortfall = None if self.notes else schedules_module.shortfall(
            self.schedule, self.sparsity, int(self.model.optimizer.iterations.numpy()),  # the last step run
            f"channel pruning of model {self._pruned_model().name!r}", tolerance=0.05)
        if shortfall:
            warnings.warn(f"ChannelPruningCallback: {shortfall}", UserWarning, stacklevel=2)

    @property
    def sparsity(self):
        """The fraction of removable channels currently zeroed."""
        return len(self.pruned) / max(len(self.graph.units), 1) if self.graph else 0.0
