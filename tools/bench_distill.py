"""Knowledge-distillation benchmark on Fashion-MNIST.

Teacher: ``zoo.reference_cnn(width=2)``. Student: ``zoo.small_student()``. With the
same epochs for every student, it reports test accuracy (mean ± std over seeds) of:
the student trained from scratch; distilled; distilled while pruned to 50%; distilled
then converted to int8. Then the sizes, and the epoch time of plain student training
vs distillation with and without the teacher cache, measured interleaved (each round
runs one epoch of each, in rotating order) and summarised by medians.

Keep at least ~1000 student steps (images x epochs / batch): the student's first
BatchNormalization sees activations of variance ~0.004, and with momentum 0.99 the
initial moving variance of 1.0 dominates for several hundred steps, so shorter runs
(like --quick) give meaningless inference-mode accuracies.

Usage:
    python tools/bench_distill.py                      # full run, 3 seeds
    python tools/bench_distill.py --quick              # a smoke test in about a minute
    python tools/bench_distill.py --sweep              # temperature / alpha sweep
    python tools/bench_distill.py --teacher_path=/tmp/teacher.keras --output=/tmp/distill.md
"""

import os
import statistics
import time

from absl import flags

import bench_common  # tools/ is on sys.path: it is the script's own folder

FLAGS = flags.FLAGS
flags.DEFINE_integer("epochs", 3, "Student epochs (the same for every student).")
flags.DEFINE_integer("teacher_epochs", 5, "Teacher epochs (ignored when --teacher_path exists).")
flags.DEFINE_integer("seeds", 3, "Seeds to average the student accuracies over.")
bench_common.define_data_flags(test_limit=False, train_help="Train the students on only the first N training images.")
flags.DEFINE_integer("teacher_limit", None, "Train the teacher on only the first N training images.")
flags.DEFINE_float("learning_rate", 3e-3, "Initial Adam learning rate of the students (cosine-decayed to 0).")
flags.DEFINE_float("temperature", None, "Distillation temperature (default: the Distiller's).")
flags.DEFINE_float("alpha", None, "Hard-label weight (default: the Distiller's).")
flags.DEFINE_integer("timing_rounds", 3, "Interleaved rounds of the epoch-time comparison (0 skips it).")
flags.DEFINE_integer("timing_samples", 10000, "Training images per timed epoch.")
flags.DEFINE_bool("quick", False, "Smoke test of the code path (accuracies meaningless): 3000 images, 1 epoch, 1 seed.")
flags.DEFINE_bool("sweep", False, "Sweep temperature x alpha instead of the benchmark.")
flags.DEFINE_string("teacher_path", None, "Load the teacher from this .keras file, or train and save it there.")
bench_common.define_output_flags(out=None, output="Also write the markdown report to this file.")

SWEEP_TEMPERATURES = (1.0, 2.0, 4.0)
SWEEP_ALPHAS = (0.1, 0.5, 0.9)


def _distiller_kwargs():
    kwargs = {}
    if FLAGS.temperature is not None:
        kwargs["temperature"] = FLAGS.temperature
    if FLAGS.alpha is not None:
        kwargs["alpha"] = FLAGS.alpha
    return kwargs


def _student(seed):
    import keras

    import tfcompress as tfc

    keras.utils.set_random_seed(seed)
    return tfc.zoo.small_student()


def _teacher(x_test, y_test):
    import keras

    import tfcompress as tfc

    path = FLAGS.teacher_path
    (x, y), _ = tfc.datasets.fashion_mnist(limit_train=FLAGS.teacher_limit, limit_test=0)
    if path and os.path.exists(path):
        teacher = keras.models.load_model(path)
        print(f"Loaded the teacher from {path}.")
    else:
        keras.utils.set_random_seed(0)
        teacher = tfc.zoo.reference_cnn(width=2, name="teacher")
        # Decaying the rate to zero makes the last epoch's weights a stable teacher; at a
        # constant 1e-3 the test accuracy of the final weights swings by several points.
        steps = FLAGS.teacher_epochs * -(-len(x) // FLAGS.batch_size)
        teacher.compile(
            optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(1e-3, steps)),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        start = time.perf_counter()
        teacher.fit(x, y, epochs=FLAGS.teacher_epochs, batch_size=FLAGS.batch_size, verbose=2)
        print(f"Teacher trained in {time.perf_counter() - start:.0f} s.")
        if path:
            tfc.files.save_keras_atomic(teacher, path, overwrite=True, argument="--teacher_path")
    teacher.compile(metrics=["accuracy"], loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    accuracy = teacher.evaluate(x_test, y_test, verbose=0)[1]
    print(f"Teacher test accuracy: {accuracy:.4f}")
    return teacher, accuracy


def _distill(teacher, student, x, y, seed, callbacks=None, **kwargs):
    import tfcompress as tfc

    distiller = tfc.Distiller(teacher, student, **{**_distiller_kwargs(), **kwargs})
    distiller.compile(optimizer=_student_optimizer(len(x)), metrics=["accuracy"])
    dataset = distiller.cache_teacher(x, y, batch_size=FLAGS.batch_size, seed=seed)
    distiller.fit(dataset, epochs=FLAGS.epochs, shuffle=False, callbacks=callbacks, verbose=0)
    return distiller


def _student_learning_rate(num_images):
    """Decayed to zero over the run, so every student is judged on settled final weights.

    At a constant rate the inference-mode accuracy of the last weights swings by tens of
    points between runs, which drowns the scratch-vs-distilled difference.
    """
    return bench_common.cosine_learning_rate(FLAGS.learning_rate, FLAGS.epochs * -(-num_images // FLAGS.batch_size))


def _student_optimizer(num_images):
    """Adam at `_student_learning_rate`."""
    import keras

    return keras.optimizers.Adam(_student_learning_rate(num_images))


def _accuracy(model, x_test, y_test):
    return bench_common.accuracy(model, x_test, y_test, batch_size=1024)


def _scratch(x, y, seed):
    import tfcompress as tfc

    student = _student(seed)
    tfc.zoo.compile_classifier(student, _student_learning_rate(len(x)))
    student.fit(x, y, epochs=FLAGS.epochs, batch_size=FLAGS.batch_size, verbose=0)
    return student


def _zero_fraction(model):
    import numpy as np

    kernels = [layer.kernel.numpy() for layer in model.layers if hasattr(layer, "kernel")]
    return sum(int(np.sum(k == 0)) for k in kernels) / sum(k.size for k in kernels)


def _mean_std(values):
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def _accuracy_table(teacher, teacher_accuracy, x, y, x_test, y_test):
    import tfcompress as tfc

    seeds = list(range(FLAGS.seeds))
    results = {"scratch": [], "distilled": [], "distilled + pruned 50%": [], "distilled → int8": []}
    sparsities = []
    steps_per_epoch = -(-len(x) // FLAGS.batch_size)
    prune_end = max(1, int(0.7 * steps_per_epoch * FLAGS.epochs))
    for seed in seeds:
        start = time.perf_counter()
        results["scratch"].append(_accuracy(_scratch(x, y, seed), x_test, y_test))
        distiller = _distill(teacher, _student(seed), x, y, seed)
        results["distilled"].append(_accuracy(distiller.student, x_test, y_test))
        int8 = tfc.to_tflite(distiller.student, mode="int8", representative_data=x[:200])
        report = tfc.evaluate_tflite(int8, x=x_test, y=y_test, backends=("cpu",), num_runs=1, warmup_runs=0)
        results["distilled → int8"].append(float(report.accuracy))
        pruning = tfc.PruningCallback(
            tfc.PolynomialDecay(0.0, 0.5, begin_step=0, end_step=prune_end, frequency=max(1, prune_end // 20)),
            verbose=0,
        )
        pruned = _distill(teacher, _student(seed), x, y, seed, callbacks=[pruning])
        results["distilled + pruned 50%"].append(_accuracy(pruned.student, x_test, y_test))
        sparsities.append(_zero_fraction(pruned.student))
        print(
            f"seed {seed}: " + ", ".join(f"{k} {v[-1]:.4f}" for k, v in results.items())
            + f" ({time.perf_counter() - start:.0f} s)"
        )

    student_float = tfc.to_tflite(distiller.student)
    teacher_float = tfc.to_tflite(teacher)
    lines = [
        f"Fashion-MNIST, {len(x)} training / {len(x_test)} test images, {FLAGS.epochs} student "
        f"epoch(s), batch {FLAGS.batch_size}, Adam {FLAGS.learning_rate} cosine-decayed, seeds {seeds}; "
        f"Distiller({', '.join(f'{k}={v}' for k, v in _effective_hyperparameters().items())}).",
        "",
        "| model | test accuracy (mean ± std) | params | .tflite size |",
        "|---|---|---|---|",
        f"| teacher reference_cnn(width=2) | {teacher_accuracy:.4f} | {teacher.count_params():,} "
        f"| {len(teacher_float) / 1024:.1f} KB (float32) |",
        f"| student from scratch | {_mean_std(results['scratch'])} | {distiller.student.count_params():,} "
        f"| {len(student_float) / 1024:.1f} KB (float32) |",
        f"| student distilled | {_mean_std(results['distilled'])} | same | same |",
        f"| student distilled + pruned ({statistics.mean(sparsities):.0%} of kernels zero) "
        f"| {_mean_std(results['distilled + pruned 50%'])} | same | same (zeros compress) |",
        f"| student distilled → int8 | {_mean_std(results['distilled → int8'])} | same "
        f"| {len(int8) / 1024:.1f} KB (int8) |",
        "",
        f"Student/teacher size: {len(student_float) / len(teacher_float):.1%} of the teacher's float32 file.",
    ]
    return "\n".join(lines)


def _effective_hyperparameters():
    import inspect

    import tfcompress as tfc

    defaults = inspect.signature(tfc.Distiller).parameters
    values = {name: defaults[name].default for name in ("temperature", "alpha")}
    values.update(_distiller_kwargs())
    return values


def _timing_table(teacher, x, y):
    """Per-epoch wall time of plain student training vs distillation, cached and uncached."""
    import keras

    import tfcompress as tfc

    x, y = x[: FLAGS.timing_samples], y[: FLAGS.timing_samples]
    plain = tfc.zoo.compile_classifier(_student(0), learning_rate=FLAGS.learning_rate)
    cached = tfc.Distiller(teacher, _student(0), **_distiller_kwargs())
    uncached = tfc.Distiller(teacher, _student(0), **_distiller_kwargs())
    for distiller in (cached, uncached):
        distiller.compile(optimizer=keras.optimizers.Adam(FLAGS.learning_rate), metrics=["accuracy"])

    start = time.perf_counter()
    cache = cached.cache_teacher(x, y, batch_size=FLAGS.batch_size, seed=0)
    cache_seconds = time.perf_counter() - start
    runs = {
        "plain student": lambda: plain.fit(x, y, epochs=1, batch_size=FLAGS.batch_size, verbose=0),
        "distillation, cached teacher": lambda: cached.fit(cache, epochs=1, shuffle=False, verbose=0),
        "distillation, uncached teacher": lambda: uncached.fit(
            x, y, epochs=1, batch_size=FLAGS.batch_size, verbose=0
        ),
    }
    for run in runs.values():  # Warm-up: tracing and first-epoch allocations are not timed.
        run()
    times = {name: [] for name in runs}
    names = list(runs)
    for round_index in range(FLAGS.timing_rounds):
        order = names[round_index % len(names):] + names[: round_index % len(names)]
        for name in order:
            start = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - start)

    base = statistics.median(times["plain student"])
    lines = [
        f"Epoch time over {len(x)} images, batch {FLAGS.batch_size}, median of {FLAGS.timing_rounds} "
        "interleaved rounds (shared CPU: treat as indicative).",
        "",
        "| training | epoch time (median) | vs plain student |",
        "|---|---|---|",
    ]
    for name in names:
        median = statistics.median(times[name])
        lines.append(f"| {name} | {median:.2f} s | {median / base:.2f}x |")
    lines += ["", f"Building the teacher cache (one teacher pass) took {cache_seconds:.2f} s."]
    return "\n".join(lines)


def _spread(values):
    return statistics.stdev(values) if len(values) > 1 else 0.0


def _sweep(teacher, x, y, x_test, y_test):
    import keras

    seeds = list(range(FLAGS.seeds))
    header = "| temperature | " + " | ".join(f"alpha={a}" for a in SWEEP_ALPHAS) + " |"
    lines = [
        f"Distilled student test accuracy (mean over seeds {seeds}), {len(x)} training images, "
        f"{FLAGS.epochs} epoch(s).",
        "",
        header,
        "|---|" + "---|" * len(SWEEP_ALPHAS),
    ]
    scratch_runs = [_accuracy(_scratch(x, y, s), x_test, y_test) for s in seeds]
    scratch = f"{100 * statistics.mean(scratch_runs):.2f}% ± {100 * _spread(scratch_runs):.2f}"
    for temperature in SWEEP_TEMPERATURES:
        cells = []
        for alpha in SWEEP_ALPHAS:
            accuracies = [
                _accuracy(
                    _distill(teacher, _student(s), x, y, s, temperature=temperature, alpha=alpha).student,
                    x_test,
                    y_test,
                )
                for s in seeds
            ]
            cells.append(f"{100 * statistics.mean(accuracies):.2f}% ± {100 * _spread(accuracies):.2f}")
            print(f"T={temperature} alpha={alpha}: {accuracies}")
            keras.backend.clear_session()
        lines.append(f"| {temperature} | " + " | ".join(cells) + " |")
    lines += ["", f"Student from scratch, same budget: {scratch}."]
    return "\n".join(lines)


def main():
    import tfcompress as tfc

    if FLAGS.quick:
        FLAGS.train_limit = FLAGS.train_limit or 3000
        FLAGS.teacher_limit = FLAGS.teacher_limit or 3000
        FLAGS.epochs, FLAGS.seeds, FLAGS.teacher_epochs = 1, 1, 1
        FLAGS.timing_rounds = min(FLAGS.timing_rounds, 1)
        FLAGS.timing_samples = min(FLAGS.timing_samples, 2000)
    (x, y), (x_test, y_test) = tfc.datasets.fashion_mnist(limit_train=FLAGS.train_limit)
    teacher, teacher_accuracy = _teacher(x_test, y_test)
    if FLAGS.sweep:
        report = _sweep(teacher, x, y, x_test, y_test)
    else:
        report = _accuracy_table(teacher, teacher_accuracy, x, y, x_test, y_test)
        if FLAGS.timing_rounds > 0:
            report += "\n\n" + _timing_table(teacher, x, y)
    report += "\n\n" + bench_common.timed_on()
    print()
    print(report)
    bench_common.write_outputs(report)


if __name__ == "__main__":
    bench_common.run(main)
