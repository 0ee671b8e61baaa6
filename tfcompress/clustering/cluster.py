"""Weight clustering (weight sharing) for plain Keras 3 models: at most ``num_clusters`` values per kernel.

    >>> model.fit(x, y, epochs=2, callbacks=[tfc.ClusteringCallback(num_clusters=16)])
    >>> tfc.clustering.clustering_report(model)      # distinct values per kernel
    >>> clustered = tfc.cluster_weights(model, 16)    # one-shot, then fine-tune yourself

Each kernel's values are clustered with 1-D k-means (inits ``"kmeans++"``,
``"linear"``, ``"density"``, as in tfmot). During ``fit`` every weight stays on
its centroid and the centroids train: after each optimizer update, a constraint
inside the compiled step moves each centroid by the mean of its members' updates
and puts every member back on it, so after every step a kernel holds at most
``num_clusters`` distinct values. No wrapper layers: the model you fit is the
model you ship, and a saved ``.keras`` holds the clustered values. With
``preserve_sparsity=True`` exact zeros (a pruned kernel) form their own cluster,
fixed at zero, so prune → cluster works.
"""

import keras
import numpy as np

from tfcompress.core import graph
from tfcompress.core.tables import markdown_table
from tfcompress.pruning import registry

INITS = ("kmeans++", "linear", "density")


def check_arguments(num_clusters, init):
    """Raises a ValueError naming ``num_clusters`` or ``init`` when either is out of range."""
    if isinstance(num_clusters, bool) or not isinstance(num_clusters, (int, np.integer)) or not 2 <= num_clusters <= 256:
        raise ValueError(f"num_clusters={num_clusters!r} must be an integer in [2, 256] (16 is typical; int8 has "
                         "256 values, so more clusters cannot pay).")
    if init not in INITS:
        raise ValueError(f"init={init!r}: choose one of {list(INITS)}.")


def kmeans_1d(values, k, init="kmeans++", iterations=30, seed=0):
    """Centroids (sorted) and the index of each value's centroid, for 1-D ``values``."""
    values = np.asarray(values, np.float64).ravel()
    rng = np.random.default_rng(seed)
    if init == "linear":
        centroids = np.linspace(values.min(), values.max(), k)
    elif init == "density":
        centroids = np.quantile(values, (np.arange(k) + 0.5) / k)
    else:
        sample = values if values.size <= 20000 else rng.choice(values, 20000, replace=False)
        centroids = [sample[rng.integers(len(sample))]]
        distance = (sample - centroids[0]) ** 2
        for _ in range(1, k):
            total = distance.sum()
            pick = rng.choice(len(sample), p=distance / total) if total > 0 else rng.integers(len(sample))
            centroids.append(sample[pick])
            distance = np.minimum(distance, (sample - sample[pick]) ** 2)
        centroids = np.array(centroids)
    centroids = np.sort(centroids)
    for _ in range(iterations):
        edges = (centroids[1:] + centroids[:-1]) / 2
        assignment = np.searchsorted(edges, values)
        sums = np.bincount(assignment, values, minlength=k)
        counts = np.bincount(assignment, minlength=k)
        updated = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
        if np.allclose(updated, centroids):
            break
        centroids = np.sort(updated)
    edges = (centroids[1:] + centroids[:-1]) / 2
    return centroids, np.searchsorted(edges, values)


def _cluster_array(values, k, init, per_channel, preserve_sparsity):
    """``(table (groups, k), assignment of values.shape, free (groups, k))``: values = table[group, assignment].

    ``free`` is 0 for a group's fixed zero cluster (``preserve_sparsity``), 1 elsewhere.
    """
    values = np.asarray(values, np.float64)
    groups = values.reshape(-1, values.shape[-1]).T if per_channel else values.reshape(1, -1)
    tables, assignments, free = [], [], []
    for row in groups:
        keep_zero = preserve_sparsity and np.any(row == 0)
        nonzero = row[row != 0] if keep_zero else row
        slots = k - 1 if keep_zero else k
        if nonzero.size == 0:
            table, assign = np.zeros(k), np.zeros(row.shape, np.int64)
        else:
            centroids, assign_nonzero = kmeans_1d(nonzero, min(slots, max(1, np.unique(nonzero).size)), init)
            table = np.zeros(k)
            offset = 1 if keep_zero else 0
            table[offset: offset + len(centroids)] = centroids
            assign = np.zeros(row.shape, np.int64)
            if keep_zero:
                assign[row != 0] = assign_nonzero + 1
            else:
                assign = assign_nonzero
        tables.append(table)
        assignments.append(assign)
        free.append(np.array([0.0 if keep_zero and i == 0 else 1.0 for i in range(k)]))
    assignment = np.stack(assignments)
    assignment = assignment.T.reshape(values.shape) if per_channel else assignment.reshape(values.shape)
    return np.stack(tables), assignment, np.stack(free)


def _group_index(shape, per_channel):
    return np.broadcast_to(np.arange(shape[-1]), shape) if per_channel else np.zeros(shape, np.int64)


def _clustered_values(table, assignment, per_channel):
    return table[_group_index(assignment.shape, per_channel), assignment]


class _ClusterConstraint(keras.constraints.Constraint):
    """After each optimizer update: centroids move by their members' mean update; members go back on them."""

    def __init__(self, table, index, frozen_zero, original=None):
        # index: each weight's slot in the flattened (groups, k) table, computed once when clustering.
        self.table, self.index, self.frozen_zero, self.original = table, index, frozen_zero, original

    def __call__(self, weight):
        ops = keras.ops
        if self.original is not None:
            weight = self.original(weight)
        index = self.index
        flat_table = ops.reshape(self.table, (-1,))
        before = ops.take(flat_table, index)
        delta = ops.reshape(weight, (-1,)) - before
        size = int(np.prod(self.table.shape))
        sums = ops.segment_sum(delta, index, num_segments=size)
        counts = ops.segment_sum(ops.ones_like(delta), index, num_segments=size)
        move = ops.where(counts > 0, sums / ops.maximum(counts, 1.0), 0.0) * ops.reshape(self.frozen_zero, (-1,))
        updated = flat_table + move
        self.table.assign(ops.reshape(updated, self.table.shape))
        return ops.reshape(ops.take(updated, index), weight.shape)


def _targets(model, layers, skip):
    return [e for e in registry.find_weights(model, layers=layers, skip=skip) if e.pruned]


def _distinct(values):
    return int(np.unique(values).size)


class ClusteringCallback(keras.callbacks.Callback):
    """Clusters every eligible kernel at the start of ``fit`` and keeps it clustered while the centroids train.

    Args:
        num_clusters: values per kernel (per output channel with ``per_channel``), in [2, 256].
        init: ``"kmeans++"``, ``"linear"`` (evenly spaced) or ``"density"`` (quantiles).
        per_channel: cluster each output channel of a kernel separately (convolutions).
        preserve_sparsity: exact zeros stay exactly zero (their own cluster, fixed).
        layers: names of the only layers to cluster (the pruning registry's kernels: Dense, Conv,
            SeparableConv pointwise, Embedding).
        skip: names of layers never to cluster.
        verbose: 1 prints what was clustered and what was skipped, and why.

    Example:
        >>> model.fit(x, y, epochs=2, callbacks=[tfc.ClusteringCallback(num_clusters=16)])
    """

    def __init__(self, num_clusters=16, init="kmeans++", per_channel=False, preserve_sparsity=True, layers=None,
                 skip=None, verbose=1):
        super().__init__()
        check_arguments(num_clusters, init)
        self.num_clusters, self.init, self.per_channel = int(num_clusters), init, per_channel
        self.preserve_sparsity, self.layers, self.skip, self.verbose = preserve_sparsity, layers, skip, verbose
        self.clustered = {}  # weight path -> (centroid table, flat slot index, free-centroid mask) variables
        self.skipped = {}
        self._saved = {}

    def get_config(self):
        return {"num_clusters": self.num_clusters, "init": self.init, "per_channel": self.per_channel,
                "preserve_sparsity": self.preserve_sparsity, "layers": self.layers, "skip": self.skip,
                "verbose": self.verbose}

    def on_train_begin(self, logs=None):
        graph.check_model(self.model, action="cluster")
        if not self.clustered:
            self._cluster()
        for entry in self._entries:
            variable = entry.variable
            if entry.path in self.clustered and id(variable) not in self._saved:
                table, index, frozen = self.clustered[entry.path]
                self._saved[id(variable)] = variable.constraint
                variable.constraint = _ClusterConstraint(table, index, frozen, variable.constraint)
        self.model.make_train_function(force=True)

    def _cluster(self):
        self._entries = _targets(self.model, self.layers, self.skip)
        if not self._entries:
            raise ValueError(f"Model {self.model.name!r} has no kernel to cluster (Dense, Conv, SeparableConv, "
                             "Embedding); check layers= / skip=.")
        strategy = self.model.distribute_strategy
        for entry in self._entries:
            values = keras.ops.convert_to_numpy(entry.variable)
            per_channel = self.per_channel and values.ndim > 2
            distinct = _distinct(values)
            if distinct < self.num_clusters:
                # Fewer values than clusters: they are the centroids (nothing to merge); they still train.
                self.skipped[entry.path] = f"only {distinct} distinct values: kept as the centroids"
            table, assignment, frozen = _cluster_array(values, self.num_clusters, self.init, per_channel,
                                                       self.preserve_sparsity)
            flat_index = (_group_index(values.shape, per_channel) * self.num_clusters + assignment).reshape(-1)
            with strategy.scope():
                table_var = keras.Variable(table.astype(values.dtype), trainable=False, name=f"{entry.variable.name}_centroids")
                index_var = keras.Variable(flat_index.astype("int32"), trainable=False, dtype="int32",
                                           name=f"{entry.variable.name}_clusters")
                frozen_var = keras.Variable(frozen.astype(values.dtype), trainable=False,
                                            name=f"{entry.variable.name}_cluster_free")
            self.clustered[entry.path] = (table_var, index_var, frozen_var)
            entry.variable.assign(_clustered_values(table, assignment, per_channel).astype(values.dtype))
        if self.verbose:
            print(clustering_report(self.model, self.layers, self.skip, skipped=self.skipped))

    def on_train_end(self, logs=None):
        for entry in self._entries:
            if id(entry.variable) in self._saved:
                entry.variable.constraint = self._saved.pop(id(entry.variable))
        self.model.make_train_function(force=True)


def cluster_weights(model, num_clusters, init="kmeans++", per_channel=False, preserve_sparsity=True, layers=None,
                    skip=None):
    """One-shot clustering: a copy of ``model`` whose kernels hold at most ``num_clusters`` values each.

    Returns:
        A new plain Keras model (``model`` is not modified); fine-tune it with
        ``fit`` and a `ClusteringCallback` to train the centroids.
    """
    check_arguments(num_clusters, init)
    graph.check_model(model, action="cluster")
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    for entry in _targets(clone, layers, skip):
        values = keras.ops.convert_to_numpy(entry.variable)
        if _distinct(values) <= num_clusters:
            continue
        per = per_channel and values.ndim > 2
        table, assignment, _ = _cluster_array(values, num_clusters, init, per, preserve_sparsity)
        entry.variable.assign(_clustered_values(table, assignment, per).astype(values.dtype))
    if model.compiled:
        clone.compile_from_config(model.get_compile_config())
    return clone


def clustering_report(model, layers=None, skip=None, skipped=None):
    """A markdown table: distinct values per kernel (per output channel at most), and what int8 + gzip buys."""
    rows = []
    for entry in _targets(model, layers, skip):
        values = keras.ops.convert_to_numpy(entry.variable)
        per_channel = max(_distinct(values[..., c]) for c in range(values.shape[-1])) if values.ndim > 1 else _distinct(values)
        note = (skipped or {}).get(entry.path, "")
        rows.append((entry.path, "x".join(map(str, values.shape)), _distinct(values), per_channel, note))
    return markdown_table(("weight", "shape", "distinct values", "max per output channel", "note"), rows,
                          title=f"Clustering of {model.name!r}")
