"""Reads a .tflite flatbuffer: op census by type and dtype, weight tensors, sparsity, bytes by dtype.

`ConvertedModel` (what `to_tflite` returns) is defined here, beside the reader its ``info`` comes
from, so that the evaluator recognises a file this process converted without importing the converter.

The flatbuffer schema module shipped inside ``ai_edge_litert`` (``schema_py_generated``)
is the only reader of the format available without building TensorFlow; this
is the one place in tfcompress that uses it.
"""

import dataclasses
import functools
import gzip
import os

import numpy as np
from ai_edge_litert import schema_py_generated as _schema

from tfcompress.core import files, isolation

_OP_NAMES = {v: k for k, v in vars(_schema.BuiltinOperator).items() if not k.startswith("_")}
_TYPE_NAMES = {v: k.lower() for k, v in vars(_schema.TensorType).items() if not k.startswith("_")}
_NUMPY_TYPES = {
    "float32": np.float32, "float16": np.float16, "float64": np.float64,
    "int8": np.int8, "uint8": np.uint8, "int16": np.int16, "int32": np.int32, "int64": np.int64,
    "bool": np.bool_,
}
_FLOAT_TYPES = {"float32", "float16", "float64", "bfloat16"}
# Ops that only move data between int and float at the graph edges, or reshape memory.
_BOUNDARY_OPS = {"QUANTIZE", "DEQUANTIZE"}
# Ops that do a model's multiply-accumulates (counted by `TFLiteInfo.macs`).
MAC_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "CONV_3D", "FULLY_CONNECTED", "BATCH_MATMUL")
# SPLIT only slices, like STRIDED_SLICE: an int8 unrolled LSTM/GRU keeps one in float, splitting the constant
# gate pre-activations of its first step (zero initial state, folded by the converter).
_LAYOUT_OPS = {"RESHAPE", "SQUEEZE", "EXPAND_DIMS", "SHAPE", "PACK", "UNPACK", "STRIDED_SLICE", "GATHER", "DENSIFY",
               "SPLIT"}


class InvalidTFLiteFileError(ValueError):
    """The bytes are not a readable TFLite flatbuffer."""


@dataclasses.dataclass
class WeightTensor:
    """A constant tensor stored in the file."""

    name: str
    dtype: str
    shape: tuple
    stored_bytes: int
    zero_fraction: float
    sparse_encoded: bool
    subgraph: int = 0
    tensor: int = -1  # index in its subgraph's tensor list (what `Operator.inputs` refers to)
    num_scales: int = 0  # quantization scales stored: 0 unquantized, 1 per tensor, > 1 per channel

    @property
    def size(self):
        return int(np.prod(self.shape)) if self.shape else 1


@dataclasses.dataclass
class Operator:
    index: int
    type: str
    dtype: str  # the dtype the op computes in: its first non-constant input, else its output
    inputs: list
    outputs: list
    input_names: list
    output_names: list
    subgraph: int = 0
    macs: int = 0  # multiply-accumulates of one invocation (convolutions, dense, matmul; see `_macs`)


@dataclasses.dataclass
class TFLiteInfo:
    """What a .tflite file holds. See `inspect`."""

    file_bytes: int
    gzip_bytes: int
    operators: list
    weights: list
    input_details: list
    output_details: list
    # Per output (file order): the quantization step of the integer tensor it comes from, the output's own
    # scale or that of the int8 tensor its DEQUANTIZE reads; 0.0 for an output computed in float.
    output_steps: list = dataclasses.field(default_factory=list)

    @property
    def op_census(self):
        """``{op type: count}``."""
        census = {}
        for op in self.operators:
            census[op.type] = census.get(op.type, 0) + 1
        return dict(sorted(census.items()))

    @property
    def op_census_by_dtype(self):
        """``{"CONV_2D/int8": count, ...}``: which ops compute in which dtype."""
        return census_by_dtype(self.operators)

    @property
    def weight_bytes_by_dtype(self):
        out = {}
        for w in self.weights:
            out[w.dtype] = out.get(w.dtype, 0) + w.stored_bytes
        return dict(sorted(out.items()))

    @functools.cached_property
    def _weights_by_tensor(self):
        return {(w.subgraph, w.tensor): w for w in self.weights}

    def constant_inputs(self, op):
        """The weight tensors among ``op``'s inputs, in input order."""
        by_index = self._weights_by_tensor
        return [by_index[(op.subgraph, t)] for t in op.inputs if (op.subgraph, t) in by_index]

    @property
    def macs(self):
        """Multiply-accumulates of one invocation at the file's input shapes (batch 1 for a dynamic batch).

        Counted for CONV_2D, DEPTHWISE_CONV_2D, TRANSPOSE_CONV, CONV_3D, FULLY_CONNECTED
        and BATCH_MATMUL, whatever their dtype: a hardware-independent measure of the
        compute, the same for a float32 file and its int8 twin.
        """
        return sum(op.macs for op in self.operators)

    @property
    def kernels(self):
        """Weight tensors of rank >= 2 (kernels and embeddings; biases and shapes excluded)."""
        return [w for w in self.weights if len(w.shape) >= 2]

    @property
    def sparsity(self):
        """Zero fraction over all kernels (rank >= 2 constants), weighted by element count."""
        kernels = self.kernels
        total = sum(w.size for w in kernels)
        if not total:
            return 0.0
        return sum(w.zero_fraction * w.size for w in kernels) / total

    @property
    def sparsity_by_tensor(self):
        return {w.name: w.zero_fraction for w in self.kernels}

    def float_compute_ops(self):
        """Ops that still compute in float (boundary QUANTIZE/DEQUANTIZE and pure layout ops excluded)."""
        return [
            op for op in self.operators
            if op.dtype in _FLOAT_TYPES and op.type not in _BOUNDARY_OPS and op.type not in _LAYOUT_OPS
        ]

    def to_dict(self):
        return {
            "file_bytes": self.file_bytes,
            "gzip_bytes": self.gzip_bytes,
            "macs": self.macs,
            "op_census": self.op_census,
            "op_census_by_dtype": self.op_census_by_dtype,
            "weight_bytes_by_dtype": self.weight_bytes_by_dtype,
            "sparsity": self.sparsity,
            "sparsity_by_tensor": self.sparsity_by_tensor,
            "inputs": [dict(d) for d in self.input_details],
            "outputs": [dict(d) for d in self.output_details],
        }


def _tensor_dtype(tensor):
    return _TYPE_NAMES.get(tensor.Type(), f"type{tensor.Type()}")


def _buffer_bytes(model, raw, tensor):
    """Returns the raw bytes of a tensor's constant buffer (b"" when it has none)."""
    buf = model.Buffers(tensor.Buffer())
    if buf is None:
        return b""
    if buf.DataLength():
        return buf.DataAsNumpy().tobytes()
    # Files over 2 GB keep buffers after the flatbuffer, addressed by offset.
    offset, size = buf.Offset(), buf.Size()
    if offset > 1 and size:
        return raw[offset: offset + size]
    return b""


def _zero_fraction(data, dtype, shape, tensor):
    np_type = _NUMPY_TYPES.get(dtype)
    dense_size = int(np.prod(shape)) if len(shape) else 1
    if np_type is None or not data or dense_size == 0:
        return 0.0
    values = np.frombuffer(data, np_type)
    zero = 0
    quant = tensor.Quantization()
    if quant is not None and quant.ZeroPointLength() == 1 and dtype in ("int8", "uint8", "int16"):
        zero = int(quant.ZeroPoint(0))
    zeros_stored = int(np.count_nonzero(values == zero))
    # Sparse-encoded tensors store only (blocks of) non-zeros; the rest are implicit zeros.
    implicit = dense_size - values.size if tensor.Sparsity() is not None else 0
    return (zeros_stored + max(implicit, 0)) / dense_size


def census_by_dtype(ops):
    """``{"CONV_2D/int8": count, ...}``, sorted, of ``ops`` (anything with ``.type`` and ``.dtype``).

    One spelling of the key (which `computes_int8` reads) for every census of a file's ops:
    `TFLiteInfo.op_census_by_dtype` and the ops XNNPACK left on the default kernels
    (`profiling.Delegation.default_kernel_census`).
    """
    census = {}
    for op in ops:
        key = f"{op.type}/{op.dtype}"
        census[key] = census.get(key, 0) + 1
    return dict(sorted(census.items()))


def computes_int8(op_census_by_dtype):
    """Whether a file's multiply-accumulate ops run int8 kernels, from ``TFLiteInfo.op_census_by_dtype``."""
    return any(key.split("/")[0] in MAC_OPS and key.endswith("/int8") for key in op_census_by_dtype)


def _shape(graph, t):
    tensor = graph.Tensors(t)
    return [max(int(d), 1) for d in tensor.ShapeAsNumpy()] if tensor.ShapeLength() else []


def _elements(graph, t, reshaped_from):
    """Elements of tensor ``t`` per invocation. A RESHAPE to a shape the file leaves dynamic (Dense on a
    sequence: ``[-1, features]``) records no row count; the tensor it reshaped has the same elements."""
    tensor = graph.Tensors(t)
    signature = tensor.ShapeSignatureAsNumpy()[1:] if tensor.ShapeSignatureLength() > 1 else []
    if any(d < 0 for d in signature) and t in reshaped_from:
        return _elements(graph, reshaped_from[t], reshaped_from)
    return int(np.prod(_shape(graph, t)))


def _macs(op_type, graph, ins, outs, reshaped_from):
    """Multiply-accumulates of one op from its tensors' shapes (0 for ops that do none or shapes unknown).

    ``reshaped_from``: ``{output tensor of a RESHAPE: its input tensor}`` for the ops before this one.
    """
    if not outs or not ins:
        return 0
    out = _shape(graph, outs[0])
    if not out:
        return 0
    elements = int(np.prod(out))
    if op_type in ("CONV_2D", "CONV_3D") and len(ins) > 1:
        kernel = _shape(graph, ins[1])  # CONV_2D: [out, kh, kw, in / groups]; CONV_3D: [kd, kh, kw, in, out]
        per_output = int(np.prod(kernel[1:])) if op_type == "CONV_2D" else int(np.prod(kernel[:-1]))
        return elements * per_output
    if op_type == "DEPTHWISE_CONV_2D" and len(ins) > 1:
        return elements * int(np.prod(_shape(graph, ins[1])[1:3]))  # [1, kh, kw, channels]
    if op_type == "TRANSPOSE_CONV" and len(ins) > 2:
        kernel = _shape(graph, ins[1])  # inputs: output shape, [out, kh, kw, in], the input
        return int(np.prod(_shape(graph, ins[2]))) * int(np.prod(kernel[:3]))
    if op_type == "FULLY_CONNECTED" and len(ins) > 1:
        weights = _shape(graph, ins[1])  # [units, in]
        # Counted from the input (its rows x units x features): a Dense on a sequence runs on a reshaped input
        # whose row count the file leaves dynamic.
        return _elements(graph, ins[0], reshaped_from) * weights[0] if len(weights) == 2 else 0
    if op_type == "BATCH_MATMUL" and len(ins) > 1:
        lhs = _shape(graph, ins[0])
        return elements * lhs[-1] if lhs else 0  # adj_x aside: the inner dimension is the last of lhs
    return 0


def inspect(tflite):
    """Parses a .tflite model.

    Args:
        tflite: the model as ``bytes`` or a path to a ``.tflite`` file.

    Returns:
        A `TFLiteInfo` with the op census (by type and by compute dtype), every
        constant weight tensor with its stored bytes and zero fraction, input and
        output details, file and gzip sizes.

    Raises:
        InvalidTFLiteFileError: the data is not a TFLite flatbuffer (truncated,
            corrupted or another format).
    """
    raw = read_bytes(tflite)
    try:
        return _parse(raw)
    except InvalidTFLiteFileError:
        raise
    except Exception as exc:  # the generated reader raises anything from IndexError to struct.error
        raise InvalidTFLiteFileError(
            f"Could not parse the TFLite flatbuffer ({len(raw)} bytes): {type(exc).__name__}: {exc}. "
            "The file is truncated, corrupted or not a .tflite model; re-export it."
        ) from None


def is_tflite(model):
    """True for ``.tflite`` bytes (the ``TFL3`` identifier) or a path ending in ``.tflite``."""
    if isinstance(model, (bytes, bytearray, memoryview)):
        return bytes(model[4:8]) == b"TFL3"
    return isinstance(model, (str, os.PathLike)) and os.fspath(model).endswith(".tflite")


def read_bytes(tflite):
    """The model's bytes, from ``bytes`` or a ``.tflite`` path (a clear error when the file is missing)."""
    return files.read_model_bytes(tflite, "TFLite", "tfc.to_tflite")


class ConvertedModel(bytes):
    """The ``.tflite`` flatbuffer as ``bytes``, plus what was converted and how.

    It is a plain ``bytes`` object for every use (write it, pass it to an
    interpreter); the extra attributes describe it.

    Attributes:
        mode: the conversion mode.
        model_name: the Keras model's name.
        info: a `TFLiteInfo` (op census by type and dtype, weight
            sparsity, bytes by dtype), computed on first access.
        notes: list of strings describing choices made (e.g. calibration size).
        input_names: the Keras model's input names in its order (the file's own
            input order may differ); the evaluator maps a list ``x`` with them.
    """

    def __new__(cls, data, mode, model_name, notes=(), input_names=None):
        obj = super().__new__(cls, data)
        obj.mode = mode
        obj.model_name = model_name
        obj.notes = list(notes)
        obj.input_names = list(input_names) if input_names is not None else None
        obj._info = None
        return obj

    @property
    def info(self):
        if self._info is None:
            self._info = inspect(bytes(self))
        return self._info


def _parse(raw):
    if len(raw) < 8 or raw[4:8] != b"TFL3":
        raise InvalidTFLiteFileError(
            f"Not a TFLite model: {len(raw)} bytes without the 'TFL3' identifier at offset 4 "
            "(a .tflite starts with it). Pass the bytes returned by to_tflite or a .tflite path."
        )
    model = _schema.Model.GetRootAs(raw, 0)
    if model.SubgraphsLength() < 1:
        raise InvalidTFLiteFileError("The TFLite model has no subgraph; re-export it.")
    op_codes = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        name = _OP_NAMES.get(builtin, f"OP{builtin}")
        if name == "CUSTOM":
            name = "CUSTOM:" + (code.CustomCode() or b"?").decode("utf-8", "replace")
        op_codes.append(name)

    operators, weights = [], []
    for s in range(model.SubgraphsLength()):
        graph = model.Subgraphs(s)
        constant = {}
        for t in range(graph.TensorsLength()):
            tensor = graph.Tensors(t)
            data = _buffer_bytes(model, raw, tensor)
            if not data:
                continue
            constant[t] = True
            dtype = _tensor_dtype(tensor)
            quant = tensor.Quantization()
            shape = tuple(int(d) for d in tensor.ShapeAsNumpy()) if tensor.ShapeLength() else ()
            weights.append(WeightTensor(
                name=tensor.Name().decode("utf-8", "replace"),
                dtype=dtype,
                shape=shape,
                stored_bytes=len(data),
                zero_fraction=_zero_fraction(data, dtype, shape, tensor),
                sparse_encoded=tensor.Sparsity() is not None,
                subgraph=s,
                tensor=t,
                num_scales=int(quant.ScaleLength()) if quant is not None else 0,
            ))
        reshaped_from = {}
        for i in range(graph.OperatorsLength()):
            op = graph.Operators(i)
            ins = [int(t) for t in (op.InputsAsNumpy() if op.InputsLength() else []) if t >= 0]
            outs = [int(t) for t in (op.OutputsAsNumpy() if op.OutputsLength() else []) if t >= 0]
            activations = [t for t in ins if t not in constant]
            probe = activations[0] if activations else (outs[0] if outs else None)
            dtype = _tensor_dtype(graph.Tensors(probe)) if probe is not None else "none"
            operators.append(Operator(
                index=i,
                type=op_codes[op.OpcodeIndex()],
                dtype=dtype,
                inputs=ins,
                outputs=outs,
                input_names=[graph.Tensors(t).Name().decode("utf-8", "replace") for t in ins],
                output_names=[graph.Tensors(t).Name().decode("utf-8", "replace") for t in outs],
                subgraph=s,
                macs=_macs(op_codes[op.OpcodeIndex()], graph, ins, outs, reshaped_from),
            ))
            if op_codes[op.OpcodeIndex()] == "RESHAPE" and ins and outs:
                reshaped_from[outs[0]] = ins[0]

    main = model.Subgraphs(0)

    def details(indices):
        out = []
        for t in indices:
            tensor = main.Tensors(int(t))
            quant = tensor.Quantization()
            scale = float(quant.Scale(0)) if quant is not None and quant.ScaleLength() else 0.0
            zero_point = int(quant.ZeroPoint(0)) if quant is not None and quant.ZeroPointLength() else 0
            out.append({
                "name": tensor.Name().decode("utf-8", "replace"),
                "dtype": _tensor_dtype(tensor),
                "shape": [int(d) for d in tensor.ShapeAsNumpy()] if tensor.ShapeLength() else [],
                # -1 marks a dimension the file lets callers resize (the batch, or a variable sequence length).
                "shape_signature": ([int(d) for d in tensor.ShapeSignatureAsNumpy()] if tensor.ShapeSignatureLength()
                                    else [int(d) for d in tensor.ShapeAsNumpy()] if tensor.ShapeLength() else []),
                "scale": scale,
                "zero_point": zero_point,
            })
        return out

    def step(t):
        scale = details([t])[0]["scale"]
        if scale == 0.0:
            producer = next((op for op in operators if op.subgraph == 0 and t in op.outputs), None)
            if producer is not None and producer.type == "DEQUANTIZE" and producer.inputs:
                scale = details(producer.inputs[:1])[0]["scale"]
        return scale

    outputs = main.OutputsAsNumpy() if main.OutputsLength() else []
    return TFLiteInfo(
        file_bytes=len(raw),
        gzip_bytes=len(gzip.compress(raw, compresslevel=9)),
        operators=operators,
        weights=weights,
        input_details=details(main.InputsAsNumpy() if main.InputsLength() else []),
        output_details=details(outputs),
        output_steps=[step(int(t)) for t in outputs],
    )


_LOAD_CHECK = r"""
import sys
import numpy as np
from ai_edge_litert.interpreter import Interpreter, OpResolverType
for resolver in (OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES, OpResolverType.AUTO):
    it = Interpreter(model_path=sys.argv[1], experimental_op_resolver_type=resolver)
    it.allocate_tensors()
    for d in it.get_input_details():
        it.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
    it.invoke()
"""


def check_loads(tflite, timeout=120):
    """Loads and runs the model once, on both backends, in a separate process.

    A corrupted flatbuffer can crash the native interpreter (a segfault cannot be
    caught in Python); doing the first load in a child process turns that into an
    exception for the caller.

    Raises:
        InvalidTFLiteFileError: the child crashed, failed or timed out; the message
            says which.
    """
    with isolation.child_file(read_bytes(tflite), "tfcompress_check_", ".tflite") as path:
        try:
            outcome = isolation.run(["-c", _LOAD_CHECK, path], timeout)
        except isolation.Timeout:
            raise InvalidTFLiteFileError(
                f"LiteRT did not finish loading and running the model within {timeout} s; the file is "
                "corrupted or far larger than expected.") from None
    if outcome.ok:
        return
    if outcome.returncode < 0:
        reason = f"the LiteRT interpreter {outcome.reason}"
    else:
        reason = f"LiteRT refused it: {outcome.last_error_line()[:300]}"
    raise InvalidTFLiteFileError(
        f"The .tflite model cannot be run: {reason}. The file is corrupted, truncated or uses ops this "
        "runtime lacks; re-export it.")
