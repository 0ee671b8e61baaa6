"""The ``tfcompress`` command line: ``tfcompress <command> [flags]`` (also ``python -m tfcompress``).

Each command defines its own absl flags, so ``tfcompress <command> --help`` lists
exactly the flags of that command with their defaults. Failures exit non-zero
with one line naming the problem (2 for a bad command line, 1 for a failure while
working); outputs are written atomically and never overwrite without ``--overwrite``.
"""

import os
import sys
import time
import zipfile

from absl import app, flags
from absl import logging as absl_logging

from tfcompress.core import datasets
from tfcompress.core.extras import MissingExtraError
from tfcompress.core.files import check_writable, save_keras_atomic, write_atomic
from tfcompress.core.loading import ModelLoadError, load_model
from tfcompress.distillation import Distiller
from tfcompress.evaluation.litert import evaluate_many
from tfcompress.evaluation.onnxruntime import evaluate_onnx
from tfcompress.evaluation.reports import compare
from tfcompress.evaluation.tflite_file import InvalidTFLiteFileError
from tfcompress.evaluation import micro_compress
from tfcompress.export.firmware import export_c_array
from tfcompress.export.onnx import to_onnx
from tfcompress.core.representative import RepresentativeDataError
from tfcompress.export.tflite import DEFAULT_TIMEOUT_S, MODES, ConversionError, to_tflite
from tfcompress.pipeline import demo
from tfcompress.pipeline.auto import auto_compress
from tfcompress.pipeline.recipe import (
    Cluster, Convert, Distill, Factorize, Prune, PruneChannels, QuantizationAwareTraining, compress,
)

FLAGS = flags.FLAGS


class UsageError(Exception):
    """A bad command line; printed as one line, exit code 2."""


def _define_common():
    flags.DEFINE_boolean("overwrite", False, "Replace existing output files.")


def _define_data():
    flags.DEFINE_string(
        "data", "fashion_mnist",
        f"Dataset: a Keras dataset name ({', '.join(datasets.NAMES)}) or an .npz file holding x_train, y_train, "
        "x_test, y_test.")
    flags.DEFINE_integer("limit_test", None, "Evaluate on the first N test samples only (default: none - the "
                         "whole test set).", lower_bound=1)


def _define_isolation(default):
    flags.DEFINE_boolean("isolate", default, "Run the TFLite converter in a subprocess, so a converter crash "
                         "(abort, segfault) or hang becomes a one-line error naming the mode and the model; "
                         "--noisolate converts in this process (about 10 s faster per conversion).")
    flags.DEFINE_integer("timeout", DEFAULT_TIMEOUT_S, "Seconds before an isolated conversion is stopped.",
                         lower_bound=1)


def _define_model_loading():
    flags.DEFINE_boolean(
        "unsafe", False,
        "Allow loading .keras models whose Lambda layers carry Python code (Keras safe_mode off). Only "
        "for files you trust: loading such a model runs its code.")


def load_data(spec, limit_test=None):
    """``--data``: a dataset name or an .npz path → ``((x_train, y_train), (x_test, y_test))`` (`datasets.load`)."""
    try:
        (x, y), (xt, yt) = datasets.load(spec)
    except (ValueError, FileNotFoundError) as exc:
        raise UsageError(f"--data={spec!r}: {exc}") from None
    except RuntimeError as exc:
        others = ", ".join(f"--data={name}" for name in datasets.NAMES if name != spec)
        raise RuntimeError(f"--data={spec}: {exc} Or use {others} or an .npz file.") from None
    if limit_test:
        xt, yt = xt[:limit_test], yt[:limit_test]
    return (x, y), (xt, yt)


_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _is_hdf5(path):
    """HDF5's signature sits at offset 0, or 512, 1024, 2048, ... after a user block."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        offset = 0
        while offset + len(_HDF5_SIGNATURE) <= size:
            f.seek(offset)
            if f.read(len(_HDF5_SIGNATURE)) == _HDF5_SIGNATURE:
                return True
            offset = 512 if offset == 0 else 2 * offset
    return False


def _check_model_file(path):
    """A missing, unreadable, truncated or foreign model file as one clear UsageError, before Keras reads it."""
    if not os.path.exists(path):
        raise UsageError(f"model file {path!r} not found.")
    if not path.endswith((".keras", ".h5")):
        raise UsageError(f"model file {path!r} is not a .keras (or .h5) Keras model.")
    if os.path.isdir(path) or not os.access(path, os.R_OK):
        raise UsageError(f"model file {path!r} is {'a folder' if os.path.isdir(path) else 'not readable'}; "
                         "give a .keras file you can read.")
    size = os.path.getsize(path)
    if path.endswith(".keras") and not zipfile.is_zipfile(path):
        raise UsageError(
            f"model file {path!r} ({size:,} bytes) is not a valid Keras archive: a .keras file is a zip archive "
            "and this one is truncated, corrupt or of another format. Save the model again with "
            "model.save('MODEL.keras'), or copy the complete file again.")
    if path.endswith(".h5") and not _is_hdf5(path):
        raise UsageError(
            f"model file {path!r} ({size:,} bytes) is not a valid HDF5 Keras model: it lacks the HDF5 signature "
            "(truncated, corrupt or of another format). Save the model again with model.save('MODEL.keras').")


def load_keras_model(path, unsafe=False):
    _check_model_file(path)
    try:
        return load_model(path, compile=False, safe_mode=not unsafe)  # Keras 2 .h5 files too
    except Exception as exc:
        if isinstance(exc, ValueError) and ("safe_mode" in str(exc) or "Lambda" in str(exc)):
            raise UsageError(
                f"{path!r} contains a Lambda layer with Python code, refused in safe mode. If you trust the "
                "file, pass --unsafe.") from None
        if isinstance(exc, ModelLoadError):  # names the layer and key already
            raise UsageError(str(exc)) from None
        first = (str(exc).strip().splitlines() or [""])[0]
        raise UsageError(f"could not load {path!r} as a Keras model ({type(exc).__name__}: {first}); the file may "
                         "be corrupt or need custom objects. Save the model again with model.save('MODEL.keras').") \
            from None


def _progress(message, start=None):
    suffix = f" ({time.perf_counter() - start:.1f} s)" if start is not None else ""
    print(f"[tfcompress] {message}{suffix}", flush=True)


def _int_list(text, name):
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UsageError(f"--{name}={text!r}: expected comma-separated integers, e.g. 1,2.") from None
    if not values or any(v < 1 for v in values):
        raise UsageError(f"--{name}={text!r}: expected positive integers.")
    return values


# --- convert -----------------------------------------------------------------------------------

def _define_convert():
    _define_common()
    _define_data()
    _define_model_loading()
    flags.DEFINE_enum("mode", "int8", list(MODES), "Conversion mode.")
    flags.DEFINE_enum("format", "tflite", ["tflite", "onnx"], "Output format: tflite (LiteRT), or onnx (ONNX Runtime; "
                      "--mode=float32 through Keras's exporter, --mode=int8 from the int8 .tflite via tf2onnx; needs "
                      "the [onnx] extra).")
    flags.DEFINE_string("output", None, "Output path (default: none - writes MODEL_<mode>.tflite, or .onnx, next "
                        "to the model).")
    flags.DEFINE_enum("io_type", "float32", ["float32", "int8", "uint8", "int16"], "Input/output tensor type.")
    flags.DEFINE_boolean("sparse", False, "Store weights with the converter's sparse encoding.")
    flags.DEFINE_list("keep_float", [], "Comma-separated Keras layer names to keep in float (int8 mode); empty: "
                      "quantize every layer.")
    flags.DEFINE_boolean("strict", False, "Fail if an int8 model still has float compute ops.")
    flags.DEFINE_integer("calibration_samples", 200, "Training samples used to calibrate int8/int16x8.",
                         lower_bound=1)
    flags.DEFINE_enum("calibration", None, ["minmax", "percentile", "mse"], "How int8 activation ranges are chosen "
                      "(default: none - the converter's own min-max).")
    flags.DEFINE_float("max_accuracy_drop", None, "int8: keep the fewest layers float (then int16x8) so that the file "
                       "loses at most this many accuracy points on a validation split carved from the end of the "
                       "training data (--validation_samples); the test split is never used (default: none - no budget).",
                       lower_bound=0.0)
    flags.DEFINE_integer("validation_samples", 2000, "Training samples held out for --max_accuracy_drop.",
                         lower_bound=10)
    _define_isolation(default=True)


def _convert(argv):
    if len(argv) != 2:
        raise UsageError("usage: tfcompress convert MODEL.keras [--mode int8] [--output out.tflite]")
    model_path = argv[1]
    output = FLAGS.output or os.path.splitext(model_path)[0] + f"_{FLAGS.mode}.{FLAGS.format}"
    check_writable(output, FLAGS.overwrite, argument="--output")
    if FLAGS.format == "onnx" and FLAGS.mode not in ("float32", "int8"):
        raise UsageError(f"--format=onnx takes --mode=float32 or --mode=int8, not {FLAGS.mode!r}.")
    start = time.perf_counter()
    model = load_keras_model(model_path, FLAGS.unsafe)
    calibration, budget = None, {}
    if FLAGS.mode in ("int8", "int16x8"):
        (x, y), _ = load_data(FLAGS.data)
        if FLAGS.max_accuracy_drop is not None:
            if len(x) <= FLAGS.validation_samples + FLAGS.calibration_samples:
                raise UsageError(f"--validation_samples={FLAGS.validation_samples} leaves too few of the {len(x)} "
                                 "training samples to calibrate on; lower it.")
            held_out = slice(len(x) - FLAGS.validation_samples, None)
            budget = {"max_accuracy_drop": FLAGS.max_accuracy_drop, "validation_data": (x[held_out], y[held_out])}
        calibration = x[: FLAGS.calibration_samples]
    if FLAGS.format == "onnx":
        b = to_onnx(model, mode=FLAGS.mode, representative_data=calibration, output_path=output,
                    overwrite=FLAGS.overwrite, **({"io_type": FLAGS.io_type} if FLAGS.mode == "int8" else {}))
        _progress(f"wrote {output}: {len(b):,} bytes (ONNX, {FLAGS.mode})", start)
        return
    b = to_tflite(
        model, mode=FLAGS.mode, representative_data=calibration, output_path=output, overwrite=FLAGS.overwrite,
        io_type=FLAGS.io_type, sparse=FLAGS.sparse, keep_float=FLAGS.keep_float or None, strict=FLAGS.strict,
        isolate=FLAGS.isolate, timeout=FLAGS.timeout, calibration=FLAGS.calibration, **budget,
    )
    _progress(f"wrote {output}: {len(b):,} bytes, ops {b.info.op_census_by_dtype}", start)
    if budget:
        chosen = b.budget
        _progress(f"accuracy budget {FLAGS.max_accuracy_drop} pt met on {FLAGS.validation_samples} held-out training "
                  f"samples: {100 * chosen['accuracy']:.2f}% vs float {100 * chosen['float_accuracy']:.2f}% "
                  f"({chosen['mode']}, kept float: {', '.join(chosen['kept_float']) or 'none'})")


# --- evaluate ----------------------------------------------------------------------------------

def _define_evaluate():
    _define_common()
    _define_data()
    flags.DEFINE_string("threads", "1", "Comma-separated thread counts to time, e.g. 1,2.")
    flags.DEFINE_list("backends", ["cpu", "xnnpack"], "Backends: cpu (LiteRT's built-in kernels), xnnpack (the "
                      "XNNPACK delegate), micro (TFLite Micro: tensor arena, flash, agreement with LiteRT; needs the "
                      "[micro] extra).")
    flags.DEFINE_integer("runs", 50, "Timed runs per backend and thread count.")
    flags.DEFINE_integer("micro_samples", 500, "Test samples run on TFLite Micro (--backends=...,micro).",
                         lower_bound=1)
    flags.DEFINE_boolean("profile", False, "Also report time per op type (LiteRT's "
                         "profiler) and peak memory per backend.")
    flags.DEFINE_string("json", None, "Also write the report as JSON to this path (default: none - no JSON file).")
    flags.DEFINE_boolean("no_data", False, "Skip accuracy: time a synthetic input only.")


def _evaluate(argv):
    if len(argv) < 2:
        raise UsageError("usage: tfcompress evaluate MODEL.tflite [MODEL2.tflite | MODEL.onnx ...] [--data fashion_mnist]")
    threads = _int_list(FLAGS.threads, "threads")
    if FLAGS.json:
        check_writable(FLAGS.json, FLAGS.overwrite, argument="--json")
    x = y = None
    if not FLAGS.no_data:
        _, (x, y) = load_data(FLAGS.data, FLAGS.limit_test)
    start = time.perf_counter()
    tflite = [p for p in argv[1:] if not p.endswith(".onnx")]
    # Several files are timed together (interleaved), so their latency ratios are meaningful.
    reports = list(evaluate_many({os.path.basename(p): p for p in tflite}, x=x, y=y, backends=FLAGS.backends,
                                 threads=threads, num_runs=FLAGS.runs, micro_samples=FLAGS.micro_samples,
                                 profile=FLAGS.profile).values()) if tflite else []
    # .onnx files run on ONNX Runtime; their rows join the same table.
    reports += [evaluate_onnx(p, x=x, y=y, threads=threads, num_runs=FLAGS.runs, name=os.path.basename(p))
                for p in argv[1:] if p.endswith(".onnx")]
    _progress(f"evaluated {len(reports)} file(s)", start)
    for report in reports:
        print(report.to_markdown())
        print()
    if len(reports) > 1:
        print(compare(reports))
    if FLAGS.json:
        import json

        payload = [r.to_dict() for r in reports]
        write_atomic(FLAGS.json, json.dumps(payload if len(payload) > 1 else payload[0], indent=2),
                         overwrite=FLAGS.overwrite)


# --- prune / distill / quantize: fine-tuning commands built on compress() ---------------------

def _step_default(step, name):
    """A recipe step's default for ``name``, e.g. ``Prune``'s learning rate, as help text shows it."""
    import dataclasses

    return next(f.default for f in dataclasses.fields(step) if f.name == name)


def _define_training(default_epochs, step, kind, suffix):
    _define_common()
    _define_data()
    _define_model_loading()
    flags.DEFINE_integer("epochs", default_epochs, "Fine-tuning epochs.", lower_bound=1)
    flags.DEFINE_integer("batch_size", 128, "Training batch size.", lower_bound=1)
    flags.DEFINE_float("learning_rate", None, "Initial Adam learning rate, cosine-decayed to zero (default: none - "
                       f"the {step.__name__} step's own, {_step_default(step, 'learning_rate'):g}).", lower_bound=0.0)
    flags.DEFINE_string("output", None, f"Where to save the {kind} Keras model (.keras) (default: none - writes "
                        f"MODEL_{suffix}.keras next to the model).")
    flags.DEFINE_string("tflite", None, "Also convert the result and write this .tflite file, then evaluate it "
                        "(default: none - no conversion, no evaluation).")
    flags.DEFINE_string("backup_dir", None, "Back up training at every epoch end in this folder; after a crash "
                        "or kill, rerun the same command to resume. Removed when the command succeeds (default: "
                        "none - no backups).")
    flags.DEFINE_enum("mode", "int8", ["float32", "float16", "dynamic", "int8"], "Conversion mode for --tflite.")
    flags.DEFINE_string("threads", "1", "Comma-separated thread counts for the evaluation of --tflite.")
    _define_isolation(default=True)


def _define_prune():
    _define_training(2, Prune, "pruned", "pruned")
    flags.DEFINE_float("sparsity", 0.75, "Final fraction of zero weights, in [0, 1) (with --channels: only if given).")
    flags.DEFINE_enum("structure", "unstructured", ["unstructured", "block", "2:4"], "Sparsity pattern.")
    flags.DEFINE_float("channels", None, "Structural pruning: remove this fraction of the removable channels, in "
                       "[0, 1), while fine-tuning, then shrink the model (default: none - weight pruning only).")
    flags.DEFINE_enum("importance", "l2", ["l1", "l2", "bn", "taylor"], "Channel importance criterion (--channels).")
    flags.DEFINE_integer("round_to", 1, "Kept channel counts are multiples of this where possible (--channels).",
                         lower_bound=1)
    flags.DEFINE_float("max_group_ratio", None, "At most this fraction of any one channel group (a layer, or a "
                       "residual stream) is removed, in (0, 1], with --channels (default: none - no cap).")
    flags.DEFINE_integer("clusters", None, "Weight clustering after pruning: at most this many values per kernel "
                         "(per output channel of convolutions), in [2, 256], fine-tuned 1 epoch with the centroids "
                         "training; zeros stay zeros (default: none - no clustering).", lower_bound=2, upper_bound=256)
    flags.DEFINE_float("low_rank", None, "Low-rank factorization first: keep this share of each kernel's singular-value "
                       "energy, in (0, 1], where it cuts MACs, then fine-tune (default: none - no factorization).",
                       lower_bound=1e-6, upper_bound=1.0)


def _define_distill():
    _define_training(3, Distill, "distilled student", "distilled")
    flags.DEFINE_string("teacher", None, "The trained teacher model (.keras) (default: none - required).")
    flags.DEFINE_float("temperature", None, "Softmax temperature (default: none - the Distiller's, "
                       f"{_distiller_default('temperature')}).")
    flags.DEFINE_float("alpha", None, "Weight of the hard-label loss in [0, 1] (default: none - the Distiller's, "
                       f"{_distiller_default('alpha')}).")
    flags.DEFINE_float("sparsity", None, "Also prune the student to this sparsity, in [0, 1), while distilling "
                       "(default: none - no pruning).")


def _distiller_default(name):
    import inspect

    return inspect.signature(Distiller.__init__).parameters[name].default


def _define_quantize():
    _define_training(1, QuantizationAwareTraining, "quantization-aware", "qat")


def _finish_training(command, model_path, steps):
    output = FLAGS.output or os.path.splitext(model_path)[0] + f"_{command}.keras"
    check_writable(output, FLAGS.overwrite, argument="--output")
    if FLAGS.tflite:
        check_writable(FLAGS.tflite, FLAGS.overwrite, argument="--tflite")
    threads = _int_list(FLAGS.threads, "threads")
    model = load_keras_model(model_path, FLAGS.unsafe)
    data = load_data(FLAGS.data, FLAGS.limit_test)
    trained = compress(model, data, steps, batch_size=FLAGS.batch_size, evaluate=False, convert_default=False,
                       backup_dir=FLAGS.backup_dir)
    # Saved before converting: a converter failure must not cost the training.
    save_keras_atomic(trained.model, output, overwrite=FLAGS.overwrite, argument="--output")
    _progress(f"wrote {output}")
    if not FLAGS.tflite:
        return
    try:
        converted = compress(trained.model, data, [Convert(FLAGS.mode, name="result")], copy=False,
                             threads=threads, isolate=FLAGS.isolate, timeout=FLAGS.timeout)
    except ConversionError as exc:
        raise ConversionError(f"{exc} The {command} model is saved in {output!r}; retry only the conversion with "
                              f"`tfcompress convert {output} --mode={FLAGS.mode} --data={FLAGS.data}`.") from None
    write_atomic(FLAGS.tflite, bytes(converted.artifacts["result"]), overwrite=FLAGS.overwrite,
                     argument="--tflite")
    _progress(f"wrote {FLAGS.tflite}")
    # Accuracy changes are shown against the model as given, before training.
    print(compare(converted.reports, reference_accuracy=trained.keras_accuracy))


def _one_model(argv, command):
    if len(argv) != 2:
        raise UsageError(f"usage: tfcompress {command} MODEL.keras [flags]; see tfcompress {command} --help.")
    return argv[1]


def _learning_rate():
    """``{"learning_rate": --learning_rate}`` when given; otherwise the step keeps its own default."""
    return {} if FLAGS.learning_rate is None else {"learning_rate": FLAGS.learning_rate}


def _prune(argv):
    path = _one_model(argv, "prune")
    steps = []
    if FLAGS.low_rank is not None:
        steps.append(Factorize(FLAGS.low_rank, epochs=FLAGS.epochs, **_learning_rate()))
    if FLAGS.channels is not None:
        steps.append(PruneChannels(FLAGS.channels, epochs=FLAGS.epochs, importance=FLAGS.importance,
                                   round_to=FLAGS.round_to, max_group_ratio=FLAGS.max_group_ratio,
                                   **_learning_rate()))
    # Weight pruning runs by default, or with another technique when --sparsity is given too.
    if FLAGS["sparsity"].present or (FLAGS.channels is None and FLAGS.clusters is None and FLAGS.low_rank is None):
        steps.append(Prune(FLAGS.sparsity, epochs=FLAGS.epochs, structure=FLAGS.structure, **_learning_rate()))
    if FLAGS.clusters is not None:
        steps.append(Cluster(FLAGS.clusters, epochs=1))
    _finish_training("pruned", path, steps)


def _distill(argv):
    path = _one_model(argv, "distill")
    if not FLAGS.teacher:
        raise UsageError("--teacher=TEACHER.keras is required: the trained model to distil from.")
    teacher = load_keras_model(FLAGS.teacher, FLAGS.unsafe)
    _finish_training("distilled", path, [Distill(teacher, epochs=FLAGS.epochs, sparsity=FLAGS.sparsity,
                                                 temperature=FLAGS.temperature, alpha=FLAGS.alpha,
                                                 **_learning_rate())])


def _quantize(argv):
    path = _one_model(argv, "quantize")
    _finish_training("qat", path, [QuantizationAwareTraining(epochs=FLAGS.epochs, **_learning_rate())])


# --- export ----------------------------------------------------------------------------------

def _define_export():
    _define_common()
    flags.DEFINE_string("c_array", None, "Write the model as a C array to this .cc file (and a .h beside it), in "
                        "TensorFlow Lite Micro's convention (default: none - required).")
    flags.DEFINE_string("name", "g_model", "C identifier of the array.")
    flags.DEFINE_boolean("micro_compress", False, "Store clustered int8 weights as TFLite Micro look-up tables "
                         "first (tfc.micro.compress): less flash, the same outputs; the firmware registers DECODE.")


def _export(argv):
    if len(argv) != 2:
        raise UsageError("usage: tfcompress export MODEL.tflite --c_array=model_data.cc [--name=g_model] "
                         "[--micro_compress]")
    if not FLAGS.c_array:
        raise UsageError("--c_array=model_data.cc is required: the C source file to write.")
    if not os.path.isfile(argv[1]):
        raise UsageError(f"model file {argv[1]!r} not found.")
    model = argv[1]
    if FLAGS.micro_compress:
        model = micro_compress.compress(argv[1])
        _progress(model.to_markdown())
    source, header = export_c_array(model, FLAGS.c_array, name=FLAGS.name, overwrite=FLAGS.overwrite)
    size = len(model) if FLAGS.micro_compress else os.path.getsize(argv[1])
    _progress(f"wrote {source} and {header}: {size:,} bytes as {FLAGS.name}[]")


# --- demo --------------------------------------------------------------------------------------

# --- auto ---------------------------------------------------------------------------------------

def _define_auto():
    _define_common()
    _define_data()
    _define_model_loading()
    flags.DEFINE_float("max_drop", 1.0, "Accuracy points a candidate may lose against the input model on the "
                       "validation split (carved from the end of the training data; the test split only reports).")
    flags.DEFINE_enum("objective", "latency", ["latency", "size", "macs"], "What to minimise: latency on --backend "
                      "(1 thread) measured on this host, the gzip -9 size of the file, or MACs per inference with int8 "
                      "preferred (for a target that is not this host, e.g. a phone searched for on an AVX2 laptop).")
    flags.DEFINE_float("time_budget", None, "Seconds for the whole search; the best candidate so far wins "
                       "(default: none - no limit).")
    flags.DEFINE_enum("backend", "xnnpack", ["xnnpack", "cpu"], "The runtime whose latency counts.")
    flags.DEFINE_string("out", "auto_out", "Output folder: best.tflite, candidates/, report.md, report.json, "
                        "report.png.")
    flags.DEFINE_string("backup_dir", None, "Keep finished candidates (and training state) here; rerunning the same "
                        "command after a kill skips them (default: none - not resumable).")
    flags.DEFINE_integer("epochs", 2, "Fine-tuning epochs of each training step (pruning, distillation).",
                         lower_bound=1)
    flags.DEFINE_float("validation_split", 0.1, "Share of the training data held out to choose by.")
    flags.DEFINE_integer("limit_train", None, "Use the first N training samples only (default: none - all).",
                         lower_bound=10)
    flags.DEFINE_integer("runs", 50, "Timed runs per candidate in the final joint timing.", lower_bound=1)


def _auto(argv):
    if len(argv) != 2:
        raise UsageError("usage: tfcompress auto MODEL.keras [--data=fashion_mnist] [--max_drop=1.0] "
                         "[--objective=latency] [--time_budget=SECONDS] [--out=DIR]")
    if FLAGS.max_drop <= 0:
        raise UsageError(f"--max_drop={FLAGS.max_drop}: give the accuracy points you accept to lose, > 0 (e.g. 1.0).")
    if FLAGS.time_budget is not None and FLAGS.time_budget <= 0:
        raise UsageError(f"--time_budget={FLAGS.time_budget}: give seconds > 0.")
    if os.path.isdir(FLAGS.out) and os.listdir(FLAGS.out) and not FLAGS.overwrite:
        raise UsageError(f"--out={FLAGS.out!r} already holds files; pass --overwrite or choose another folder.")
    start = time.perf_counter()
    model = load_keras_model(argv[1], FLAGS.unsafe)
    (x, y), test = load_data(FLAGS.data, FLAGS.limit_test)
    if FLAGS.limit_train:
        x, y = x[:FLAGS.limit_train], y[:FLAGS.limit_train]
    result = auto_compress(model, ((x, y), test), max_accuracy_drop=FLAGS.max_drop, objective=FLAGS.objective,
                           time_budget=FLAGS.time_budget, backend=FLAGS.backend, backup_dir=FLAGS.backup_dir,
                           out_dir=FLAGS.out, overwrite=FLAGS.overwrite, epochs=FLAGS.epochs,
                           validation_split=FLAGS.validation_split, num_runs=FLAGS.runs)
    print(result.to_markdown())
    _progress(f"wrote {os.path.join(FLAGS.out, 'best.tflite')} ({result.best}) and report.md/.json/.png", start)
    if not result.budget_met_on_test:
        print(f"tfcompress auto: warning: {result.best} met the budget on validation but misses it on the test split "
              f"by {result.test_shortfall:.2f} pt (see report.md).", file=sys.stderr)


def _define_demo():
    _define_common()
    flags.DEFINE_string("out", "demo_out", "Output folder for report.md, report.json, plots and .tflite files.")
    flags.DEFINE_boolean("quick", False, "A fast run on a data subset (used by the tests).")
    flags.DEFINE_integer("epochs", 3, "Training epochs of the float model.", lower_bound=1)
    flags.DEFINE_string("threads", "1,2", "Comma-separated thread counts to time.")
    flags.DEFINE_string("cache_dir", None, "Where the trained float model is cached (default: none - "
                        "caches in ~/.cache/tfcompress).")
    # Off by default here: the demo converts only its own models, 11 of them, and each isolated
    # conversion starts a fresh TensorFlow (about 10 s): the quick run would double.
    _define_isolation(default=False)


def _demo(argv):
    if len(argv) != 1:
        raise UsageError(f"demo takes no positional arguments, got {argv[1:]}.")
    demo.run(out_dir=FLAGS.out, quick=FLAGS.quick, epochs=FLAGS.epochs,
             threads=_int_list(FLAGS.threads, "threads"), overwrite=FLAGS.overwrite, cache_dir=FLAGS.cache_dir,
             isolate=FLAGS.isolate, timeout=FLAGS.timeout)


COMMANDS = {
    "prune": (_define_prune, _prune, "Magnitude-prune a .keras model while fine-tuning it (--channels: remove "
              "whole channels, a smaller and faster model)."),
    "distill": (_define_distill, _distill, "Distil a teacher .keras model into a student .keras model."),
    "quantize": (_define_quantize, _quantize, "Quantization-aware training (QAT), then an int8 .tflite (--tflite). "
                 "For post-training quantization use convert --mode=int8."),
    "convert": (_define_convert, _convert, "Convert a .keras model to .tflite; --mode=int8/int16x8/dynamic/float16 "
                "are post-training quantization (PTQ)."),
    "evaluate": (_define_evaluate, _evaluate, "Size, latency (CPU vs XNNPACK), accuracy and TFLite Micro arena (--backends=...,micro) of .tflite files."),
    "export": (_define_export, _export, "Write a .tflite as a C array (.cc + .h) for firmware (TFLite Micro)."),
    "auto": (_define_auto, _auto, "Search recipes for the fastest (--objective=latency), smallest (size) or cheapest "
             "(macs) .tflite within an accuracy budget (--max_drop), measured on the deployment runtime."),
    "demo": (_define_demo, _demo, "The end-to-end demo on Fashion-MNIST: train, compress, evaluate, report."),
}


def _usage():
    lines = ["usage: tfcompress <command> [flags]   (tfcompress <command> --help for its flags)", "", "commands:"]
    lines += [f"  {name:<10} {doc}" for name, (_, _, doc) in COMMANDS.items()]
    return "\n".join(lines)


def _known_errors():
    return (UsageError, ConversionError, RepresentativeDataError, InvalidTFLiteFileError, MissingExtraError,
            ValueError, TypeError, OSError, RuntimeError)


def run(argv=None):
    """Entry point of the ``tfcompress`` console script."""
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
        print(_usage())
        sys.exit(0 if len(argv) >= 2 else 2)
    command = argv[1]
    if command not in COMMANDS:
        print(f"tfcompress: unknown command {command!r}.\n\n{_usage()}", file=sys.stderr)
        sys.exit(2)
    define, main, doc = COMMANDS[command]
    define()
    if any(a in ("-h", "--help", "-?") for a in argv[2:]):
        # absl's own --help lists only the flags of the launching script's module, which here holds none.
        print(f"usage: tfcompress {command} [flags]\n\n{doc}\n\nflags:")
        print(FLAGS.module_help(__name__))
        sys.exit(0)

    def parse_flags(args):
        # absl's own parser prints two lines ("FATAL Flags parsing error: ...", "Pass --helpshort ...") and
        # exits 1; a bad flag is a bad command line like any other: one line, exit code 2.
        try:
            return FLAGS(args)
        except flags.Error as exc:
            message = " ".join(str(exc).split())
            print(f"tfcompress {command}: error: {message} (see tfcompress {command} --help)", file=sys.stderr)
            sys.exit(2)

    def guarded_main(args):
        if not FLAGS["verbosity"].present:
            # TensorFlow logs every SavedModel export at INFO through absl; users want our progress lines.
            absl_logging.set_verbosity(absl_logging.WARNING)
        try:
            main(args)
        except _known_errors() as exc:
            message = " ".join(str(exc).split())
            print(f"tfcompress {command}: error: {message}", file=sys.stderr)
            sys.exit(2 if isinstance(exc, UsageError) else 1)

    app.run(guarded_main, argv=[f"tfcompress {command}"] + argv[2:], flags_parser=parse_flags)


if __name__ == "__main__":
    run()
