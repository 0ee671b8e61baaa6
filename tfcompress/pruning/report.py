"""Sparsity tables: the pruning plan before training and measured sparsity after."""

import numpy as np

from tfcompress.core import graph
from tfcompress.core.tables import markdown_table
from tfcompress.pruning import registry


def weights_table(entries, title=None):
    """Markdown table: layer, weight, shape, parameters, pruned or skipped and why."""
    rows = [
        (e.layer_path, e.variable.name, "x".join(map(str, e.shape)) or "scalar",
         int(np.prod(e.shape)), e.reason)
        for e in entries
    ]
    pruned = sum(int(np.prod(e.shape)) for e in entries if e.pruned)
    total = sum(int(np.prod(e.shape)) for e in entries)
    footer = f"{pruned:,} of {total:,} parameters are pruned ({pruned / max(total, 1):.1%})."
    return markdown_table(("layer", "weight", "shape", "params", "decision"), rows, title, footer)


class SparsityReport(dict):
    """``dict`` of weight path -> fraction of exact zeros, printable as a table.

    Attributes:
        sizes: weight path -> number of parameters.
    """

    def __init__(self, fractions, sizes, title=None):
        super().__init__(fractions)
        self.sizes = dict(sizes)
        self.title = title

    @property
    def overall(self):
        """Fraction of zeros over all reported weights, weighted by size."""
        total = sum(self.sizes.values())
        return sum(self[k] * self.sizes[k] for k in self) / max(total, 1)

    def to_markdown(self):
        rows = [(path, f"{self.sizes[path]:,}", f"{value:.1%}") for path, value in self.items()]
        rows.append(("total", f"{sum(self.sizes.values()):,}", f"{self.overall:.1%}"))
        return markdown_table(("weight", "params", "zeros"), rows, self.title)

    def __str__(self):
        return self.to_markdown()


def sparsity_report(model, include_all=False):
    """Measures the fraction of exact zeros in a model's prunable weights.

    Works on any Keras 3 model, pruned by tfcompress or not (a loaded
    ``.keras`` file, a tfmot-stripped model converted to Keras 3, ...).

    Args:
        model: a built Keras 3 model.
        include_all: also report biases, normalization and other weights.

    Returns:
        A ``SparsityReport``: a dict of weight path (``"layer/kernel"``, nested
        layers joined by '/') -> zero fraction; ``print(report)`` shows a table
        with a size-weighted total.

    Example:
        >>> report = sparsity_report(model)
        >>> report["conv2/kernel"]
        0.75
        >>> print(report)
    """
    graph.check_model(model, action="prune", allow_layer=True)
    entries = [e for e in registry.find_weights(model) if include_all or e.pruned or e.candidate]
    fractions = {e.path: float(np.mean(e.variable.numpy() == 0)) for e in entries}
    sizes = {e.path: int(np.prod(e.shape)) for e in entries}
    return SparsityReport(fractions, sizes, title=f"Sparsity of {model.name!r}")
