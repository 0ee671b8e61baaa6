"""Helpers shared by the benchmarks (tools/ is on sys.path when a benchmark runs: it is the script's folder)."""

import numpy as np


def reestimate_batch_norm(model, x, batch=256):
    """Sets every BatchNormalization's moving statistics to those of one large training batch.

    A few float steps leave them stale; momentum 0 for one pass replaces them.
    """
    import keras

    import tfcompress as tfc

    bns = [layer for layer in tfc.graph.layers_of(model) if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.momentum = 0.0
    model(x[:batch], training=True)
    for bn, momentum in zip(bns, momenta):
        bn.momentum = momentum


def upscale_to_mobilenet(images, size=96):
    """28x28x1 images in [0, 1] -> size x size x 3 in [-1, 1] (``mobilenet_v2.preprocess_input``'s range)."""
    import tensorflow as tf

    out = np.empty((len(images), size, size, 3), np.float32)
    for start in range(0, len(images), 500):
        resized = tf.image.resize(images[start:start + 500], (size, size)).numpy()
        out[start:start + 500] = np.repeat(resized, 3, axis=-1) * 2.0 - 1.0
    return out
