"""Keras layers with fake-quantized kernels and, optionally, a folded BatchNormalization.

Each class subclasses the Keras layer it replaces (same constructor arguments,
same ``kernel``/``bias`` weights, same name), adding one ``qat_options`` argument.
They are registered under the ``tfcompress`` package, so a saved QAT model loads
with plain ``keras.models.load_model`` once ``tfcompress`` is imported, and each registers
itself in `registry` as the replacement of its Keras layer.
"""

import weakref

import keras
from keras import layers, ops

from tfcompress.quantization import folding, registry
from tfcompress.quantization.fake_quant import (
    FIXED_OUTPUT_RANGES,
    ActivationQuantizer,
    fake_quant_bias,
    fake_quant_weights,
    weight_scale,
)

# TFLite fuses these into the preceding op; anything else runs as its own int8
# op and needs a quantized input.
FUSABLE_ACTIVATIONS = ("linear", "relu", "relu6")


# Activations TFLite runs as several int8 ops: swish (x * sigmoid(x)) is LOGISTIC then MUL, and
# the LOGISTIC output in between sits on its fixed int8 grid (scale 1/256, zero point -128).
SIGMOID_GATED_ACTIVATIONS = ("silu", "swish")


def activation_name(activation):
    return getattr(activation, "__name__", None) if activation is not None else "linear"


def apply_activation(activation, inputs):
    """Applies ``activation`` as TFLite's int8 kernels compute it.

    Same as ``activation(inputs)`` except for swish/silu, whose sigmoid gate is
    rounded to the fixed int8 grid of TFLite's LOGISTIC output before the
    multiplication (the converter splits swish into LOGISTIC and MUL).
    """
    if activation_name(activation) in SIGMOID_GATED_ACTIVATIONS:
        low, high = FIXED_OUTPUT_RANGES["sigmoid"]
        gate = keras.quantizers.fake_quant_with_min_max_vars(
            ops.sigmoid(inputs), low, high, num_bits=8, narrow_range=False
        )
        return ops.multiply(inputs, gate)
    return activation(inputs)


def _default_options():
    return {"per_channel": True, "ema_decay": 0.999, "batch_norm": None, "masked_kernels": []}


# Safety bound on how many scale-preserving layers are looked through to find an input's quantizer.
_MAX_PASSTHROUGH_DEPTH = 64


def input_quantizer(tensor):
    """The `ActivationQuantizer` whose int8 grid a symbolic tensor is on, or None.

    Looks back through layers that keep their input's scale in TFLite (the
    registry's ``passthrough`` kind: padding, pooling, reshapes, dropout...).

    Args:
        tensor: a ``keras.KerasTensor`` (a Functional model's intermediate tensor).

    Returns:
        The quantizer, or None when the tensor's producer is anything else (a
        model input, a nested model's input, a layer with its own output scale).
    """
    for _ in range(_MAX_PASSTHROUGH_DEPTH):
        if not isinstance(tensor, keras.KerasTensor):
            return None
        # Keras records the layer that produced a symbolic tensor in `_keras_history`
        # (operation, node_index, tensor_index); there is no public accessor for it.
        history = getattr(tensor, "_keras_history", None)
        operation = getattr(history, "operation", None)
        if isinstance(operation, ActivationQuantizer):
            return operation
        if not isinstance(operation, keras.layers.Layer) or isinstance(operation, keras.layers.InputLayer):
            return None
        spec = registry.lookup(operation)
        if (spec is None or spec.kind != "passthrough") and not registry.is_identity_normalization(operation):
            return None
        try:
            tensor = operation.input  # raises for a layer called more than once
        except (AttributeError, ValueError):
            return None
    return None


class QuantizedLayerMixin:
    """Shared QAT behaviour of the quantized Conv/Dense classes.

    ``qat_options`` (a dict, so it serializes as is):
        per_channel: per-channel kernel ranges (ignored where TFLite needs per-tensor).
        ema_decay: decay of the internal activation quantizers.
        batch_norm: ``None``, or ``{"epsilon", "momentum"}`` of a folded BatchNormalization;
            the layer then owns ``bn_gamma``, ``bn_beta``, ``bn_moving_mean``, ``bn_moving_variance``.
        masked_kernels: names of kernels whose zeros are kept (pruning-preserving QAT);
            each gets a ``<name>_mask`` weight.
    """

    kernel_names = ("kernel",)
    fold_kernel_name = "kernel"
    supports_per_channel = True

    def __init__(self, *args, qat_options=None, **kwargs):
        super().__init__(*args, **kwargs)
        options = _default_options()
        options.update(qat_options or {})
        unknown = sorted(set(options) - set(_default_options()))
        if unknown:
            raise ValueError(
                f"{type(self).__name__} {self.name!r}: unknown qat_options {unknown}; "
                f"valid keys are {sorted(_default_options())}."
            )
        self.qat_options = options
        # A weak reference to the quantizer of this layer's input, set when the layer is called on a
        # Functional model's tensor (also when load_model rebuilds the graph); not a tracked sublayer,
        # since the quantizer belongs to the model, not to this layer.
        self._input_quantizer_ref = None
        self.pre_activation_quantizer = None
        if activation_name(self.activation) not in FUSABLE_ACTIVATIONS:
            # The activation is a separate int8 op whose input needs its own range.
            self.pre_activation_quantizer = ActivationQuantizer(options["ema_decay"], name="pre_activation_quantizer")

    # Channel views: the folding factor and per-channel ranges apply on the last axis.
    def channels_last(self, name, kernel):
        return kernel

    def from_channels_last(self, name, view, shape):
        return view

    def linear(self, inputs, kernels, training):
        raise NotImplementedError

    def __call__(self, inputs, *args, **kwargs):
        if isinstance(inputs, keras.KerasTensor):
            quantizer = input_quantizer(inputs)
            object.__setattr__(self, "_input_quantizer_ref", weakref.ref(quantizer) if quantizer is not None else None)
        return super().__call__(inputs, *args, **kwargs)

    def bias_input_scale(self):
        """The int8 scale of the tensor the biased kernel reads (a scalar tensor), or None when unknown."""
        quantizer = self._input_quantizer_ref() if self._input_quantizer_ref is not None else None
        return quantizer.scale() if quantizer is not None else None

    # Set by `calibrate` while it collects activation values (eagerly): kernels and bias stay float, so the
    # ranges are those of the float model, which is what the TFLite converter calibrates for post-training int8.
    float_weights = False

    def _quantize_bias(self, bias, bias_weight_scale):
        # TFLite stores the bias as int32 with scale input_scale * weight_scale: add exactly that.
        input_scale = self.bias_input_scale()
        if input_scale is None or self.float_weights:
            return bias
        return fake_quant_bias(bias, input_scale * bias_weight_scale)

    def build(self, input_shape):
        super().build(input_shape)
        options = self.qat_options
        channels = self.channels_last(self.fold_kernel_name, getattr(self, self.fold_kernel_name)).shape[-1]
        if options["batch_norm"] is not None:
            self.bn_gamma = self.add_weight(name="bn_gamma", shape=(channels,), initializer="ones")
            self.bn_beta = self.add_weight(name="bn_beta", shape=(channels,), initializer="zeros")
            # aggregation="mean": replicas and workers average their updates into one set of statistics.
            self.bn_moving_mean = self.add_weight(
                name="bn_moving_mean", shape=(channels,), initializer="zeros", trainable=False, aggregation="mean"
            )
            self.bn_moving_variance = self.add_weight(
                name="bn_moving_variance", shape=(channels,), initializer="ones", trainable=False, aggregation="mean"
            )
            # A variable, not a Python flag, so freezing takes effect inside a running fit().
            self.bn_frozen = self.add_weight(name="bn_frozen", shape=(), initializer="zeros", trainable=False)
        self.kernel_masks = {}
        for name in options["masked_kernels"]:
            shape = tuple(getattr(self, name).shape)
            self.kernel_masks[name] = self.add_weight(name=f"{name}_mask", shape=shape, initializer="ones", trainable=False)
        for quantizer in self.activation_quantizers():
            quantizer.build(None)

    def activation_quantizers(self):
        return [q for q in (self.pre_activation_quantizer,) if q is not None]

    def set_frozen(self, frozen):
        """Freezes (or thaws) folded BN statistics and every activation range of this layer."""
        value = 1.0 if frozen else 0.0
        if self.qat_options["batch_norm"] is not None:
            self.bn_frozen.assign(value)
        for quantizer in self.activation_quantizers():
            quantizer.frozen.assign(value)

    def _quantized_kernels(self):
        bn = self.qat_options["batch_norm"]
        scale = None
        if bn is not None:
            scale = folding.fold_scale(self.bn_gamma, self.bn_moving_variance, bn["epsilon"])
        kernels = {}
        per_channel = self.qat_options["per_channel"] and self.supports_per_channel
        bias_weight_scale = None
        for name in self.kernel_names:
            kernel = getattr(self, name)
            if name in self.kernel_masks:
                kernel = kernel * self.kernel_masks[name]
            view = self.channels_last(name, kernel)
            if scale is not None and name == self.fold_kernel_name:
                view = view * scale
            if name == self.fold_kernel_name:
                bias_weight_scale = weight_scale(view, per_channel)
            if not self.float_weights:
                view = fake_quant_weights(view, per_channel)
            kernels[name] = self.from_channels_last(name, view, tuple(kernel.shape))
        return kernels, scale, bias_weight_scale

    def call(self, inputs, training=None):
        kernels, scale, bias_weight_scale = self._quantized_kernels()
        outputs = self.linear(inputs, kernels, training)
        bias = self.bias if self.use_bias else ops.zeros((outputs.shape[-1],), outputs.dtype)
        bn = self.qat_options["batch_norm"]
        if bn is None:
            if self.use_bias:
                outputs = ops.add(outputs, self._quantize_bias(bias, bias_weight_scale))
        else:
            folded = folding.folded_bias(bias, self.bn_beta, self.bn_moving_mean, scale)
            inference = ops.add(outputs, self._quantize_bias(folded, bias_weight_scale))
            if training:
                trained, batch_mean, batch_variance = folding.batch_norm_training(
                    outputs, scale, bias, self.bn_beta, self.bn_moving_variance, bn["epsilon"]
                )
                frozen = self.bn_frozen > 0
                momentum = bn["momentum"]
                for variable, batch_value in (
                    (self.bn_moving_mean, batch_mean),
                    (self.bn_moving_variance, batch_variance),
                ):
                    updated = variable * momentum + ops.stop_gradient(batch_value) * (1.0 - momentum)
                    variable.assign(ops.where(frozen, variable, updated))
                outputs = ops.where(frozen, inference, trained)
            else:
                outputs = inference
        if self.pre_activation_quantizer is not None:
            outputs = self.pre_activation_quantizer(outputs, training=training)
        if self.activation is not None:
            outputs = apply_activation(self.activation, outputs)
        return outputs

    # Conv and Dense save only kernel and bias; the generic Layer methods save every own
    # variable (folded BN statistics, masks), so nothing is silently dropped on reload.
    def save_own_variables(self, store):
        keras.layers.Layer.save_own_variables(self, store)

    def load_own_variables(self, store):
        keras.layers.Layer.load_own_variables(self, store)

    def get_config(self):
        config = super().get_config()
        config["qat_options"] = dict(self.qat_options)
        return config


def _register(cls):
    return keras.saving.register_keras_serializable(package="tfcompress")(cls)


class _ConvMixin(QuantizedLayerMixin):
    def linear(self, inputs, kernels, training):
        return self.convolution_op(inputs, kernels["kernel"])


@registry.quantizes(layers.Conv1D)
@_register
class QuantizedConv1D(_ConvMixin, layers.Conv1D):
    """`keras.layers.Conv1D` with a per-tensor int8 fake-quantized kernel (see `QuantizedLayerMixin`).

    Per-tensor because TFLite runs Conv1D as CONV_2D on an expanded kernel, and
    the converter rejects per-channel ranges through that reshape.
    """

    supports_per_channel = False


@registry.quantizes(layers.Conv2D)
@_register
class QuantizedConv2D(_ConvMixin, layers.Conv2D):
    """`keras.layers.Conv2D` with a per-channel int8 fake-quantized kernel (see `QuantizedLayerMixin`)."""


class _DepthwiseMixin(QuantizedLayerMixin):
    # Kernel (..., in, multiplier): TFLite's output channel is in * multiplier.
    def channels_last(self, name, kernel):
        shape = tuple(kernel.shape)
        return ops.reshape(kernel, shape[:-2] + (shape[-2] * shape[-1],))

    def from_channels_last(self, name, view, shape):
        return ops.reshape(view, shape)

    def depthwise(self, inputs, kernel):
        return ops.depthwise_conv(inputs, kernel, strides=self.strides, padding=self.padding,
                                  dilation_rate=self.dilation_rate, data_format=self.data_format)

    def linear(self, inputs, kernels, training):
        return self.depthwise(inputs, kernels["kernel"])


@registry.quantizes(layers.DepthwiseConv1D)
@_register
class QuantizedDepthwiseConv1D(_DepthwiseMixin, layers.DepthwiseConv1D):
    """`keras.layers.DepthwiseConv1D` with a per-tensor int8 fake-quantized kernel (expanded to 2D, as Conv1D)."""

    supports_per_channel = False


@registry.quantizes(layers.DepthwiseConv2D)
@_register
class QuantizedDepthwiseConv2D(_DepthwiseMixin, layers.DepthwiseConv2D):
    """`keras.layers.DepthwiseConv2D` with a per-channel int8 fake-quantized kernel."""


class _SeparableMixin(_DepthwiseMixin):
    # The depthwise half is a depthwise layer's; the pointwise kernel is a 1x1 Conv's, channels last already.
    kernel_names = ("depthwise_kernel", "pointwise_kernel")
    fold_kernel_name = "pointwise_kernel"

    def __init__(self, *args, qat_options=None, **kwargs):
        super().__init__(*args, qat_options=qat_options, **kwargs)
        # TFLite runs SeparableConv as DEPTHWISE_CONV_2D then CONV_2D; the tensor between needs a range.
        self.intermediate_quantizer = ActivationQuantizer(self.qat_options["ema_decay"], name="intermediate_quantizer")

    def activation_quantizers(self):
        return super().activation_quantizers() + [self.intermediate_quantizer]

    def bias_input_scale(self):
        # The bias belongs to the pointwise CONV_2D, whose input is the intermediate tensor.
        return self.intermediate_quantizer.scale()

    def channels_last(self, name, kernel):
        return super().channels_last(name, kernel) if name == "depthwise_kernel" else kernel

    def linear(self, inputs, kernels, training):
        depthwise = self.depthwise(inputs, kernels["depthwise_kernel"])
        depthwise = self.intermediate_quantizer(depthwise, training=training)
        return ops.conv(depthwise, kernels["pointwise_kernel"], strides=1, padding="valid", data_format=self.data_format)


@registry.quantizes(layers.SeparableConv1D, ("depthwise_kernel", "pointwise_kernel"))
@_register
class QuantizedSeparableConv1D(_SeparableMixin, layers.SeparableConv1D):
    """`keras.layers.SeparableConv1D` with per-tensor int8 fake-quantized kernels (expanded to 2D, as Conv1D)."""

    supports_per_channel = False


@registry.quantizes(layers.SeparableConv2D, ("depthwise_kernel", "pointwise_kernel"))
@_register
class QuantizedSeparableConv2D(_SeparableMixin, layers.SeparableConv2D):
    """`keras.layers.SeparableConv2D` with per-channel int8 fake-quantized kernels and a quantized intermediate."""


class _ConvTransposeMixin(QuantizedLayerMixin):
    # Kernel (..., filters, in): the output channel is the second-to-last axis.
    def channels_last(self, name, kernel):
        return ops.swapaxes(kernel, -1, -2)

    def from_channels_last(self, name, view, shape):
        return ops.swapaxes(view, -1, -2)

    def linear(self, inputs, kernels, training):
        return ops.conv_transpose(inputs, kernels["kernel"], strides=list(self.strides), padding=self.padding,
                                  output_padding=self.output_padding, dilation_rate=self.dilation_rate,
                                  data_format=self.data_format)


@registry.quantizes(layers.Conv2DTranspose)
@_register
class QuantizedConv2DTranspose(_ConvTransposeMixin, layers.Conv2DTranspose):
    """`keras.layers.Conv2DTranspose` with a per-tensor int8 fake-quantized kernel.

    Per-tensor because the converter transposes this kernel after quantizing
    it ("'tfl.transpose' op has mismatched quantized axes" with per-channel).
    """

    supports_per_channel = False


@registry.quantizes(layers.Dense)
@_register
class QuantizedDense(QuantizedLayerMixin, layers.Dense):
    """`keras.layers.Dense` with a per-tensor int8 fake-quantized kernel.

    Per-tensor because the converter transposes the Dense kernel after
    quantizing it, and per-channel ranges then fail with "'tfl.transpose' op has
    mismatched quantized axes".
    """

    supports_per_channel = False

    def linear(self, inputs, kernels, training):
        return ops.matmul(inputs, kernels["kernel"])


@_register
class QuantizedActivation(layers.Activation):
    """`keras.layers.Activation` computed as TFLite's int8 kernels do (see `apply_activation`).

    Used in QAT models in place of ``Activation("swish")``/``Activation("silu")``;
    same config, no weights.
    """

    def call(self, inputs):
        return apply_activation(self.activation, inputs)
