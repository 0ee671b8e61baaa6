"""One-shot structural pruning: rank the removable channels, zero the least important, `shrink` the model.

The pruner on top of the dependency graph (`channels`) and the importance criteria (`importance`).
"""

import keras

from tfcompress.pruning import importance as importance_module
from tfcompress.pruning.channels import ChannelGraph, ChannelPruningError, shrink, zero_units


def _copy(model):
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    if model.compiled:
        clone.compile_from_config(model.get_compile_config())
    return clone


def prune_channels(model, ratio, importance="l2", data=None, scope="global", round_to=1, layers=None, skip=None,
                   verbose=1, max_group_ratio=None):
    """One-shot structural pruning: removes ``ratio`` of the removable channels; returns the smaller model.

    Ranks every removable unit (an output channel with everything tied to it) by
    ``importance``, zeroes the lowest ones on a copy and `shrink`s it. Fine-tune the
    result with ``fit`` (or distil it from the original with `tfc.Distiller`).

    Args:
        model: a trained Functional or Sequential Keras model (not modified).
        ratio: fraction of the removable channels to remove, in [0, 1).
        importance: ``"l1"``, ``"l2"``, ``"bn"`` or ``"taylor"``, or a function ``layer -> scores``, one
            non-negative score per output channel (see `importance`).
        data: ``(x, y)`` for ``"taylor"``.
        scope: ``"global"`` (one ranking across layers, normalised per layer) or ``"layer"`` (every group at
            ``ratio``).
        round_to: kept widths are multiples of this where possible (8 or 16 suit SIMD kernels).
        max_group_ratio: at most this fraction of any one group's channels is removed (None: no cap). With the
            global ranking a residual stream can otherwise be cut to the ``round_to`` floor; the channels a
            capped group cannot give come from the next-ranked groups.
        layers: names of the only producers to prune.
        skip: names of producers never to prune.
        verbose: 1 prints the plan table and what was removed.

    Returns:
        A new, smaller ``keras.Model``.

    Raises:
        ChannelPruningError: nothing in the model can be pruned (the message says why), or bad arguments.

    Example:
        >>> small = tfc.prune_channels(model, 0.5)
        >>> small.fit(x, y, epochs=2)
    """
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio={ratio!r} must be in [0, 1): the fraction of removable channels to remove.")
    importance_module.check_criterion(importance, data)
    importance_module.check_selection(scope, round_to, max_group_ratio)
    masked = _copy(model)
    channel_graph = ChannelGraph(masked, layers=layers, skip=skip)
    if verbose:
        print(channel_graph.plan_table())
    if not channel_graph.units:
        reasons = sorted(set(channel_graph.reasons.values())) or ["it has no Conv/Dense layer"]
        raise ChannelPruningError(f"Model {model.name!r} has no prunable channel group: {'; '.join(reasons)}.")
    scores = importance_module.unit_scores(channel_graph, importance, data)
    chosen, note = importance_module.select_units(channel_graph, scores, ratio, scope, round_to, max_group_ratio)
    if note and verbose:
        print(f"prune_channels: {note}")
    zero_units(channel_graph, chosen)
    return shrink(masked, verbose=verbose)
