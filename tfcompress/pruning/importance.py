"""Importance criteria for channel pruning, and the choice of which units to remove.

Each criterion scores every output channel of every producer; scores are divided by
their producer's mean (so wide and narrow layers, large and small kernels compare),
a unit's score is the mean over its tied channels, and units are ranked globally
(``scope="global"``) or within each group (``scope="layer"``).

* ``"l1"`` / ``"l2"``: the magnitude of the channel's filter (Li et al., 2017).
* ``"bn"``: ``|gamma|`` of the BatchNormalization on the channel (network slimming,
  Liu et al., 2017); channels without one fall back to ``"l2"``.
* ``"taylor"``: first-order Taylor, ``|activation x gradient|`` of the loss summed
  over positions and accumulated over batches of ``data`` (Molchanov et al., 2019).
* a function of one's own, ``importance(layer) -> scores`` (Torch-Pruning's ``Importance``):
  given a producer layer (a Conv/Dense-like layer of `channels.PRODUCERS`), one finite,
  non-negative score per output channel, e.g. the largest magnitude of each filter::

      def max_abs(layer):
          kernel = keras.ops.convert_to_numpy(layer.kernel)
          return np.abs(kernel).max(axis=tuple(range(kernel.ndim - 1)))

      tfc.prune_channels(model, 0.5, importance=max_abs)
"""

import math

import keras
import numpy as np

from tfcompress.pruning.channels import PRODUCERS

CRITERIA = ("l1", "l2", "bn", "taylor")
SCOPES = ("global", "layer")


def check_criterion(importance, data):
    if callable(importance):
        return
    if importance not in CRITERIA:
        raise ValueError(f"importance={importance!r}: choose one of {list(CRITERIA)}, or pass a function "
                         "layer -> one score per output channel.")
    if importance == "taylor" and data is None:
        raise ValueError("importance='taylor' needs data=(x, y) (a few hundred labelled training samples): it "
                         "accumulates |activation x gradient| of the loss over them.")


def _magnitudes(layer, order):
    weight, out_axis, _ = PRODUCERS[type(layer)]
    kernel = np.moveaxis(keras.ops.convert_to_numpy(getattr(layer, weight)), out_axis, -1)
    flat = np.abs(kernel.reshape(-1, kernel.shape[-1]))
    return flat.sum(0) if order == 1 else np.sqrt((flat ** 2).sum(0))


def _bn_scales(channel_graph, name):
    for reader in channel_graph.bn_on.get(name, ()):
        bn = channel_graph.operation(reader)
        if not isinstance(bn, keras.layers.BatchNormalization) or bn.gamma is None:
            continue
        gamma = np.abs(keras.ops.convert_to_numpy(bn.gamma))
        positions = channel_graph.input_elements[reader][0]
        scores = np.full(len(channel_graph.elements[name]), np.nan)
        for i, e in enumerate(positions):
            owner = channel_graph.owner(e)
            if owner is not None and owner[0] == name:
                scores[owner[1]] = gamma[i]
        if not np.isnan(scores).any():
            return scores
    return None


def _taylor(channel_graph, names, data, batch_size=64, max_samples=512):
    import tensorflow as tf

    model = channel_graph.model
    x, y = data
    x, y = np.asarray(x)[:max_samples], np.asarray(y)[:max_samples]
    probe = keras.Model(model.inputs, [model.outputs[0]] + [channel_graph.layer_output(n) for n in names])
    loss_fn = getattr(model, "loss", None) or keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if isinstance(loss_fn, str):
        loss_fn = keras.losses.get(loss_fn)
    totals = [np.zeros(len(channel_graph.elements[n])) for n in names]
    for start in range(0, len(x), batch_size):
        with tf.GradientTape() as tape:
            outputs = probe([x[start:start + batch_size]], training=False)
            loss = keras.ops.mean(loss_fn(y[start:start + batch_size], outputs[0]))
        grads = tape.gradient(loss, outputs[1:])
        for i, (a, g) in enumerate(zip(outputs[1:], grads)):
            product = np.abs(keras.ops.convert_to_numpy(a) * keras.ops.convert_to_numpy(g))
            totals[i] += product.reshape(-1, product.shape[-1]).sum(0)
    return dict(zip(names, totals))


def _own_scores(importance, layer, channels):
    """The scores of a criterion of one's own for ``layer``, checked: one finite, non-negative value per channel."""
    scores = np.asarray(importance(layer), dtype=np.float64)
    if scores.shape != (channels,):
        problem = f"an array of shape {scores.shape}"
    elif not np.all(np.isfinite(scores)) or np.any(scores < 0):
        problem = "negative or non-finite scores"
    else:
        return scores
    name = getattr(importance, "__name__", type(importance).__name__)
    raise ValueError(f"importance={name} returned {problem} for layer {layer.name!r}; it must return {channels} "
                     "finite, non-negative scores, one per output channel.")


def unit_scores(channel_graph, importance="l2", data=None):
    """One score per unit of ``channel_graph`` (higher = more important).

    ``importance`` is one of `CRITERIA` or a function ``layer -> scores`` (see the module doc). A producer's
    scores are divided by their mean, and a unit scores the mean over the channels tied into it.
    """
    check_criterion(importance, data)
    names = sorted({name for unit in channel_graph.units for name, _ in unit.members})
    per_layer = {}
    if importance == "taylor":
        per_layer = _taylor(channel_graph, names, data)
    for name in names:
        layer = channel_graph.operation(name)
        if callable(importance):
            scores = _own_scores(importance, layer, len(channel_graph.elements[name]))
        elif importance == "l1":
            scores = _magnitudes(layer, 1)
        elif importance == "bn":
            scores = _bn_scales(channel_graph, name)
            if scores is None:
                scores = _magnitudes(layer, 2)
        elif importance == "taylor":
            scores = per_layer[name]
        else:
            scores = _magnitudes(layer, 2)
        mean = float(np.mean(scores))
        per_layer[name] = scores / mean if mean > 0 else scores
    return np.array([np.mean([per_layer[name][c] for name, c in unit.members]) for unit in channel_graph.units])


def check_selection(scope, round_to, max_group_ratio):
    """Raises a ValueError naming the bad argument of `select_units`."""
    if scope not in SCOPES:
        raise ValueError(f"scope={scope!r}: choose one of {list(SCOPES)}.")
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise ValueError(f"round_to={round_to!r} must be a positive integer (1, 8, 16...).")
    if max_group_ratio is not None and (isinstance(max_group_ratio, bool)
                                        or not isinstance(max_group_ratio, (int, float))
                                        or not 0.0 < max_group_ratio <= 1.0):
        raise ValueError(f"max_group_ratio={max_group_ratio!r} must be in (0, 1] (the largest fraction of one "
                         f"group's channels that may go), or None for no cap.")


def select_units(channel_graph, scores, ratio, scope="global", round_to=1, max_group_ratio=None):
    """The units to remove so that ``ratio`` of the removable units go, and what could not.

    Every group keeps at least ``round_to`` (and at least one) of its units, and the
    number it keeps is a multiple of ``round_to`` where it can be (SIMD-friendly widths).
    ``max_group_ratio`` caps the fraction of any one group that goes: with a global
    ranking, a residual stream (many producers tied into one group, scored by their
    mean) can otherwise be cut to the floor while wide single layers keep everything;
    the units a capped group cannot give are taken from the next-ranked groups.

    Returns:
        ``(units to remove, note or None)``: the note says when the groups could not give ``ratio``.
    """
    check_selection(scope, round_to, max_group_ratio)
    units = channel_graph.units
    by_group = {}
    for unit in units:
        by_group.setdefault(unit.group, []).append(unit)
    cap = max_group_ratio if max_group_ratio is not None else 1.0

    def most_removable(size):
        keep = max(min(size, round_to), 1, int(math.ceil((1.0 - cap) * size - 1e-9)))
        return max(size - keep, 0)

    limit = {g: most_removable(len(members)) for g, members in by_group.items()}
    target = int(math.floor(ratio * len(units) + 1e-9))
    wanted = {}
    if scope == "global":
        taken = 0
        for unit in sorted(units, key=lambda u: scores[u.index]):
            if taken == target:
                break
            if wanted.get(unit.group, 0) < limit[unit.group]:
                wanted[unit.group] = wanted.get(unit.group, 0) + 1
                taken += 1
    else:
        wanted = {g: min(int(math.floor(ratio * len(members) + 1e-9)), limit[g]) for g, members in by_group.items()}
    chosen = []
    for group, members in by_group.items():
        size = len(members)
        keep = size - wanted.get(group, 0)
        if round_to > 1:
            keep = min(size, int(math.ceil(keep / round_to) * round_to))
        ranked = sorted(members, key=lambda u: scores[u.index])
        chosen += ranked[: size - keep]
    note = None
    if len(chosen) < target:
        cap_text = f", at most max_group_ratio={max_group_ratio} of each group" if max_group_ratio is not None else ""
        note = (f"asked for {ratio:.0%} of {len(units)} removable channels ({target}); the groups allow "
                f"{len(chosen)} (every group keeps at least max(1, round_to={round_to}) and multiples of round_to"
                f"{cap_text})")
    return chosen, note
