"""Fake quantization: float tensors rounded to the int8 grid TFLite will use.

Both helpers go through `keras.quantizers.fake_quant_with_min_max_vars`, which on
the TensorFlow backend emits `tf.quantization.fake_quant_with_min_max_vars(_per_channel)`:
the ops the TFLite converter turns into int8 kernels, reusing their ranges as
the tensors' scales and zero points.
"""

import keras
import numpy as np
from keras import ops

# A zero-width range makes the quantization scale 0 and the op divide by it.
_MIN_RANGE = 1e-6

# TFLite's int8 kernels for these activations produce a fixed output scale and zero
# point; quantizing to exactly that grid spares a requantize op after them.
FIXED_OUTPUT_RANGES = {
    "sigmoid": (0.0, 255.0 / 256.0),  # scale 1/256, zero point -128
    "softmax": (0.0, 255.0 / 256.0),
    "tanh": (-1.0, 127.0 / 128.0),  # scale 1/128, zero point 0
}


def fake_quant_weights(kernel, per_channel):
    """Symmetric int8 fake quantization of a kernel whose output channels are the last axis.

    Symmetric with ``narrow_range`` gives zero point 0 and the grid [-127, 127],
    which is what TFLite requires for weights; 0 maps exactly to 0, so pruned
    zeros survive.

    Args:
        kernel: float tensor, output channels last.
        per_channel: one range per output channel (True) or one for the tensor.

    Returns:
        The kernel rounded to the int8 grid, as float. Gradients pass straight
        through to ``kernel``; the range itself gets none (it is the kernel's
        current absolute maximum, recomputed every step).
    """
    bound = _weight_bound(kernel, per_channel)
    return keras.quantizers.fake_quant_with_min_max_vars(
        kernel, -bound, bound, num_bits=8, narrow_range=True, axis=-1 if per_channel else None
    )


def _weight_bound(kernel, per_channel):
    if per_channel:
        reduce_axes = tuple(range(len(kernel.shape) - 1))
        bound = ops.max(ops.abs(kernel), axis=reduce_axes)
    else:
        bound = ops.max(ops.abs(kernel))
    return ops.stop_gradient(ops.maximum(bound, _MIN_RANGE))


def weight_scale(kernel, per_channel):
    """The int8 scale(s) `fake_quant_weights` gives ``kernel``: ``max|kernel| / 127`` (per output channel or not)."""
    return _weight_bound(kernel, per_channel) / 127.0


def fake_quant_bias(bias, step):
    """Rounds a bias to the int32 grid TFLite stores it on.

    TFLite keeps the bias of an int8 Conv/Dense as int32 with scale
    ``input_scale * weight_scale`` (per output channel), so the int8 file adds
    ``round(bias / step) * step``, not ``bias``. The difference is tiny, but it
    is systematic (the same offset at every position of a channel) and, with
    folded BatchNormalization whose scale makes ``weight_scale`` large, a
    sizeable fraction of an output step: enough to flip the rounding of that
    fraction of the outputs, which deep networks amplify layer after layer.

    Args:
        bias: float bias, one value per output channel.
        step: ``input_scale * weight_scale``, a scalar or one per channel.

    Returns:
        The bias on that grid, as float; the gradient passes straight through.
    """
    step = ops.stop_gradient(ops.maximum(step, 1e-30))
    return bias + ops.stop_gradient(ops.round(bias / step) * step - bias)


class ValueCollector:
    """The values an `ActivationQuantizer` sees during `calibrate`: exact min/max and a bounded random sample."""

    def __init__(self, max_values=200_000, seed=0):
        self.low, self.high = np.inf, -np.inf
        self.max_values = max_values
        self.samples = []
        self.count = 0
        self.rng = np.random.default_rng(seed)

    def add(self, values):
        values = np.asarray(values, np.float32).ravel()
        if not values.size:
            return
        self.low, self.high = min(self.low, float(values.min())), max(self.high, float(values.max()))
        self.count += values.size
        keep = max(1, self.max_values // 20)
        self.samples.append(values if values.size <= keep else self.rng.choice(values, keep, replace=False))

    def values(self):
        values = np.concatenate(self.samples) if self.samples else np.zeros(1, np.float32)
        return values if values.size <= self.max_values else self.rng.choice(values, self.max_values, replace=False)


# id(quantizer) -> ValueCollector while `calibrate(method=...)` collects values (not layer state, so nothing of
# it is tracked or saved by Keras).
COLLECTORS = {}


def _int8_mse(values, low, high):
    scale = (high - low) / 255.0
    zero_point = np.round(-low / scale)
    q = np.clip(np.round(values / scale) + zero_point, 0, 255)
    return float(np.mean(((q - zero_point) * scale - values) ** 2))


def choose_range(collector, method, percentile=99.9):
    """An int8 range ``(low, high)`` (0 included) for the collected values: ``"minmax"``, ``"percentile"`` or ``"mse"``.

    ``"minmax"`` is the converter's own choice (the extremes); ``"percentile"`` clips the
    ``100 - percentile`` % tails; ``"mse"`` picks the clipping that minimises the int8
    round-trip error of the values (outliers are clipped when that costs less than the
    resolution lost to them).
    """
    low, high = min(collector.low, 0.0), max(collector.high, 0.0)
    if method == "minmax" or high - low <= 0:
        return low, max(high, low + 1e-6)
    values = collector.values()
    if method == "percentile":
        low = min(0.0, max(low, float(np.percentile(values, 100.0 - percentile))))
        high = max(0.0, min(high, float(np.percentile(values, percentile))))
        return low, max(high, low + 1e-6)
    if method == "mse":
        candidates = [(low * f, high * f) for f in np.linspace(0.02, 1.0, 50)]
        return min(candidates, key=lambda r: _int8_mse(values, *r))
    raise ValueError(f"calibration method {method!r}: choose 'minmax', 'percentile' or 'mse'.")


@keras.saving.register_keras_serializable(package="tfcompress")
class ActivationQuantizer(keras.layers.Layer):
    """Fake-quantizes a tensor to asymmetric int8 with a range that tracks the extremes of the data.

    During training each batch's min and max (widened to include 0, as int8
    needs an exact zero) update the range as a decaying envelope: the range
    widens at once to a batch extreme beyond it, and otherwise shrinks toward the
    batch's extremes by ``1 - ema_decay`` of the gap per step. The range is thus
    the extremes of the recent data, the statistic post-training calibration
    (min/max over the representative samples) computes, not the mean of per-batch
    extremes, which is narrower by construction and clips what PTQ keeps. At
    inference, and once frozen, the range is fixed. The TFLite converter uses the
    range as the int8 scale and zero point of this tensor.

    Args:
        ema_decay: how slowly a range wider than the data shrinks: by
            ``1 - ema_decay`` of the gap per training step (half-life
            ``ln 2 / (1 - ema_decay)`` steps). The first update of a range that
            never saw data copies the batch range, so the initial [-6, 6] is
            never used in training.
        fixed_range: ``(min, max)`` to use instead of learning one, for outputs
            whose int8 grid TFLite fixes (see ``FIXED_OUTPUT_RANGES``).
        **kwargs: base layer arguments such as ``name``.

    Returns:
        A tensor of the input's shape and dtype, on the int8 grid of the range.

    Example:

    >>> q = ActivationQuantizer(name="relu1_quant")
    >>> y = q(keras.ops.convert_to_tensor([[-1.0, 0.5, 3.0]]), training=True)
    """

    def __init__(self, ema_decay=0.999, fixed_range=None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= float(ema_decay) < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay!r}.")
        if fixed_range is not None:
            fixed_range = tuple(float(v) for v in fixed_range)
            if len(fixed_range) != 2 or not fixed_range[0] <= 0.0 < fixed_range[1]:
                raise ValueError(f"fixed_range must be (min, max) with min <= 0 < max, got {fixed_range!r}.")
        self.ema_decay = float(ema_decay)
        self.fixed_range = fixed_range
        self.supports_masking = True
        # Set by `calibrate` while it runs the model eagerly in inference mode: the range follows the data
        # while BatchNormalization and Dropout behave as at inference.
        self.calibrating = False

    @property
    def updated(self):
        """True once the range has seen data (training or `calibrate`); a fixed range counts as updated."""
        return self.fixed_range is not None or float(keras.ops.convert_to_numpy(self.num_updates)) > 0

    def build(self, input_shape=None):
        # tfmot's initial range: wide enough for ReLU6 networks before any batch is seen.
        low, high = self.fixed_range or (-6.0, 6.0)
        # aggregation="mean": under tf.distribute every replica's update is averaged into one value, so all
        # replicas and workers keep the same range (with "none", each worker would keep its own).
        self.range_min = self.add_weight(name="range_min", shape=(), initializer=keras.initializers.Constant(low),
                                         trainable=False, aggregation="mean")
        self.range_max = self.add_weight(name="range_max", shape=(), initializer=keras.initializers.Constant(high),
                                         trainable=False, aggregation="mean")
        self.num_updates = self.add_weight(name="num_updates", shape=(), initializer="zeros", trainable=False,
                                           aggregation="mean")
        # A variable rather than a Python flag, so freezing takes effect inside a running fit().
        self.frozen = self.add_weight(name="frozen", shape=(), initializer="zeros", trainable=False)

    def call(self, inputs, training=None):
        collector = COLLECTORS.get(id(self)) if self.calibrating else None
        if collector is not None:
            # Eager (calibrate() runs the model outside tf.function). Values pass through unquantized, so every
            # quantizer sees float activations, as the converter's own calibration does.
            collector.add(ops.convert_to_numpy(inputs))
            return inputs
        if (training or self.calibrating) and self.fixed_range is None:
            self._update_range(inputs)
        low, high = self.quantization_range()
        return keras.quantizers.fake_quant_with_min_max_vars(inputs, low, high, num_bits=8, narrow_range=False)

    def quantization_range(self):
        """The ``(min, max)`` the tensor is quantized to: the range widened to include 0, never empty."""
        low = ops.minimum(self.range_min, 0.0)
        high = ops.maximum(ops.maximum(self.range_max, 0.0), low + _MIN_RANGE)
        return low, high

    def scale(self):
        """The int8 scale of the quantized tensor, ``(max - min) / 255`` (what TFLite stores for it)."""
        low, high = self.quantization_range()
        return (high - low) / 255.0

    def _update_range(self, inputs):
        values = ops.stop_gradient(ops.cast(inputs, "float32"))
        batch_min = ops.minimum(ops.min(values), 0.0)
        batch_max = ops.maximum(ops.max(values), 0.0)
        n = self.num_updates
        # A range that never saw data copies the batch's; later ones are an envelope of the batch extremes.
        decay = ops.where(n > 0, self.ema_decay, 0.0)
        new_min = ops.minimum(batch_min, decay * self.range_min + (1.0 - decay) * batch_min)
        new_max = ops.maximum(batch_max, decay * self.range_max + (1.0 - decay) * batch_max)
        frozen = self.frozen > 0
        self.range_min.assign(ops.where(frozen, self.range_min, new_min))
        self.range_max.assign(ops.where(frozen, self.range_max, new_max))
        self.num_updates.assign(ops.where(frozen, n, n + 1.0))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config["ema_decay"] = self.ema_decay
        config["fixed_range"] = self.fixed_range
        return config
