"""Every tfcompress Keras callback in one place, as ``keras.callbacks`` does: ``tfc.callbacks.PruningCallback``.

    >>> model.fit(x, y, epochs=3, callbacks=[
    ...     tfc.callbacks.PruningCallback(tfc.PolynomialDecay(0.0, 0.75, 0, 2000)),
    ...     tfc.callbacks.BackupAndRestore("/tmp/run1")])
"""

from tfcompress.clustering import ClusteringCallback
from tfcompress.core.backup import BackupAndRestore
from tfcompress.export.parity_callback import TFLiteParityCallback
from tfcompress.pruning.callback import PruningCallback
from tfcompress.pruning.channel_callback import ChannelPruningCallback
from tfcompress.quantization.quantize import FreezeQuantization

__all__ = ["BackupAndRestore", "ChannelPruningCallback", "ClusteringCallback", "FreezeQuantization", "PruningCallback", "TFLiteParityCallback"]
