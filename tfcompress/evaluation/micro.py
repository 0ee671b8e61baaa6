"""TFLite Micro: will a .tflite run on a microcontroller, in how much RAM, and does it agree with LiteRT?

    >>> findings = tfc.micro.audit(b)      # before flashing: what TFLM cannot run, and the fix
    >>> small = tfc.micro.compress(b)      # clustered weights as look-up tables: less flash
    >>> r = tfc.evaluate_tflite(b, x=x_test, y=y_test, backends=("xnnpack", "micro"))
    >>> r.micro.arena_bytes, r.micro.flash_bytes, r.micro.agreement

The interpreter is TFLite Micro's own (the PyPI ``tflite-micro`` package, extra
``[micro]``): the same kernels and memory planner as the firmware library, built
for this host. So the arena it needs and the outputs it gives are what a board
gets (with the reference kernels; optimized kernels such as CMSIS-NN plan the same
arena within a few hundred bytes of scratch). Its speed is this host's, not an
MCU's, and is reported as ``host_ms`` only.

The first load runs in a child process: a file TFLM cannot handle may abort the
native code, and the child's stderr carries the allocator's arena figure and
TFLM's own reason for refusing a file.
"""

import dataclasses
import re
import statistics
import time

import numpy as np

from tfcompress.core import extras, isolation
from tfcompress.core.tables import format_kb, markdown_table
from tfcompress.evaluation import tflite_file
# `tfc.micro.compress` / `decompress`: TFLite Micro's look-up-table weights live in their own module.
from tfcompress.evaluation.micro_compress import (  # noqa: F401
    DECODE_OP, MicroCompressedModel, TensorCompression, compress, decompress,
)

# Builtin ops registered by the TFLM Python interpreter's resolver (python_ops_resolver.cc of tflite-micro,
# snapshot 2026-10). Custom ops (signal processing, Ethos-U, detection post-processing) need their own
# registration in firmware and are reported as missing.
TFLM_OPS = frozenset("""
ABS ADD ADD_N ARG_MAX ARG_MIN ASSIGN_VARIABLE AVERAGE_POOL_2D BATCH_MATMUL BATCH_TO_SPACE_ND BROADCAST_ARGS
BROADCAST_TO CALL_ONCE CAST CEIL CONCATENATION CONV_2D COS CUMSUM DEPTHWISE_CONV_2D DEPTH_TO_SPACE DEQUANTIZE DIV
DYNAMIC_UPDATE_SLICE ELU EMBEDDING_LOOKUP EQUAL EXP EXPAND_DIMS FILL FLOOR FLOOR_DIV FLOOR_MOD FULLY_CONNECTED
GATHER GATHER_ND GREATER GREATER_EQUAL HARD_SWISH IF L2_NORMALIZATION L2_POOL_2D LEAKY_RELU LESS LESS_EQUAL LOG
LOGICAL_AND LOGICAL_NOT LOGICAL_OR LOGISTIC LOG_SOFTMAX MAXIMUM MAX_POOL_2D MEAN MINIMUM MIRROR_PAD MUL NEG
NOT_EQUAL PACK PAD PADV2 PRELU QUANTIZE READ_VARIABLE REDUCE_ALL REDUCE_MAX REDUCE_MIN RELU RELU6 RESHAPE
RESIZE_BILINEAR RESIZE_NEAREST_NEIGHBOR REVERSE_V2 ROUND RSQRT SELECT_V2 SHAPE SIN SLICE SOFTMAX SPACE_TO_BATCH_ND
SPACE_TO_DEPTH SPLIT SPLIT_V SQRT SQUARE SQUARED_DIFFERENCE SQUEEZE STRIDED_SLICE SUB SUM SVDF TANH TRANSPOSE
TRANSPOSE_CONV UNIDIRECTIONAL_SEQUENCE_LSTM UNPACK VAR_HANDLE WHILE ZEROS_LIKE
""".split())

# Ops whose weights TFLM will not dequantize on the fly: an int8 weight feeding one of these in float is a
# dynamic-range ("hybrid") model, which TFLM refuses.
_WEIGHT_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "BATCH_MATMUL", "SVDF",
               "UNIDIRECTIONAL_SEQUENCE_LSTM", "EMBEDDING_LOOKUP"}
_FIX_INT8 = "convert with mode='int8' and representative data (full integer quantization)"
# Blocking rules under which TFLM still runs the file (with wrong outputs): measured, then reported as failed.
RUNS_WRONGLY = {"per_channel_dequantize"}
_ARENA_LINE = re.compile(r"Arena allocation total (\d+) bytes")
# What TFLM prints when the arena is too small: the allocator's own messages, or a kernel whose temporary
# allocation failed while preparing (not the Python wrapper's "TFLM failed to allocate tensors", which
# follows every refusal, a missing op's too).
_SHORT_OF_ARENA = re.compile(r"Failed to allocate (?!tensors)|Unable to allocate|failed to prepare")
# The largest arena `first_load` tries: far beyond any microcontroller's RAM, so a model that does not
# allocate in it is refused rather than tried forever.
MAX_ARENA_BYTES = 256 << 20


class MicroCompatibilityError(ValueError):
    """The file cannot run on TFLite Micro (or runs wrongly there); the message names each reason and its fix."""


@dataclasses.dataclass(frozen=True)
class MicroFinding:
    """One result of `audit`. ``blocking``: TFLM refuses the file or computes wrong outputs with it."""

    rule: str
    blocking: bool
    message: str


@dataclasses.dataclass
class MicroReport:
    """What the ``"micro"`` backend of `evaluate_tflite` measured.

    ``arena_bytes`` is the tensor arena the model needs: the smallest
    ``arena_size`` in which TFLM allocates it (to 16 bytes), found by `first_load`
    for models of any size; ``flash_bytes`` the
    file, which firmware keeps in flash. ``agreement`` is top-1 agreement with
    LiteRT on the same ``samples``; ``host_ms`` the median time per inference on
    this host (not on a microcontroller).
    """

    flash_bytes: int
    arena_bytes: int = None
    findings: list = dataclasses.field(default_factory=list)
    samples: int = 0
    accuracy: float = None
    agreement: float = None
    max_abs_diff: float = None
    host_ms: float = None
    error: str = None

    @property
    def runs(self):
        return self.error is None

    def to_dict(self):
        return dataclasses.asdict(self)

    def to_markdown(self):
        def pct(v):
            return "—" if v is None else f"{100 * v:.2f}%"

        table = markdown_table(
            ("runs on TFLM", "arena", "flash", "samples", "accuracy", "agreement with LiteRT", "max abs diff",
             "host ms (not MCU)"),
            [("yes" if self.runs else "no", "—" if self.arena_bytes is None else format_kb(self.arena_bytes),
              format_kb(self.flash_bytes), self.samples, pct(self.accuracy), pct(self.agreement),
              "—" if self.max_abs_diff is None else f"{self.max_abs_diff:.3g}",
              "—" if self.host_ms is None else f"{self.host_ms:.2f}")])
        lines = [table] + [f"{'Blocks' if f.blocking else 'Note'}: {f.message}" for f in self.findings]
        if self.error and not any(f.blocking for f in self.findings):
            lines.append(f"Error: {self.error}")
        return "\n".join(lines)


def audit(tflite):
    """Checks a .tflite file against what TFLite Micro runs, before anything is flashed.

    Rules: ops missing from TFLM's resolver; inputs with a variable dimension other than the batch
    (TFLM cannot resize); dynamic-range (hybrid) weights; float16
    weights; int4 weights; weight-only int8 with per-channel scales (TFLM's
    DEQUANTIZE applies one scale per tensor, so such a file runs but computes wrong
    outputs); and, as a note, ops that still compute in float (they run, slowly, on
    MCUs without an FPU).

    Args:
        tflite: ``.tflite`` bytes or a path.

    Returns:
        A list of `MicroFinding`; empty when nothing was found.

    Example:
        >>> for f in tfc.micro.audit(tfc.to_tflite(model, mode="dynamic")):
        ...     print(f.message)
    """
    info = tflite_file.inspect(tflite_file.read_bytes(tflite))
    findings = []
    # DECODE (custom op TFLM_DECODE, from `compress`) is registered by TFLM's resolver like a builtin.
    missing = sorted({op.type for op in info.operators if op.type not in TFLM_OPS and op.type != DECODE_OP})
    if missing:
        findings.append(MicroFinding("missing_op", True, (
            f"ops {missing} are not in TFLite Micro's op resolver: replace the layers that produce them (e.g. a "
            "Lambda or tf.* call) with ops TFLM has, or register your own kernel in the firmware.")))
    # TFLM cannot resize an input; samples run one at a time, so only a variable batch dimension is fine.
    variable = [d["name"] for d in info.input_details if any(n < 0 for n in d.get("shape_signature", [])[1:])]
    if variable:
        findings.append(MicroFinding("variable_shape", True, (
            f"inputs {variable} have a variable dimension besides the batch (e.g. keras.Input((None, 10)) for "
            "sequences of any length), and TFLite Micro cannot resize inputs: build the model on a fixed size "
            "(keras.Input((49, 10))), set_weights from this one, and convert that.")))
    hybrid = sorted({op.type for op in info.operators if op.type in _WEIGHT_OPS and op.dtype == "float32"
                     and any(w.dtype in ("int8", "uint8") for w in info.constant_inputs(op))})
    if hybrid:
        findings.append(MicroFinding("hybrid", True, (
            f"dynamic-range (hybrid) model: {hybrid} compute in float32 from int8 weights, and TFLite Micro does "
            f"not support hybrid kernels; {_FIX_INT8}.")))
    by_dtype = {}
    for w in info.weights:
        by_dtype.setdefault(w.dtype, []).append(w)
    if "float16" in by_dtype:
        findings.append(MicroFinding("float16", True, (
            f"{len(by_dtype['float16'])} weight tensors are float16, which TFLite Micro's DEQUANTIZE cannot read; "
            f"{_FIX_INT8} (or mode='float32').")))
    if "int4" in by_dtype:
        findings.append(MicroFinding("int4", True, (
            f"{len(by_dtype['int4'])} weight tensors are int4, which TFLite Micro's kernels do not read; "
            f"{_FIX_INT8}.")))
    per_channel = sorted({w.name for op in info.operators if op.type == "DEQUANTIZE" and op.dtype != "float16"
                          for w in info.constant_inputs(op) if w.dtype in ("int8", "uint8", "int16") and w.num_scales > 1})
    if per_channel:
        findings.append(MicroFinding("per_channel_dequantize", True, (
            f"weight-only int8 with per-channel scales ({len(per_channel)} tensors, e.g. {per_channel[0]!r}): "
            "TFLite Micro's DEQUANTIZE applies one scale per tensor, so the file runs but its outputs are wrong; "
            f"{_FIX_INT8}.")))
    float_ops = [op for op in info.float_compute_ops() if op.type in TFLM_OPS]
    if float_ops and not hybrid:
        kinds = sorted({op.type for op in float_ops})
        findings.append(MicroFinding("float_compute", False, (
            f"{len(float_ops)} ops compute in float32 ({', '.join(kinds[:6])}{', ...' if len(kinds) > 6 else ''}): "
            f"they run on TFLite Micro, but slowly on MCUs without an FPU; {_FIX_INT8} for int8 kernels.")))
    return findings


_CHILD = r"""
import sys
import numpy as np
from tflite_micro import runtime
raw = open(sys.argv[1], "rb").read()
it = runtime.Interpreter.from_bytes(raw, arena_size=int(sys.argv[2]))
for i in range(int(sys.argv[3])):
    d = it.get_input_details(i)
    it.set_input(np.zeros(d["shape"], d["dtype"]), i)
it.invoke()
sys.stderr.flush()
it.print_allocations()
"""


def first_load(raw, num_inputs, timeout=120):
    """Finds the smallest tensor arena TFLM runs ``raw`` in, crash-safely: every try is a child process.

    A first try in a generous arena (``max(1 MB, 16 × file size)``) doubles on an
    allocation failure until it loads, up to `MAX_ARENA_BYTES`. The allocator then
    reports the arena it kept, but kernels also borrow temporary memory while they
    prepare (per-channel quantization parameters of a wide layer, for instance), so
    the arena firmware needs can be larger: that figure is checked, and when it does
    not allocate, the smallest size that does is searched for (to 16 bytes).

    Args:
        raw: the .tflite bytes.
        num_inputs: the file's inputs (each is fed zeros for one `invoke`).
        timeout: seconds for each try.

    Returns:
        The smallest ``arena_size`` (bytes, to 16 bytes) in which TFLM allocates the model.

    Raises:
        MicroCompatibilityError: TFLM refused the file, crashed on it, or could not
            allocate it even in a `MAX_ARENA_BYTES` arena.
    """
    with isolation.child_file(raw, "tfcompress_micro_", ".tflite") as path:
        def attempt(arena):
            try:
                return isolation.run(["-c", _CHILD, path, str(arena), str(num_inputs)], timeout)
            except isolation.Timeout:
                raise MicroCompatibilityError(
                    f"TFLite Micro did not load and run the model within {timeout} s (arena of {arena} bytes).") from None

        arena = min(MAX_ARENA_BYTES, max(1 << 20, 16 * len(raw)))
        outcome = attempt(arena)
        while not outcome.ok and _arena_too_small(outcome) and arena < MAX_ARENA_BYTES:
            arena = min(MAX_ARENA_BYTES, 2 * arena)
            outcome = attempt(arena)
        if not outcome.ok:
            reason = _refusal(outcome)
            if _arena_too_small(outcome):
                raise MicroCompatibilityError(
                    f"TFLite Micro could not allocate the model's tensors even in a {_size(arena)} arena "
                    f"({arena} bytes, the largest tfcompress tries: tfcompress.micro.MAX_ARENA_BYTES); TFLM said: "
                    f"{reason[:300]}. No microcontroller has that much RAM: make the activations smaller (a smaller "
                    "input, fewer channels or units) and convert with mode='int8'.")
            raise MicroCompatibilityError(f"TFLite Micro cannot run the model: {reason[:300]}")
        match = _ARENA_LINE.search(outcome.stderr)
        if match is None:
            raise MicroCompatibilityError(
                "TFLite Micro ran the model but printed no arena figure; this tflite-micro build is unexpected "
                f"(stderr ended with: {outcome.last_error_line()[:200]}).")
        figure = int(match.group(1))
        if figure >= arena or attempt(figure).ok:
            return figure
        # The allocator's figure is too small (temporary memory while preparing): gallop up from it, then
        # bisect, to the smallest size that allocates. Every failed try is a size known to be too small.
        too_small, step = figure, 1024
        while too_small + step < arena and not attempt(too_small + step).ok:
            too_small, step = too_small + step, 2 * step
        fits = min(arena, too_small + step)
        while fits - too_small > 16:
            middle = (too_small + fits) // 2
            too_small, fits = (too_small, middle) if attempt(middle).ok else (middle, fits)
        return fits


def _size(n):
    return f"{n / (1 << 20):.0f} MB" if n >= 1 << 20 else format_kb(n)


def _arena_too_small(outcome):
    """Whether a failed try looks like a too-small arena (then a larger one may load)."""
    return outcome.returncode < 0 or _SHORT_OF_ARENA.search(outcome.stderr) is not None


def _refusal(outcome):
    """TFLM's own reason for refusing a file, from a failed child's stderr."""
    if outcome.returncode < 0:
        return f"the TFLite Micro interpreter {outcome.reason}"
    lines = [ln.strip() for ln in outcome.stderr.splitlines() if ln.strip() and not ln.startswith(("W0000", "I0000"))]
    # TFLM prints its reason (e.g. "Didn't find op for builtin opcode 'TOPK_V2'") before the Python error.
    return next((ln for ln in lines if "TFLM failed" not in ln and not ln.startswith(("Traceback", "File ", "RuntimeError"))
                 and "failed to prepare" not in ln), None) or outcome.last_error_line()


def check_samples(samples):
    if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or samples < 1:
        raise ValueError(f"micro_samples must be a positive integer (samples run on TFLite Micro), got {samples!r}.")
    return int(samples)


def runtime():
    """The ``tflite_micro.runtime`` module, or `MissingExtraError` naming the extra."""
    return extras.require("tflite_micro", "the 'micro' evaluator backend (TFLite Micro)").runtime


def load(raw, num_inputs):
    """Checks that TFLM can run ``raw`` and measures its arena, crash-safely.

    Returns:
        ``(findings, arena_bytes)``. A file whose findings are all in `RUNS_WRONGLY`
        loads: the caller measures how wrong it is.

    Raises:
        MicroCompatibilityError: a blocking audit finding, or TFLM refused the file.
    """
    runtime()
    findings = audit(raw)
    refused = [f for f in findings if f.blocking and f.rule not in RUNS_WRONGLY]
    if refused:
        raise MicroCompatibilityError(" ".join(f.message for f in refused))
    return findings, first_load(raw, num_inputs)


def run(raw, arena_bytes, samples, output_index):
    """Runs samples one at a time (as a board does) on TFLM.

    Args:
        raw: the .tflite bytes (already checked by `load`).
        arena_bytes: from `load`.
        samples: a list of per-input arrays, each ``(n, ...)``, in the model's
            input dtype (quantize float data first).
        output_index: which of the file's outputs to collect.

    Returns:
        ``(outputs, host_ms)``: the raw outputs ``(n, ...)`` and the median time per inference.

    Raises:
        MicroCompatibilityError: TFLM did not allocate the model in ``arena_bytes``.
    """
    try:
        interpreter = runtime().Interpreter.from_bytes(raw, arena_size=arena_bytes + 1024)
    except RuntimeError as exc:  # `first_load` allocated it in a child: this process differs somehow
        raise MicroCompatibilityError(
            f"TFLite Micro loaded the model in a {arena_bytes}-byte arena in a child process but not here "
            f"({exc}); report it with the .tflite file.") from None
    outputs, times = [], []
    for i in range(len(samples[0])):
        for k, array in enumerate(samples):
            interpreter.set_input(array[i:i + 1], k)
        start = time.perf_counter()
        interpreter.invoke()
        times.append((time.perf_counter() - start) * 1e3)
        outputs.append(np.array(interpreter.get_output(output_index)))
    return np.concatenate(outputs), statistics.median(times)
