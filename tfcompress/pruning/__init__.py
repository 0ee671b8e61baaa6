"""Keras-3-native magnitude pruning: plain models in, plain sparse models out.

Example:
    >>> import tfcompress as tfc
    >>> cb = tfc.PruningCallback(tfc.PolynomialDecay(0.0, 0.75, begin_step=0, end_step=2000))
    >>> model.fit(x, y, epochs=3, callbacks=[cb])
    >>> print(tfc.sparsity_report(model))
"""

from tfcompress.pruning.callback import PruningCallback
from tfcompress.pruning.channel_callback import ChannelPruningCallback
from tfcompress.pruning.channel_pruner import prune_channels
from tfcompress.pruning.channels import ChannelGraph, ChannelPruningError, layer_costs, shrink, shrink_report
from tfcompress.pruning.pruner import Pruner
from tfcompress.pruning.report import SparsityReport, sparsity_report
from tfcompress.pruning.schedules import ConstantSparsity, PolynomialDecay, PruningSchedule

__all__ = [
    "ChannelGraph",
    "ChannelPruningCallback",
    "ChannelPruningError",
    "layer_costs",
    "prune_channels",
    "shrink",
    "shrink_report",
    "ConstantSparsity",
    "PolynomialDecay",
    "Pruner",
    "PruningCallback",
    "PruningSchedule",
    "SparsityReport",
    "sparsity_report",
]
