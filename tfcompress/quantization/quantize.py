"""`quantize_model`: a Keras 3 model in, a quantization-aware-training model out."""

import dataclasses
import difflib
import warnings

import keras
import numpy as np

from tfcompress.core import graph, representative
from tfcompress.core.tables import markdown_table
from tfcompress.quantization import registry
from tfcompress.quantization.config import QATConfig
from tfcompress.quantization import fake_quant
from tfcompress.quantization.fake_quant import FIXED_OUTPUT_RANGES, ActivationQuantizer
from tfcompress.quantization.quantized_layers import (
    FUSABLE_ACTIVATIONS,
    SIGMOID_GATED_ACTIVATIONS,
    QuantizedActivation,
    QuantizedLayerMixin,
    activation_name,
)

# Ops TFLite can fuse a following ReLU/ReLU6 into, so their own output needs no range.
_FUSES_ACTIVATION = (keras.layers.Add, keras.layers.Subtract, keras.layers.Multiply)
# The same for keras.ops operation nodes (`graph.operation_kind`).
_FUSES_ACTIVATION_OPS = ("numpy.Add", "numpy.Subtract", "numpy.Multiply")
_FUSABLE_ACTIVATION_OPS = ("nn.Relu", "nn.Relu6")
# Operation nodes whose output has a fixed int8 grid in TFLite, as the activation of that name.
_OPERATION_ACTIVATIONS = {"nn.Sigmoid": "sigmoid", "nn.Softmax": "softmax", "numpy.Tanh": "tanh"}


@dataclasses.dataclass
class QuantizationReport:
    """What `quantize_model` did to each layer.

    Attributes:
        quantized: names of layers whose kernels are fake-quantized.
        folded: ``(batch_norm_name, into_layer_name)`` pairs.
        float_layers: ``(layer_name, reason)`` for layers left in float.
    """

    quantized: list = dataclasses.field(default_factory=list)
    folded: list = dataclasses.field(default_factory=list)
    float_layers: list = dataclasses.field(default_factory=list)

    def to_markdown(self):
        lines = [
            f"Quantized layers: {len(self.quantized)}; folded BatchNormalization: {len(self.folded)}; "
            f"float layers: {len(self.float_layers)}."
        ]
        if self.float_layers:
            lines += ["", markdown_table(("layer", "kept float because"), self.float_layers)]
        return "\n".join(lines)

    def __str__(self):
        return self.to_markdown()


@dataclasses.dataclass
class _Plan:
    action: str  # "quantize", "fold" (a BN folded away), "keep", "nested"
    quantize_output: bool = False
    fold_into: str = None
    folded_bn: object = None
    masked_kernels: tuple = ()


def quantize_model(model, representative_data=None, keep_float=None, config=None, calibration="minmax"):
    """Turns a Keras 3 model into a quantization-aware-training (QAT) model.

    Kernels are fake-quantized to symmetric int8 (per-channel for convolutions,
    per-tensor for Dense), activations to asymmetric int8 with moving-average
    ranges, and a BatchNormalization right after a Conv/Dense layer is folded
    into it. Train the result with ``fit`` as usual (a few epochs at a low
    learning rate from a trained float model is typical), then convert with
    ``tfc.to_tflite(qat_model, mode="int8", ...)``: the int8 file computes what
    the QAT model computes at inference.

    Works on built Sequential and Functional models, including nested
    Sequential/Functional sub-models (their layers are quantized in place; a
    BatchNormalization is only folded into a layer of the same sub-model).
    Subclassed models cannot be rewritten: quantize their Functional or
    Sequential parts instead. Layers the registry does not cover stay float and
    are listed in `quantization_report` (with a warning) rather than raising.

    The QAT model contains tfcompress layer classes registered with Keras, so
    ``keras.models.load_model("qat.keras")`` works after ``import tfcompress``.

    Where the activation ranges start: with ``representative_data``, every
    range starts where post-training int8 (``to_tflite(model, mode="int8",
    representative_data=...)``) would put it: the same data checks, the same
    sample limit and, with ``calibration="minmax"``, the converter's own min/max
    choice (the others are `to_tflite`'s ``calibration=`` methods, run by the same
    `calibrate`). Converted before any training, the QAT model then gives the PTQ
    file. Without data, the first batch of ``fit`` sets each range and the next
    ones widen it to the extremes they see, before the ranges are exported; the
    initial [-6, 6] is never used (`to_tflite` refuses a QAT model whose ranges
    never saw data unless given calibration data). Weight ranges always follow
    the weights.

    Args:
        model: a built ``keras.Model`` (Sequential or Functional).
        representative_data: optional calibration inputs, in any form `to_tflite`
            accepts (an array, a ``tf.data.Dataset``, a generator, a dict keyed by
            input name); ~200-500 typical training inputs.
        keep_float: layer name or names to leave in float. A kept layer
            without weights (an activation, an Add) still gets an int8 range on
            its output, so the next layer reads int8. A kept layer with weights
            (Conv, Dense) gets none: the converter would quantize it anyway
            otherwise, so it runs float in the ``.tflite`` too, and so does the
            op that reads its output.
        config: a `QATConfig`; defaults to ``QATConfig()``.
        calibration: how ``representative_data`` sets the ranges: ``"minmax"``
            (post-training int8's default), ``"percentile"`` or ``"mse"`` (as
            `to_tflite`'s ``calibration=``). Ignored without data.

    Returns:
        A new Functional ``keras.Model`` with the original layer names (folded
        BatchNormalization layers disappear, ``<name>_quant`` activation
        quantizers appear), the original weights, and the original compile
        settings if the model was compiled. ``model`` is not modified.

    Raises:
        TypeError: ``model`` is not a Keras 3 model, is subclassed, or
            ``config`` is not a `QATConfig`.
        ValueError: the model is not built, is already quantized, a
            ``keep_float`` name is not a layer of it, or ``calibration`` is
            not a method.
        RepresentativeDataError: ``representative_data`` does not fit the
            model (the message names the input and the sample).

    Example:

    >>> qat = tfc.quantize_model(model, x[:500])   # ranges start where post-training int8's are
    >>> tfc.zoo.compile_classifier(qat, learning_rate=1e-4)
    >>> qat.fit(x, y, epochs=2)
    >>> int8_bytes = tfc.to_tflite(qat, mode="int8")   # the trained ranges: no calibration data
    >>> print(tfc.quantization.quantization_report(qat))
    """
    config = _check_config(config)
    _check_model(model)
    _check_representative_data(representative_data)
    if calibration not in CALIBRATION_METHODS[1:]:
        raise ValueError(f"calibration={calibration!r}: choose one of {list(CALIBRATION_METHODS[1:])} "
                         "(\"minmax\" is what post-training int8 uses).")
    keep_float = _check_keep_float(model, keep_float)
    samples = None
    if representative_data is not None:
        # Checked on the float model before anything is built, as to_tflite checks it.
        specs = representative.functional_input_specs(_as_functional(model))
        samples = representative.prepare(representative_data, specs,
                                         max_samples=representative.DEFAULT_MAX_CALIBRATION_SAMPLES)
        representative.check_model_outputs(model, samples, specs)
    report = QuantizationReport()
    quantized = _quantize_functional(model, keep_float, config, report, quantize_inputs=True)
    if model.compiled:
        quantized.compile_from_config(model.get_compile_config())
    if report.float_layers:
        listed = ", ".join(f"{name} ({reason})" for name, reason in report.float_layers)
        warnings.warn(f"quantize_model left {len(report.float_layers)} layer(s) in float: {listed}.", stacklevel=2)
    quantized.quantization_report = report
    if samples is not None:
        arrays = representative.stacked(samples)
        calibrate(quantized, arrays if len(arrays) > 1 else arrays[0], method=calibration)
    return quantized


def _check_representative_data(data):
    """Catches keep_float passed by position where ``representative_data`` now is."""
    names = [data] if isinstance(data, str) else data
    if isinstance(names, (list, tuple)) and names and all(isinstance(n, str) for n in names):
        raise TypeError(
            f"representative_data={data!r} looks like layer names: quantize_model's second argument is the "
            f"calibration data. Pass layer names as keep_float={data!r}.")


def quantization_report(model):
    """What `quantize_model` did to each layer of a QAT model: quantized, folded, kept float and why.

    Works on the model `quantize_model` returned and on one loaded with
    ``keras.models.load_model`` (the report is then read off its layers: a
    weighted layer kept float by ``keep_float`` is reported as such).

    Returns:
        A `QuantizationReport`.

    Raises:
        ValueError: ``model`` holds no quantized layer.
    """
    report = getattr(model, "quantization_report", None)
    if isinstance(report, QuantizationReport):
        return report
    report = QuantizationReport()
    for path, layer in graph.iter_layers(model):
        if isinstance(layer, QuantizedLayerMixin):
            report.quantized.append(path)
            bn = layer.qat_options.get("batch_norm")
            if bn:
                prefix = path.rsplit("/", 1)[0] + "/" if "/" in path else ""
                report.folded.append((prefix + bn.get("name", "?"), path))
        elif (isinstance(layer, (ActivationQuantizer, keras.layers.InputLayer, keras.Model))
              or type(layer).__module__.startswith("tfcompress.")):
            continue
        else:
            spec = registry.lookup(layer)
            reason = _float_reason(layer, spec, keep_float=set())
            if reason is None and spec is not None and spec.kind == "weighted":
                reason = "listed in keep_float"
            if reason is not None:
                report.float_layers.append((path, reason))
    if not report.quantized and not any(isinstance(layer, ActivationQuantizer) for layer in graph.layers_of(model)):
        raise ValueError(f"Model {model.name!r} has no quantized layer; pass a model made by tfc.quantize_model.")
    return report


def freeze(model, frozen=True):
    """Freezes activation ranges and folded BatchNormalization statistics of a QAT model.

    Typical for the last epoch or two of QAT: weights keep training against
    fixed ranges and statistics, which is what the int8 model will use. Takes
    effect immediately, also inside a running ``fit`` (the switches are
    variables). ``freeze(model, False)`` thaws them again.

    Args:
        model: a model returned by `quantize_model` (or loaded from one).
        frozen: True to freeze, False to thaw.

    Returns:
        The number of layers switched.

    Raises:
        ValueError: ``model`` contains no quantized layer.
    """
    count = 0
    for layer in graph.layers_of(model):
        if isinstance(layer, QuantizedLayerMixin):
            layer.set_frozen(frozen)
            count += 1
        elif isinstance(layer, ActivationQuantizer):
            layer.frozen.assign(1.0 if frozen else 0.0)
            count += 1
    if not count:
        raise ValueError(
            f"Model {getattr(model, 'name', model)!r} has no quantized layer to freeze; "
            "pass the model returned by tfc.quantize_model."
        )
    return count


class FreezeQuantization(keras.callbacks.Callback):
    """Freezes activation ranges and folded BN statistics from a given epoch on.

    Args:
        start_epoch: 0-based epoch at whose beginning `freeze` is applied.

    Example:

    >>> qat.fit(x, y, epochs=4, callbacks=[tfc.quantization.FreezeQuantization(start_epoch=3)])
    """

    def __init__(self, start_epoch):
        super().__init__()
        if isinstance(start_epoch, bool) or not isinstance(start_epoch, int) or start_epoch < 0:
            raise ValueError(f"start_epoch must be an integer >= 0, got {start_epoch!r}.")
        self.start_epoch = start_epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.start_epoch:
            freeze(self.model)


def _check_config(config):
    if config is None:
        return QATConfig()
    if not isinstance(config, QATConfig):
        raise TypeError(
            f"config must be a tfc.QATConfig, got {type(config).__name__}: {config!r}. "
            "Example: tfc.QATConfig(ema_decay=0.99)."
        )
    return config


def _check_model(model):
    graph.check_model(model, action="quantize", require_built=False)
    graph.check_functional(model, "quantize_model")
    graph.check_model(model, action="quantize")
    for layer in graph.layers_of(model):
        if isinstance(layer, (QuantizedLayerMixin, ActivationQuantizer)):
            raise ValueError(
                f"Model {model.name!r} is already quantized (layer {layer.name!r} is {type(layer).__name__}); "
                "pass the original float model."
            )


def _check_keep_float(model, keep_float):
    if keep_float is None:
        return set()
    names = [keep_float] if isinstance(keep_float, str) else keep_float
    try:
        names = list(names)
    except TypeError:
        raise TypeError(f"keep_float must be a layer name or a list of names, got {keep_float!r}.") from None
    known = [layer.name for layer in graph.layers_of(model) if not isinstance(layer, keras.layers.InputLayer)]
    # Operation nodes (x * 3.0, keras.ops.add...) of the top-level graph can be kept float by name too.
    known += [name for name, node in graph.operations_by_name(model).items() if graph.is_operation(node)]
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"keep_float must hold layer names (str), got {name!r} in {keep_float!r}.")
        if name not in known:
            close = difflib.get_close_matches(name, known, n=3)
            hint = f" Did you mean {close}?" if close else f" Layers: {known}."
            raise ValueError(f"keep_float names layer {name!r}, which model {model.name!r} does not have.{hint}")
    return set(names)


def _as_functional(model):
    if isinstance(model, keras.Sequential):
        return keras.Model(model.inputs, model.outputs, name=model.name)
    return model


def _fuses_activation(layer):
    """True for an op TFLite can fuse a following ReLU/ReLU6 into (a layer or an operation node)."""
    if graph.is_operation(layer):
        return graph.operation_kind(layer) in _FUSES_ACTIVATION_OPS
    return type(layer) in _FUSES_ACTIVATION


def _is_fusable_activation(layer):
    if graph.is_operation(layer):
        return graph.operation_kind(layer) in _FUSABLE_ACTIVATION_OPS
    if type(layer) is keras.layers.ReLU:
        config = layer.get_config()
        return not config.get("negative_slope") and not config.get("threshold") and config.get("max_value") in (None, 6.0, 6)
    if type(layer) is keras.layers.Activation:
        return activation_name(layer.activation) in FUSABLE_ACTIVATIONS
    return False


def _output_activation(layer):
    """Name of the activation that produces ``layer``'s output, if it has one."""
    if graph.is_operation(layer):
        return _OPERATION_ACTIVATIONS.get(graph.operation_kind(layer))
    if type(layer) is keras.layers.Softmax:
        return "softmax"
    if hasattr(layer, "activation") and not isinstance(layer, keras.Model):
        return activation_name(layer.activation)
    return None


def _float_reason(layer, spec, keep_float):
    """Why ``layer`` stays float, or None when it can be quantized."""
    if layer.name in keep_float:
        return "listed in keep_float"
    if graph.is_operation(layer):
        if spec is None:
            return f"operation {graph.operation_kind(layer)} (keras.ops) has no int8 rewrite in tfcompress"
        if any("float32" not in str(t.dtype) for t in keras.tree.flatten(layer.output)):
            return f"operation {graph.operation_kind(layer)} outputs {layer.output.dtype}, not float32"
        return None
    if spec is None and (isinstance(layer, keras.layers.RNN) or isinstance(getattr(layer, "layer", None),
                                                                          keras.layers.RNN)):
        # Fake-quant inside the recurrence would need a quantizer per gate and per step; the file's RNN is
        # quantized by to_tflite's calibration instead (mode='int8' with representative_data).
        return (f"{type(layer).__name__}: recurrent layers are not fake-quantized (QAT); to_tflite(qat, mode='int8', "
                "representative_data=...) quantizes them post-training")
    if spec is None:
        return f"{type(layer).__name__} is not in the quantization registry"
    if getattr(layer, "quantization_mode", None):
        return f"already quantized by Keras (quantization_mode={layer.quantization_mode!r})"
    if getattr(layer, "data_format", "channels_last") == "channels_first":
        return "data_format='channels_first'; TFLite kernels are channels_last"
    if layer.dtype_policy.compute_dtype != "float32":
        return f"dtype policy {layer.dtype_policy.name!r}; quantization needs float32"
    activation = getattr(layer, "activation", None)
    if activation is not None and activation_name(activation) not in registry.SUPPORTED_ACTIVATIONS:
        return f"activation {activation_name(activation)!r} has no int8 TFLite kernel"
    return None


def _plan(model, nodes, keep_float, config, report, prefix):
    plans = {}
    operations = graph.operations_by_name(model)  # once: get_operation would rebuild it per node
    for name, node in nodes.items():
        layer = operations[name]
        if isinstance(layer, keras.layers.InputLayer):
            plans[name] = _Plan("keep")
            continue
        if isinstance(layer, keras.Model):
            plans[name] = _Plan("nested")
            continue
        spec = registry.lookup(layer)
        reason = _float_reason(layer, spec, keep_float)
        if reason is None and registry.is_identity_normalization(layer):
            # The converter removes x - 0 / 1 and with it a second quantizer: the int8 tensor keeps the
            # input's scale, so quantizing it again in Keras would round twice where TFLite rounds once.
            plans[name] = _Plan("keep")
        elif reason is not None:
            report.float_layers.append((prefix + name, reason))
            # A weighted op between two ranged tensors is one the converter quantizes by itself (weights
            # included), so a float layer with weights gets no output range: it stays float in the file.
            plans[name] = _Plan("keep", quantize_output=not getattr(layer, "weights", None))
        elif spec.kind == "weighted":
            masked = ()
            if config.preserve_zeros:
                masked = tuple(w for w in spec.quantized_weights if np.any(keras.ops.convert_to_numpy(getattr(layer, w)) == 0))
            plans[name] = _Plan("quantize", quantize_output=True, masked_kernels=masked)
            report.quantized.append(prefix + name)
        else:
            plans[name] = _Plan("keep", quantize_output=spec.kind == "output")

    if config.fold_batch_norm:
        for name, node in nodes.items():
            layer = operations[name]
            if type(layer) is not keras.layers.BatchNormalization or name in keep_float or not node.single_call:
                continue
            producers = node.producers
            if len(producers) != 1 or plans[producers[0]].action != "quantize":
                continue
            source = nodes[producers[0]]
            source_layer = operations[source.name]
            rank = len(source_layer.output.shape)
            if (
                source.single_call
                and source.consumers == [name]
                and not source.is_output
                and plans[source.name].folded_bn is None
                and activation_name(source_layer.activation) == "linear"
                and layer.axis in (-1, rank - 1)
            ):
                plans[name] = _Plan("fold", fold_into=source.name)
                plans[source.name].folded_bn = layer
                report.folded.append((prefix + name, prefix + source.name))

    # The same for an activation the converter would fuse into such a float layer.
    for name, node in nodes.items():
        plan = plans[name]
        if plan.action != "keep" or plan.quantize_output or not getattr(operations[name], "weights", None):
            continue
        consumer = _fused_activation(operations, nodes, node)
        if consumer is not None:
            plans[consumer.name].quantize_output = False

    # A ReLU/ReLU6 that TFLite fuses into the op before it carries that op's output range.
    for name, node in nodes.items():
        plan = plans[name]
        layer = operations[name]
        fuses = plan.action == "quantize" or (_fuses_activation(layer) and name not in keep_float)
        if not fuses or not node.single_call:
            continue
        output_node = node if plan.folded_bn is None else nodes[plan.folded_bn.name]
        consumer = _fused_activation(operations, nodes, output_node)
        if consumer is not None and consumer.name not in keep_float:
            plan.quantize_output = False
    return plans


def _fused_activation(operations, nodes, node):
    """The node of the activation layer TFLite fuses into the op that produces ``node``'s output, or None."""
    if node.is_output or len(node.consumers) != 1:
        return None
    consumer = nodes[node.consumers[0]]
    if consumer.single_call and _is_fusable_activation(operations[consumer.name]):
        return consumer
    return None


def _qat_options(plan, config):
    options = {"per_channel": config.per_channel, "ema_decay": config.ema_decay, "masked_kernels": list(plan.masked_kernels)}
    if plan.folded_bn is not None:
        bn = plan.folded_bn
        # The name is only read by quantization_report (a loaded model no longer has the BN layer).
        options["batch_norm"] = {"epsilon": float(bn.epsilon), "momentum": float(bn.momentum), "name": bn.name}
    return options


def _clone_layer(layer):
    if type(layer) is keras.layers.Activation and activation_name(layer.activation) in SIGMOID_GATED_ACTIVATIONS:
        # Swish runs as LOGISTIC + MUL in int8; this class rounds the sigmoid gate as LOGISTIC does.
        return QuantizedActivation.from_config(layer.get_config())
    try:
        return type(layer).from_config(layer.get_config())
    except Exception:  # noqa: BLE001 - e.g. a Lambda that cannot be rebuilt from its config
        # Sharing the instance keeps the model correct; the layer's weights are then shared too.
        return layer


def _quantize_functional(model, keep_float, config, report, quantize_inputs, prefix=""):
    functional = _as_functional(model)
    nodes, input_names = graph.read_graph(functional)
    plans = _plan(functional, nodes, keep_float, config, report, prefix)
    originals = {}
    used_names = {layer.name for layer in functional.layers}

    def unique_name(base):
        name, i = base, 1
        while name in used_names:
            name, i = f"{base}_{i}", i + 1
        used_names.add(name)
        return name

    def clone_function(layer):
        plan = plans[layer.name]
        originals[layer.name] = layer
        if plan.action == "nested":
            return _quantize_functional(layer, keep_float, config, report, False, prefix=f"{prefix}{layer.name}/")
        if plan.action == "quantize":
            layer_config = layer.get_config()
            layer_config["qat_options"] = _qat_options(plan, config)
            return registry.lookup(layer).quantized_class.from_config(layer_config)
        return _clone_layer(layer)

    inputs = [keras.Input(batch_shape=t.shape, dtype=t.dtype, name=n) for t, n in zip(functional.inputs, input_names)]
    quantized_inputs = {}

    def quantize_input(tensor):
        if not quantize_inputs or not any(tensor is t for t in inputs) or "float" not in str(tensor.dtype):
            return tensor
        key = id(tensor)
        if key not in quantized_inputs:
            quantized_inputs[key] = ActivationQuantizer(config.ema_decay, name=unique_name(f"{tensor.name}_quant"))(tensor)
        return quantized_inputs[key]

    def call_function(layer, *args, **kwargs):
        plan = plans[layer.name]
        args, kwargs = keras.tree.map_structure(quantize_input, (args, kwargs))
        if plan.action == "fold":
            return args[0]
        outputs = layer(*args, **kwargs)
        if plan.quantize_output:
            fixed_range = FIXED_OUTPUT_RANGES.get(_output_activation(layer))
            outputs = keras.tree.map_structure(
                lambda t: ActivationQuantizer(config.ema_decay, fixed_range, name=unique_name(f"{layer.name}_quant"))(t),
                outputs,
            )
        return outputs

    structured_inputs = inputs if isinstance(functional.input, (list, tuple)) else inputs[0]
    if isinstance(functional.input, dict):
        structured_inputs = dict(zip(functional.input.keys(), inputs))
    quantized = keras.models.clone_model(
        functional, input_tensors=structured_inputs, clone_function=clone_function, call_function=call_function
    )
    for new_layer in quantized.layers:
        original = originals.get(new_layer.name)
        if original is None or original is new_layer or isinstance(new_layer, keras.Model):
            continue
        _copy_weights(original, new_layer, plans[new_layer.name])
    return quantized


def _copy_weights(original, new_layer, plan):
    if plan.action != "quantize":
        new_layer.set_weights(original.get_weights())
        return
    for name in ("kernel", "depthwise_kernel", "pointwise_kernel", "bias"):
        source = getattr(original, name, None)
        if source is not None:
            getattr(new_layer, name).assign(source)
    for name, mask in new_layer.kernel_masks.items():
        mask.assign(keras.ops.cast(keras.ops.not_equal(getattr(original, name), 0), mask.dtype))
    bn = plan.folded_bn
    if bn is not None:
        channels = new_layer.bn_gamma.shape[0]
        new_layer.bn_gamma.assign(bn.gamma if bn.scale else np.ones(channels, "float32"))
        new_layer.bn_beta.assign(bn.beta if bn.center else np.zeros(channels, "float32"))
        new_layer.bn_moving_mean.assign(bn.moving_mean)
        new_layer.bn_moving_variance.assign(bn.moving_variance)


CALIBRATION_METHODS = ("ema", "minmax", "percentile", "mse")


def calibrate(model, x, batch_size=128, only_untrained=False, method="ema", percentile=99.9):
    """Sets activation ranges of a QAT model from data, without training anything else.

    The model runs in inference mode (BatchNormalization statistics, folded or
    not, stay as they are; Dropout is off) while its activation quantizers
    set their ranges from the data. With a method other than ``"ema"`` the
    values are those of the float model (float activations and weights), as the
    TFLite converter calibrates for post-training int8. ``quantize_model(model,
    x)`` calls it; `to_tflite` calls it on a
    QAT model that was never trained (``only_untrained=True``), and for
    ``calibration=`` other than the converter's own.

    Args:
        model: a model returned by `quantize_model`.
        x: a NumPy array of inputs (or a list of arrays for several inputs).
        batch_size: samples per forward pass.
        only_untrained: update only ranges that never saw data; trained ones are kept.
        method: ``"ema"`` (moving averages of batch min/max, as training does),
            ``"minmax"`` (the extremes over all of ``x``, the TFLite converter's
            choice), ``"percentile"`` (clip the ``100 - percentile`` % tails) or
            ``"mse"`` (the clipping with the least int8 round-trip error).
        percentile: for ``method="percentile"``.

    Returns:
        The number of activation ranges set.

    Raises:
        ValueError: ``model`` holds no activation quantizer, or an unknown method.
    """
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"method={method!r} is not a calibration method; choose one of {list(CALIBRATION_METHODS)}.")
    if not 50.0 < float(percentile) <= 100.0:
        raise ValueError(f"percentile={percentile!r} must be in (50, 100], e.g. 99.9.")
    quantizers = [layer for layer in graph.layers_of(model) if isinstance(layer, ActivationQuantizer)]
    if not quantizers:
        raise ValueError(
            f"Model {getattr(model, 'name', model)!r} has no quantized layer to calibrate; "
            "pass the model returned by tfc.quantize_model."
        )
    chosen = [q for q in quantizers if q.fixed_range is None and not (only_untrained and q.updated)]
    collectors = {}
    if method != "ema":
        collectors = {id(q): fake_quant.ValueCollector() for q in chosen}
    inputs = x if isinstance(x, (list, tuple)) else [x]
    count = len(inputs[0])
    weighted = [layer for layer in graph.layers_of(model) if isinstance(layer, QuantizedLayerMixin)] if collectors else []
    try:
        fake_quant.COLLECTORS.update(collectors)
        for quantizer in chosen:
            quantizer.calibrating = True
        for layer in weighted:
            layer.float_weights = True
        if chosen:
            for start in range(0, count, batch_size):
                batch = [np.asarray(a[start:start + batch_size]) for a in inputs]
                model(batch if len(batch) > 1 else batch[0], training=False)
    finally:
        for quantizer in chosen:
            quantizer.calibrating = False
        for layer in weighted:
            layer.float_weights = False
        for key in collectors:
            fake_quant.COLLECTORS.pop(key, None)
    for quantizer in chosen if collectors else ():
        low, high = fake_quant.choose_range(collectors[id(quantizer)], method, percentile)
        quantizer.range_min.assign(low)
        quantizer.range_max.assign(high)
        quantizer.num_updates.assign(max(1.0, float(keras.ops.convert_to_numpy(quantizer.num_updates))))
    return len(chosen)


def untrained_ranges(model):
    """Names of the activation quantizers of a QAT model whose ranges never saw data (still [-6, 6])."""
    return [layer.name for layer in graph.layers_of(model) if isinstance(layer, ActivationQuantizer) and not layer.updated]
