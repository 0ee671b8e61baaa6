"""Keras 3 → ONNX: `to_onnx`. ONNX Runtime runs the result in `tfcompress.evaluation.onnxruntime`.

Two paths, one per mode:

* ``"float32"``: tf2onnx on the model's inference function, as Keras 3's own
  ``model.export(format="onnx")`` does, with the input signature taken from the
  model so a model built by ``keras.Input`` but never called exports too. Called
  directly rather than through ``model.export`` for two fixes that need the traced
  function and tf2onnx's arguments: tensors the function captures (e.g. a
  ``Normalization`` layer's mean and variance) become constants, not graph inputs,
  and TF's ``Erfc`` (exact GELU) is translated as ``1 - Erf``.
* ``"int8"``: the int8 ``.tflite`` of `to_tflite` translated by tf2onnx into a QDQ
  ONNX model (``QuantizeLinear``/``DequantizeLinear`` around float ops, which
  ONNX Runtime fuses into int8 kernels). Its outputs equal the ``.tflite``'s:
  deploying to ONNX Runtime or LiteRT gives the same predictions.

`tfc.evaluate_onnx` measures the result next to the LiteRT backends. Needs the
optional extra: ``pip install 'tfcompress[onnx]'``.
"""

import contextlib
import logging
import os
import re
import shutil
import warnings

import numpy as np

from tfcompress.core import native_stderr
from tfcompress.core.files import check_writable, make_temp_dir, write_atomic
from tfcompress.evaluation import litert, onnxruntime, tflite_file
from tfcompress.evaluation.tflite_file import ConvertedModel
from tfcompress.core import representative
from tfcompress.export import converter
from tfcompress.export.tflite import to_tflite

MODES = ("float32", "int8")

# Printed on fd 2 by the TFLite interpreter tf2onnx uses to read a .tflite.
_TFLITE_READER_CHATTER = (
    re.compile(r"^INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.$"),
    re.compile(r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$"),
)
_STANDARD_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "com.microsoft")


class ONNXExportError(converter.ConversionError):
    """The model could not be exported to ONNX; the message gives the exporter's reason in one line."""


class ONNXModel(bytes):
    """The serialized ONNX model as ``bytes``, plus what was exported and how.

    Attributes:
        mode: ``"float32"`` or ``"int8"``.
        model_name: the Keras model's name (or ``"tflite"`` for a ``.tflite`` input).
        notes: list of strings describing choices made.
        tflite: for ``"int8"``, the `ConvertedModel` (or bytes) the ONNX model was translated from.
    """

    def __new__(cls, data, mode, model_name, notes=(), tflite=None):
        obj = super().__new__(cls, data)
        obj.mode = mode
        obj.model_name = model_name
        obj.notes = list(notes)
        obj.tflite = tflite
        return obj


class _LogCapture(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.records = []

    def emit(self, record):
        with contextlib.suppress(Exception):
            self.records.append(record.getMessage())


@contextlib.contextmanager
def _quiet_tf2onnx():
    """Collects tf2onnx's log lines (its only report of unsupported ops) instead of printing them."""
    logger = logging.getLogger("tf2onnx")
    capture = _LogCapture()
    old_propagate, old_level = logger.propagate, logger.level
    logger.addHandler(capture)
    logger.propagate = False
    logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings(), converter.quiet_tensorflow_logs():
            # Keras' numpy-2 patch of tf2onnx and tf2onnx's use of tf.lite.Interpreter warn on every call.
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield capture.records
    finally:
        logger.removeHandler(capture)
        logger.propagate, logger.level = old_propagate, old_level


def _unsupported(model_proto, log_lines):
    """``(op types, node names)`` tf2onnx left untranslated: non-ONNX ops in the graph or named in its log."""
    import onnx

    ops, names = [], []
    for node in model_proto.graph.node:
        standard = node.domain in _STANDARD_DOMAINS
        if (standard and node.domain in ("", "ai.onnx") and not onnx.defs.has(node.op_type)) or not standard:
            ops.append(node.op_type)
            names.append(node.name)
    for line in log_lines:
        match = re.match(r"Unsupported ops: Counter\((\{.*\})\)", line)
        if match:
            ops += re.findall(r"'([^']+)'", match.group(1))
        match = re.match(r"Tensorflow op \[(.+?): (\w+)\] is not supported", line)
        if match:
            names.append(match.group(1))
            ops.append(match.group(2))
    return list(dict.fromkeys(ops)), list(dict.fromkeys(names))


def _raise_unsupported(model_proto, log_lines, what):
    ops, names = _unsupported(model_proto, log_lines)
    if ops:
        where = f" (at {', '.join(names[:3])})" if names else ""
        raise ONNXExportError(
            f"{what}: tf2onnx has no ONNX translation for op(s) {', '.join(ops)}{where}. Replace the layers that "
            "use them, or deploy the model as .tflite (tfc.to_tflite).")


def _input_signature(model, input_shape):
    """The ``input_signature`` for ``model.export``: named TensorSpecs in the structure ``model`` is called with."""
    import keras
    import tensorflow as tf

    specs = converter.input_specs(model, None, input_shape)
    tensors = [tf.TensorSpec(s.shape, s.dtype, name=s.name) for s in specs]
    if isinstance(model, keras.Sequential) or len(tensors) == 1:
        return [tensors[0]] if len(tensors) == 1 else [tensors]
    structure = None
    with contextlib.suppress(AttributeError, ValueError):
        structure = model.input  # a Functional model's inputs as built: a list or a dict
    if structure is not None and len(keras.tree.flatten(structure)) == len(tensors):
        return [keras.tree.pack_sequence_as(structure, tensors)]
    return [tensors]


def _erfc_as_one_minus_erf(ctx, node, name, args):
    """tf2onnx handler for TF's ``Erfc``, which exact GELU computes (``0.5 * x * erfc(-x / sqrt(2))``).

    ONNX has ``Erf`` but no ``Erfc`` and tf2onnx translates only the former. ``1 - erf`` is off
    by at most float32's rounding of 1 (~6e-8) where ``erfc`` is tiny, so GELU by ~3e-8 * |x|:
    far below the 1e-4 to which the export matches Keras.
    """
    from tf2onnx import utils

    del name, args  # the handler signature of tf2onnx's custom_op_handlers
    node.type = "Erf"
    dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(node.input[0]))
    one = ctx.make_const(utils.make_name(f"{node.name}/one"), np.array(1, dtype=dtype))
    erf = node.output[0]
    minus = ctx.insert_new_node_on_output("Sub", erf, name=utils.make_name(f"{node.name}/one_minus"))
    ctx.replace_inputs(minus, [one.output[0], erf])


def _tfl_gelu(ctx, node, name, args):
    """tf2onnx handler for the ``.tflite`` ``GELU`` op (it has none), in float between the QDQ pair.

    tf2onnx dequantizes an int8 op's inputs and quantizes its outputs around the float op it
    writes, which is how LiteRT's int8 GELU is defined too (a table of float GELU values), so the
    two agree to rounding. Exact: ``0.5 * x * (1 + erf(x / sqrt(2)))``; ``approximate``: the tanh form.
    """
    from tf2onnx import utils

    del name, args
    x = node.input[0]
    dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(x))

    def const(tag, value):
        return ctx.make_const(utils.make_name(f"{node.name}/{tag}"), np.array(value, dtype=dtype)).output[0]

    def op(op_type, *inputs):
        return ctx.make_node(op_type, list(inputs), name=utils.make_name(f"{node.name}/{op_type}")).output[0]

    if node.get_attr_value("approximate", False):
        cubic = op("Add", x, op("Mul", const("c", 0.044715), op("Mul", op("Mul", x, x), x)))
        gate = op("Tanh", op("Mul", const("sqrt_2_over_pi", np.sqrt(2 / np.pi)), cubic))
    else:
        gate = op("Erf", op("Mul", x, const("one_over_sqrt_2", 1 / np.sqrt(2))))
    half_x = op("Mul", x, const("half", 0.5))
    # The GELU node itself becomes the last Mul, so its output (what later ops read) keeps its name.
    ctx.replace_inputs(node, [half_x, op("Add", gate, const("one", 1.0))])
    node.type = "Mul"
    node.attr.pop("approximate", None)


# Ops tf2onnx has no handler for, translated here (tf2onnx's ``custom_op_handlers``: {op: (handler, args)}).
_TF_HANDLERS = {"Erfc": (_erfc_as_one_minus_erf, [])}
_TFLITE_HANDLERS = {"TFL_GELU": (_tfl_gelu, [])}


def _graph_inputs_used(graph):
    """Names every node of ``graph`` and of its subgraphs (If/Loop bodies) reads."""
    import onnx

    used = set()
    for node in graph.node:
        used.update(node.input)
        for attribute in node.attribute:
            subgraphs = [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else list(attribute.graphs)
            for subgraph in subgraphs:
                used |= _graph_inputs_used(subgraph)
    return used


def _captures_as_initializers(proto, concrete):
    """Turns the graph inputs tf2onnx made of the function's captured tensors back into constants.

    tf2onnx takes every non-resource input of the concrete function as a graph input, and captured
    tensors are inputs of it too: variables are resource handles (frozen into constants), but a layer
    that keeps a plain tensor (``Normalization``'s mean and variance, set or adapted) is captured by
    value, and its placeholder became a graph input with no value, which ONNX Runtime then requires.
    """
    import onnx
    import tensorflow as tf

    first_capture = len(concrete.inputs) - len(concrete.captured_inputs)
    values = {placeholder.name: value for placeholder, value in
              zip(concrete.inputs[first_capture:], concrete.captured_inputs) if value.dtype != tf.resource}
    if not values:
        return
    used = _graph_inputs_used(proto.graph)
    initialized = {t.name for t in proto.graph.initializer}
    kept = [i for i in proto.graph.input if i.name not in values]
    for name in sorted(set(values) & used - initialized):
        proto.graph.initializer.append(onnx.numpy_helper.from_array(np.asarray(values[name]), name))
    del proto.graph.input[:]
    proto.graph.input.extend(kept)


def _export_float(model, input_shape, opset):
    """tf2onnx on ``model``'s inference function; the ONNX bytes, or an `ONNXExportError`."""
    import tensorflow as tf
    import tf2onnx

    what = f"tf2onnx could not export model {model.name!r} to ONNX"
    signature = _input_signature(model, input_shape)  # a ValueError naming input_shape= for an unknown shape
    function = tf.function(lambda inputs: model(inputs, training=False), autograph=False)
    with _quiet_tf2onnx() as log_lines:
        try:
            concrete = function.get_concrete_function(*signature)
            # The same function as the concrete one above: tf.function traces once per signature.
            proto, _ = tf2onnx.convert.from_function(function, signature, opset=opset,
                                                     custom_op_handlers=_TF_HANDLERS)
        except Exception as exc:  # noqa: BLE001 - Keras and tf2onnx raise anything; the reason is what counts
            converter.raise_if_out_of_space(exc, model.name)
            raise ONNXExportError(f"{what}: {type(exc).__name__}: {onnxruntime.one_line(exc)}") from None
    _raise_unsupported(proto, log_lines, what)
    _captures_as_initializers(proto, concrete)
    expected = len(tf.nest.flatten(signature))
    if len(proto.graph.input) != expected:
        raise ONNXExportError(
            f"{what}: the ONNX graph has {len(proto.graph.input)} inputs "
            f"({', '.join(i.name for i in proto.graph.input)}) where the model has {expected}. Deploy the model "
            "as .tflite (tfc.to_tflite), or report this with the model.")
    return proto.SerializeToString()


def _keras_output_order(raw_tflite):
    """The ``.tflite``'s output tensor names in the Keras model's output order (see `litert.output_heads`)."""
    interpreter = litert.make_interpreter(raw_tflite, "cpu", 1)
    return [detail["name"] for _, detail in litert.output_heads(interpreter)]


def _tflite_to_onnx(raw, model_name, opset):
    """tf2onnx's QDQ translation of a ``.tflite``; outputs in the Keras model's order."""
    import tf2onnx

    what = f"tf2onnx could not translate the .tflite of model {model_name!r} to ONNX"
    workdir = make_temp_dir("tfcompress_onnx_")
    path = os.path.join(workdir, "model.tflite")
    try:
        with open(path, "wb") as f:
            f.write(raw)
        with _quiet_tf2onnx() as log_lines, native_stderr.buffered_filter(_TFLITE_READER_CHATTER):
            try:
                proto, _ = tf2onnx.convert.from_tflite(path, opset=opset, custom_op_handlers=_TFLITE_HANDLERS)
            except Exception as exc:  # noqa: BLE001
                raise ONNXExportError(f"{what}: {type(exc).__name__}: {onnxruntime.one_line(exc)}") from None
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    _raise_unsupported(proto, log_lines, what)
    order = _keras_output_order(raw)
    outputs = list(proto.graph.output)
    by_name = {o.name: o for o in outputs}
    if len(outputs) > 1 and sorted(order) == sorted(by_name):
        # Reordering the graph's output list is all it takes: ONNX outputs are named, not positional.
        del proto.graph.output[:]
        proto.graph.output.extend([by_name[n] for n in order])
    return proto.SerializeToString()


def _is_quantized(info):
    return any(op.dtype in ("int8", "uint8", "int16") for op in info.operators)


def to_onnx(model, mode="float32", representative_data=None, output_path=None, overwrite=False, input_shape=None,
            opset=None, **convert_kwargs):
    """Exports a Keras 3 model (or an int8 ``.tflite``) to ONNX.

    Args:
        model: a built ``keras.Model`` (Sequential, Functional or subclassed; a
            ``tfcompress.Distiller`` exports its student), or for ``"int8"`` a
            ``.tflite``: the result of ``to_tflite``, its bytes or a file path. A
            ``.tflite`` is translated as it is.
        mode: ``"float32"``: tf2onnx on the model's inference function, as
            Keras' ``model.export(format="onnx")``, with its constants kept as
            constants and exact GELU translated.
            ``"int8"``: the model is converted with ``to_tflite(mode="int8")`` and
            that file translated by tf2onnx into a QDQ ONNX model whose outputs
            equal the ``.tflite``'s.
        representative_data: calibration inputs, required for ``"int8"`` from a
            Keras model (as for `to_tflite`; not needed for a trained QAT model).
        output_path: if given, the ``.onnx`` file is written there atomically.
        overwrite: allow replacing an existing ``output_path``.
        input_shape: input shape without the batch dimension, for subclassed
            models whose shape cannot be inferred.
        opset: ONNX opset version (default: tf2onnx's).
        **convert_kwargs: for ``"int8"`` from a Keras model, passed on to
            `to_tflite` (e.g. ``calibration="percentile"``, ``keep_float=[...]``,
            ``io_type="int8"``).

    Returns:
        An `ONNXModel`: the serialized ONNX model as ``bytes``, with ``.mode``,
        ``.notes`` and, for ``"int8"``, ``.tflite`` (the file it was translated from).

    Raises:
        tfcompress.MissingExtraError: tf2onnx is not installed.
        ValueError: a bad mode or argument.
        RepresentativeDataError: ``"int8"`` without ``representative_data``.
        ONNXExportError: the exporter could not export the model (its reason,
            e.g. an op without ONNX translation, in one line).
        ConversionError: the int8 TFLite conversion failed.
        tfcompress.OutputExistsError: ``output_path`` exists and ``overwrite`` is False.

    Example:
        >>> onnx_f32 = tfc.to_onnx(model, output_path="model.onnx")
        >>> onnx_int8 = tfc.to_onnx(model, mode="int8", representative_data=x_train[:200])
        >>> print(tfc.evaluate_onnx(onnx_int8, x=x_test, y=y_test).to_markdown())
    """
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not an ONNX export mode; choose one of {list(MODES)}.")
    onnxruntime.require_onnx("tf2onnx", "tfc.to_onnx")
    if output_path is not None:
        check_writable(output_path, overwrite)
    notes = []
    if tflite_file.is_tflite(model) or isinstance(model, ConvertedModel):
        if representative_data is not None or convert_kwargs:
            extra = ["representative_data"] * (representative_data is not None) + sorted(convert_kwargs)
            raise ValueError(f"{', '.join(extra)}: not used for a .tflite input, which is translated as it is "
                             "(already converted). Pass the Keras model to convert it with these settings.")
        raw = tflite_file.read_bytes(model)
        info = tflite_file.inspect(raw)
        if not isinstance(model, ConvertedModel):
            tflite_file.check_loads(raw)  # a corrupted file must not crash the caller inside tf2onnx's reader
        quantized = _is_quantized(info)
        if mode == "int8" and not quantized:
            raise ValueError(
                "mode='int8': this .tflite computes in float (it is not an int8 file). Pass the Keras model with "
                "representative_data to quantize it, or mode='float32' to translate it as it is.")
        if mode == "float32" and quantized:
            raise ValueError("mode='float32': this .tflite is quantized (int8 ops); pass mode='int8' to translate it.")
        name = getattr(model, "model_name", None) or "tflite"
        data = _tflite_to_onnx(raw, name, opset)
        notes.append("translated from the .tflite by tf2onnx" + (" (QDQ)" if quantized else ""))
        result = ONNXModel(data, mode=mode, model_name=name, notes=notes, tflite=model if quantized else None)
    else:
        model = converter.exported_model(model)
        if mode == "float32":
            if convert_kwargs:
                raise ValueError(f"{sorted(convert_kwargs)}: only used with mode='int8' (passed to to_tflite).")
            data = _export_float(model, input_shape, opset)
            notes.append("exported by tf2onnx from the model's inference function")
            result = ONNXModel(data, mode=mode, model_name=model.name, notes=notes)
        else:
            if representative_data is None and not converter.is_qat_model(model):
                raise representative.RepresentativeDataError(
                    "representative_data is required for to_onnx(mode='int8'): the int8 ONNX model is translated "
                    "from the int8 .tflite, calibrated on ~100-500 typical inputs (e.g. "
                    "representative_data=x_train[:200]). For no calibration use mode='float32'.")
            tflite = to_tflite(model, mode="int8", representative_data=representative_data, input_shape=input_shape,
                               **convert_kwargs)
            data = _tflite_to_onnx(bytes(tflite), model.name, opset)
            notes += list(tflite.notes) + ["translated from the int8 .tflite by tf2onnx (QDQ)"]
            result = ONNXModel(data, mode=mode, model_name=model.name, notes=notes, tflite=tflite)
    if output_path is not None:
        write_atomic(output_path, bytes(result), overwrite=overwrite)
    return result
