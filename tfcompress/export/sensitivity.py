"""Which Keras layer breaks int8: per-layer quantization sensitivity, in the user's layer names.

LiteRT's quantizer validates per TFLite tensor and TF's QuantizationDebugger needs
TF op names; this report speaks Keras: one row per quantizable layer (nested
layers by '/'-path), with

* the SQNR and relative error of that layer's output when the whole model is
  int8 versus float: measured on the model's fake-quant twin (`quantize_model`
  calibrated on the representative data), which computes what the int8 file
  computes;
* with ``(x, y)``: the accuracy of real int8 ``.tflite`` files in which only
  that layer is kept float, and in which only that layer is int8.

    >>> report = tfc.quantization_sensitivity(model, x_train[:200], x_val, y_val)
    >>> print(report.to_markdown())
    >>> report.plot("sensitivity.png")

`convert_within_budget` (``to_tflite(..., max_accuracy_drop=...)``) uses the ranking to keep the fewest
layers float within an accuracy budget.
"""

import dataclasses
import json
import warnings

import keras
import numpy as np

from tfcompress.core import graph, validation
from tfcompress.core.tables import markdown_table
from tfcompress.evaluation import litert
from tfcompress.evaluation.reports import plot_sensitivity
from tfcompress.core import representative
from tfcompress.export import converter
from tfcompress.quantization import quantize, registry
from tfcompress.quantization.fake_quant import ActivationQuantizer
from tfcompress.quantization.quantized_layers import QuantizedLayerMixin


@dataclasses.dataclass
class LayerSensitivity:
    """One quantizable layer.

    Attributes:
        layer: its Keras name ('/'-path for nested layers).
        kind: its class name.
        local_sqnr_db: SQNR of its output when only this layer quantizes (its int8 weights and output range
            applied to the float model's input of it), averaged over output channels (so one outlier channel
            cannot hide that the others rounded to zero): its own share of the noise; rows are sorted by it.
        sqnr_db: signal-to-quantization-noise ratio of its output when the whole model is int8 (the noise of
            every layer before it included; higher is better).
        relative_error: ``||int8 - float|| / ||float||`` of its output, whole model int8.
        accuracy_kept_float: accuracy of the int8 file with only this layer float (None if not measured).
        accuracy_only_int8: accuracy of the file with only this layer int8 (None if not measured).
    """

    layer: str
    kind: str
    local_sqnr_db: float
    sqnr_db: float
    relative_error: float
    accuracy_kept_float: float = None
    accuracy_only_int8: float = None


@dataclasses.dataclass
class SensitivityReport:
    """What `quantization_sensitivity` measured; rows sorted from the most to the least sensitive."""

    model_name: str
    rows: list
    samples: int
    float_accuracy: float = None
    int8_accuracy: float = None
    notes: list = dataclasses.field(default_factory=list)

    def most_sensitive(self, count=5):
        """The names of the ``count`` layers with the lowest local SQNR (their own quantization noise)."""
        return [row.layer for row in self.rows[:count]]

    def to_dict(self):
        return json.loads(json.dumps(dataclasses.asdict(self), default=float))

    def to_markdown(self):
        def pct(value):
            return "—" if value is None else f"{100 * value:.2f}%"

        header = f"Quantization sensitivity of {self.model_name!r} ({self.samples} samples)"
        if self.float_accuracy is not None:
            header += f": float {pct(self.float_accuracy)}, all-int8 {pct(self.int8_accuracy)}"
        rows = [(row.layer, row.kind, f"{row.local_sqnr_db:.1f}", f"{row.sqnr_db:.1f}", f"{row.relative_error:.3f}",
                 pct(row.accuracy_kept_float), pct(row.accuracy_only_int8)) for row in self.rows]
        table = markdown_table(("layer", "kind", "local SQNR dB", "SQNR dB (all int8)", "rel. error (all int8)",
                                "acc. with only it float", "acc. with only it int8"), rows, title=header + "\n")
        return "\n".join([table] + [f"Note: {note}" for note in self.notes])

    def __str__(self):
        return self.to_markdown()

    def plot(self, path, count=20):
        """Writes a bar chart of the ``count`` most sensitive layers' SQNR to ``path`` (PNG); False without matplotlib."""
        return plot_sensitivity(self, path, count)


def _sqnr(reference, quantized):
    reference = np.asarray(reference, np.float64).ravel()
    noise = np.asarray(quantized, np.float64).ravel() - reference
    signal_power, noise_power = float(np.sum(reference ** 2)), float(np.sum(noise ** 2))
    relative = float(np.sqrt(noise_power / signal_power)) if signal_power > 0 else float(noise_power > 0)
    if noise_power == 0:
        return float("inf"), relative
    return 10.0 * np.log10(max(signal_power, 1e-30) / noise_power), relative


def _channel_sqnr(reference, quantized, cap=100.0):
    """Mean over output channels (last axis) of each channel's SQNR, each capped at ``cap`` dB.

    A plain SQNR is dominated by the channels with the largest values: one outlier channel can hide
    that every other channel rounded to zero. Per channel, that shows (0 dB each).
    """
    reference = np.asarray(reference, np.float64)
    channels = reference.shape[-1] if reference.ndim > 1 else 1
    reference = reference.reshape(-1, channels)
    noise = np.asarray(quantized, np.float64).reshape(-1, channels) - reference
    signal_power, noise_power = np.sum(reference ** 2, axis=0), np.sum(noise ** 2, axis=0)
    live = signal_power > 0
    if not live.any():
        return cap
    with np.errstate(divide="ignore"):
        per_channel = 10.0 * np.log10(signal_power[live] / np.maximum(noise_power[live], 1e-300))
    return float(np.mean(np.minimum(per_channel, cap)))


def layer_values(model, x, outputs=(), inputs=()):
    """``({path: output}, {path: input})`` of the named layers of a Functional model on ``x``.

    Nested Functional submodels are entered (their layers named by '/'-path). An
    input is an array, or a list of arrays for a layer with several inputs.
    """
    found_outputs, found_inputs = {}, {}
    _collect(model, x, set(outputs), set(inputs), "", found_outputs, found_inputs)
    return found_outputs, found_inputs


def _call_inputs(model, layer, nodes):
    """The tensors of ``model``'s graph that ``layer`` was called on, or None when they cannot be told.

    A plain layer's ``input`` is them; a nested model's ``input`` is its own inner ``keras.Input``, so its
    call's inputs are read off its producers (plain layers, whose ``output`` is in this graph).
    """
    if not isinstance(layer, keras.Model):
        return layer.input
    if isinstance(model, keras.Sequential):
        position = model.layers.index(layer)
        producers = [model.layers[position - 1]] if position > 0 else []
        if not producers:
            return model.inputs[0]
    else:
        node = nodes.get(layer.name)
        if node is None or not node.single_call:
            return None
        producers = [graph.get_operation(model, name) for name in node.producers]
    if any(isinstance(p, keras.Model) for p in producers):
        return None
    tensors = [p.output for p in producers]
    return tensors[0] if len(tensors) == 1 else tensors


def _collect(model, x, outputs, inputs, prefix, found_outputs, found_inputs):
    tensors, keys, nested = [], [], []
    nodes = graph.read_graph(model)[0] if not isinstance(model, keras.Sequential) else {}
    for layer in model.layers:
        path = prefix + layer.name
        if isinstance(layer, keras.layers.InputLayer):
            continue
        entered = isinstance(layer, keras.Model) and graph.is_functional(layer)
        if path in inputs or entered:
            tensor = _call_inputs(model, layer, nodes)
            if tensor is None:
                continue  # a model fed straight by another model: its layers get no row
            if entered:
                nested.append((layer, path))
            tensors.append(tensor)
            keys.append(("input", path))
        if path in outputs:
            tensors.append(layer.output)
            keys.append(("output", path))
    if not tensors:
        return
    flat = keras.tree.flatten(tensors)
    values = keras.Model(model.inputs, flat).predict(x, verbose=0, batch_size=256)
    values = keras.tree.pack_sequence_as(tensors, values if isinstance(values, list) else [values])
    for (kind, path), value in zip(keys, values):
        (found_outputs if kind == "output" else found_inputs)[path] = value
    for layer, path in nested:
        _collect(layer, found_inputs[path], outputs, inputs, path + "/", found_outputs, found_inputs)


def _quantizable(qat_model, report):
    """``[(layer path, twin tensor to read, float layer whose output it matches, class name)]``.

    The twin's tensor is the layer's int8 output (its ``<name>_quant`` quantizer) where it has one, else the
    layer's own output (an activation fused after it carries the range); a folded BatchNormalization's
    output is what the conv it was folded into now computes.
    """
    folded_into = {conv: bn for bn, conv in report.folded}
    layers = list(graph.iter_layers(qat_model))
    quantizers = {path for path, layer in layers if isinstance(layer, ActivationQuantizer)}
    entries = []
    for path, layer in layers:
        has_range = f"{path}_quant" in quantizers
        if isinstance(layer, QuantizedLayerMixin):
            kind = type(layer).__name__[len("Quantized"):]
        elif has_range and getattr(registry.lookup(layer), "kind", None) == "output":
            kind = type(layer).__name__  # an Add, a Concatenate, an activation...: int8 with its own range
        else:
            continue
        entries.append((path, f"{path}_quant" if has_range else path, folded_into.get(path, path), kind))
    return entries


def quantization_sensitivity(model, representative_data, x=None, y=None, accuracy_layers=10, max_samples=256):
    """Per-layer int8 sensitivity of a Keras model, by Keras layer name.

    Args:
        model: a trained Sequential or Functional Keras model (nested Functional
            submodels included).
        representative_data: calibration inputs, as for ``to_tflite(mode="int8")``.
        x: optional evaluation inputs; SQNR is measured on ``x`` if given, else
            on the representative data.
        y: optional labels for ``x``: adds the accuracy columns (real ``.tflite``
            files, two conversions per measured layer).
        accuracy_layers: how many layers (the lowest SQNR first) get the accuracy
            columns; None for all.
        max_samples: use at most this many samples of ``x`` for SQNR (every layer's output for all of
            them is held at once: about 5 GB per 100 samples for MobileNetV2 at 96x96).

    Returns:
        A `SensitivityReport`, most sensitive layer first.

    Raises:
        TypeError / ValueError: a subclassed model, bad data or labels (messages say which).
    """
    graph.check_model(model, action="analyse")
    graph.check_functional(model, "quantization_sensitivity")
    specs = converter.input_specs(model, representative_data)
    samples = representative.prepare(representative_data, specs, max_samples=max_samples)
    calibration = [np.concatenate([s[i] for s in samples]) for i in range(len(specs))]
    calibration = calibration[0] if len(calibration) == 1 else calibration
    evaluation = calibration if x is None else x
    if y is not None and x is None:
        raise ValueError("y was given without x; pass both to measure accuracy.")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # layers left float are listed in the report instead
        twin = quantize.quantize_model(model)
    quantize.calibrate(twin, calibration)
    entries = _quantizable(twin, quantize.quantization_report(twin))
    if not entries:
        raise ValueError(f"Model {model.name!r} has no layer that int8 quantizes; nothing to analyse.")
    subset = evaluation if isinstance(evaluation, list) else evaluation[:max_samples]
    if isinstance(evaluation, list):
        subset = [a[:max_samples] for a in evaluation]
    float_out, float_in = layer_values(model, subset, outputs=[source for _, _, source, _ in entries],
                                       inputs=[path for path, _, _, _ in entries])
    twin_out, _ = layer_values(twin, subset, outputs=[read for _, read, _, _ in entries])
    twin_layers = dict(graph.iter_layers(twin))
    rows = []
    for path, read, source, kind in entries:
        if source not in float_out or read not in twin_out or path not in float_in:
            continue
        sqnr, relative = _sqnr(float_out[source], twin_out[read])
        # This layer alone: its fake-quant self (int8 weights, folded BN) and its output range, on float inputs.
        alone = twin_layers[path](float_in[path], training=False)
        if read != path:
            alone = twin_layers[read](alone, training=False)
        local = _channel_sqnr(float_out[source], keras.ops.convert_to_numpy(alone))
        rows.append(LayerSensitivity(layer=path, kind=kind, local_sqnr_db=float(local), sqnr_db=float(sqnr),
                                     relative_error=relative))
    rows.sort(key=lambda r: r.local_sqnr_db)
    report = SensitivityReport(model_name=model.name, rows=rows, samples=int(len(subset[0] if isinstance(subset, list) else subset)))
    if y is not None:
        _measure_accuracies(model, representative_data, x, y, report, accuracy_layers)
    return report


def tflite_accuracy(flatbuffer, x, y, output=None):
    """Top-1 accuracy of a ``.tflite`` on ``(x, y)``, without timing (see `litert.predict`)."""
    logits = litert.predict(flatbuffer, x, output=output)
    labels = validation.check_labels(y, int(np.prod(logits.shape[1:])), num_samples=len(logits))
    return float(np.mean(logits.reshape(len(logits), -1).argmax(1) == labels))


def keras_accuracy(model, x, y):
    """Top-1 accuracy of a Keras model on ``(x, y)``."""
    logits = np.asarray(model.predict(x, verbose=0, batch_size=256))
    labels = validation.check_labels(y, int(np.prod(logits.shape[1:])), num_samples=len(logits))
    return float(np.mean(logits.reshape(len(logits), -1).argmax(1) == labels))


def _measure_accuracies(model, representative_data, x, y, report, accuracy_layers):
    report.float_accuracy = keras_accuracy(model, x, y)
    report.int8_accuracy = tflite_accuracy(converter.convert(model, representative_data, mode="int8"), x, y)
    names = [row.layer for row in report.rows]
    measured = report.rows if accuracy_layers is None else report.rows[:accuracy_layers]
    for row in measured:
        others = [name for name in names if name != row.layer]
        for attribute, kept in (("accuracy_kept_float", [row.layer]), ("accuracy_only_int8", others)):
            if not kept:
                setattr(row, attribute, report.int8_accuracy)
                continue
            try:
                flatbuffer = converter.convert(model, representative_data, mode="int8", keep_float=kept)
            except (converter.ConversionError, ValueError) as exc:  # e.g. nothing left to quantize: reported, not fatal
                report.notes.append(f"{row.layer}: {attribute} not measured ({str(exc)[:160]})")
                continue
            setattr(row, attribute, tflite_accuracy(flatbuffer, x, y))


class AccuracyBudgetError(ValueError):
    """No int8 (or int16x8) file met ``max_accuracy_drop`` on the validation data; the message lists every try."""


def convert_within_budget(model, representative_data, validation_data, max_accuracy_drop, max_float_layers=8,
                          config=None, **convert_kwargs):
    """The int8 file with the fewest layers kept float that loses at most ``max_accuracy_drop`` points.

    Tries, in order, and returns the first within budget on ``validation_data``:
    all-int8; then the most sensitive layers (`quantization_sensitivity`'s local
    SQNR order) kept float one more at a time, up to ``max_float_layers``; then
    ``int16x8`` (16-bit activations) for the whole model.

    Args:
        model: the float Keras model.
        representative_data: calibration inputs, as for `to_tflite`.
        validation_data: ``(x, y)`` on which each try's accuracy is measured.
        max_accuracy_drop: the accuracy points the file may lose against the Keras model.
        max_float_layers: keep at most this many layers float before trying ``int16x8``.
        config: a `converter.ConversionConfig` the tries start from (their mode and
            ``keep_float`` are the search's); None for the defaults.
        **convert_kwargs: `converter.ConversionConfig` fields that replace ``config``'s.

    Returns:
        A `ConvertedModel` whose ``budget`` attribute says what was chosen:
        ``{"float_accuracy", "accuracy", "drop", "mode", "kept_float", "tries"}``.

    Raises:
        AccuracyBudgetError: no try met the budget (each try's accuracy is listed).
    """
    x, y = _check_validation_data(validation_data)
    if isinstance(max_accuracy_drop, bool) or not isinstance(max_accuracy_drop, (int, float)) or max_accuracy_drop < 0:
        raise ValueError(f"max_accuracy_drop={max_accuracy_drop!r} must be a number of accuracy points >= 0, e.g. 0.5.")
    float_accuracy = keras_accuracy(model, x, y)
    tries = []

    def attempt(mode, kept):
        # int16x8 has its own ranges: a calibration= method (int8 ranges on the fake-quant twin) does not apply.
        extra = {"calibration": None} if mode == "int16x8" else {}
        flatbuffer = converter.convert(model, representative_data, config, mode=mode, keep_float=kept or None,
                                       **{**convert_kwargs, **extra})
        accuracy = tflite_accuracy(flatbuffer, x, y)
        tries.append({"mode": mode, "kept_float": list(kept), "accuracy": accuracy})
        if 100 * (float_accuracy - accuracy) <= max_accuracy_drop:
            flatbuffer.budget = {"float_accuracy": float_accuracy, "accuracy": accuracy,
                                 "drop": 100 * (float_accuracy - accuracy), "mode": mode, "kept_float": list(kept),
                                 "tries": tries}
            flatbuffer.notes.append(
                f"accuracy budget {max_accuracy_drop} pt met on {len(y)} validation samples: {100 * accuracy:.2f}% vs "
                f"float {100 * float_accuracy:.2f}%, mode={mode}, kept float: {list(kept) or 'none'}")
            if mode == "int16x8":
                warnings.warn(
                    "to_tflite: the accuracy budget was met only by int16x8, which XNNPACK does not run: the file "
                    "runs on LiteRT's built-in kernels, many times slower than int8 (36x on MobileNetV2, measured). "
                    "Consider quantization-aware training or a larger max_accuracy_drop.", UserWarning, stacklevel=3)
            return flatbuffer
        return None

    result = attempt("int8", [])
    if result is not None:
        return result
    # 128 samples rank the layers well enough and keep memory bounded (every layer's output is held).
    ranking = quantization_sensitivity(model, representative_data, x, max_samples=128).most_sensitive(max_float_layers)
    kept = []
    for name in ranking:
        kept.append(name)
        result = attempt("int8", kept)
        if result is not None:
            # Greedy by sensitivity may keep more than needed: drop every earlier layer the budget can spare.
            for spare in kept[:-1]:
                fewer = [k for k in kept if k != spare]
                smaller = attempt("int8", fewer)
                if smaller is not None:
                    kept, result = fewer, smaller
            return result
    # int16x8 has no int8 inputs/outputs: with io_type="int8" the last resort is not open.
    io_type = convert_kwargs.get("io_type") or (config.io_type if config is not None else "float32")
    skipped = ""
    if io_type in converter.IO_TYPES["int16x8"]:
        result = attempt("int16x8", [])
        if result is not None:
            return result
    else:
        skipped = f" int16x8 was not tried: it has no io_type={io_type!r}."
    listed = "; ".join(f"{t['mode']}{' with ' + ', '.join(t['kept_float']) + ' float' if t['kept_float'] else ''}: "
                       f"{100 * t['accuracy']:.2f}%" for t in tries)
    raise AccuracyBudgetError(
        f"max_accuracy_drop={max_accuracy_drop}: no file stayed within {max_accuracy_drop} pt of the float model's "
        f"{100 * float_accuracy:.2f}% on the {len(y)} validation samples. Tried {listed}.{skipped} "
        "Raise max_accuracy_drop, train with quantization-aware training (tfc.quantize_model, then fit), or use "
        "mode='float16'.")


def _check_validation_data(validation_data):
    try:
        x, y = validation_data
    except (TypeError, ValueError):
        raise ValueError("validation_data must be (x, y) held-out inputs and labels, needed to check "
                         f"max_accuracy_drop; got {type(validation_data).__name__}.") from None
    return x, y
