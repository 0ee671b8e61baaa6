"""The end-to-end demo: train the reference CNN on Fashion-MNIST, compress it every way we can, evaluate all.

Writes ``report.md``, ``report.json`` and every ``.tflite`` into one folder and
prints the comparison table. Run it with ``tfcompress demo`` (``--quick`` for a
small, fast run).
"""

import json
import os
import tempfile
import sys
import time

from tfcompress import datasets, zoo
from tfcompress.convert import to_tflite
from tfcompress.evaluate import compare, evaluate_tflite
from tfcompress.files import OutputExistsError, write_atomic

PTQ_MODES = ("float32", "float16", "dynamic", "int8", "int16x8")


def _say(message, start=None):
    suffix = f" ({time.perf_counter() - start:.1f} s)" if start is not None else ""
    print(f"[tfcompress demo] {message}{suffix}", flush=True)


def _prepare_out_dir(out_dir, overwrite):
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not overwrite:
        raise OutputExistsError(
            f"--out={out_dir!r} already holds files; pass --overwrite to replace them or choose another folder."
        )
    os.makedirs(out_dir, exist_ok=True)


def save_keras_atomic(model, path):
    """``model.save`` through a temp file in the same folder, then a rename."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".keras", dir=folder, prefix=".tmp_")
    os.close(fd)
    try:
        model.save(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def trained_reference_cnn(x, y, epochs, cache_dir=None, seed=0, batch_size=128, bn_momentum=0.99):
    """Trains the reference CNN (or loads it from the cache keyed by data size, epochs and seed)."""
    import keras

    cache_dir = cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "tfcompress")
    path = os.path.join(
        cache_dir, f"reference_cnn_fmnist_n{len(x)}_e{epochs}_b{batch_size}_m{bn_momentum}_s{seed}.keras")
    if os.path.exists(path):
        try:
            model = keras.models.load_model(path)
            _say(f"loaded cached float model {path}")
            return model
        except Exception as exc:  # a damaged cache is rebuilt, never trusted
            _say(f"ignoring unreadable cache {path}: {exc}")
    keras.utils.set_random_seed(seed)
    model = zoo.compile_classifier(zoo.reference_cnn(bn_momentum=bn_momentum))
    # Progress bars redraw with carriage returns; in a log file one line per epoch reads better.
    model.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=1 if sys.stdout.isatty() else 2)
    save_keras_atomic(model, path)
    return model


def run(out_dir="demo_out", quick=False, epochs=None, threads=(1, 2), overwrite=False, cache_dir=None):
    """Runs the demo and returns ``{variant: EvaluationReport}``.

    Args:
        out_dir: folder for ``report.md``, ``report.json`` and the ``.tflite`` files.
        quick: train on 8,000 images for 3 epochs and evaluate on 1,000 (about a minute).
        epochs: training epochs of the float model (default 3).
        threads: thread counts timed by the evaluator.
        overwrite: replace files in a non-empty ``out_dir``.
        cache_dir: where the trained float model is cached.
    """
    total = time.perf_counter()
    _prepare_out_dir(out_dir, overwrite)
    epochs = epochs or 3
    start = time.perf_counter()
    (x, y), (x_test, y_test) = datasets.fashion_mnist(
        limit_train=8000 if quick else None, limit_test=1000 if quick else None)
    _say(f"Fashion-MNIST: {len(x):,} train / {len(x_test):,} test images", start)

    start = time.perf_counter()
    # BatchNormalization's moving variance starts at 1.0 and decays by the momentum (0.99) per step,
    # while the first conv's activations have a variance near 0.003: it needs ~1,000 steps to settle.
    # The quick run has fewer, so it uses momentum 0.9.
    model = trained_reference_cnn(x, y, epochs, cache_dir=cache_dir, batch_size=64 if quick else 128,
                                  bn_momentum=0.9 if quick else 0.99)
    keras_accuracy = float(model.evaluate(x_test, y_test, verbose=0, batch_size=512)[1])
    _say(f"float Keras model: test accuracy {100 * keras_accuracy:.2f}%", start)
    save_keras_atomic(model, os.path.join(out_dir, "reference_cnn.keras"))

    calibration = x[:200]
    reports = {}
    for mode in PTQ_MODES:
        start = time.perf_counter()
        b = to_tflite(model, mode=mode, representative_data=calibration if mode in ("int8", "int16x8") else None,
                      output_path=os.path.join(out_dir, f"reference_cnn_{mode}.tflite"), overwrite=overwrite)
        reports[mode] = evaluate_tflite(b, x=x_test, y=y_test, threads=threads, num_runs=30 if quick else 100,
                                        name=mode)
        r = reports[mode]
        _say(f"{mode:>8}: {len(b) / 1024:7.1f} KB, accuracy {100 * r.accuracy:.2f}%, "
             f"xnnpack/1t {r.latency_for('xnnpack', threads[0]).median_ms:.3f} ms", start)

    table = compare(reports, baseline="float32", reference_accuracy=keras_accuracy)
    lines = [
        "# tfcompress demo report", "",
        f"Reference CNN on Fashion-MNIST ({len(x):,} train images, {epochs} epoch(s); {len(x_test):,} test images).",
        f"Float Keras model test accuracy: {100 * keras_accuracy:.2f}%.", "",
        "Latency: median ms of single-image inference, interleaved runs; `cpu` = LiteRT built-in kernels "
        "without delegates, `xnnpack` = the XNNPACK delegate.", "",
        table, "",
    ]
    lines += [reports[m].to_markdown() + "\n" for m in reports]
    write_atomic(os.path.join(out_dir, "report.md"), "\n".join(lines), overwrite=True)
    payload = {
        "keras_accuracy": keras_accuracy,
        "train_samples": len(x), "test_samples": len(x_test), "epochs": epochs,
        "variants": {m: r.to_dict() for m, r in reports.items()},
    }
    write_atomic(os.path.join(out_dir, "report.json"), json.dumps(payload, indent=2), overwrite=True)
    print()
    print(table)
    print()
    _say(f"wrote {out_dir}/report.md, report.json and {len(reports)} .tflite files", total)
    return reports
