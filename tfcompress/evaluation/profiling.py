"""Evaluator depth: what XNNPACK took, where the time goes op by op, and the interpreter's peak memory.

What LiteRT 2.3's Python package exposes, and what each function here uses:

* **Delegation.** ``Interpreter`` applies XNNPACK (its default delegate) in
  ``allocate_tensors``. It then lists the model's nodes followed by one ``DELEGATE``
  node per partition, whose inputs and outputs bound the replaced nodes. No public
  method lists nodes, and nothing in the package logs the "Replacing N out of M
  node(s)" line, so `delegation` reads the node list once, in `_interpreter_nodes`.
* **Per-op time.** The Python ``Interpreter`` and ``CompiledModel`` have no
  profiler, and the ``litert-benchmark`` script they ship has no op-profiling or
  memory flags (only median, p5 and p95 of whole runs). The C API in the bundled
  ``libLiteRt.so`` does have one (``LiteRtCompiledModelGetProfiler``, switched on
  by the runtime option ``enable_profiling``). `op_profile` calls it through ctypes
  in a child process (`_child_op_profile`): a wrong call there can crash the
  process, and a child keeps that crash out of the caller. Under XNNPACK the rows
  are XNNPACK's own operators ("Convolution (NHWC, F32) IGEMM"; a FULLY_CONNECTED
  becomes "Static Reshape" + "Fully Connected GEMM"). Ops left on the default
  kernels keep their TFLite names. The profiler counts whole microseconds per event.
* **Peak memory.** LiteRT reports none. `peak_memory` measures the rise in resident
  memory (RSS) of a fresh child process while it creates the interpreter, allocates
  tensors and runs the model.

This module is also run as a file in those child processes, so that TensorFlow is
not imported there: it imports only the standard library at the top, and imports
tfcompress modules inside the functions that need them.
"""

import ctypes
import dataclasses
import json
import numbers
import os
import struct
import sys

_KERNEL_MODES = {"xnnpack": "delegate", "cpu": "builtin"}
_DEFAULT, _OPERATOR, _DELEGATE_OP, _DELEGATE_PROFILED_OP = 1, 2, 4, 8
_KNOWN_EVENT_TYPES = {1 << i for i in range(9)}


# --------------------------------------------------------------------------- results


@dataclasses.dataclass
class DefaultKernelOp:
    """An op XNNPACK did not take: it runs on LiteRT's built-in (default) kernels."""

    index: int
    type: str
    dtype: str


@dataclasses.dataclass
class Delegation:
    """How much of the model XNNPACK took. See `delegation`."""

    total_nodes: int
    xnnpack_nodes: int
    partitions: int
    default_kernel_ops: list  # of DefaultKernelOp, in graph order
    threads: int = 1

    @property
    def fully_delegated(self):
        return self.total_nodes > 0 and self.xnnpack_nodes == self.total_nodes

    @property
    def default_kernel_census(self):
        """``{"CUMSUM/float32": count, ...}`` of the ops left on the default kernels."""
        from tfcompress.evaluation.tflite_file import census_by_dtype

        return census_by_dtype(self.default_kernel_ops)

    def to_dict(self):
        d = dataclasses.asdict(self)
        d["fully_delegated"] = self.fully_delegated
        return d

    def to_markdown(self):
        from tfcompress.core.tables import markdown_table

        summary = markdown_table(
            ("nodes", "taken by XNNPACK", "XNNPACK partitions", "on default kernels"),
            [(self.total_nodes, self.xnnpack_nodes, self.partitions, len(self.default_kernel_ops))],
            title="XNNPACK delegation")
        if not self.default_kernel_ops:
            return summary
        left = markdown_table(("op index", "op type", "dtype"),
                              [(op.index, op.type, op.dtype) for op in self.default_kernel_ops],
                              title="Ops on the default kernels")
        return summary + "\n\n" + left


@dataclasses.dataclass
class OpTime:
    """Time spent in one kind of operator over all profiled runs."""

    op_type: str
    kernel: str  # "XNNPACK" (an XNNPACK operator inside a delegate partition) or "default" (a TFLite kernel)
    count: int  # operators of this kind executed per run
    total_ms: float  # over all runs
    avg_ms: float  # per run
    percent: float  # of the summed operator time


@dataclasses.dataclass
class OpProfile:
    """Per-op-type time profile from LiteRT's profiler. See `op_profile`."""

    backend: str
    threads: int
    runs: int
    rows: list  # of OpTime, slowest first
    invoke_ms: float  # mean time of one whole run as LiteRT times it ("Invoke")

    @property
    def op_ms(self):
        """Summed operator time per run (the gap to ``invoke_ms`` is runtime overhead)."""
        return sum(r.avg_ms for r in self.rows)

    def to_dict(self):
        return dataclasses.asdict(self)

    def to_markdown(self):
        from tfcompress.core.tables import markdown_table

        return markdown_table(
            ("op type", "kernel", "count", "total ms", "avg ms/run", "% of op time"),
            [(r.op_type, r.kernel, r.count, f"{r.total_ms:.3f}", f"{r.avg_ms:.4f}", f"{r.percent:.1f}%")
             for r in self.rows],
            title=f"Op profile ({self.backend}, {self.threads} thread(s), {self.runs} runs)",
            footer=f"One run: {self.invoke_ms:.3f} ms mean, of which ops {self.op_ms:.3f} ms. "
                   "LiteRT's profiler counts whole microseconds per event, so ops under 1 us read as 0.")

    def __iter__(self):
        return iter(self.rows)

    def __len__(self):
        return len(self.rows)


# --------------------------------------------------------------------------- argument checks


def _check_backend(backend):
    if not isinstance(backend, str) or backend not in _KERNEL_MODES:
        raise ValueError(f"backend: unknown backend {backend!r}; choose from {sorted(_KERNEL_MODES)}.")
    return backend


def _check_positive_int(value, name, example):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer such as {example}, got {value!r}.")
    return int(value)


def _check_timeout(timeout):
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real) or not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}.")
    return timeout


def _model_bytes(tflite):
    """The model's bytes, parsed once so that a non-TFLite input fails with a clear error."""
    from tfcompress.evaluation import tflite_file

    if not isinstance(tflite, (bytes, bytearray, memoryview, str, os.PathLike)):
        raise TypeError(f"tflite must be the model's bytes or a path to a .tflite file, got {type(tflite).__name__}.")
    raw = tflite_file.read_bytes(tflite)
    return raw, tflite_file.inspect(raw)


# --------------------------------------------------------------------------- delegation


def _interpreter_nodes(interpreter):
    # LiteRT's Python Interpreter has no public list of nodes; after allocate_tensors the
    # private _get_ops_details() lists the model's nodes, then one "DELEGATE" node per partition.
    return interpreter._get_ops_details()  # pylint: disable=protected-access


def delegation(tflite, threads=1):
    """Counts the nodes XNNPACK takes and lists the ops that stay on the default kernels.

    The model is loaded the way `evaluate_tflite` runs its ``"xnnpack"`` backend:
    a LiteRT ``Interpreter`` that applies XNNPACK, its default delegate. Each
    ``DELEGATE`` node it adds replaces one partition of the graph. The nodes in a
    partition are found by walking back from its outputs to its inputs. Every
    other node runs on LiteRT's built-in kernels, which are usually slower, and
    the graph is split again at each of them. Only the main subgraph is counted
    (XNNPACK takes nothing in WHILE/IF bodies).

    Args:
        tflite: the model as ``bytes`` or a path to a ``.tflite`` file.
        threads: interpreter threads (XNNPACK's choice of ops does not depend on it).

    Returns:
        A `Delegation`: ``total_nodes``, ``xnnpack_nodes``, ``partitions`` and
        ``default_kernel_ops`` (op index, op type, compute dtype), with
        ``to_markdown()``.

    Raises:
        InvalidTFLiteFileError: the data is not a TFLite model, or LiteRT cannot load it.

    Example:
        >>> d = tfc.delegation(tfc.to_tflite(model, mode="float32"))
        >>> print(d.xnnpack_nodes, "of", d.total_nodes, "nodes on XNNPACK")
        >>> print(d.to_markdown())
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from tfcompress.evaluation.tflite_file import InvalidTFLiteFileError

    threads = _check_positive_int(threads, "threads", "1 or 4")
    raw, info = _model_bytes(tflite)
    try:
        interpreter = Interpreter(model_content=raw, num_threads=threads,
                                  experimental_op_resolver_type=OpResolverType.AUTO)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise InvalidTFLiteFileError(
            f"LiteRT could not load the model: {str(exc).strip().splitlines()[-1]}. The file is corrupted or "
            "uses ops this runtime lacks.") from None
    nodes = _interpreter_nodes(interpreter)
    originals = [n for n in nodes if n["op_name"] != "DELEGATE"]
    delegates = [n for n in nodes if n["op_name"] == "DELEGATE"]
    taken = _replaced_nodes(originals, delegates)
    dtypes = {op.index: op.dtype for op in info.operators[:len(originals)]}
    left = [DefaultKernelOp(index=int(n["index"]), type=n["op_name"], dtype=dtypes.get(int(n["index"]), "none"))
            for n in originals if int(n["index"]) not in taken]
    return Delegation(total_nodes=len(originals), xnnpack_nodes=len(taken), partitions=len(delegates),
                      default_kernel_ops=left, threads=threads)


def _replaced_nodes(originals, delegates):
    """Indices of the original nodes inside some delegate partition.

    A partition is closed: its nodes' inputs are the partition's inputs or tensors
    its own nodes produce. Walking back from the partition's outputs, through each
    tensor's producer and stopping at the partition's inputs, reaches its nodes
    and nothing else.
    """
    producer = {}
    for n in originals:
        for t in n["outputs"]:
            if t >= 0:
                producer[int(t)] = n
    taken = set()
    for d in delegates:
        boundary = {int(t) for t in d["inputs"] if t >= 0}
        stack = [int(t) for t in d["outputs"] if t >= 0]
        seen = set()
        while stack:
            t = stack.pop()
            if t in boundary or t in seen:
                continue
            seen.add(t)
            node = producer.get(t)
            if node is None or int(node["index"]) in taken:
                continue
            taken.add(int(node["index"]))
            stack.extend(int(i) for i in node["inputs"] if i >= 0)
    return taken


# --------------------------------------------------------------------------- op profile


def op_profile(tflite, backend="xnnpack", threads=1, num_runs=50, warmup_runs=5, timeout=300):
    """Times the model op by op with LiteRT's own profiler, grouped by op type.

    The model runs as a LiteRT ``CompiledModel`` on the CPU. With
    ``backend="xnnpack"`` the CPU accelerator uses XNNPACK and the rows are
    XNNPACK's operators ("Convolution (NHWC, F32) IGEMM", ...), with ops that
    XNNPACK refused listed under their TFLite names on the "default" kernel. With
    ``backend="cpu"`` it uses LiteRT's built-in kernels and the rows are TFLite op
    types (CONV_2D, ...). Inputs are zeros, and any dynamic dimension (a -1 batch)
    is set to 1. LiteRT counts whole microseconds per event, so a model of tiny
    ops shows many 0 ms rows. Use more ``num_runs`` or a bigger input to resolve
    them.

    Everything runs in a child process (the profiler is reached through the C
    API in ``libLiteRt.so``; see the module docstring).

    Args:
        tflite: the model as ``bytes`` or a path to a ``.tflite`` file.
        backend: ``"xnnpack"`` or ``"cpu"`` (LiteRT's built-in kernels), as in `evaluate_tflite`.
        threads: CPU threads.
        num_runs: profiled runs; times are summed over them.
        warmup_runs: runs before profiling starts (first-run setup is not counted).
        timeout: seconds before the child process is stopped.

    Returns:
        An `OpProfile`: ``rows`` (op type, kernel, count per run, total ms,
        avg ms per run, % of op time; slowest first; the percentages sum to 100),
        ``invoke_ms`` (mean whole run), with ``to_markdown()``.

    Raises:
        InvalidTFLiteFileError: the data is not a TFLite model.
        RuntimeError: this LiteRT build lacks the profiler C API, or LiteRT failed
            or crashed running the model (the message says which).

    Example:
        >>> prof = tfc.op_profile("model.tflite", backend="xnnpack", num_runs=100)
        >>> print(prof.to_markdown())
        >>> prof.rows[0].op_type, prof.rows[0].percent
    """
    backend = _check_backend(backend)
    threads = _check_positive_int(threads, "threads", "1 or 4")
    num_runs = _check_positive_int(num_runs, "num_runs", "50")
    if isinstance(warmup_runs, bool) or not isinstance(warmup_runs, numbers.Integral) or warmup_runs < 0:
        raise ValueError(f"warmup_runs must be a non-negative integer such as 5, got {warmup_runs!r}.")
    timeout = _check_timeout(timeout)
    raw, _ = _model_bytes(tflite)
    result = _run_child("op_profile", raw, timeout,
                        [backend, str(threads), str(num_runs), str(warmup_runs)], what="op_profile")
    rows = [OpTime(**r) for r in result["rows"]]
    return OpProfile(backend=backend, threads=threads, runs=num_runs, rows=rows, invoke_ms=result["invoke_ms"])


# --------------------------------------------------------------------------- peak memory


def peak_memory(tflite, backend="xnnpack", threads=1, num_runs=3, timeout=300):
    """Peak memory of the LiteRT interpreter running the model, in bytes.

    Measured in a fresh child process that imports only LiteRT. Its peak resident
    set (Linux ``VmHWM``, reset through ``/proc/self/clear_refs`` just before the
    measurement) is compared with its resident set (``VmRSS``) before the
    interpreter exists, across creating the interpreter from the file,
    ``allocate_tensors`` and ``num_runs`` runs on zero inputs. The result counts
    everything the interpreter made resident: the model's weights (memory-mapped
    from the file), XNNPACK's packed copies of them, the tensor arena, thread
    stacks, and the kernel code pages it first touches. It is a process-level
    measure, with a resolution of one page (4 KB). Where the peak cannot be reset,
    the growth of the peak is used instead, which can read low. Where ``/proc`` is
    missing (not Linux), ``getrusage`` is used.

    Args:
        tflite: the model as ``bytes`` or a path to a ``.tflite`` file.
        backend: ``"xnnpack"`` or ``"cpu"`` (LiteRT's built-in kernels), as in `evaluate_tflite`.
        threads: interpreter threads.
        num_runs: model runs inside the measurement.
        timeout: seconds before the child process is stopped.

    Returns:
        The peak increase in resident memory, in bytes (an ``int``).

    Raises:
        InvalidTFLiteFileError: the data is not a TFLite model.
        RuntimeError: LiteRT failed or crashed loading or running the model.

    Example:
        >>> mb = tfc.peak_memory(tfc.to_tflite(model, mode="int8", representative_data=x[:200])) / 2**20
        >>> print(f"interpreter peak: {mb:.1f} MB")
    """
    backend = _check_backend(backend)
    threads = _check_positive_int(threads, "threads", "1 or 4")
    num_runs = _check_positive_int(num_runs, "num_runs", "3")
    timeout = _check_timeout(timeout)
    raw, _ = _model_bytes(tflite)
    result = _run_child("peak_memory", raw, timeout, [backend, str(threads), str(num_runs)], what="peak_memory")
    return int(result["peak_bytes"])


# --------------------------------------------------------------------------- child processes

_CHILD = r"""
import importlib.util, sys
spec = importlib.util.spec_from_file_location("_tfcompress_profiling_child", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
module._child_main(sys.argv[2:])
"""


def _run_child(job, raw, timeout, args, what):
    from tfcompress.core import isolation

    with isolation.child_file(raw, "tfcompress_profile_", ".tflite") as model_path, \
            isolation.child_file(b"", "tfcompress_profile_", ".json") as out_path:
        try:
            outcome = isolation.run(["-c", _CHILD, os.path.abspath(__file__), job, model_path, out_path, *args],
                                    timeout)
        except isolation.Timeout:
            raise RuntimeError(f"{what}: LiteRT did not finish within timeout={timeout} s; raise timeout, or "
                               "lower num_runs.") from None
        try:
            with open(out_path) as f:
                result = json.load(f)
        except (OSError, ValueError):
            result = None
    if result and "error" in result:
        raise RuntimeError(f"{what}: {result['error']}")
    if not outcome.ok or not result:
        raise RuntimeError(f"{what}: the LiteRT child process {outcome.reason}. The model is corrupted or uses "
                           "ops this runtime cannot run.")
    return result


def _child_main(argv):
    job, model_path, out_path, *args = argv
    try:
        if job == "op_profile":
            result = _child_op_profile(model_path, args[0], int(args[1]), int(args[2]), int(args[3]))
        else:
            result = _child_peak_memory(model_path, args[0], int(args[1]), int(args[2]))
    except _LiteRtError as exc:
        result = {"error": str(exc)}
    with open(out_path, "w") as f:
        json.dump(result, f)


class _LiteRtError(Exception):
    pass


def _child_peak_memory(model_path, backend, threads, num_runs):
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    resolver = (OpResolverType.AUTO if backend == "xnnpack" else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    baseline = _rss_bytes()
    reset = _reset_peak_rss()
    peak_before = _peak_rss_bytes()
    try:
        interpreter = Interpreter(model_path=model_path, num_threads=threads, experimental_op_resolver_type=resolver)
        interpreter.allocate_tensors()
        for d in interpreter.get_input_details():
            interpreter.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
        for _ in range(num_runs):
            interpreter.invoke()
    except (ValueError, RuntimeError) as exc:
        raise _LiteRtError(f"LiteRT could not run the model: {str(exc).strip().splitlines()[-1]}") from None
    peak = _peak_rss_bytes()
    grown = peak - (baseline if reset else peak_before)
    return {"peak_bytes": max(grown, 0), "peak_reset": reset}


def _proc_status(field):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return None


def _rss_bytes():
    rss = _proc_status("VmRSS")
    return rss if rss is not None else _peak_rss_bytes()


def _peak_rss_bytes():
    peak = _proc_status("VmHWM")
    if peak is not None:
        return peak
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return usage if sys.platform == "darwin" else usage * 1024  # bytes on macOS, kB elsewhere


def _reset_peak_rss():
    """Resets VmHWM to the current RSS (Linux >= 4.0); False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# The LiteRT C API (litert/c/litert_profiler_event.h), as laid out on 64-bit platforms.
class _MemoryUsage(ctypes.Structure):
    _fields_ = [("total_allocated_bytes", ctypes.c_size_t), ("in_use_allocated_bytes", ctypes.c_size_t),
                ("private_footprint_bytes", ctypes.c_size_t)]


class _ProfiledEvent(ctypes.Structure):
    _fields_ = [("tag", ctypes.c_char_p), ("event_type", ctypes.c_int), ("start_timestamp_us", ctypes.c_uint64),
                ("elapsed_time_us", ctypes.c_uint64), ("begin_mem_usage", _MemoryUsage),
                ("end_mem_usage", _MemoryUsage), ("event_metadata1", ctypes.c_uint64),
                ("event_metadata2", ctypes.c_uint64), ("event_source", ctypes.c_int)]


_RANKED_TYPE_BYTES = 72  # LiteRtRankedTensorType: element type (4) + LiteRtLayout (68: rank, 8 dims, 8 strides)
_LAYOUT_BYTES, _LAYOUT_OFFSET, _DIMS_OFFSET = 68, 4, 8
_HW_ACCELERATOR_CPU = 1
_LOCK_WRITE = 1


def _child_op_profile(model_path, backend, threads, num_runs, warmup_runs):
    import ai_edge_litert

    c = ctypes
    path = os.path.join(os.path.dirname(ai_edge_litert.__file__), "libLiteRt.so")
    try:
        lib = c.CDLL(path)
        lib.LiteRtCompiledModelGetProfiler  # noqa: B018 - probes that this build has the profiler API
    except (OSError, AttributeError):
        raise _LiteRtError(
            f"this ai-edge-litert build has no LiteRT profiler C API ({path} missing, or without "
            "LiteRtCompiledModelGetProfiler); install ai-edge-litert >= 2.1.") from None
    libc = c.CDLL(None)
    libc.strdup.restype, libc.strdup.argtypes = c.c_void_p, [c.c_char_p]
    lib.LiteRtCreateOpaqueOptions.argtypes = [c.c_char_p, c.c_void_p, c.c_void_p, c.POINTER(c.c_void_p)]
    lib.LiteRtCreateModelFromBuffer.argtypes = [c.c_void_p, c.c_void_p, c.c_size_t, c.POINTER(c.c_void_p)]
    lib.LiteRtGetProfilerEvents.argtypes = [c.c_void_p, c.c_int, c.POINTER(_ProfiledEvent)]
    free = c.cast(libc.free, c.c_void_p)
    handle = c.c_void_p

    def check(status, step):
        if status != 0:
            raise _LiteRtError(f"LiteRT failed at {step} (LiteRtStatus {status}).")

    with open(model_path, "rb") as f:
        raw = f.read()
    data = c.create_string_buffer(raw, len(raw))
    env, model, options, compiled, profiler = handle(), handle(), handle(), handle(), handle()
    check(lib.LiteRtCreateEnvironment(0, None, c.byref(env)), "creating the environment")
    check(lib.LiteRtCreateModelFromBuffer(env, data, len(raw), c.byref(model)), "loading the model")
    check(lib.LiteRtCreateOptions(c.byref(options)), "creating options")
    check(lib.LiteRtSetOptionsHardwareAccelerators(options, _HW_ACCELERATOR_CPU), "choosing the CPU")
    # Runtime and CPU options travel as TOML strings named by identifier (litert/c/options/*.cc).
    for identifier, toml in ((b"runtime_options_string", "enable_profiling = true\n"),
                             (b"xnnpack", f'kernel_mode = "{_KERNEL_MODES[backend]}"\nnum_threads = {threads}\n')):
        opaque = handle()
        check(lib.LiteRtCreateOpaqueOptions(identifier, libc.strdup(toml.encode()), free, c.byref(opaque)),
              "creating options")
        check(lib.LiteRtAddOpaqueOptions(options, opaque), "adding options")
    check(lib.LiteRtCreateCompiledModel(env, model, options, c.byref(compiled)), "compiling the model")

    signature, n_in, n_out = handle(), c.c_size_t(), c.c_size_t()
    check(lib.LiteRtGetModelSignature(model, c.c_size_t(0), c.byref(signature)), "reading the signature")
    check(lib.LiteRtGetNumSignatureInputs(signature, c.byref(n_in)), "reading the signature")
    check(lib.LiteRtGetNumSignatureOutputs(signature, c.byref(n_out)), "reading the signature")

    def tensor_type(getter, i):
        tensor = handle()
        check(getter(signature, c.c_size_t(i), c.byref(tensor)), "reading a tensor")
        ranked = c.create_string_buffer(256)  # room beyond _RANKED_TYPE_BYTES
        check(lib.LiteRtGetRankedTensorType(tensor, ranked), "reading a tensor type (unranked tensors unsupported)")
        return ranked

    for i in range(n_in.value):  # a dynamic dimension (-1 batch) becomes 1
        ranked = tensor_type(lib.LiteRtGetSignatureInputTensorByIndex, i)
        rank = ranked.raw[_LAYOUT_OFFSET] & 0x7F
        dims = struct.unpack_from(f"<{rank}i", ranked.raw, _DIMS_OFFSET)
        if any(d < 0 for d in dims):
            fixed = (c.c_int * rank)(*[max(d, 1) for d in dims])
            check(lib.LiteRtCompiledModelResizeInputTensor(compiled, c.c_size_t(0), c.c_size_t(i), fixed,
                                                           c.c_size_t(rank)), "resizing a dynamic input")
    layouts = c.create_string_buffer(_LAYOUT_BYTES * max(n_out.value, 1))
    check(lib.LiteRtGetCompiledModelOutputTensorLayouts(compiled, c.c_size_t(0), n_out, layouts, c.c_bool(True)),
          "reading output shapes")

    def make_buffers(count, getter, requirements_of, is_output):
        buffers = (c.c_void_p * count)()
        for i in range(count):
            ranked = tensor_type(getter, i)
            if is_output:
                c.memmove(c.addressof(ranked) + _LAYOUT_OFFSET, c.addressof(layouts) + _LAYOUT_BYTES * i,
                          _LAYOUT_BYTES)
            else:
                rank = ranked.raw[_LAYOUT_OFFSET] & 0x7F
                dims = struct.unpack_from(f"<{rank}i", ranked.raw, _DIMS_OFFSET)
                struct.pack_into(f"<{rank}i", ranked, _DIMS_OFFSET, *[max(d, 1) for d in dims])
            requirements, buffer, size, host = handle(), handle(), c.c_size_t(), handle()
            check(requirements_of(compiled, c.c_size_t(0), c.c_size_t(i), c.byref(requirements)),
                  "reading buffer requirements")
            check(lib.LiteRtCreateManagedTensorBufferFromRequirements(env, ranked, requirements, c.byref(buffer)),
                  "creating a tensor buffer")
            check(lib.LiteRtGetTensorBufferSize(buffer, c.byref(size)), "sizing a tensor buffer")
            check(lib.LiteRtLockTensorBuffer(buffer, c.byref(host), _LOCK_WRITE), "filling a tensor buffer")
            c.memset(host, 0, size.value)
            lib.LiteRtUnlockTensorBuffer(buffer)
            buffers[i] = buffer
        return buffers

    inputs = make_buffers(n_in.value, lib.LiteRtGetSignatureInputTensorByIndex,
                          lib.LiteRtGetCompiledModelInputBufferRequirements, False)
    outputs = make_buffers(n_out.value, lib.LiteRtGetSignatureOutputTensorByIndex,
                           lib.LiteRtGetCompiledModelOutputBufferRequirements, True)

    def run():
        check(lib.LiteRtRunCompiledModel(compiled, c.c_size_t(0), n_in, inputs, n_out, outputs), "running the model")

    for _ in range(warmup_runs):
        run()
    check(lib.LiteRtCompiledModelGetProfiler(compiled, c.byref(profiler)), "getting the profiler")
    if not profiler.value:
        raise _LiteRtError("LiteRT returned no profiler although profiling was enabled.")
    totals, counts, invokes = {}, {}, []
    for _ in range(num_runs):
        check(lib.LiteRtResetProfiler(profiler), "resetting the profiler")
        check(lib.LiteRtStartProfiler(profiler), "starting the profiler")
        run()
        check(lib.LiteRtStopProfiler(profiler), "stopping the profiler")
        n = c.c_int()
        check(lib.LiteRtGetNumProfilerEvents(profiler, c.byref(n)), "reading profiler events")
        events = (_ProfiledEvent * max(n.value, 1))()
        check(lib.LiteRtGetProfilerEvents(profiler, n, events), "reading profiler events")
        for e in events[:n.value]:
            if e.event_type not in _KNOWN_EVENT_TYPES:
                raise _LiteRtError(f"unexpected profiler event type {e.event_type}: this LiteRT's event layout "
                                   "differs from the one tfcompress reads.")
            tag = (e.tag or b"?").decode("utf-8", "replace")
            if e.event_type == _DEFAULT and tag == "Invoke":
                invokes.append(e.elapsed_time_us / 1000.0)
            elif e.event_type in (_OPERATOR, _DELEGATE_OP, _DELEGATE_PROFILED_OP):
                kernel = "default" if e.event_type == _OPERATOR else "XNNPACK"
                if e.event_type == _OPERATOR and tag.startswith("TfLiteXNNPackDelegate"):
                    continue  # a whole partition; its XNNPACK operators are reported one by one
                key = (tag, kernel)
                totals[key] = totals.get(key, 0.0) + e.elapsed_time_us / 1000.0
                counts[key] = counts.get(key, 0) + 1
    grand = sum(totals.values())
    rows = [{"op_type": tag, "kernel": kernel, "count": round(counts[(tag, kernel)] / num_runs),
             "total_ms": ms, "avg_ms": ms / num_runs,
             "percent": 100.0 * ms / grand if grand else 100.0 / len(totals)}
            for (tag, kernel), ms in totals.items()]
    rows.sort(key=lambda r: (-r["total_ms"], r["op_type"]))
    invoke_ms = sum(invokes) / len(invokes) if invokes else 0.0
    # Destroying the compiled model, options and environment is left to process exit.
    return {"rows": rows, "invoke_ms": invoke_ms}
