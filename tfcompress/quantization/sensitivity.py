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
"""

import dataclasses
import json
import warnings

import keras
import numpy as np

from tfcompress import graph, validation
from tfcompress.reports import markdown_table


@dataclasses.dataclass
class LayerSensitivity:
    """One quantizable layer.

    Attributes:
        layer: its Keras name ('/'-path for nested layers).
        kind: its class name.
        sqnr_db: signal-to-quantization-noise ratio of its output, int8 model vs float (higher is better).
        relative_error: ``||int8 - float|| / ||float||`` of its output.
        accuracy_kept_float: accuracy of the int8 file with only this layer float (None if not measured).
        accuracy_only_int8: accuracy of the file with only this layer int8 (None if not measured).
    """

    layer: str
    kind: str
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

    def most_sensitive(self, count=5):
        """The names of the ``count`` layers with the lowest SQNR."""
        return [row.layer for row in self.rows[:count]]

    def to_dict(self):
        return json.loads(json.dumps(dataclasses.asdict(self), default=float))

    def to_markdown(self):
        def pct(value):
            return "—" if value is None else f"{100 * value:.2f}%"

        header = f"Quantization sensitivity of {self.model_name!r} ({self.samples} samples)"
        if self.float_accuracy is not None:
            header += f": float {pct(self.float_accuracy)}, all-int8 {pct(self.int8_accuracy)}"
        rows = [(row.layer, row.kind, f"{row.sqnr_db:.1f}", f"{row.relative_error:.3f}", pct(row.accuracy_kept_float),
                 pct(row.accuracy_only_int8)) for row in self.rows]
        return markdown_table(("layer", "kind", "SQNR dB", "rel. error", "acc. with only it float",
                               "acc. with only it int8"), rows, title=header + "\n")

    def __str__(self):
        return self.to_markdown()

    def plot(self, path, count=20):
        """Writes a bar chart of the ``count`` most sensitive layers' SQNR to ``path`` (PNG); False without matplotlib."""
        from tfcompress.reports import plot_sensitivity

        return plot_sensitivity(self, path, count)


def _sqnr(reference, quantized):
    reference = np.asarray(reference, np.float64).ravel()
    noise = np.asarray(quantized, np.float64).ravel() - reference
    signal_power, noise_power = float(np.sum(reference ** 2)), float(np.sum(noise ** 2))
    relative = float(np.sqrt(noise_power / signal_power)) if signal_power > 0 else float(noise_power > 0)
    if noise_power == 0:
        return float("inf"), relative
    return 10.0 * np.log10(max(signal_power, 1e-30) / noise_power), relative


def layer_outputs(model, x, names):
    """``{path: output array}`` of the named layers of a Functional model (nested submodels included) on ``x``."""
    wanted = set(names)
    found = {}
    _collect_outputs(model, x, wanted, "", found)
    return found


def _collect_outputs(model, x, wanted, prefix, found):
    tensors, keys = [], []
    nested = []
    for layer in model.layers:
        path = prefix + layer.name
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if isinstance(layer, keras.Model) and graph.is_functional(layer):
            nested.append((layer, path))
            tensors.append(layer.input)
            keys.append(("input", path))
        if path in wanted:
            tensors.append(layer.output)
            keys.append(("output", path))
    if not tensors:
        return
    values = keras.Model(model.inputs, tensors).predict(x, verbose=0, batch_size=256)
    values = values if isinstance(values, list) else [values]
    inputs = {}
    for (kind, path), value in zip(keys, values):
        (found if kind == "output" else inputs)[path] = value
    for layer, path in nested:
        _collect_outputs(layer, inputs[path], wanted, path + "/", found)


def _quantizable(qat_model, report):
    """``[(layer path, twin tensor to read, float layer whose output it matches, class name)]``.

    The twin's tensor is the layer's int8 output (its ``<name>_quant`` quantizer) where it has one, else the
    layer's own output (an activation fused after it carries the range); a folded BatchNormalization's
    output is what the conv it was folded into now computes.
    """
    from tfcompress.quantization import registry
    from tfcompress.quantization.fake_quant import ActivationQuantizer
    from tfcompress.quantization.quantized_layers import QuantizedLayerMixin

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


def quantization_sensitivity(model, representative_data, x=None, y=None, accuracy_layers=10, max_samples=500):
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
        max_samples: use at most this many samples of ``x`` for SQNR.

    Returns:
        A `SensitivityReport`, most sensitive layer first.

    Raises:
        TypeError / ValueError: a subclassed model, bad data or labels (messages say which).
    """
    from tfcompress import convert, representative
    from tfcompress.quantization import quantize

    graph.check_model(model, action="analyse")
    if not graph.is_functional(model):
        raise TypeError(
            f"quantization_sensitivity needs the layer graph of model {model.name!r}, but it is subclassed "
            "(its graph lives in Python code). Analyse the Functional/Sequential model it calls, or rebuild it "
            "with the Functional API.")
    specs = convert.input_specs(model, representative_data)
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
    float_out = layer_outputs(model, subset, [source for _, _, source, _ in entries])
    twin_out = layer_outputs(twin, subset, [read for _, read, _, _ in entries])
    rows = []
    for path, read, source, kind in entries:
        sqnr, relative = _sqnr(float_out[source], twin_out[read])
        rows.append(LayerSensitivity(layer=path, kind=kind, sqnr_db=float(sqnr), relative_error=relative))
    rows.sort(key=lambda r: r.sqnr_db)
    report = SensitivityReport(model_name=model.name, rows=rows, samples=int(len(subset[0] if isinstance(subset, list) else subset)))
    if y is not None:
        _measure_accuracies(model, representative_data, x, y, report, accuracy_layers)
    return report


def tflite_accuracy(flatbuffer, x, y, output=None):
    """Top-1 accuracy of a ``.tflite`` on ``(x, y)`` (XNNPACK), without timing."""
    from tfcompress import evaluate

    interpreter = evaluate._make_interpreter(bytes(flatbuffer), "xnnpack", 1)
    heads = evaluate.output_heads(interpreter)
    head = evaluate._pick_head(heads, output, scoring=True)
    arrays = evaluate._check_inputs(x, interpreter.get_input_details())
    shape = heads[head][1]["shape"]
    labels = validation.check_labels(y, int(np.prod(shape[1:])) if len(shape) > 1 else 1, num_samples=len(arrays[0]))
    logits = evaluate._predict(interpreter, arrays, 256, head)
    return float(np.mean(logits.reshape(len(logits), -1).argmax(1) == labels))


def keras_accuracy(model, x, y):
    """Top-1 accuracy of a Keras model on ``(x, y)``."""
    logits = np.asarray(model.predict(x, verbose=0, batch_size=256))
    labels = validation.check_labels(y, int(np.prod(logits.shape[1:])), num_samples=len(logits))
    return float(np.mean(logits.reshape(len(logits), -1).argmax(1) == labels))


def _measure_accuracies(model, representative_data, x, y, report, accuracy_layers):
    from tfcompress.convert import to_tflite

    report.float_accuracy = keras_accuracy(model, x, y)
    report.int8_accuracy = tflite_accuracy(to_tflite(model, mode="int8", representative_data=representative_data), x, y)
    names = [row.layer for row in report.rows]
    measured = report.rows if accuracy_layers is None else report.rows[:accuracy_layers]
    for row in measured:
        kept = to_tflite(model, mode="int8", representative_data=representative_data, keep_float=[row.layer])
        row.accuracy_kept_float = tflite_accuracy(kept, x, y)
        others = [name for name in names if name != row.layer]
        if others:
            alone = to_tflite(model, mode="int8", representative_data=representative_data, keep_float=others)
            row.accuracy_only_int8 = tflite_accuracy(alone, x, y)
        else:
            row.accuracy_only_int8 = report.int8_accuracy
