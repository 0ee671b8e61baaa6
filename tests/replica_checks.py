"""Checks that run inside a process training under a ``tf.distribute`` strategy.

Imported by the children of tests/test_pruning_distributed.py (MirroredStrategy, two logical CPUs) and by
tests/multiworker_worker.py (MultiWorkerMirroredStrategy); pytest does not collect it (no ``test_`` prefix).
It imports Keras only when called, after the process has set up its devices and strategy.
"""


def mask_held_callback(strategy, pruning):
    """A Keras callback that records, after every training step, whether every local replica of every kernel
    ``pruning`` (a ``tfc.PruningCallback``) prunes is zero wherever its mask is: one bool per step in ``.held``."""
    import keras
    import numpy as np

    class MaskHeld(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.held = []

        def on_train_batch_end(self, batch, logs=None):
            ok = True
            for entry, mask in zip(pruning.pruner.targets, pruning.pruner.masks):
                for replica in strategy.experimental_local_results(entry.variable.value):
                    ok &= bool(np.all(replica.numpy()[mask.numpy() == 0] == 0))
            self.held.append(ok)

    return MaskHeld()
