"""ONNX Runtime measurements in the same report type as LiteRT's: `evaluate_onnx` and `predict_onnx`.

`evaluate_onnx` returns an `EvaluationReport` with backend ``"onnxruntime"``, so
``tfc.compare`` puts ONNX Runtime next to the LiteRT backends. The ONNX files come
from `tfc.to_onnx` (`tfcompress.export.onnx`) or from anywhere else. Needs the
optional extra: ``pip install 'tfcompress[onnx]'``.
"""

import collections
import contextlib
import gzip
import re
import time

import numpy as np

from tfcompress.core import extras, files, machine, validation
from tfcompress.evaluation import litert, tflite_file

BACKEND = "onnxruntime"

# Ops that only move or reshape data: walked through to find an input's DequantizeLinear / an output's QuantizeLinear.
_LAYOUT_OPS = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Flatten"}


class InvalidONNXFileError(ValueError):
    """The bytes are not an ONNX model ONNX Runtime can load."""


def require_onnx(module, feature):
    """The optional package ``module`` (tf2onnx / onnxruntime) and ``onnx``, or a `MissingExtraError`."""
    imported = extras.require(module, feature)
    extras.require("onnx", feature)  # a dependency of tf2onnx; needed to read the graph
    return imported


def one_line(text, limit=400):
    """An exception's reason on one line: no ANSI codes, no Keras call-context boilerplate."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(text))
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith(("Exception encountered when calling", "Arguments received by",
                                                      "•", "Traceback", "File "))]
    line = " ".join(lines[:2]) if lines else ""
    line = " ".join(line.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def read_onnx_bytes(model):
    """The model's bytes, from ``bytes`` or a ``.onnx`` path (a clear error when the file is missing)."""
    return files.read_model_bytes(model, "ONNX", "tfc.to_onnx")


def _parse(raw):
    import onnx

    if tflite_file.is_tflite(raw):
        raise InvalidONNXFileError("This is a .tflite model, not ONNX: evaluate it with tfc.evaluate_tflite, or "
                                   "translate it with tfc.to_onnx(tflite, mode='int8').")
    try:
        proto = onnx.load_model_from_string(raw)
    except Exception as exc:  # noqa: BLE001 - protobuf raises DecodeError and others
        raise InvalidONNXFileError(
            f"Could not parse the ONNX model ({len(raw)} bytes): {one_line(exc)}. The file is truncated, "
            "corrupted or not an .onnx model; re-export it.") from None
    if not proto.graph.node:
        raise InvalidONNXFileError(f"The ONNX model ({len(raw)} bytes) has no graph nodes; it is empty or not an "
                                   ".onnx model. Re-export it.")
    return proto


def _tensor_types(proto):
    """``{tensor name: numpy dtype name}`` over inputs, outputs, initializers and inferred intermediate tensors."""
    import onnx

    with contextlib.suppress(Exception):
        proto = onnx.shape_inference.infer_shapes(proto)
    graph = proto.graph
    types = {}

    def name_of(elem_type):
        with contextlib.suppress(Exception):
            return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).name
        return "unknown"

    for value in list(graph.input) + list(graph.value_info) + list(graph.output):
        if value.type.tensor_type.elem_type:
            types[value.name] = name_of(value.type.tensor_type.elem_type)
    for init in graph.initializer:
        types[init.name] = name_of(init.data_type)
    return types


def _initializer_arrays(proto):
    from onnx import numpy_helper

    return {init.name: numpy_helper.to_array(init) for init in proto.graph.initializer}


def _graph_summary(proto):
    """Op census (by type and by dtype), weight bytes by dtype, sparsity of rank >= 2 initializers."""
    graph = proto.graph
    types = _tensor_types(proto)
    arrays = _initializer_arrays(proto)
    census = collections.Counter(node.op_type for node in graph.node)
    by_dtype = collections.Counter()
    zero_points = {}
    for node in graph.node:
        activations = [i for i in node.input if i and i not in arrays]
        probe = activations[0] if activations else (node.output[0] if node.output else None)
        by_dtype[f"{node.op_type}/{types.get(probe, 'unknown')}"] += 1
        if node.op_type == "DequantizeLinear" and len(node.input) > 2 and node.input[0] in arrays:
            zero_points[node.input[0]] = arrays.get(node.input[2])
    weight_bytes, sparsity_by_tensor, zeros, total = collections.Counter(), {}, 0, 0
    for name, array in arrays.items():
        weight_bytes[array.dtype.name] += int(array.nbytes)
        if array.ndim < 2 or not array.size:
            continue
        zero = zero_points.get(name)
        if zero is not None and np.size(zero) > 1 and array.ndim >= 1:
            # Per-channel zero points along some axis: compare each element with its channel's.
            axis = next((i for i, d in enumerate(array.shape) if d == np.size(zero)), 0)
            shape = [1] * array.ndim
            shape[axis] = np.size(zero)
            zero = np.reshape(zero, shape)
        fraction = float(np.mean(array == (0 if zero is None else zero)))
        sparsity_by_tensor[name] = fraction
        zeros += fraction * array.size
        total += array.size
    return (dict(sorted(census.items())), dict(sorted(by_dtype.items())), dict(sorted(weight_bytes.items())),
            zeros / total if total else 0.0, sparsity_by_tensor)


def _quantization(proto, name, arrays, towards):
    """``(scale, zero_point)`` of an integer graph input (its DequantizeLinear) or output (its QuantizeLinear)."""
    graph = proto.graph
    consumers = collections.defaultdict(list)
    producers = {}
    for node in graph.node:
        for i in node.input:
            consumers[i].append(node)
        for o in node.output:
            producers[o] = node
    target = "DequantizeLinear" if towards == "consumer" else "QuantizeLinear"
    current = name
    for _ in range(16):
        nodes = consumers.get(current, []) if towards == "consumer" else [producers[current]] if current in producers else []
        node = next((n for n in nodes if n.op_type == target), None)
        if node is not None and len(node.input) >= 2:
            scale = arrays.get(node.input[1])
            zero = arrays.get(node.input[2]) if len(node.input) > 2 else np.zeros(1)
            if scale is not None and np.size(scale) == 1:
                return float(np.reshape(scale, -1)[0]), int(np.reshape(zero, -1)[0]) if zero is not None else 0
            return 0.0, 0
        layout = [n for n in nodes if n.op_type in _LAYOUT_OPS]
        if not layout:
            break
        current = layout[0].output[0] if towards == "consumer" else layout[0].input[0]
    return 0.0, 0


def _details(proto, values, towards):
    """Interpreter-style details (``name, dtype, shape, shape_signature, quantization``) of graph inputs/outputs."""
    import onnx

    arrays = _initializer_arrays(proto)
    initializers = set(arrays)
    out = []
    for value in values:
        if value.name in initializers:
            continue  # old-style graphs list initializers as inputs
        tensor = value.type.tensor_type
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type))
        signature = [int(d.dim_value) if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
        quantization = _quantization(proto, value.name, arrays, towards) if dtype.kind in "iu" else (0.0, 0)
        out.append({"name": value.name, "dtype": dtype, "shape": [d if d >= 0 else 1 for d in signature],
                    "shape_signature": signature, "quantization": quantization})
    return out


class _Session:
    """An ONNX Runtime session with its inputs set, with ``invoke()`` like a LiteRT interpreter (for the timing)."""

    def __init__(self, raw, threads):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3  # errors only: no "removing initializer" warnings
        self.session = ort.InferenceSession(raw, sess_options=options, providers=["CPUExecutionProvider"])
        self.feeds = None

    def set_inputs(self, feeds):
        self.feeds = feeds

    def invoke(self):
        return self.session.run(None, self.feeds)


def _predict(session, inputs, arrays, batch_size, head, out_detail):
    """Runs checked inputs through ONNX Runtime in batches; output ``head``, dequantized to float."""
    n = len(arrays[0])
    dynamic = all(d["shape_signature"] and d["shape_signature"][0] == -1 for d in inputs)
    batch = batch_size if dynamic else int(inputs[0]["shape"][0])
    outputs = []
    for start in range(0, n, batch):
        chunk = [a[start: start + batch] for a in arrays]
        size = len(chunk[0])
        if not dynamic and size != batch:
            chunk = [np.concatenate([a, np.repeat(a[-1:], batch - size, axis=0)]) for a in chunk]
        feeds = {d["name"]: litert.quantize_input(a, d) for d, a in zip(inputs, chunk)}
        result = session.session.run([out_detail["name"]], feeds)[0]
        outputs.append(litert.dequantize_output(np.asarray(result), out_detail)[:size])
    return np.concatenate(outputs)


def predict_onnx(model, x, output=None, batch_size=256):
    """Runs an ONNX model on ``x`` under ONNX Runtime and returns one output (float, dequantized).

    Args:
        model: ONNX bytes (e.g. from `to_onnx`) or a path.
        x: inputs as for `evaluate_onnx` (checked the same way).
        output: for several outputs, which (index or name); the first by default.
        batch_size: batch size of the runs (models with a dynamic batch).

    Returns:
        An array with one row per sample.
    """
    require_onnx("onnxruntime", "tfc.evaluate_onnx")
    raw = read_onnx_bytes(model)
    proto = _parse(raw)
    inputs, outputs = _details(proto, proto.graph.input, "consumer"), _details(proto, proto.graph.output, "producer")
    head = litert.pick_head([(d["name"], d) for d in outputs], output, scoring=False)
    arrays = litert.check_inputs(x, inputs)
    return _predict(_load_session(raw, 1), inputs, arrays, batch_size, head, outputs[head])


def _load_session(raw, threads):
    try:
        return _Session(raw, threads)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own Fail/InvalidGraph/NotImplemented kinds
        raise InvalidONNXFileError(
            f"ONNX Runtime could not load the model: {one_line(exc)}. The file is corrupted or uses ops this "
            "runtime lacks; re-export it.") from None


def evaluate_onnx(model, x=None, y=None, threads=(1,), num_runs=50, warmup_runs=5, batch_size=256, name=None,
                  seed=0, output=None):
    """Measures an ONNX model on ONNX Runtime (CPU): size, sparsity, ops, latency and accuracy.

    The report is the same `EvaluationReport` as `evaluate_tflite`'s, with backend
    ``"onnxruntime"``, so ``tfc.compare`` puts it in one table with the LiteRT rows.

    Args:
        model: ONNX bytes (e.g. from `to_onnx`) or a file path.
        x: optional inputs, as for `evaluate_tflite` (float, as for the Keras
            model; int8 inputs are quantized for you with the scale and zero point
            of the graph's DequantizeLinear): an array, a list of arrays or a dict
            keyed by input name. Count, shape, dtype and NaN/Inf are checked
            first. The first sample is the latency input; without x a random
            input is used.
        y: optional integer (or one-hot) labels for top-1 accuracy on all of x.
        threads: ONNX Runtime intra-op thread counts to time, e.g. ``(1, 2)``.
        num_runs: timed runs per thread count, after ``warmup_runs``.
        batch_size: batch for the accuracy pass (models with a dynamic batch).
        name: label for reports (default: the export mode, or "onnx").
        seed: seed of the synthetic latency input.
        output: for a model with several outputs, the one ``y`` scores: its index
            (graph output order; the Keras order for `to_onnx` results) or name.

    Returns:
        An `EvaluationReport` (``parity`` is empty: one backend).

    Raises:
        tfcompress.MissingExtraError: onnxruntime is not installed.
        InvalidONNXFileError: the bytes are not an ONNX model ONNX Runtime can load.
        ValueError: bad threads; x that does not fit the model's inputs (count,
            shape, dtype, NaN/Inf); y that does not match x.

    Example:
        >>> r = tfc.evaluate_onnx(tfc.to_onnx(model), x=x_test, y=y_test)
        >>> print(tfc.compare([tfc.evaluate_tflite(b, x=x_test, y=y_test), r]))
    """
    require_onnx("onnxruntime", "tfc.evaluate_onnx")
    threads = litert.check_threads(threads)
    if num_runs < 1:
        raise ValueError(f"num_runs must be >= 1, got {num_runs!r}.")
    raw = read_onnx_bytes(model)
    proto = _parse(raw)
    name = name or getattr(model, "mode", None) or "onnx"
    rng = np.random.default_rng(seed)
    inputs, outputs = _details(proto, proto.graph.input, "consumer"), _details(proto, proto.graph.output, "producer")
    heads = [(d["name"], d) for d in outputs]
    head = litert.pick_head(heads, output, scoring=y is not None)

    arrays = None
    if x is not None:
        arrays = litert.check_inputs(x, inputs)
        width = outputs[head]["shape_signature"][1:]
        if y is not None and all(d >= 0 for d in width):
            # Checked before any timing; with a symbolic output shape, once the model has run.
            y = validation.check_labels(y, int(np.prod(width)), num_samples=len(arrays[0]))
    elif y is not None:
        raise ValueError("y was given without x; pass both to measure accuracy.")

    latency_inputs = litert.timing_inputs(inputs, arrays, rng)
    sessions, init_ms, first_ms = {}, {}, {}
    for t in threads:
        start = time.perf_counter()
        session = _load_session(raw, t)
        init_ms[t] = (time.perf_counter() - start) * 1e3
        session.set_inputs({d["name"]: a for d, a in zip(inputs, latency_inputs)})
        start = time.perf_counter()
        try:
            session.invoke()
        except Exception as exc:  # noqa: BLE001
            raise InvalidONNXFileError(f"ONNX Runtime could not run the model: {one_line(exc)}.") from None
        first_ms[t] = (time.perf_counter() - start) * 1e3
        sessions[t] = session
    times = litert.time_round_robin(sessions, num_runs, warmup_runs)
    latency = [litert.LatencyResult(backend=BACKEND, threads=t, init_ms=init_ms[t], first_run_ms=first_ms[t],
                                    **litert.summarize_times(times[t])) for t in threads]

    accuracy = None
    if y is not None:
        logits = _predict(sessions[max(threads)], inputs, arrays, batch_size, head, outputs[head])
        y = validation.check_labels(y, int(np.prod(logits.shape[1:])), num_samples=len(arrays[0]))
        accuracy = float(np.mean(logits.reshape(len(logits), -1).argmax(1) == y))

    census, by_dtype, weight_bytes, sparsity, sparsity_by_tensor = _graph_summary(proto)
    notes = list(getattr(model, "notes", []))
    if len(heads) > 1:
        notes.append(f"{len(heads)} outputs {[n for n, _ in heads]}: accuracy is of {heads[head][0]!r}")
    if census.get("QuantizeLinear") or census.get("DequantizeLinear"):
        notes.append("QDQ model: ONNX Runtime fuses DequantizeLinear → op → QuantizeLinear into int8 kernels; the "
                     "op census lists the ops as stored")

    def public(d):
        return {"name": d["name"], "dtype": d["dtype"].name, "shape": list(d["shape_signature"]),
                "scale": d["quantization"][0], "zero_point": d["quantization"][1]}

    return litert.EvaluationReport(
        name=name,
        file_bytes=len(raw),
        gzip_bytes=len(gzip.compress(raw, compresslevel=9)),
        weight_bytes_by_dtype=weight_bytes,
        sparsity=sparsity,
        sparsity_by_tensor=sparsity_by_tensor,
        op_census=census,
        op_census_by_dtype=by_dtype,
        inputs=[public(d) for d in inputs],
        outputs=[public(d) for d in outputs],
        latency=latency,
        parity={},
        accuracy=accuracy,
        accuracy_samples=0 if y is None else int(len(y)),
        accuracy_backend=BACKEND if y is not None else None,
        accuracy_output=heads[head][0] if y is not None and len(heads) > 1 else None,
        notes=notes,
        failed_backends={},
        # An int8 model translated from a .tflite does the same multiply-accumulates as the file.
        macs=tflite_file.inspect(bytes(model.tflite)).macs if getattr(model, "tflite", None) is not None else 0,
        machine=machine.current().to_dict(),
    )

