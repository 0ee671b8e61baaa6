"""The end-to-end demo: train the reference CNN on Fashion-MNIST, compress it every way we can, evaluate all.

Writes ``report.md``, ``report.json`` and every ``.tflite`` into one folder and
prints the comparison table. Run it with ``tfcompress demo`` (``--quick`` for a
small, fast run).
"""

import json
import os
import time

from tfcompress.core import datasets, machine, zoo
from tfcompress.core.files import OutputExistsError, save_keras_atomic, write_atomic
from tfcompress.evaluation import reports as reports_module
from tfcompress.evaluation.litert import evaluate_many
from tfcompress.evaluation.reports import compare
from tfcompress.export.tflite import DEFAULT_TIMEOUT_S
from tfcompress.pipeline.recipe import (
    Cluster, Convert, Distill, FineTune, Prune, PruneChannels, QuantizationAwareTraining, compress, fit_verbosity,
)


def _say(message, start=None):
    suffix = f" ({time.perf_counter() - start:.1f} s)" if start is not None else ""
    print(f"[tfcompress demo] {message}{suffix}", flush=True)


def _prepare_out_dir(out_dir, overwrite):
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not overwrite:
        raise OutputExistsError(
            f"--out={out_dir!r} already holds files; pass --overwrite to replace them or choose another folder."
        )
    os.makedirs(out_dir, exist_ok=True)


def trained_reference_cnn(x, y, epochs, cache_dir=None, seed=0, batch_size=128, bn_momentum=0.99, decay=False):
    """Trains the reference CNN (or loads it from the cache keyed by data size, epochs and seed).

    ``decay``: Adam's learning rate cosine-decays to zero over the training, so the
    model ends converged; at a constant rate it stops short and any fine-tuning
    afterwards gains points that are not the compression's.
    """
    import keras

    cache_dir = cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "tfcompress")
    path = os.path.join(cache_dir, f"reference_cnn_fmnist_n{len(x)}_e{epochs}_b{batch_size}_m{bn_momentum}_s{seed}"
                                   f"{'_cos' if decay else ''}.keras")
    if os.path.exists(path):
        try:
            model = keras.models.load_model(path)
            _say(f"loaded cached float model {path}")
            return model
        except Exception as exc:  # a damaged cache is rebuilt, never trusted
            _say(f"ignoring unreadable cache {path}: {exc}")
    keras.utils.set_random_seed(seed)
    model = zoo.reference_cnn(bn_momentum=bn_momentum)
    if decay:
        steps = epochs * -(-len(x) // batch_size)
        model.compile(optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(1e-3, steps)),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    else:
        model = zoo.compile_classifier(model)
    model.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=fit_verbosity())
    os.makedirs(cache_dir, exist_ok=True)
    save_keras_atomic(model, path)
    return model


def _plans(model, quick):
    """Every technique: ``[(title, start, recipe, epochs)]``; ``start`` is a model or the title of an earlier
    stage whose resulting model it continues from; ``epochs`` is the training the variant had after the float
    model (its dense control is fine-tuned for as many)."""
    epochs = 1 if quick else 2
    # See run(): a student trained from scratch for a few hundred steps needs faster
    # BatchNormalization statistics than momentum 0.99 gives.
    momentum = 0.9
    student = zoo.compile_classifier(zoo.small_student(bn_momentum=momentum))
    plans = [
        ("post-training quantization", model,
         [Convert("float32"), Convert("float16"), Convert("dynamic"), Convert("int8")], 0),
        *[(f"pruning to {round(100 * s)}%", model, [Prune(s, epochs=epochs), Convert("int8")], epochs)
          for s in ((0.75,) if quick else (0.5, 0.75, 0.9))],
        ("channel pruning (50% of the channels removed)", model,
         [PruneChannels(0.5, epochs=epochs), Convert("int8")], epochs),
        ("clustering (16 values per kernel)", model, [Cluster(16, epochs=1), Convert("int8")], 1),
        # Deep Compression's chain on the 75%-pruned model from above: prune → cluster → int8 (→ gzip).
        ("prune + cluster (Deep Compression)", "pruning to 75%",
         [Cluster(16, epochs=1), Convert("int8", name="prune75-cluster16-int8")], epochs + 1),
        ("distilled small student", student, [Distill(model, epochs=epochs), Convert("int8")], epochs),
        ("quantization-aware training", model, [QuantizationAwareTraining(epochs=1), Convert("int8")], 1),
    ]
    if not quick:  # the quick run keeps one variant of each technique
        pruned_student = zoo.compile_classifier(zoo.small_student(bn_momentum=momentum))
        plans.insert(-1, ("distilled and pruned student", pruned_student,
                          [Distill(model, epochs=epochs, sparsity=0.5), Convert("int8")], epochs))
        # QAT of the 75%-pruned model from above: its zeros stay zeros through QAT.
        plans.append(("pruned QAT", "pruning to 75%",
                      [QuantizationAwareTraining(epochs=1), Convert("int8", name="prune75-qat-int8")], epochs + 1))
    return plans


def run(out_dir="demo_out", quick=False, epochs=None, threads=(1, 2), overwrite=False, cache_dir=None,
        isolate=False, timeout=DEFAULT_TIMEOUT_S):
    """Runs the demo and returns ``{variant: EvaluationReport}``.

    Trains (or loads the cached) reference CNN on Fashion-MNIST to convergence, then
    runs every technique through `tfcompress.compress`: post-training float16 /
    dynamic / int8, pruning to 50/75/90% + int8, channel pruning, clustering, the
    Deep-Compression chain (prune + cluster + int8), a distilled small student (and
    a pruned one), QAT int8 and pruned QAT int8. Every variant is evaluated on the
    test set on LiteRT (CPU, XNNPACK) and TFLite Micro, and compared with a dense
    control fine-tuned for the same epochs.

    Args:
        out_dir: folder for ``report.md``, ``report.json``, ``report.png`` and the ``.tflite`` files.
        quick: 5,000 training images for the float model, 2,000 and 1 epoch for each
            technique, fewer pruning levels, 1,000 test images (under two minutes).
        epochs: training epochs of the float model (default 3).
        threads: thread counts timed by the evaluator.
        overwrite: replace files in a non-empty ``out_dir``.
        cache_dir: where the trained float model is cached.
        isolate, timeout: run each conversion in a subprocess with this time
            limit (see `tfcompress.compress`); off by default: the demo converts
            only its own models, and each isolated conversion costs about 10 s.
    """
    total = time.perf_counter()
    _prepare_out_dir(out_dir, overwrite)
    epochs = epochs or 3
    start = time.perf_counter()
    (x, y), (x_test, y_test) = datasets.fashion_mnist(
        limit_train=5000 if quick else None, limit_test=1000 if quick else None)
    _say(f"Fashion-MNIST: {len(x):,} train / {len(x_test):,} test images", start)

    start = time.perf_counter()
    # BatchNormalization's moving variance starts at 1.0 and decays by the momentum (0.99) per step,
    # while the first conv's activations have a variance near 0.003: it needs ~1,000 steps to settle.
    # The quick run has fewer, so it uses momentum 0.9.
    model = trained_reference_cnn(x, y, epochs, cache_dir=cache_dir, batch_size=64 if quick else 128,
                                  bn_momentum=0.9 if quick else 0.99, decay=True)
    keras_accuracy = float(model.evaluate(x_test, y_test, verbose=0, batch_size=512)[1])
    _say(f"float Keras model: test accuracy {100 * keras_accuracy:.2f}%", start)
    save_keras_atomic(model, os.path.join(out_dir, "reference_cnn.keras"))

    # The quick run is a smoke test of every stage: it fine-tunes on fewer images to stay near 90 seconds.
    x_tune, y_tune = (x[:2000], y[:2000]) if quick else (x, y)
    artifacts, models, trained_epochs = {}, {}, {}
    plans = _plans(model, quick)
    for title, start_model, recipe, variant_epochs in plans:
        start = time.perf_counter()
        _say(f"{title} ...")
        if isinstance(start_model, str):
            start_model = models[start_model]
        result = compress(start_model, ((x_tune, y_tune), (x_test, y_test)), recipe,
                          batch_size=64 if quick else 128, evaluate=False, verbose=1, isolate=isolate,
                          timeout=timeout)
        models[title] = result.model
        for name, data in result.artifacts.items():
            write_atomic(os.path.join(out_dir, f"{name}.tflite"), bytes(data), overwrite=overwrite)
            trained_epochs[name] = variant_epochs
        artifacts.update(result.artifacts)
        _say(f"{title}: done", start)

    # Dense controls: the float model fine-tuned, uncompressed, for as many epochs as each variant had,
    # with the same data and schedule. "Δ vs control" is then the cost of the compression alone.
    controls = {0: keras_accuracy}
    for count in sorted({e for *_, e in plans if e}):
        start = time.perf_counter()
        control = compress(model, ((x_tune, y_tune), (x_test, y_test)), [FineTune(epochs=count)],
                           batch_size=64 if quick else 128, evaluate=False, convert_default=False, verbose=0).model
        controls[count] = float(control.evaluate(x_test, y_test, verbose=0, batch_size=512)[1])
        _say(f"dense control fine-tuned {count} epoch(s): test accuracy {100 * controls[count]:.2f}%", start)
    control_accuracy = {name: controls[e] for name, e in trained_epochs.items()}

    start = time.perf_counter()
    # One evaluation of everything: latencies of all variants are timed in the same rounds; TFLite Micro
    # reports the arena each file needs on a microcontroller (and which files cannot run there).
    reports = evaluate_many(artifacts, x=x_test, y=y_test, threads=threads, num_runs=30 if quick else 100,
                            backends=("cpu", "xnnpack", "micro"), micro_samples=20 if quick else 300)
    _say(f"evaluated {len(reports)} variants", start)

    table = compare(reports, baseline="float32", reference_accuracy=keras_accuracy, control_accuracy=control_accuracy)
    plotted = reports_module.plot_variants(reports, os.path.join(out_dir, "report.png"), threads)
    lines = [
        "# tfcompress demo report", "",
        f"Reference CNN on Fashion-MNIST ({len(x):,} train images, {epochs} epoch(s); {len(x_test):,} test images).",
        f"Float Keras model test accuracy: {100 * keras_accuracy:.2f}% (trained with a cosine-decayed learning "
        "rate, so it is converged). Students are `tfcompress.zoo.small_student()` distilled from it.", "",
        "**Δ vs control** compares each variant with the float model fine-tuned, uncompressed, for as many "
        "epochs as the variant was trained after it (dense controls: "
        + ", ".join(f"{e} epoch(s) {100 * a:.2f}%" for e, a in sorted(controls.items()) if e) + "): the cost of "
        "the compression itself, not of the extra training. TFLM columns: the tensor arena TFLite Micro needs "
        "and its top-1 agreement with LiteRT (float16 and dynamic-range files do not run there).", "",
        "Latency: median ms of single-image inference, interleaved runs; `cpu` = LiteRT built-in kernels "
        "without delegates, `xnnpack` = the XNNPACK delegate. Sparsity shrinks the gzip size; on x86 with "
        "AVX it does not speed up XNNPACK. MACs (multiply-accumulates per image) and sizes are the same on "
        "every CPU; latencies are this one's:", "",
        f"Measured on: {machine.current().summary()}.", "",
        table, "",
    ]
    if plotted:
        lines += ["![accuracy vs size, latency](report.png)", ""]
    lines += [reports[m].to_markdown() + "\n" for m in reports]
    write_atomic(os.path.join(out_dir, "report.md"), "\n".join(lines), overwrite=True)
    payload = {
        "keras_accuracy": keras_accuracy,
        "control_accuracy_by_epochs": {str(e): a for e, a in controls.items()},
        "control_accuracy": control_accuracy,
        "train_samples": len(x), "test_samples": len(x_test), "epochs": epochs,
        "machine": machine.current().to_dict(),
        "variants": {m: r.to_dict() for m, r in reports.items()},
    }
    write_atomic(os.path.join(out_dir, "report.json"), json.dumps(payload, indent=2), overwrite=True)
    print()
    print(table)
    print()
    _say(f"wrote {out_dir}/report.md, report.json{', report.png' if plotted else ''} and "
         f"{len(artifacts)} .tflite files", total)
    return reports
