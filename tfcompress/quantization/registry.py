"""Which Keras layers can be quantized, and how.

Three kinds, looked up by exact class (a subclass may override ``call``, so it
is not assumed to compute what its parent does):

* ``weighted``: replaced by a ``Quantized*`` class whose listed kernels are
  fake-quantized (symmetric int8; per-channel where TFLite accepts it). A
  BatchNormalization right after one of these is folded into it.
* ``output``: kept as is, followed by an `ActivationQuantizer` that gives its
  output an int8 range (the op has its own output scale in TFLite).
* ``passthrough``: kept as is with no quantizer; TFLite gives the output the
  input's scale (pooling, reshapes, padding, nearest-neighbour upsampling, and
  layers that vanish at inference like Dropout).

Operation nodes (``keras.ops`` calls and tensor operators recorded in a Functional
graph, e.g. ``x * 3.0``, ``ops.mean``) are looked up by `graph.operation_kind` in
``OPERATIONS``: an operation with a TFLite int8 kernel is ``output`` exactly where
the layer of the same computation is (``x + y`` as ``Add``), shape-only ones are
``passthrough``. An operation not listed stays float.

The ``output`` and ``passthrough`` kinds are listed here. Each ``Quantized*`` class registers
itself as the ``weighted`` replacement of its Keras layer where it is defined
(``@registry.quantizes(layers.Conv2D)`` in `quantized_layers`), so this module imports none of
its users; `register` adds or replaces any entry.
"""

import dataclasses

import numpy as np
from keras import layers

from tfcompress.core import graph


@dataclasses.dataclass(frozen=True)
class QuantizeSpec:
    """How one Keras layer class is quantized.

    Args:
        kind: ``"weighted"``, ``"output"`` or ``"passthrough"``.
        quantized_weights: names of the kernels that are fake-quantized.
        quantized_class: the replacement class for ``weighted`` layers.
    """

    kind: str
    quantized_weights: tuple = ()
    quantized_class: type = None


_OUTPUT = QuantizeSpec("output")
_PASSTHROUGH = QuantizeSpec("passthrough")

# Keras layer class -> QuantizeSpec; the weighted entries are added by `quantizes` (see the module doc).
REGISTRY = {
    # BatchNormalization that cannot be folded runs as int8 MUL + ADD.
    layers.BatchNormalization: _OUTPUT,
    # LayerNormalization runs as int8 MEAN, SQUARED_DIFFERENCE, RSQRT, MUL and ADD; the converter calibrates the
    # tensors inside it from the representative data, the QAT model gives its input and output ranges.
    layers.LayerNormalization: _OUTPUT,
    layers.ReLU: _OUTPUT,
    layers.LeakyReLU: _OUTPUT,
    layers.PReLU: _OUTPUT,
    layers.Softmax: _OUTPUT,
    layers.Activation: _OUTPUT,
    layers.Add: _OUTPUT,
    layers.Subtract: _OUTPUT,
    layers.Multiply: _OUTPUT,
    layers.Average: _OUTPUT,
    layers.Maximum: _OUTPUT,
    layers.Minimum: _OUTPUT,
    layers.Concatenate: _OUTPUT,
    layers.Rescaling: _OUTPUT,
    layers.Normalization: _OUTPUT,
    layers.MaxPooling1D: _PASSTHROUGH,
    layers.MaxPooling2D: _PASSTHROUGH,
    layers.AveragePooling1D: _PASSTHROUGH,
    layers.AveragePooling2D: _PASSTHROUGH,
    # TFLite's MEAN rounds to its own output scale; quantizing the output in Keras too keeps them in step.
    layers.GlobalAveragePooling1D: _OUTPUT,
    layers.GlobalAveragePooling2D: _OUTPUT,
    layers.GlobalMaxPooling1D: _PASSTHROUGH,
    layers.GlobalMaxPooling2D: _PASSTHROUGH,
    layers.Reshape: _PASSTHROUGH,
    layers.Flatten: _PASSTHROUGH,
    layers.Permute: _PASSTHROUGH,
    layers.Dropout: _PASSTHROUGH,
    layers.SpatialDropout1D: _PASSTHROUGH,
    layers.SpatialDropout2D: _PASSTHROUGH,
    layers.GaussianNoise: _PASSTHROUGH,
    layers.Identity: _PASSTHROUGH,
    layers.ZeroPadding1D: _PASSTHROUGH,
    layers.ZeroPadding2D: _PASSTHROUGH,
    layers.Cropping1D: _PASSTHROUGH,
    layers.Cropping2D: _PASSTHROUGH,
    layers.UpSampling1D: _PASSTHROUGH,
    layers.UpSampling2D: _PASSTHROUGH,
    layers.InputLayer: _PASSTHROUGH,
}

# keras.ops operations by `graph.operation_kind`: the same kinds as the layers that compute the same.
OPERATIONS = {
    "numpy.Add": _OUTPUT,
    "numpy.Subtract": _OUTPUT,
    "numpy.Multiply": _OUTPUT,
    # x / constant: the converter folds it into an int8 MUL by 1/constant.
    "numpy.Divide": _OUTPUT,
    "numpy.TrueDivide": _OUTPUT,
    "numpy.Maximum": _OUTPUT,
    "numpy.Minimum": _OUTPUT,
    "numpy.Negative": _OUTPUT,
    "numpy.Concatenate": _OUTPUT,
    "numpy.Mean": _OUTPUT,  # MEAN rounds to its own output scale (as GlobalAveragePooling)
    "numpy.Tanh": _OUTPUT,
    "nn.Relu": _OUTPUT,
    "nn.Relu6": _OUTPUT,
    "nn.LeakyRelu": _OUTPUT,
    "nn.Sigmoid": _OUTPUT,
    "nn.HardSigmoid": _OUTPUT,
    "nn.HardSilu": _OUTPUT,
    "nn.Silu": _OUTPUT,
    "nn.Gelu": _OUTPUT,
    "nn.Softmax": _OUTPUT,
    "numpy.Reshape": _PASSTHROUGH,
    "numpy.Transpose": _PASSTHROUGH,
    "numpy.GetItem": _PASSTHROUGH,
    "numpy.ExpandDims": _PASSTHROUGH,
    "numpy.Squeeze": _PASSTHROUGH,
}

# Activations TFLite has int8 kernels for (fused or standalone). Not ELU: its TFLite kernel is float only.
SUPPORTED_ACTIVATIONS = frozenset({
    "linear", "relu", "relu6", "sigmoid", "tanh", "softmax", "hard_sigmoid",
    "hard_swish", "hard_silu", "swish", "silu", "leaky_relu", "gelu",
})


def is_identity_normalization(layer):
    """True for a Normalization that computes ``x`` (mean 0, variance 1, e.g. never adapted).

    The converter removes it, so in TFLite its output is its input tensor, with
    the input's int8 scale: it behaves as ``passthrough``.
    """
    if type(layer) is not layers.Normalization or layer.invert:
        return False
    config = layer.get_config()
    if config.get("mean") is not None:
        mean, variance = config["mean"], config["variance"]
    else:
        weights = layer.get_weights()
        if len(weights) < 2:
            return False
        mean, variance = weights[0], weights[1]
    return bool(np.all(np.asarray(mean) == 0.0) and np.all(np.asarray(variance) == 1.0))


def register(layer_class, spec):
    """Declares how layers of exactly ``layer_class`` are quantized (a `QuantizeSpec`); replaces an earlier entry."""
    REGISTRY[layer_class] = spec


def quantizes(layer_class, weights=("kernel",)):
    """Class decorator of a ``Quantized*`` layer: registers it as the ``weighted`` replacement of ``layer_class``.

    Args:
        layer_class: the Keras layer class it replaces (exact class).
        weights: the names of the kernels it fake-quantizes.
    """
    def decorate(quantized_class):
        # Per-channel or per-tensor kernel ranges are the Quantized* class's own choice (supports_per_channel).
        register(layer_class, QuantizeSpec("weighted", tuple(weights), quantized_class))
        return quantized_class

    return decorate


def lookup(layer):
    """Returns the `QuantizeSpec` for ``layer``'s exact class (an operation's kind), or None when unsupported."""
    if graph.is_operation(layer):
        return OPERATIONS.get(graph.operation_kind(layer))
    return REGISTRY.get(type(layer))


def is_float_weighted_layer(layer):
    """True for a layer that a QAT model holds in float although it has weights.

    In a model made by `quantize_model`, quantized Conv/Dense layers are
    ``Quantized*`` classes, so a plain weighted layer there was kept float (by
    ``keep_float``, or because it has no int8 kernel). The converter must not be
    given calibration data for such a model: it would quantize these layers too.
    """
    if not layer.weights or type(layer).__module__.startswith("tfcompress.") or hasattr(layer, "layers"):
        return False
    spec = lookup(layer)
    return spec is None or spec.kind == "weighted"
