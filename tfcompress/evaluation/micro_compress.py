"""Clustered weights as TFLite Micro look-up tables: smaller flash, the same outputs.

    >>> small = tfc.micro.compress(tfc.to_tflite(clustered, mode="int8", representative_data=x))
    >>> print(small.to_markdown())        # per tensor: bits, bytes before / after
    >>> tfc.export_c_array(small, "model_data.cc")

A microcontroller keeps the ``.tflite`` uncompressed in flash, so clustering
(`tfcompress.cluster_weights`) alone only shrinks the gzip size. TFLite Micro's
compression (the ``tflite-micro`` package, extra ``[micro]``) stores a weight
tensor with at most 2^b distinct values per channel as b-bit indices into one
value table per channel (or one per tensor), and inserts a ``DECODE`` operator
(custom op ``TFLM_DECODE``) before each consumer that rebuilds the int8 values in
the arena at run time: flash shrinks, the decoded tensor of the op being run
takes arena (RAM), and the outputs are bit-identical to the uncompressed file.

LiteRT has no ``DECODE`` op: `decompress` rebuilds the uncompressed file, which
the evaluator runs on LiteRT as the reference for a compressed file.
"""

import contextlib
import dataclasses
import io
import warnings

import flatbuffers
import numpy as np
# The .tflite schema's object API (read, edit, write back), as tflite_file reads it: see the README's private APIs.
from ai_edge_litert import schema_py_generated as _schema

from tfcompress.core import extras
from tfcompress.core.tables import format_kb, markdown_table
from tfcompress.evaluation import tflite_file

DECODE_OP = "CUSTOM:TFLM_DECODE"
_DECODE_CUSTOM_CODE = "TFLM_DECODE"
# TFLM's LUT index field holds 1..7 bits (lut.py of tflite-micro: LutAncillaryData.MAX_BITWIDTH).
MAX_BITS = 7
_DCM_BYTES = 16  # the DECODE Common Metadata header that starts each value-table tensor
# The rest of what one compressed tensor adds to the file (the DECODE op, two tensor tables, alignment) beside its
# indices, tables, quantization and names: fitted on the reference CNN's and a small CNN's kernels, where the
# estimate came within 20 B of the measured saving.
_DECODE_BYTES = 150
# An estimated saving this close to min_saving_bytes is measured instead (compressing that tensor alone).
_MEASURE_MARGIN = 512
# The weight inputs (op type: input positions) whose kernels read them only in Eval, where a DECODE output is ready:
# filters and biases. Shape or parameter inputs, read in Prepare, must stay constant.
_WEIGHT_INPUTS = {"CONV_2D": (1, 2), "DEPTHWISE_CONV_2D": (1, 2), "FULLY_CONNECTED": (1, 2), "TRANSPOSE_CONV": (1, 3)}
_TYPE_NAMES = {v: k.lower() for k, v in vars(_schema.TensorType).items() if not k.startswith("_")}
_DTYPES = {"int8": np.int8, "int16": np.int16, "int32": np.int32, "int64": np.int64, "uint8": np.uint8,
           "float32": np.float32}
_CLUSTER_FIRST = ("cluster the model first, e.g. tfc.cluster_weights(model, 16) (then fine-tune), and convert it "
                  "with mode='int8'")


@dataclasses.dataclass(frozen=True)
class TensorCompression:
    """What `compress` did with one weight tensor.

    Attributes:
        name: the tensor's name in the file.
        op: the type of the op that reads it (``CONV_2D``, ...).
        shape: its shape.
        distinct: the most distinct values in one of its tables (per channel or per tensor).
        tables: ``"per channel (axis a)"`` or ``"per tensor"``: the value tables of the cheapest layout.
        bits: index width, or None when no layout fits `MAX_BITS`.
        bytes_before: its stored bytes.
        bytes_after: packed indices + value tables (with their 16-byte header), as chosen.
        file_saving: bytes the file shrinks by when this tensor alone is compressed, counting its DECODE
            op and new tensors: measured (compressing it alone) when within 512 B of ``min_saving_bytes``,
            else estimated (within 20 B of measured on the reference CNN); None when not a candidate.
        compressed: whether it is compressed in the result.
        reason: why not, when it is not.
    """

    name: str
    op: str
    shape: tuple
    distinct: int
    tables: str
    bits: int
    bytes_before: int
    bytes_after: int
    file_saving: int
    compressed: bool
    reason: str = ""


class MicroCompressedModel(bytes):
    """The compressed ``.tflite`` as ``bytes`` (write it, flash it, evaluate it), plus what was done.

    Attributes:
        tensors: a `TensorCompression` per weight tensor considered, in file order.
        original_bytes: the size of the input file.
        input_names: carried over from a `ConvertedModel` (the Keras input order), else None.
    """

    def __new__(cls, data, tensors, original_bytes, input_names=None):
        obj = super().__new__(cls, data)
        obj.tensors = list(tensors)
        obj.original_bytes = int(original_bytes)
        obj.input_names = input_names
        return obj

    @property
    def compressed(self):
        """The `TensorCompression` of each compressed tensor."""
        return [t for t in self.tensors if t.compressed]

    def to_markdown(self):
        rows = [(t.name if len(t.name) <= 48 else t.name[:47] + "…", t.op, "x".join(map(str, t.shape)), t.distinct,
                 t.tables, "—" if t.bits is None else t.bits, t.bytes_before, "—" if not t.bits else t.bytes_after,
                 "—" if t.file_saving is None else t.file_saving, "yes" if t.compressed else f"no: {t.reason}")
                for t in self.tensors]
        table = markdown_table(("tensor", "op", "shape", "max distinct", "tables", "bits", "bytes", "indices + tables",
                                "file saving alone", "compressed"), rows)
        return (table + f"\n\nflash: {format_kb(self.original_bytes)} → {format_kb(len(self))} "
                f"({len(self.compressed)} of {len(self.tensors)} weight tensors as look-up tables)")


def _compression_package():
    return extras.require("tflite_micro", "TFLite Micro weight compression (tfc.micro.compress)").compression


def _layout(values, quantization):
    """``(description, axis or None, tables, table_len)``: the value tables TFLM's DECODE decodes right.

    Measured with tflite-micro 0.dev20261023: a per-channel-quantized kernel decodes bit-exactly only with one
    table per channel of its quantized dimension; a per-tensor table, or tables along another axis, give wrong
    outputs; a per-tensor-quantized kernel with one table decodes bit-exactly. So the layout follows the
    quantization: per channel for per-channel scales, else per tensor.
    """
    scales = 0 if quantization is None or quantization.scale is None else len(quantization.scale)
    if scales > 1:
        axis = int(quantization.quantizedDimension)
        moved = np.moveaxis(values, axis, 0).reshape(values.shape[axis], -1)
        longest = max(int(np.unique(row).size) for row in moved)
        return f"per channel (axis {axis})", axis, values.shape[axis], longest
    return "per tensor", None, 1, int(np.unique(values).size)


def _cost(size, itemsize, tables, table_len, bits):
    return -(-size * bits // 8) + _DCM_BYTES + tables * table_len * itemsize


def _overhead(name, scales):
    """File bytes a compressed tensor costs beside its indices and tables (an estimate, see `_DECODE_BYTES`)."""
    # The encoded tensor keeps the kernel's quantization (a float32 scale and an int64 zero point per channel)
    # and the new tensors are named after it ("<name>_decoded", "<name>_ancillary").
    return _DECODE_BYTES + 12 * scales + 2 * len(name.encode())


def _needed_bits(table_len):
    return max(1, (table_len - 1).bit_length())


def _candidates(raw, info):
    """``[(subgraph, tensor, op type, WeightTensor, values, quantization)]``: constant weights only weight ops read."""
    weights = {(w.subgraph, w.tensor): w for w in info.weights}
    uses = {}
    for op in info.operators:
        for position, t in enumerate(op.inputs):
            if (op.subgraph, t) in weights:
                uses.setdefault((op.subgraph, t), []).append((op.type, position))
    out = []
    model = _schema.ModelT.InitFromPackedBuf(raw, 0)
    for key, used in uses.items():
        w = weights[key]
        if w.dtype not in _DTYPES or w.sparse_encoded or not all(p in _WEIGHT_INPUTS.get(o, ()) for o, p in used):
            continue
        tensor = model.subgraphs[key[0]].tensors[key[1]]
        data = bytes(model.buffers[tensor.buffer].data)
        values = np.frombuffer(data, _DTYPES[w.dtype]).reshape(w.shape)
        out.append((key[0], key[1], used[0][0], w, values, tensor.quantization))
    return out


def _check_bits(bits):
    if bits is None:
        return None
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= bits <= MAX_BITS:
        raise ValueError(f"bits={bits!r}: give None (the fewest bits each tensor needs) or an integer in "
                         f"[1, {MAX_BITS}] (TFLite Micro's look-up tables index with at most {MAX_BITS} bits; "
                         "4 bits for 16 clusters).")
    return int(bits)


def _check_input(tflite):
    try:
        raw = tflite_file.read_bytes(tflite)
        info = tflite_file.inspect(raw)
    except tflite_file.InvalidTFLiteFileError as exc:
        raise tflite_file.InvalidTFLiteFileError(f"tflite: {exc}") from None
    if DECODE_OP in info.op_census:
        raise ValueError("tflite is already compressed for TFLite Micro (it has TFLM_DECODE ops); pass the file "
                         "from tfc.to_tflite, or tfc.micro.decompress(tflite) to get it back.")
    weight_ops = [op for op in info.operators if op.type in _WEIGHT_INPUTS]
    if weight_ops and all(op.dtype in ("float32", "float16") for op in weight_ops):
        kinds = sorted({f"{op.type}/{op.dtype}" for op in weight_ops})
        raise ValueError(
            f"tflite computes {', '.join(kinds)}: a float model, not a full-integer (int8) one. TFLite Micro look-up tables "
            "compress int8 weights, and microcontrollers run int8: convert with tfc.to_tflite(model, mode='int8', "
            "representative_data=x) first.")
    return raw, info


def _spec(plan, bits_of):
    package = _compression_package()
    builder = package.SpecBuilder()
    for (subgraph, tensor), (_, axis) in plan.items():
        mode = package.spec.PerTensor() if axis is None else package.spec.PerChannel(axis=axis)
        builder.add_tensor(subgraph=subgraph, tensor=tensor).with_lut(index_bitwidth=bits_of[(subgraph, tensor)],
                                                                      mode=mode)
    return builder.build()


def _run_compressor(raw, plan, bits_of):
    # The compressor warns about expansion (we pick only tensors that shrink) and prints to stderr when the index
    # width exceeds what a tensor needs (with a fixed `bits`, intended): neither is news to the caller.
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        return bytes(_compression_package().compress(raw, _spec(plan, bits_of)))


def compress(tflite, bits=None, min_saving_bytes=256, max_tensor_bytes=None):
    """Stores clustered int8 weights as TFLite Micro look-up tables, so the file takes less flash.

    Every constant filter and bias of ``CONV_2D``, ``DEPTHWISE_CONV_2D``,
    ``FULLY_CONNECTED`` and ``TRANSPOSE_CONV`` is considered. Its value tables are
    one per channel of its quantized dimension (per-channel int8 scales; TFLM
    decodes such a kernel right only that way), else one for the tensor; its
    index width the fewest bits that number the most distinct values of one table
    (``bits`` fixes it), at most 7: a kernel clustered to 16 values (per tensor or
    per channel: one int8 scale per channel maps 16 floats to at most 16 codes)
    takes 4 bits. A tensor is compressed when doing it alone shrinks the
    file by at least ``min_saving_bytes``, counting its ``DECODE`` op and new
    tensors (measured by compressing it alone when the estimate is close), so a
    small kernel whose tables cost more than its values is left as it is.

    The file runs on TFLite Micro with outputs bit-identical to the input's; each
    ``DECODE`` writes its tensor into the arena just before the op that reads it,
    so the arena grows by about the largest decoded tensor (measure it with
    ``tfc.evaluate_tflite(small, x, backends=("micro",))``). LiteRT cannot run
    the file (`decompress` gives the LiteRT equivalent).

    Args:
        tflite: an int8 ``.tflite`` (bytes from `to_tflite`, or a path).
        bits: None (each tensor its fewest bits), or an index width in [1, 7] for
            every tensor; tensors that need more are left as they are.
        min_saving_bytes: the least file saving for which a tensor gets a
            ``DECODE`` op (each costs some time per inference).
        max_tensor_bytes: tensors larger than this (their int8 bytes) stay as
            they are. ``DECODE`` writes a whole tensor into the arena while its op
            runs, so this caps what compression adds to the RAM a board needs
            (None: no cap; on the reference CNN the 72 KB conv3 kernel grows the
            arena from 36 KB to 87 KB).

    Returns:
        A `MicroCompressedModel`: the ``.tflite`` bytes, with ``tensors`` (what
        was done per weight tensor, and why not) and ``to_markdown()``. When no
        tensor fits a table or saves enough it is the input, unchanged, with a
        warning saying why.

    Raises:
        tfcompress.InvalidTFLiteFileError: ``tflite`` is not a ``.tflite``.
        ValueError: ``tflite`` is a float or already compressed file, or ``bits`` /
            ``min_saving_bytes`` is out of range.
        tfcompress.MissingExtraError: ``tflite-micro`` is not installed.

    Example:
        >>> clustered = tfc.cluster_weights(model, 16)
        >>> small = tfc.micro.compress(tfc.to_tflite(clustered, mode="int8", representative_data=x))
        >>> print(small.to_markdown())
    """
    bits = _check_bits(bits)
    if (isinstance(min_saving_bytes, bool) or not isinstance(min_saving_bytes, (int, np.integer))
            or min_saving_bytes < 1):
        raise ValueError(f"min_saving_bytes={min_saving_bytes!r} must be a positive integer (bytes of flash a "
                         "tensor must save to get a DECODE op; 256 by default).")
    if max_tensor_bytes is not None and (isinstance(max_tensor_bytes, bool) or not isinstance(
            max_tensor_bytes, (int, np.integer)) or max_tensor_bytes < 1):
        raise ValueError(f"max_tensor_bytes={max_tensor_bytes!r} must be None or a positive integer (bytes of the "
                         "largest tensor to compress: each is decoded into the arena while its op runs).")
    raw, info = _check_input(tflite)
    _compression_package()
    input_names = getattr(tflite, "input_names", None)
    rows, plan, bits_of, estimates = {}, {}, {}, {}
    for subgraph, index, op_type, w, values, quantization in _candidates(raw, info):
        key = (subgraph, index)
        description, axis, tables, table_len = _layout(values, quantization)
        width = bits or _needed_bits(table_len)
        row = dict(name=w.name, op=op_type, shape=tuple(w.shape), distinct=table_len, tables=description, bits=None,
                   bytes_before=w.stored_bytes, bytes_after=w.stored_bytes, file_saving=None, compressed=False)
        if max_tensor_bytes is not None and w.stored_bytes > max_tensor_bytes:
            row["reason"] = (f"{w.stored_bytes} B > max_tensor_bytes={max_tensor_bytes} (decoded, it would take "
                             "that much arena)")
        elif _needed_bits(table_len) > (bits or MAX_BITS):
            row["reason"] = f"{table_len} distinct values {description} need more than {bits or MAX_BITS} bits"
        else:
            cost = _cost(values.size, values.dtype.itemsize, tables, table_len, width)
            row.update(bits=width, bytes_after=cost)
            if w.stored_bytes - cost < min_saving_bytes:
                row["reason"] = (f"indices + tables ({cost} B) save less than min_saving_bytes={min_saving_bytes} "
                                 f"on {w.stored_bytes} B")
            else:
                plan[key], bits_of[key] = (description, axis), width
                scales = 0 if quantization is None or quantization.scale is None else len(quantization.scale)
                estimates[key] = w.stored_bytes - cost - _overhead(w.name, scales)
        rows[key] = row
    chosen = {}
    for key in list(plan):
        saving = estimates[key]
        if abs(saving - min_saving_bytes) < _MEASURE_MARGIN:  # too close to call: compress it alone and see
            saving = len(raw) - len(_run_compressor(raw, {key: plan[key]}, bits_of))
        rows[key]["file_saving"] = saving
        if saving >= min_saving_bytes:
            chosen[key] = plan[key]
        else:
            change = f"shrinks by {saving} B only" if saving > 0 else f"grows by {-saving} B"
            rows[key]["reason"] = (f"alone, the file {change} (its DECODE op and tensors cost the rest), less than "
                                   f"min_saving_bytes={min_saving_bytes}")
    result = _run_compressor(raw, chosen, bits_of) if chosen else raw
    if chosen and len(result) >= len(raw):  # savings that do not add up: keep the file as it was
        result, reason = raw, f"together the tensors did not shrink the file ({len(raw)} → {len(result)} B)"
        chosen = {}
        for key in plan:
            rows[key]["reason"] = reason
    for key in chosen:
        rows[key].update(compressed=True, reason="")
    tensors = [TensorCompression(**rows[key]) for key in sorted(rows)]
    if not chosen:
        warnings.warn(_nothing_compressed(tensors, bits, min_saving_bytes), stacklevel=2)
    return MicroCompressedModel(result, tensors, len(raw), input_names=input_names)


def _nothing_compressed(tensors, bits, min_saving_bytes):
    limit = 2 ** (bits or MAX_BITS)
    fitting = [t for t in tensors if t.bits is not None]
    capped = [t for t in tensors if "max_tensor_bytes" in t.reason]
    if capped and not fitting:
        return (f"{len(capped)} weight tensors are larger than max_tensor_bytes (e.g. {capped[0].name!r}, "
                f"{capped[0].bytes_before} B) and none of the others fits a look-up table, so the file is unchanged: "
                "raise max_tensor_bytes (or leave it None).")
    if not tensors:
        return ("tflite has no constant weight tensor of CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED / "
                "TRANSPOSE_CONV: nothing to compress.")
    if not fitting:
        fewest = min(tensors, key=lambda t: t.distinct)
        return (f"no weight tensor has <= {limit} distinct values per channel (the fewest: {fewest.distinct} in "
                f"{fewest.name!r}), so none fits a TFLite Micro look-up table and the file is unchanged: "
                f"{_CLUSTER_FIRST}.")
    widest = max(t.bits for t in fitting)
    return (f"{len(fitting)} weight tensors fit a look-up table, but they need {widest} bits and none saves "
            f"min_saving_bytes={min_saving_bytes} bytes of flash (its tables and DECODE op cost about what the "
            f"indices save), so the file is unchanged: "
            + (f"{_CLUSTER_FIRST}." if widest > 4 else
               "use fewer clusters (e.g. tfc.cluster_weights(model, 8)) or a lower min_saving_bytes.")
            )


def is_compressed(info):
    """Whether a `TFLiteInfo` has TFLM ``DECODE`` ops (a file from `compress`)."""
    return DECODE_OP in info.op_census


def for_litert(raw):
    """``raw``, or its `decompress`-ed equivalent when it has DECODE ops (which LiteRT cannot run)."""
    return decompress(raw) if _DECODE_CUSTOM_CODE.encode() in raw and is_compressed(tflite_file.inspect(raw)) else raw


def _unpack(encoded, count, bits):
    """The ``count`` indices packed MSB-first, ``bits`` each, in ``encoded`` (lut.py's pack_indices)."""
    stream = np.unpackbits(np.frombuffer(encoded, np.uint8))[:count * bits].reshape(count, bits)
    return stream.astype(np.int64) @ (1 << np.arange(bits - 1, -1, -1))


def _decode(encoded, ancillary, shape, dtype):
    """The values a LUT ``DECODE`` writes: ancillary = DCM header (16 B) + value tables (lut.py's layout)."""
    if ancillary[0] != 0:
        raise ValueError(f"DECODE type {ancillary[0]} is not a look-up table; only tfc.micro.compress files decode.")
    params, stride = ancillary[5], ancillary[6]
    axis, bits = params >> 4, params & 0x07
    tables = np.frombuffer(ancillary[_DCM_BYTES:], dtype).reshape(-1, stride)
    size = int(np.prod(shape)) if shape else 1
    indices = _unpack(encoded, size, bits).reshape(shape)
    if axis == 0xF:
        return tables[0][indices]
    moved = np.moveaxis(indices, axis, 0)
    channel = np.arange(shape[axis]).reshape((-1,) + (1,) * (len(shape) - 1))
    return np.moveaxis(tables[channel, moved], 0, axis)


def decompress(tflite):
    """The uncompressed equivalent of a `compress`-ed file: every ``DECODE`` op replaced by its constant.

    The weights are the values TFLite Micro's ``DECODE`` computes, so LiteRT runs
    this file as the reference for the compressed one (the evaluator does it).

    Args:
        tflite: a ``.tflite`` from `compress` (bytes or a path).

    Returns:
        ``.tflite`` bytes without ``DECODE`` ops (a file without any is returned as it is).

    Raises:
        tfcompress.InvalidTFLiteFileError: ``tflite`` is not a ``.tflite``.

    Example:
        >>> b16 = tfc.to_tflite(tfc.cluster_weights(model, 16), mode="int8", representative_data=x)
        >>> twin = tfc.micro.decompress(tfc.micro.compress(b16))
        >>> logits = tfc.evaluate.predict(twin, x_test[:10])   # LiteRT runs the twin, not the compressed file
    """
    try:
        raw = tflite_file.read_bytes(tflite)
        info = tflite_file.inspect(raw)
    except tflite_file.InvalidTFLiteFileError as exc:
        raise tflite_file.InvalidTFLiteFileError(f"tflite: {exc}") from None
    if not is_compressed(info):
        return raw
    model = _schema.ModelT.InitFromPackedBuf(raw, 0)
    decode = {i for i, code in enumerate(model.operatorCodes)
              if code.customCode is not None and code.customCode.decode() == _DECODE_CUSTOM_CODE}
    for subgraph in model.subgraphs:
        kept = []
        for op in subgraph.operators:
            if op.opcodeIndex not in decode:
                kept.append(op)
                continue
            for k, out in enumerate(op.outputs):
                encoded, ancillary = (subgraph.tensors[t] for t in op.inputs[2 * k: 2 * k + 2])
                decoded = subgraph.tensors[out]
                dtype = _DTYPES[_TYPE_NAMES[decoded.type]]
                values = _decode(bytes(model.buffers[encoded.buffer].data), bytes(model.buffers[ancillary.buffer].data),
                                 tuple(int(d) for d in decoded.shape), dtype)
                buffer = _schema.BufferT()
                buffer.data = np.frombuffer(np.ascontiguousarray(values, dtype).tobytes(), np.uint8)
                model.buffers.append(buffer)
                decoded.buffer = len(model.buffers) - 1
                # The encoded tensor keeps the kernel's per-channel scales, which LiteRT checks against its shape.
                encoded.quantization = None
        subgraph.operators = kept
    builder = flatbuffers.Builder(len(raw) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())
