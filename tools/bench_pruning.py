"""Pruning benchmark on Fashion-MNIST: tfcompress vs tfmot vs a dense control.

The reference CNN is trained dense first. From those weights, each run fine-tunes
for ``ramp_epochs + hold_epochs`` epochs: a dense control (no pruning), ours
(``PruningCallback`` with its defaults) and tfmot (``prune_low_magnitude`` under
tf_keras, in a subprocess) with PolynomialDecay(0 -> s) over ``ramp_epochs``,
frequency 100, for each sparsity s. Reported per run: test accuracy of the Keras
model and of its int8 TFLite model, measured sparsity of the pruned kernels, and
the int8 .tflite size after gzip (with the ratio to the float32 .tflite).

Training overhead is the time per training step with pruning / without, measured
interleaved (each round runs one epoch of each) on ``timing_samples`` images,
first batch of every fit excluded (tracing), median over rounds. The machine's
other load distorts timings: rerun on a quiet machine before trusting them.

Usage:
    python tools/bench_pruning.py                 # full: 60k images, 3+2+1 epochs, tfmot too
    python tools/bench_pruning.py --quick         # smoke test (a few minutes; accuracies meaningless)
    python tools/bench_pruning.py --notfmot --sparsities=0.75 --out=/tmp/pruning.json
"""

import json
import statistics
import tempfile
import time

from absl import flags

import bench_common  # tools/ is on sys.path: it is the script's own folder

FLAGS = flags.FLAGS
flags.DEFINE_list("sparsities", ["0.5", "0.75", "0.9"], "Final sparsities to benchmark.")
flags.DEFINE_list("block_sparsities", ["0.75"],
                  "Sparsities also run with structure='block' (4x1: 4 input channels of one output, TFLite's "
                  "1x4 block), whose zero runs compress better.")
flags.DEFINE_bool("timing_only", False, "Only the step-overhead timing (ours and tfmot), for a quiet machine.")
flags.DEFINE_integer("dense_epochs", 3, "Epochs of dense training before pruning.")
flags.DEFINE_integer("ramp_epochs", 2, "Epochs over which sparsity ramps from 0 to the target.")
flags.DEFINE_integer("hold_epochs", 1, "Epochs of fine-tuning at the final sparsity.")
flags.DEFINE_integer("frequency", 100, "Mask update frequency in steps (ours and tfmot).")
bench_common.define_data_flags()
flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate (dense training and fine-tuning).")
flags.DEFINE_enum("finetune_schedule", "constant", ["constant", "cosine"],
                  "Learning rate over the pruning/control fine-tuning epochs (ours and tfmot alike): constant "
                  "(the issue's protocol) or cosine-decayed to 0 (what tfc.compress does).")
flags.DEFINE_integer("seed", 0, "Random seed (same for every run).")
flags.DEFINE_integer("timing_rounds", 3, "Interleaved rounds of the overhead timing (0 skips it).")
flags.DEFINE_integer("timing_samples", 6400, "Training images per timed epoch.")
flags.DEFINE_bool("quick", False, "Smoke test: 4000 images, 1+1+1 epochs, one timing round.")
bench_common.define_tfmot_flags()
bench_common.define_output_flags()


def _settings():
    s = dict(
        sparsities=[float(v) for v in FLAGS.sparsities], dense_epochs=FLAGS.dense_epochs,
        ramp_epochs=FLAGS.ramp_epochs, hold_epochs=FLAGS.hold_epochs, frequency=FLAGS.frequency,
        batch_size=FLAGS.batch_size, learning_rate=FLAGS.learning_rate, train_limit=FLAGS.train_limit,
        finetune_schedule=FLAGS.finetune_schedule,
        test_limit=FLAGS.test_limit, seed=FLAGS.seed, timing_rounds=FLAGS.timing_rounds,
        timing_samples=FLAGS.timing_samples, block_sparsities=[float(v) for v in FLAGS.block_sparsities],
    )
    if FLAGS.timing_only:
        s.update(sparsities=[], block_sparsities=[], dense_epochs=0)
    if FLAGS.quick:
        s.update(dense_epochs=1, ramp_epochs=1, hold_epochs=1, train_limit=4000, test_limit=1000,
                 timing_rounds=1, timing_samples=1280, frequency=20)
    return s


def _finetune_learning_rate(s, steps, schedules):
    return bench_common.fine_tune_learning_rate(s["finetune_schedule"], s["learning_rate"], steps, schedules)


def _steps_per_epoch(s, n):
    return -(-n // s["batch_size"])


def _int8_metrics(tflite_int8, x_test, y_test, tflite_int8_sparse=None):
    import tfcompress as tfc

    report = tfc.evaluate_tflite(tflite_int8, x=x_test, y=y_test, backends=("xnnpack",),
                                 num_runs=1, warmup_runs=0, parity_samples=0)
    metrics = {"int8_accuracy": report.accuracy, "int8_gzip_bytes": bench_common.gzip_bytes(tflite_int8)}
    if tflite_int8_sparse is not None:
        metrics["int8_sparse_encoded_gzip_bytes"] = bench_common.gzip_bytes(tflite_int8_sparse)
    return metrics


# Ours -----------------------------------------------------------------------------------


def _ours(s):
    import keras

    import tfcompress as tfc

    (x, y), (x_test, y_test) = bench_common.fashion_mnist(s)
    spe = _steps_per_epoch(s, len(x))
    fit_kwargs = dict(batch_size=s["batch_size"], verbose=0)

    finetune_steps = (s["ramp_epochs"] + s["hold_epochs"]) * spe

    def fresh(weights):
        keras.utils.set_random_seed(s["seed"] + 1)
        model = tfc.zoo.compile_classifier(
            tfc.zoo.reference_cnn(),
            learning_rate=_finetune_learning_rate(s, finetune_steps, keras.optimizers.schedules))
        if weights is not None:
            model.set_weights(weights)
        return model

    keras.utils.set_random_seed(s["seed"])
    dense = tfc.zoo.compile_classifier(tfc.zoo.reference_cnn(), learning_rate=s["learning_rate"])
    if s["dense_epochs"]:
        dense.fit(x, y, epochs=s["dense_epochs"], **fit_kwargs)
    weights = dense.get_weights()
    float_bytes = len(tfc.to_tflite(dense, mode="float32"))

    results = {"float32_tflite_bytes": float_bytes,
               "dense_pretrained_accuracy": bench_common.accuracy(dense, x_test, y_test)}
    epochs = s["ramp_epochs"] + s["hold_epochs"]
    runs = [("dense control", None, "unstructured")] if s["sparsities"] or s["block_sparsities"] else []
    runs += [(f"tfcompress {v:.0%}", v, "unstructured") for v in s["sparsities"]]
    runs += [(f"tfcompress {v:.0%} block 4x1", v, "block") for v in s["block_sparsities"]]
    for name, sparsity, structure in runs:
        model = fresh(weights)
        callbacks = []
        if sparsity is not None:
            schedule = tfc.PolynomialDecay(0.0, sparsity, begin_step=0, end_step=s["ramp_epochs"] * spe,
                                           frequency=s["frequency"])
            callbacks = [tfc.PruningCallback(schedule, structure=structure, block_shape=(4, 1), verbose=0)]
        model.fit(x, y, epochs=epochs, callbacks=callbacks, **fit_kwargs)
        row = {"keras_accuracy": bench_common.accuracy(model, x_test, y_test),
               "sparsity": tfc.sparsity_report(model).overall if sparsity is not None else 0.0,
               "target": sparsity}
        if sparsity is not None:
            row["per_weight"] = dict(tfc.sparsity_report(model))
        row.update(_int8_metrics(
            tfc.to_tflite(model, mode="int8", representative_data=x[:200]), x_test, y_test,
            tfc.to_tflite(model, mode="int8", representative_data=x[:200], sparse=True),
        ))
        results[name] = row
        print(f"  {name}: {json.dumps({k: v for k, v in row.items() if k != 'per_weight'})}", flush=True)

    if s["timing_rounds"]:
        results["overhead"] = _ours_overhead(s, weights, x, y)
    return results, weights


def _interleaved_step_times(keras_module, rounds, fits):
    """Seconds per training step of each of ``fits`` (``{name: fit(timer)}``, one epoch each), per round.

    Each round runs one epoch of each, the order reversed every other round, so drifts of the machine's
    load hit both alike. Returns ``{name: [seconds per step, one per round]}``.
    """
    names = list(fits)
    times = {name: [] for name in names}
    for round_index in range(rounds):
        for name in (names if round_index % 2 == 0 else names[::-1]):
            timer = bench_common.step_timer(keras_module)
            fits[name](timer)
            times[name].append(timer.per_step)
    return times


def _ours_overhead(s, weights, x, y):
    import keras

    import tfcompress as tfc

    xt, yt = x[: s["timing_samples"]], y[: s["timing_samples"]]
    spe = _steps_per_epoch(s, len(xt))
    plain = tfc.zoo.compile_classifier(tfc.zoo.reference_cnn(), learning_rate=s["learning_rate"])
    pruned = tfc.zoo.compile_classifier(tfc.zoo.reference_cnn(), learning_rate=s["learning_rate"])
    plain.set_weights(weights)
    pruned.set_weights(weights)
    keras.utils.set_random_seed(s["seed"])

    class TimedPruningCallback(tfc.PruningCallback):
        """Also records the Python time the callback spends per batch: a load-robust overhead bound."""

        seconds, calls = 0.0, 0

        def on_train_batch_begin(self, batch, logs=None):
            start = time.perf_counter()
            super().on_train_batch_begin(batch, logs)
            self.seconds += time.perf_counter() - start
            self.calls += 1

    callback = TimedPruningCallback(
        tfc.PolynomialDecay(0.0, 0.75, 0, (s["timing_rounds"] + 1) * spe, frequency=s["frequency"]), verbose=0)
    kwargs = dict(batch_size=s["batch_size"], verbose=0, shuffle=False)
    plain.fit(xt, yt, epochs=1, **kwargs)  # warm-up: tracing, allocator
    pruned.fit(xt, yt, epochs=1, callbacks=[callback], **kwargs)
    callback.seconds, callback.calls = 0.0, 0
    times = _interleaved_step_times(keras, s["timing_rounds"], {
        "plain": lambda timer: plain.fit(xt, yt, epochs=1, callbacks=[timer], **kwargs),
        "pruned": lambda timer: pruned.fit(xt, yt, epochs=1, callbacks=[callback, timer], **kwargs),
    })
    ratios = [p / q for p, q in zip(times["pruned"], times["plain"])]
    plain_step_times = times["plain"]
    callback_share = (callback.seconds / max(callback.calls, 1)) / statistics.median(plain_step_times)
    return {"step_time_ratio": statistics.median(ratios), "ratios": ratios,
            "callback_python_time_per_step_share": callback_share}


# tfmot (subprocess, tf_keras) ---------------------------------------------------------------


def _tfmot_worker(job_path):
    import numpy as np
    import tensorflow as tf
    import tensorflow_model_optimization as tfmot
    import tf_keras

    job, s, weights = bench_common.read_tfmot_job(job_path)
    (x, y), (x_test, y_test) = bench_common.fashion_mnist(s)
    spe = _steps_per_epoch(s, len(x))
    sparsity_api = tfmot.sparsity.keras

    def pruned_model(sparsity, end_step):
        tf_keras.utils.set_random_seed(s["seed"] + 1)
        base = bench_common.tfmot_reference_cnn(tf_keras)
        base.set_weights(weights)
        schedule = sparsity_api.PolynomialDecay(0.0, sparsity, begin_step=0, end_step=end_step,
                                                frequency=s["frequency"])
        finetune_steps = (s["ramp_epochs"] + s["hold_epochs"]) * spe
        return bench_common.tfmot_compile(tf_keras, sparsity_api.prune_low_magnitude(base, pruning_schedule=schedule),
                                          _finetune_learning_rate(s, finetune_steps, tf_keras.optimizers.schedules))

    results = {}
    for sparsity in s["sparsities"]:
        model = pruned_model(sparsity, s["ramp_epochs"] * spe)
        model.fit(x, y, epochs=s["ramp_epochs"] + s["hold_epochs"], batch_size=s["batch_size"], verbose=0,
                  callbacks=[sparsity_api.UpdatePruningStep()])
        stripped = sparsity_api.strip_pruning(model)
        kernels = [v.numpy() for v in stripped.weights if "kernel" in v.name]
        zeros = sum(int(np.sum(k == 0)) for k in kernels) / sum(k.size for k in kernels)
        row = {"keras_accuracy": bench_common.accuracy(stripped, x_test, y_test), "sparsity": zeros,
               "target": sparsity}
        row.update(_int8_metrics(bench_common.tfmot_int8_tflite(tf, stripped, x), x_test, y_test,
                                 bench_common.tfmot_int8_tflite(tf, stripped, x, sparse=True)))
        results[f"tfmot {sparsity:.0%}"] = row
        print(f"  tfmot {sparsity:.0%}: {json.dumps(row)}", flush=True)

    if s["timing_rounds"]:
        xt, yt = x[: s["timing_samples"]], y[: s["timing_samples"]]
        spe_t = _steps_per_epoch(s, len(xt))
        plain = bench_common.tfmot_reference_cnn(tf_keras)
        plain.set_weights(weights)
        bench_common.tfmot_compile(tf_keras, plain, s["learning_rate"])
        pruned = pruned_model(0.75, (s["timing_rounds"] + 1) * spe_t)
        kwargs = dict(batch_size=s["batch_size"], verbose=0, shuffle=False)
        update_step = sparsity_api.UpdatePruningStep()
        plain.fit(xt, yt, epochs=1, **kwargs)
        pruned.fit(xt, yt, epochs=1, callbacks=[update_step], **kwargs)
        times = _interleaved_step_times(tf_keras, s["timing_rounds"], {
            "plain": lambda timer: plain.fit(xt, yt, epochs=1, callbacks=[timer], **kwargs),
            "pruned": lambda timer: pruned.fit(xt, yt, epochs=1, callbacks=[update_step, timer], **kwargs),
        })
        ratios = [p / q for p, q in zip(times["pruned"], times["plain"])]
        results["overhead"] = {"step_time_ratio": statistics.median(ratios), "ratios": ratios}
    bench_common.write_tfmot_results(job, results)


# Report ---------------------------------------------------------------------------------


def _markdown(s, ours, theirs):
    float_bytes = ours["float32_tflite_bytes"]
    control = ours.get("dense control")
    if control is None:  # --timing_only
        return "\n".join(_overhead_lines(ours, theirs)).strip()
    lines = [
        f"Fashion-MNIST, reference CNN: {s['dense_epochs']} dense epochs, then {s['ramp_epochs']} epochs of "
        f"PolynomialDecay ramp + {s['hold_epochs']} at the target (frequency {s['frequency']}), batch "
        f"{s['batch_size']}, Adam {s['learning_rate']:g}"
        f"{' cosine-decayed to 0 over the fine-tuning' if s['finetune_schedule'] == 'cosine' else ''}, seed {s['seed']}"
        f"{', ' + str(s['train_limit']) + ' training images' if s['train_limit'] else ''}. "
        f"float32 .tflite: {float_bytes / 1024:.1f} KiB.",
        "",
        "| run | target | measured sparsity | Keras acc | Δ vs dense | int8 acc | int8+gzip KiB "
        "| float32 / int8+gzip | sparse-encoded int8+gzip KiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    rows = [("dense control", control)]
    for v in s["sparsities"]:
        for name in (f"tfcompress {v:.0%}", f"tfmot {v:.0%}"):
            source = ours if name.startswith("tfcompress") else theirs
            if name in source:
                rows.append((name, source[name]))
    rows += [(f"tfcompress {v:.0%} block 4x1", ours[f"tfcompress {v:.0%} block 4x1"]) for v in s["block_sparsities"]]
    for name, r in rows:
        delta = (r["keras_accuracy"] - control["keras_accuracy"]) * 100
        target = "-" if r["target"] is None else f"{r['target']:.0%}"
        encoded = r.get("int8_sparse_encoded_gzip_bytes")
        encoded = "-" if encoded is None else f"{encoded / 1024:.1f}"
        lines.append(
            f"| {name} | {target} | {r['sparsity']:.1%} | "
            f"{r['keras_accuracy']:.2%} | {delta:+.1f} pt | {r['int8_accuracy']:.2%} | "
            f"{r['int8_gzip_bytes'] / 1024:.1f} | {float_bytes / r['int8_gzip_bytes']:.1f}x | {encoded} |"
        )
    return "\n".join(lines + _overhead_lines(ours, theirs))


def _overhead_lines(ours, theirs):
    lines = []
    for name, source in (("tfcompress", ours), ("tfmot", theirs)):
        if "overhead" in source:
            o = source["overhead"]
            lines.append(f"\n{name} training step time with pruning / without: {o['step_time_ratio']:.3f} "
                         f"(rounds: {', '.join(f'{r:.3f}' for r in o['ratios'])}; shared machine, indicative only)")
            if "callback_python_time_per_step_share" in o:
                lines.append(f"{name} callback Python time per step / plain step time: "
                             f"{o['callback_python_time_per_step_share']:.2%} (mask updates included)")
    return lines


def main():
    s = _settings()
    print("tfcompress runs:", flush=True)
    ours, weights = _ours(s)
    theirs = {}
    if FLAGS.tfmot:
        print("tfmot runs (subprocess, tf_keras):", flush=True)
        with tempfile.TemporaryDirectory(prefix="bench_pruning_") as workdir:
            theirs = bench_common.run_tfmot(__file__, s, weights, workdir)
    table = _markdown(s, ours, theirs) + "\n\n" + bench_common.timed_on()
    print(table)
    bench_common.write_outputs(table, {"settings": s, "tfcompress": ours, "tfmot": theirs})


if __name__ == "__main__":
    bench_common.run(main, tfmot_worker=_tfmot_worker)
