"""Size, latency and accuracy of a .tflite model on LiteRT: plain CPU kernels vs the XNNPACK delegate.

Backends:
    ``"cpu"``: LiteRT's built-in optimized kernels with default delegates disabled
        (``OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES``).
    ``"xnnpack"``: the default resolver, which applies the XNNPACK delegate.
    ``"micro"``: the TFLite Micro interpreter (extra ``[micro]``, see `tfcompress.evaluation.micro`):
        tensor arena, flash, accuracy and agreement with LiteRT. Not timed with the
        others: its speed on this host says nothing about a microcontroller's.

Latency runs of all backend × thread configurations are interleaved round-robin,
so slow drifts of the machine (thermal, other processes) hit every configuration
alike and their ratios stay meaningful.
"""

import dataclasses
import gc
import json
import statistics
import time

import numpy as np

from tfcompress.core import machine, validation
from tfcompress.evaluation import micro, micro_compress, profiling, reports, tflite_file
from tfcompress.evaluation.tflite_file import ConvertedModel

BACKENDS = ("cpu", "xnnpack")  # the default: LiteRT's two CPU paths
ALL_BACKENDS = BACKENDS + ("micro",)
MICRO_SAMPLES = 500


@dataclasses.dataclass
class LatencyResult:
    """Timings of one backend at one thread count, in milliseconds."""

    backend: str
    threads: int
    init_ms: float
    first_run_ms: float
    median_ms: float
    p90_ms: float
    mean_ms: float
    std_ms: float
    runs: int

    @property
    def key(self):
        return f"{self.backend}/{self.threads}t"


@dataclasses.dataclass
class EvaluationReport:
    """What `evaluate_tflite` measured. ``to_dict()`` is JSON-able; ``to_markdown()`` prints it."""

    name: str
    file_bytes: int
    gzip_bytes: int
    weight_bytes_by_dtype: dict
    sparsity: float
    sparsity_by_tensor: dict
    op_census: dict
    op_census_by_dtype: dict
    inputs: list
    outputs: list
    latency: list
    parity: dict
    accuracy: float = None
    accuracy_samples: int = 0
    accuracy_backend: str = None
    accuracy_output: str = None
    notes: list = dataclasses.field(default_factory=list)
    failed_backends: dict = dataclasses.field(default_factory=dict)
    micro: object = None  # a micro.MicroReport, with backends including "micro"
    delegation: object = None  # a profiling.Delegation, with "xnnpack" in backends
    op_profiles: dict = dataclasses.field(default_factory=dict)  # backend -> profiling.OpProfile (profile=True)
    peak_memory_bytes: dict = dataclasses.field(default_factory=dict)  # backend -> bytes (profile=True)
    macs: int = 0  # multiply-accumulates per inference (tflite_file.TFLiteInfo.macs): the same on every CPU
    machine: dict = None  # the CPU that measured the latencies (machine.Machine.to_dict())

    def latency_for(self, backend, threads=1):
        for r in self.latency:
            if r.backend == backend and r.threads == threads:
                return r
        return None

    def to_dict(self):
        d = dataclasses.asdict(self)
        d["latency"] = [dataclasses.asdict(r) for r in self.latency]
        return json.loads(json.dumps(d, default=_json_default))

    def to_json(self, indent=2):
        return json.dumps(self.to_dict(), indent=indent)

    def to_markdown(self):
        return reports.evaluation_markdown(self)


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def make_interpreter(raw, backend, threads):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    if backend == "cpu":
        resolver = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    elif backend == "xnnpack":
        resolver = OpResolverType.AUTO
    else:
        raise ValueError(f"backends: unknown backend {backend!r}; choose from {list(BACKENDS)}.")
    interpreter = Interpreter(model_content=raw, num_threads=threads, experimental_op_resolver_type=resolver)
    interpreter.allocate_tensors()
    return interpreter


def quantize_input(x, detail):
    """Float data → the interpreter's input dtype, using its scale and zero point."""
    dtype = np.dtype(detail["dtype"])
    if dtype.kind == "f":
        return np.asarray(x, dtype=dtype)
    if np.asarray(x).dtype == dtype:
        return np.asarray(x)  # already in the model's input type (e.g. int8 data for an int8 input)
    scale, zero_point = detail["quantization"]
    x = np.asarray(x, dtype=np.float32)
    if scale == 0:
        return x.astype(dtype)
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale + zero_point), info.min, info.max).astype(dtype)


def dequantize_output(q, detail):
    """The interpreter's output → float32, using its scale and zero point."""
    scale, zero_point = detail["quantization"]
    if np.dtype(detail["dtype"]).kind == "f" or scale == 0:
        return np.asarray(q, dtype=np.float32)
    return (q.astype(np.float32) - zero_point) * scale


_INPUT_FIX = ("or evaluate without x to time a synthetic input only (CLI: --data with data matching the model, "
              "or --no_data)")


def _input_name(detail):
    """The signature's name of an input: ``"serve_image:0"`` → ``"image"``."""
    name = detail["name"]
    name = name[len("serve_"):] if name.startswith("serve_") else name
    return name[:-2] if name.endswith(":0") else name


def _list_in_file_order(x, details, keras_order):
    """A list of per-input arrays, given in the Keras model's input order, in the file's input order.

    The converter orders a file's inputs its own way (an image and a vector input
    may swap), so a list cannot simply be read in file order. With the Keras order
    known (the output of `to_tflite` carries it) the names map the list; for a file
    from elsewhere, the arrays' sample shapes must tell the inputs apart.
    """
    names = [_input_name(d) for d in details]
    if keras_order is not None and sorted(keras_order) == sorted(names):
        return [(f"x[{keras_order.index(n)}]", x[keras_order.index(n)]) for n in names]
    fits = [[j for j, d in enumerate(details) if _shape_or_none(a) is not None and len(np.shape(a)) == len(_signature(d))
             and all(s < 0 or s == g for s, g in zip(_signature(d)[1:], np.shape(a)[1:]))] for a in x]
    if all(len(f) == 1 for f in fits) and sorted(f[0] for f in fits) == list(range(len(details))):
        placed = {f[0]: (f"x[{i}]", x[i]) for i, f in enumerate(fits)}
        return [placed[j] for j in range(len(details))]
    if all(i in f for i, f in enumerate(fits)) and any(len(f) > 1 for f in fits):
        raise ValueError(
            f"x: the model has {len(details)} inputs {names} that take samples of the same shape, and this file does "
            "not record the Keras model's input order (the converter may reorder inputs). Pass a dict keyed by input "
            f"name, e.g. {{{', '.join(repr(n) + ': ...' for n in names)}}}.")
    return [(f"x[{i}]", a) for i, a in enumerate(x)]  # shapes do not fit: the per-input check names the mismatch


def _split_inputs(x, details, keras_order=None):
    """Maps user inputs (array, list or dict) onto the interpreter's input order: ``[(label, value)]``."""
    names = [d["name"] for d in details]
    if len(details) == 1:
        if isinstance(x, dict):
            if len(x) != 1:
                raise ValueError(
                    f"x: the model has 1 input {names[0]!r}, but x is a dict with {len(x)} keys {sorted(map(str, x))}. "
                    "Pass one array (or a dict with a single entry).")
            key, value = next(iter(x.items()))
            return [(f"x[{key!r}]", value)]
        if isinstance(x, (list, tuple)) and len(x) == 1:
            return [("x[0]", x[0])]
        if isinstance(x, (list, tuple)) and len(x) > 1 and not _is_list_of_samples(x, details[0]):
            shapes = ", ".join(str(np.shape(a)) if _shape_or_none(a) is not None else type(a).__name__ for a in x[:4])
            raise ValueError(
                f"x: the model has 1 input {names[0]!r} (samples of shape {_sample_shape_text(details[0])}), but x "
                f"is a list of {len(x)} arrays ({shapes}{', ...' if len(x) > 4 else ''}). Pass one array of shape "
                f"(num_samples,) + {_sample_shape_text(details[0])}, {_INPUT_FIX}.")
        return [("x", x)]
    if isinstance(x, dict):
        pairs = []
        for d in details:
            key = next((k for k in x if k == d["name"] or d["name"].startswith(f"serve_{k}:") or d["name"] == f"serve_{k}"), None)
            if key is None:
                raise ValueError(
                    f"x: no entry for model input {d['name']!r}; x has keys {sorted(map(str, x))}. Key x by the "
                    f"model's input names: {names} (without the 'serve_' prefix and ':0' suffix is fine).")
            pairs.append((f"x[{key!r}]", x[key]))
        return pairs
    if isinstance(x, (list, tuple)) and len(x) == len(details):
        return _list_in_file_order(x, details, keras_order)
    got = f"a list of {len(x)} arrays" if isinstance(x, (list, tuple)) else f"one {type(x).__name__}"
    raise ValueError(
        f"x: the model has {len(details)} inputs {names}, but x is {got}. Pass a list of {len(details)} arrays in "
        "that order, or a dict keyed by input name.")


def _shape_or_none(value):
    try:
        return np.shape(value)
    except Exception:
        return None


def _is_list_of_samples(values, detail):
    """A list of per-sample arrays of one shape (or of numbers), as opposed to a list of batches."""
    shapes = {_shape_or_none(v) for v in values}
    if None in shapes or len(shapes) != 1:
        return False
    shape = next(iter(shapes))
    return len(shape) == 0 or len(shape) == len(detail["shape"]) - 1


def _signature(detail):
    return [int(d) for d in detail.get("shape_signature", detail["shape"])]


def _sample_shape_text(detail):
    return validation.format_shape(_signature(detail)[1:])


def _check_input(label, value, detail):
    """One user input → a batched numeric array matching the interpreter's input, or a clear ValueError."""
    name = detail["name"]
    target = np.dtype(detail["dtype"])
    array = validation.as_numeric_array(value, label, name, target)
    array = validation.check_batch(array, _signature(detail), label, name,
                                   f"Pass data shaped like the model's input, preprocessed as for training, {_INPUT_FIX}.")
    if len(array) == 0:
        raise ValueError(f"{label} for model input {name!r} holds no samples. Pass at least one sample, {_INPUT_FIX}.")
    if array.dtype.kind == "f":
        array = array.astype(np.float32, copy=False)
        validation.check_finite(array, label, name, "the model's outputs for them would be meaningless")
        scale = detail["quantization"][0]
        if target.kind in "iu" and scale == 0 and not np.all(np.mod(array, 1) == 0):
            raise ValueError(
                f"{label} for model input {name!r} holds fractional values, but that input takes {target} "
                f"(e.g. token ids). Pass integer data, e.g. {label}.astype(np.{target}).")
    return array


def check_inputs(x, details, keras_order=None):
    """All user inputs, batched and checked against the interpreter's input details.

    ``keras_order``: the Keras model's input names in order, if known (see `_list_in_file_order`).
    """
    arrays = [_check_input(label, value, d)
              for (label, value), d in zip(_split_inputs(x, details, keras_order), details)]
    counts = {len(a) for a in arrays}
    if len(counts) > 1:
        raise ValueError(
            f"x: the model's inputs got different numbers of samples "
            f"({dict((d['name'], len(a)) for d, a in zip(details, arrays))}); give every input one entry per sample.")
    return arrays


def _synthetic_input(detail, rng):
    shape = [1] + list(detail["shape"][1:])
    dtype = np.dtype(detail["dtype"])
    if dtype.kind == "f":
        return rng.random(shape, dtype=np.float32).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max + 1, size=shape).astype(dtype)


def _set_inputs(interpreter, arrays):
    details = interpreter.get_input_details()
    if any(tuple(a.shape) != tuple(d["shape"]) for d, a in zip(details, arrays)) and all(
            a.ndim == len(_signature(d)) and all(s < 0 or s == g for s, g in zip(_signature(d), a.shape))
            for d, a in zip(details, arrays)):
        # Only dimensions the model declares dynamic (-1 in shape_signature) are resized; any other
        # mismatch is left to set_tensor, which rejects it.
        for detail, array in zip(details, arrays):
            interpreter.resize_tensor_input(detail["index"], list(array.shape))
        interpreter.allocate_tensors()
        details = interpreter.get_input_details()
    for detail, array in zip(details, arrays):
        interpreter.set_tensor(detail["index"], array)


def _run(interpreter, arrays):
    _set_inputs(interpreter, arrays)
    interpreter.invoke()


def _keras_order(name):
    # The exporter names a list of outputs output_0, output_1, ... in the Keras model's order; a dict's
    # outputs keep their keys, which Keras flattens in sorted order.
    suffix = name[len("output_"):]
    return (0, int(suffix), "") if name.startswith("output_") and suffix.isdigit() else (1, 0, name)


def output_heads(interpreter):
    """``[(name, output detail)]`` in the Keras model's output order.

    ``get_output_details()`` lists outputs in the converter's tensor order, which
    is not the Keras order (a two-headed model's second head may come first); the
    file's signature names them, and those names give the Keras order.
    """
    details = interpreter.get_output_details()
    signatures = interpreter.get_signature_list()
    if len(signatures) != 1:
        return [(d["name"], d) for d in details]
    by_index = {d["index"]: d for d in details}
    named = interpreter.get_signature_runner(next(iter(signatures))).get_output_details()
    if {d["index"] for d in named.values()} != set(by_index):
        return [(d["name"], d) for d in details]
    return [(name, by_index[named[name]["index"]]) for name in sorted(named, key=_keras_order)]


def pick_head(heads, output, scoring):
    """The index (into ``heads``) of the output that accuracy and parity use; a clear error when ambiguous."""
    names = [name for name, _ in heads]
    if output is None:
        if len(heads) > 1 and scoring:
            raise ValueError(
                f"output: the model has {len(heads)} outputs {names} (in the Keras model's order) and y scores one "
                "of them; pass output=<index or name>, e.g. output=0 for the first.")
        return 0
    if isinstance(output, str):
        if output not in names:
            raise ValueError(f"output={output!r} is not an output of the model; its outputs are {names}.")
        return names.index(output)
    if isinstance(output, bool) or not isinstance(output, (int, np.integer)) or not 0 <= output < len(heads):
        raise ValueError(f"output={output!r}: pass an index in 0..{len(heads) - 1} or a name from {names}.")
    return int(output)


def _predict(interpreter, inputs_float, batch_size, head=0):
    """Runs float inputs through the model in batches; returns output ``head`` (Keras order), dequantized."""
    _, detail = output_heads(interpreter)[head]
    details = interpreter.get_input_details()
    n = len(inputs_float[0])
    signature_batch = [d.get("shape_signature", d["shape"])[0] for d in details]
    dynamic = all(b == -1 for b in signature_batch)
    batch = batch_size if dynamic else int(details[0]["shape"][0])
    current = None
    outputs = []
    for start in range(0, n, batch):
        chunk = [a[start: start + batch] for a in inputs_float]
        size = len(chunk[0])
        if dynamic and size != current:
            for d, a in zip(details, chunk):
                interpreter.resize_tensor_input(d["index"], [size] + list(a.shape[1:]))
            interpreter.allocate_tensors()
            current = size
            details = interpreter.get_input_details()
        elif not dynamic and size != batch:
            chunk = [np.concatenate([a, np.repeat(a[-1:], batch - size, axis=0)]) for a in chunk]
        arrays = [quantize_input(a, d) for a, d in zip(chunk, details)]
        _run(interpreter, arrays)
        outputs.append(dequantize_output(interpreter.get_tensor(detail["index"]), detail)[:size])
    return np.concatenate(outputs)


def predict(model, x, output=None, backend="xnnpack", batch_size=256):
    """Runs a ``.tflite`` on ``x`` and returns one output (float, dequantized), without timing anything.

    Args:
        model: ``.tflite`` bytes or path.
        x: inputs as for `evaluate_tflite` (checked the same way).
        output: for several outputs, which (index in the Keras order, or name); the first by default.
        backend: ``"xnnpack"`` or ``"cpu"``; where XNNPACK refuses the file (e.g. int16x8), the built-in kernels run it.

    Returns:
        An array with one row per sample.
    """
    litert_raw = micro_compress.for_litert(tflite_file.read_bytes(model))
    probe = make_interpreter(litert_raw, "cpu", 1)
    head = pick_head(output_heads(probe), output, scoring=False)
    arrays = check_inputs(x, probe.get_input_details(), getattr(model, "input_names", None))
    try:
        return _predict(make_interpreter(litert_raw, backend, 1), arrays, batch_size, head)
    except (RuntimeError, ValueError):
        if backend == "cpu":
            raise
        # A delegate may refuse a file only when it runs (XNNPACK and int16x8): the built-in kernels run it all.
        return _predict(probe, arrays, batch_size, head)


BURST = 4  # runs of one configuration back to back per round; the first of each is not counted


def time_round_robin(interpreters, num_runs, warmup_runs, burst=BURST, cold=None):
    """Times ``invoke()`` of every interpreter (inputs already set): ``{key: [ms] * num_runs}``.

    Rounds visit every configuration in turn, so slow drifts of the machine hit all
    alike. In each round a configuration runs ``burst`` times back to back and the
    first run is dropped: after the other configurations ran, its weights are out of
    the caches, and an app that runs one model repeatedly (the latency users mean)
    is warm. One run per round would time cold caches, which costs small models
    most (measured: the float32 reference CNN 0.226 ms vs 0.175 ms warm on
    XNNPACK; ONNX Runtime about 2.5x).

    ``interpreters`` may hold anything with ``invoke()`` (an ONNX Runtime session wrapper, say). Given a dict
    as ``cold``, the dropped first run of each burst is timed too, into ``cold[key]``: what a model costs
    when other work ran in between.
    """
    times = {key: [] for key in interpreters}
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a collection inside a timed run would be charged to whichever config ran then
    try:
        for _ in range(warmup_runs):
            for interpreter in interpreters.values():
                interpreter.invoke()
        rounds = -(-num_runs // (burst - 1)) if burst > 1 else num_runs
        for _ in range(rounds):
            for key, interpreter in interpreters.items():
                if burst > 1:
                    start = time.perf_counter()
                    interpreter.invoke()  # brings this model's weights back into the caches
                    if cold is not None:
                        cold.setdefault(key, []).append((time.perf_counter() - start) * 1e3)
                for _ in range(max(1, burst - 1)):
                    if len(times[key]) == num_runs:
                        break
                    start = time.perf_counter()
                    interpreter.invoke()
                    times[key].append((time.perf_counter() - start) * 1e3)
    finally:
        if gc_was_enabled:
            gc.enable()
    return times


def summarize_times(times):
    t = sorted(times)
    return dict(median_ms=statistics.median(t), p90_ms=float(np.percentile(t, 90)), mean_ms=statistics.fmean(t),
                std_ms=statistics.stdev(t) if len(t) > 1 else 0.0, runs=len(t))


def timing_inputs(details, arrays, rng):
    """The latency input: the first sample of the checked ``arrays`` (see `check_inputs`), else a random one."""
    if arrays is None:
        return [_synthetic_input(d, rng) for d in details]
    return [quantize_input(a[:1], d) for a, d in zip(arrays, details)]


def _check_backends(backends):
    if isinstance(backends, str):
        backends = (backends,)
    try:
        backends = tuple(dict.fromkeys(backends))
    except TypeError:
        raise ValueError(f"backends must be a list of backend names from {list(ALL_BACKENDS)}, got {backends!r}.") from None
    if not backends:
        raise ValueError(f"backends is empty: pass one or more of {list(ALL_BACKENDS)}, e.g. backends=('xnnpack',).")
    for b in backends:
        if b not in ALL_BACKENDS:
            raise ValueError(f"backends: unknown backend {b!r}; choose from {list(ALL_BACKENDS)}.")
    if "micro" in backends:
        micro.runtime()  # a missing extra is an error before anything is measured
    return backends


def check_threads(threads):
    if isinstance(threads, (int, np.integer)):
        threads = (threads,)
    try:
        values = list(threads)
        checked = tuple(int(t) for t in values)
        ok = bool(checked) and all(c >= 1 and float(t) == c for t, c in zip(values, checked))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"threads must be positive integers such as (1, 2), got {threads!r}.")
    return checked


def evaluate_many(models, x=None, y=None, backends=BACKENDS, threads=(1,), num_runs=50, warmup_runs=5, seed=0,
                  **kwargs):
    """Evaluates several .tflite models with their latencies measured together.

    Timing separate `evaluate_tflite` calls at different moments lets machine load
    masquerade as speed-ups. Here every model × backend × thread count is timed in
    the same round-robin rounds, so ratios between models are meaningful.

    Args:
        models: ``{name: .tflite bytes or path}``.
        x: inputs, as in `evaluate_tflite`.
        y: labels, as in `evaluate_tflite`.
        backends: as in `evaluate_tflite`.
        threads: as in `evaluate_tflite`.
        num_runs: as in `evaluate_tflite`.
        warmup_runs: as in `evaluate_tflite`.
        seed: as in `evaluate_tflite`.
        **kwargs: passed on to `evaluate_tflite` (e.g. ``batch_size``, ``verify``).

    Returns:
        ``{name: EvaluationReport}`` in the order of ``models``.
    """
    rng = np.random.default_rng(seed)
    reports = {name: evaluate_tflite(m, x=x, y=y, backends=backends, threads=threads, num_runs=1, warmup_runs=0,
                                     name=name, seed=seed, **kwargs) for name, m in models.items()}
    interpreters = {}
    for name, m in models.items():
        raw = micro_compress.for_litert(tflite_file.read_bytes(m))
        checked = None  # the same inputs on every backend of one model: checked once
        for r in reports[name].latency:
            interpreter = make_interpreter(raw, r.backend, r.threads)
            details = interpreter.get_input_details()
            if x is not None and checked is None:
                checked = check_inputs(x, details, getattr(m, "input_names", None))
            _set_inputs(interpreter, timing_inputs(details, checked, rng))
            interpreters[(name, r.backend, r.threads)] = interpreter
    times = time_round_robin(interpreters, num_runs, warmup_runs)
    for (name, backend, n_threads), t in times.items():
        result = reports[name].latency_for(backend, n_threads)
        for field, value in summarize_times(t).items():
            setattr(result, field, value)
    return reports


def evaluate_tflite(
    model,
    x=None,
    y=None,
    backends=BACKENDS,
    threads=(1,),
    num_runs=50,
    warmup_runs=5,
    batch_size=256,
    parity_samples=64,
    name=None,
    seed=0,
    verify="auto",
    output=None,
    micro_samples=MICRO_SAMPLES,
    profile=False,
):
    """Measures a .tflite model: size, sparsity, ops, latency per backend, parity and accuracy.

    Args:
        model: ``.tflite`` bytes (e.g. from `to_tflite`) or a file path.
        x: optional inputs (float, as for the Keras model; int8/uint8 inputs are
            quantized for you with the model's scale and zero point, and data
            already of the input's integer dtype is used as is): an array, a list
            of arrays or a dict keyed by input name for multi-input models. Count,
            shape and dtype are checked against the model's inputs first. The
            first sample is the latency input; without x a random input is used.
        y: optional integer (or one-hot) labels for top-1 accuracy on all of x.
        backends: any of ``"cpu"`` (built-in kernels, no delegate), ``"xnnpack"``
            and ``"micro"`` (TFLite Micro: arena, flash, agreement; see the
            report's ``micro``). A backend that cannot run the file is recorded
            in ``failed_backends`` with the reason (for micro: the audit's
            findings and their fixes); if none can, it is an error.
        threads: thread counts to time, e.g. ``(1, 2)``.
        num_runs: timed runs per configuration, after ``warmup_runs``.
        batch_size: batch for the accuracy pass (models with a dynamic batch).
        parity_samples: samples of x compared across backends.
        name: label for reports (default: the conversion mode, or "model").
        seed: seed of the synthetic latency input.
        verify: load and run the model once in a child process first, so a
            corrupted file cannot crash the caller. ``"auto"`` (default) does it
            for files and bytes from elsewhere and skips it for the output of
            `to_tflite` in this process.
        output: for a model with several outputs, the one that ``y`` scores and
            parity compares: its index in the Keras model's output order, or its
            name in the file's signature (``"output_0"``..., or a dict output's
            key). Required with ``y`` when there are several.
        micro_samples: samples of x run on TFLite Micro (one at a time, as on a
            board; its reference kernels are slow).
        profile: also time each op type with LiteRT's profiler and measure each
            backend's peak memory (in child processes; see `tfcompress.evaluation.profiling`).
            How many nodes XNNPACK took, and which ops stayed on the default
            kernels, is always reported (``delegation``, and a note when not all).

    Returns:
        An `EvaluationReport`.

    Raises:
        tfcompress.InvalidTFLiteFileError: the bytes are not a usable .tflite.
        tfcompress.MicroCompatibilityError: only ``"micro"`` was asked for
            and TFLite Micro cannot run the file (the message says why).
        tfcompress.MissingExtraError: ``"micro"`` without ``tflite-micro`` installed.
        ValueError: bad backends/threads; x that does not fit the model's inputs
            (count, shape, dtype, NaN/Inf); y that does not match x.

    Example:
        >>> r = evaluate_tflite(b, x=x_test, y=y_test, threads=(1, 2))
        >>> print(r.to_markdown())
    """
    backends = _check_backends(backends)
    threads = check_threads(threads)
    if num_runs < 1:
        raise ValueError(f"num_runs must be >= 1, got {num_runs!r}.")
    want_micro = "micro" in backends
    if want_micro:
        micro_samples = micro.check_samples(micro_samples)
    backends = tuple(b for b in backends if b != "micro")

    raw = tflite_file.read_bytes(model)
    info = tflite_file.inspect(raw)
    # LiteRT has no TFLM DECODE op: it runs the uncompressed equivalent of a tfc.micro.compress file (the same
    # weights), TFLite Micro the file itself.
    compressed = micro_compress.is_compressed(info)
    litert_raw = micro_compress.decompress(raw) if compressed else raw
    if verify is True or (verify == "auto" and not isinstance(model, ConvertedModel)):
        tflite_file.check_loads(litert_raw)
    name = name or getattr(model, "mode", None) or "model"
    rng = np.random.default_rng(seed)
    try:
        probe = make_interpreter(litert_raw, backends[0] if backends else "xnnpack", 1)
    except (ValueError, RuntimeError) as exc:
        raise tflite_file.InvalidTFLiteFileError(
            f"LiteRT could not load the model: {str(exc).strip().splitlines()[-1]}. The file is corrupted or uses "
            "ops this runtime lacks."
        ) from None
    details = probe.get_input_details()
    heads = output_heads(probe)
    head = pick_head(heads, output, scoring=y is not None)

    inputs_float = None
    if x is not None:
        # Checked here, before any backend runs: a backend failing on mismatched data would read as a bad file.
        inputs_float = check_inputs(x, details, getattr(model, "input_names", None))
        if y is not None:
            output_shape = heads[head][1]["shape"]
            y = validation.check_labels(y, int(np.prod(output_shape[1:])) if len(output_shape) > 1 else 1,
                                         num_samples=len(inputs_float[0]))
    elif y is not None:
        raise ValueError("y was given without x; pass both to measure accuracy.")

    latency_inputs = timing_inputs(details, inputs_float, rng)

    interpreters, init_ms, first_ms, failures = {}, {}, {}, {}
    for cfg in [(b, t) for b in backends for t in threads]:
        if cfg[0] in failures:
            continue
        try:
            start = time.perf_counter()
            interpreters[cfg] = make_interpreter(litert_raw, *cfg)
            init_ms[cfg] = (time.perf_counter() - start) * 1e3
            start = time.perf_counter()
            _run(interpreters[cfg], latency_inputs)
            first_ms[cfg] = (time.perf_counter() - start) * 1e3
        except (RuntimeError, ValueError) as exc:
            # A backend that cannot run this model (e.g. a delegate refusing an op) is a finding, not a crash.
            failures[cfg[0]] = " ".join(str(exc).split())[:300]
            interpreters.pop(cfg, None)
    if backends and not interpreters:
        raise tflite_file.InvalidTFLiteFileError(
            f"No backend could run the model: {failures}. The file is corrupted or uses ops this runtime "
            "lacks; re-export it.")
    configs = list(interpreters)
    backends = tuple(dict.fromkeys(b for b, _ in configs))
    times = time_round_robin(interpreters, num_runs, warmup_runs)
    latency = [LatencyResult(backend=cfg[0], threads=cfg[1], init_ms=init_ms[cfg], first_run_ms=first_ms[cfg],
                             **summarize_times(times[cfg])) for cfg in configs]

    parity = {}
    if len(backends) > 1:
        sample = [a[:parity_samples] for a in inputs_float] if inputs_float is not None else [
            np.concatenate([dequantize_output(_synthetic_input(d, rng), d) for _ in range(8)]) for d in details
        ]
        outs = {b: _predict(make_interpreter(litert_raw, b, threads[0]), sample, batch_size, head) for b in backends}
        reference = backends[0]
        parity = {"reference": reference, "samples": int(len(sample[0])), "output": heads[head][0], "backends": {}}
        # A quantized output's differences in its own steps: kernels that requantize with different rounding
        # (the built-in kernels' fixed-point multiplier vs XNNPACK's float scale) differ by a step here and there.
        step = next((st for d, st in zip(info.output_details, info.output_steps) if d["name"] == heads[head][1]["name"]),
                    0.0)
        for b in backends[1:]:
            diff = float(np.max(np.abs(outs[b] - outs[reference]))) if outs[b].size else 0.0
            agree = float(np.mean(outs[b].reshape(len(outs[b]), -1).argmax(1) == outs[reference].reshape(len(outs[reference]), -1).argmax(1)))
            parity["backends"][b] = {"max_abs_diff": diff, "top1_agreement": agree}
            if step > 0:
                parity["backends"][b]["max_diff_steps"] = round(diff / step, 3)

    accuracy, accuracy_backend, logits = None, None, None
    if y is not None and backends:
        accuracy_backend = "xnnpack" if "xnnpack" in backends else backends[0]
        logits = _predict(make_interpreter(litert_raw, accuracy_backend, max(threads)), inputs_float, batch_size, head)
        accuracy = float(np.mean(logits.reshape(len(logits), -1).argmax(1) == y))

    micro_report = None
    if want_micro:
        micro_report = _evaluate_micro(raw, litert_raw, probe, heads, head, inputs_float, y, micro_samples, batch_size, rng,
                                       litert_outputs=logits)
        if not micro_report.runs:
            if not backends:
                raise micro.MicroCompatibilityError(micro_report.error)
            failures["micro"] = micro_report.error
        elif not backends and y is not None:
            accuracy, accuracy_backend = micro_report.accuracy, "micro"

    delegation, op_profiles, peak_bytes = None, {}, {}
    if "xnnpack" in backends:
        try:
            delegation = profiling.delegation(litert_raw, threads=threads[0])
        except (AttributeError, KeyError, TypeError):
            pass  # it reads a private LiteRT node list (see profiling): a LiteRT that changed it costs the count only
    if profile:
        for b in backends:
            op_profiles[b] = profiling.op_profile(litert_raw, backend=b, threads=threads[0], num_runs=num_runs)
            peak_bytes[b] = profiling.peak_memory(litert_raw, backend=b, threads=threads[0])

    host = machine.current()
    notes = list(getattr(model, "notes", []))
    if compressed:
        notes.append(f"weights compressed for TFLite Micro ({info.op_census[micro_compress.DECODE_OP]} DECODE ops): "
                     "LiteRT ran the decoded weights (tfc.micro.decompress); the size is the compressed file's")
    if backends and tflite_file.computes_int8(info.op_census_by_dtype) and host.int8_dot_product is False:
        notes.append(machine.int8_without_dot_product_note(host, brief=True))
    if len(heads) > 1:
        notes.append(f"{len(heads)} outputs {[n for n, _ in heads]}: accuracy and parity are of {heads[head][0]!r}")
    notes += [f"backend {b} failed: {reason}" for b, reason in failures.items()]
    if info.sparsity > 0.3 and "xnnpack" in backends:
        notes.append(
            f"{100 * info.sparsity:.0f}% of weights are zero: this shrinks the gzip size; on x86 with AVX, "
            "XNNPACK runs dense kernels, so no speed-up is expected here (ARM can use sparse kernels)."
        )
    if delegation is not None and not delegation.fully_delegated:
        notes.append(f"XNNPACK took {delegation.xnnpack_nodes} of {delegation.total_nodes} nodes "
                     f"({delegation.partitions} partitions); on the default kernels: "
                     + ", ".join(f"{k}×{v}" for k, v in delegation.default_kernel_census.items()))
    return EvaluationReport(
        name=name,
        file_bytes=info.file_bytes,
        gzip_bytes=info.gzip_bytes,
        weight_bytes_by_dtype=info.weight_bytes_by_dtype,
        sparsity=info.sparsity,
        sparsity_by_tensor=info.sparsity_by_tensor,
        op_census=info.op_census,
        op_census_by_dtype=info.op_census_by_dtype,
        inputs=[dict(d) for d in info.input_details],
        outputs=[dict(d) for d in info.output_details],
        latency=latency,
        parity=parity,
        accuracy=accuracy,
        accuracy_samples=0 if y is None else int(len(y)),
        accuracy_backend=accuracy_backend,
        accuracy_output=heads[head][0] if y is not None and len(heads) > 1 else None,
        notes=notes,
        failed_backends=failures,
        micro=micro_report,
        delegation=delegation,
        op_profiles=op_profiles,
        peak_memory_bytes=peak_bytes,
        macs=info.macs,
        machine=host.to_dict(),
    )



def _evaluate_micro(raw, litert_raw, probe, heads, head, inputs_float, y, samples, batch_size, rng, litert_outputs=None):
    """The ``"micro"`` backend: a `micro.MicroReport` (a file TFLM cannot run gives one with ``error``).

    ``litert_outputs``: LiteRT's outputs on all of x, when the accuracy pass computed them already.
    """
    report = micro.MicroReport(flash_bytes=len(raw))
    details = probe.get_input_details()
    try:
        report.findings, report.arena_bytes = micro.load(raw, len(details))
    except micro.MicroCompatibilityError as exc:
        report.findings, report.error = micro.audit(raw), str(exc)
        return report
    if inputs_float is not None:
        sample = [a[:samples] for a in inputs_float]
    else:
        sample = [np.concatenate([dequantize_output(_synthetic_input(d, rng), d) for _ in range(8)]) for d in details]
    name, detail = heads[head]
    output_index = [d["index"] for d in probe.get_output_details()].index(detail["index"])
    try:
        raw_outputs, report.host_ms = micro.run(raw, report.arena_bytes,
                                                [quantize_input(a, d) for a, d in zip(sample, details)], output_index)
    except micro.MicroCompatibilityError as exc:
        report.error = str(exc)
        return report
    outputs = dequantize_output(raw_outputs, detail).reshape(len(raw_outputs), -1)
    if litert_outputs is None:
        litert_outputs = _predict(make_interpreter(litert_raw, "xnnpack", 1), sample, batch_size, head)
    reference = np.asarray(litert_outputs)[:len(outputs)].reshape(len(outputs), -1)
    report.samples = len(outputs)
    report.agreement = float(np.mean(outputs.argmax(1) == reference.argmax(1)))
    report.max_abs_diff = float(np.max(np.abs(outputs - reference))) if outputs.size else 0.0
    if y is not None:
        report.accuracy = float(np.mean(outputs.argmax(1) == y[:len(outputs)]))
    wrong = [f for f in report.findings if f.rule in micro.RUNS_WRONGLY]
    if wrong:
        report.error = f"{wrong[0].message} Measured: {100 * report.agreement:.1f}% top-1 agreement with LiteRT."
    return report
