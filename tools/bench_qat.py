"""Quantization-aware training benchmark on Fashion-MNIST: float vs PTQ vs our QAT vs tfmot QAT vs PQAT.

The reference CNN is trained in float first (``float_epochs``). From those
weights:

* float32 (QAT starting point): the float model as a float32 .tflite.
* float32: the float model fine-tuned for ``qat_epochs`` more epochs at the QAT
  learning rate, the baseline with the same training budget as QAT.
* PTQ int8: post-training int8 of that model (``to_tflite(mode="int8")``).
* tfcompress QAT: ``quantize_model`` + ``qat_epochs`` of fine-tuning (ranges and
  folded BN frozen for the last epoch when there are 2 or more), then int8.
* tfmot QAT: tfmot's ``quantize_model`` under tf_keras (subprocess), same
  weights, data, epochs, batch, learning rate and seed, converted the same way.
* pruned + tfcompress QAT: ``PruningCallback`` to ``sparsity`` over
  ``prune_epochs``, then our QAT; the .tflite's kernel sparsity shows the zeros
  survived.

Every .tflite is scored on the whole test set (10k) with LiteRT (XNNPACK).

Coverage: Keras applications MobileNetV2 (alpha 0.35) and EfficientNetB0 at
96x96 with random weights (weights=None): the QAT model builds, converts with
int8 ops only, and its top-1 is compared with the .tflite's on
``coverage_samples`` inputs (Fashion-MNIST upscaled to 96x96x3). Random-weight
networks with BatchNormalization amplify tiny rounding differences layer after
layer, so before quantizing the float network gets ``coverage_epochs`` of
training on ``coverage_train`` upscaled images and its BN statistics are
re-estimated on them, then one QAT epoch with ranges and BN frozen (random
weights, then a few steps: no download). The .tflite runs on XNNPACK and on
TFLite's built-in kernels: the two round int8 results differently (XNNPACK
requantizes in float32, the built-in kernels in fixed point with two roundings),
so their agreement with each other shows how much of a disagreement is the
network amplifying 1-step differences rather than the simulation being off.

Where QAT starts (``--start``): PTQ vs QAT after 0 and 1 epochs on trained models, in the setting of a
user's report (Adam ``--start_learning_rate``, ``--start_samples`` unlabeled training inputs, targets = the float
model's own outputs, batch 32): the reference CNN on Fashion-MNIST (inputs in [0, 1]), a ResNet-8-style CNN with
BatchNormalization on raw 0-255 pixels, and a Dense autoencoder whose activations reach hundreds. Rows: PTQ int8;
QAT converted right after ``quantize_model(model, x[:500])`` (0 epochs: must equal PTQ); QAT after 1 epoch from
that calibrated start, and from no data (ranges from the first batches); the dense control fine-tuned the same
epoch (float, and its own PTQ). Scores: top-1 agreement with the float model and test accuracy (classifiers),
relative output error ``||file - float|| / ||float||`` (autoencoder), every file on XNNPACK.

Every run is repeated for each of ``--seeds`` (the table shows means); the
fine-tuning learning rate is cosine-decayed to 0, as ``tfc.compress`` does,
for QAT, tfmot QAT and the float control alike (``--qat_schedule=constant``
for a flat rate).

Usage:
    python tools/bench_qat.py                 # full: 3 seeds x (60k images, 3 float + 2 QAT epochs, tfmot), coverage
    python tools/bench_qat.py --quick         # smoke test (a few minutes; accuracies meaningless)
    python tools/bench_qat.py --notfmot --nocoverage --seeds=0 --output=/tmp/qat.md
    python tools/bench_qat.py --noaccuracy    # coverage only
    python tools/bench_qat.py --quick --noaccuracy --nocoverage --notfmot   # where QAT starts only (~3 min)
"""

import json
import tempfile

from absl import flags

import bench_common  # tools/ is on sys.path: it is the script's own folder

FLAGS = flags.FLAGS
flags.DEFINE_integer("float_epochs", 3, "Epochs of float training before quantization.")
flags.DEFINE_integer("qat_epochs", 2, "Epochs of quantization-aware fine-tuning (ours and tfmot).")
flags.DEFINE_integer("prune_epochs", 2, "Epochs of pruning (ramp over the first 70%) before PQAT.")
flags.DEFINE_float("sparsity", 0.75, "Target sparsity of the pruned + QAT run.")
bench_common.define_data_flags()
flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate of float training and pruning.")
flags.DEFINE_float("qat_learning_rate", 1e-4, "Adam learning rate of QAT fine-tuning (ours and tfmot).")
flags.DEFINE_integer("calibration_samples", 200, "Representative samples given to the converter.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Random seeds; every run is repeated per seed and the table shows means.")
flags.DEFINE_enum("qat_schedule", "cosine", ["cosine", "constant"],
                  "Learning rate over the fine-tuning epochs (QAT, tfmot QAT and the float control alike): "
                  "cosine-decayed to 0 (what tfc.compress does) or constant.")
flags.DEFINE_bool("accuracy", True, "Run the reference-CNN accuracy comparison (--noaccuracy: coverage only).")
flags.DEFINE_bool("coverage", True, "Run the MobileNetV2 / EfficientNetB0 coverage check.")
flags.DEFINE_list("coverage_models", ["MobileNetV2", "EfficientNetB0"], "Keras applications to check.")
flags.DEFINE_integer("coverage_train", 4096, "Upscaled training images for the coverage models.")
flags.DEFINE_integer("coverage_epochs", 2, "Float epochs of the coverage models before QAT (1 QAT epoch follows).")
flags.DEFINE_integer("coverage_samples", 512, "Inputs on which Keras and TFLite top-1 are compared.")
flags.DEFINE_bool("start", True, "Run the PTQ vs QAT after 0 and 1 epochs comparison (--nostart: skip it).")
flags.DEFINE_integer("start_samples", 2000, "Unlabeled training inputs of the 1-epoch QAT / control fine-tuning.")
flags.DEFINE_float("start_learning_rate", 1e-5, "Adam learning rate of the 1-epoch QAT / control fine-tuning.")
flags.DEFINE_bool("quick", False, "Smoke test: 4000 images, 1 epoch each, small coverage runs.")
bench_common.define_tfmot_flags("Also run tfmot QAT under tf_keras in a subprocess.")
bench_common.define_output_flags()


def _settings():
    s = dict(
        float_epochs=FLAGS.float_epochs, qat_epochs=FLAGS.qat_epochs, prune_epochs=FLAGS.prune_epochs,
        sparsity=FLAGS.sparsity, batch_size=FLAGS.batch_size, learning_rate=FLAGS.learning_rate,
        qat_learning_rate=FLAGS.qat_learning_rate, calibration_samples=FLAGS.calibration_samples,
        train_limit=FLAGS.train_limit, test_limit=FLAGS.test_limit, seeds=[int(v) for v in FLAGS.seeds],
        seed=int(FLAGS.seeds[0]), qat_schedule=FLAGS.qat_schedule,
        coverage_models=list(FLAGS.coverage_models), coverage_train=FLAGS.coverage_train,
        coverage_epochs=FLAGS.coverage_epochs, coverage_samples=FLAGS.coverage_samples,
        start_samples=FLAGS.start_samples, start_learning_rate=FLAGS.start_learning_rate, start_float_epochs=3,
    )
    if FLAGS.quick:
        s.update(float_epochs=1, qat_epochs=1, prune_epochs=1, train_limit=4000, test_limit=1000,
                 coverage_train=256, coverage_epochs=1, coverage_samples=128, start_float_epochs=2)
    return s


def _tflite_metrics(tflite, x_test, y_test):
    import tfcompress as tfc

    report = tfc.evaluate_tflite(tflite, x=x_test, y=y_test, backends=("xnnpack",), num_runs=1, warmup_runs=0,
                                 parity_samples=0)
    info = tfc.inspect_tflite(bytes(tflite))
    int8_kernels = [w for w in info.kernels if w.dtype == "int8"]
    return {
        "tflite_accuracy": report.accuracy,
        "bytes": len(tflite),
        "gzip_bytes": bench_common.gzip_bytes(tflite),
        "sparsity": info.sparsity,
        "zero_weights": int(round(sum(w.zero_fraction * w.size for w in int8_kernels))),
        "float_compute_ops": sorted({op.type for op in info.float_compute_ops()}),
    }


def _fine_tune_learning_rate(s, train_size, schedules):
    steps = s["qat_epochs"] * -(-train_size // s["batch_size"])
    return bench_common.fine_tune_learning_rate(s["qat_schedule"], s["qat_learning_rate"], steps, schedules)


# Ours -----------------------------------------------------------------------------------


def _ours(s):
    import keras
    import numpy as np

    import tfcompress as tfc

    (x, y), (x_test, y_test) = bench_common.fashion_mnist(s)
    representative = x[: s["calibration_samples"]]
    fit_kwargs = dict(batch_size=s["batch_size"], verbose=0)
    results = {}

    keras.utils.set_random_seed(s["seed"])
    base = tfc.zoo.compile_classifier(tfc.zoo.reference_cnn(), learning_rate=s["learning_rate"])
    base.fit(x, y, epochs=s["float_epochs"], **fit_kwargs)
    weights = base.get_weights()

    float_row = {"keras_accuracy": bench_common.accuracy(base, x_test, y_test)}
    float_row.update(_tflite_metrics(tfc.to_tflite(base, mode="float32"), x_test, y_test))
    results["float32 (QAT starting point)"] = float_row
    print(f"  float32 start: {json.dumps(float_row)}", flush=True)

    # The fair float baseline: the same extra epochs, at the same learning rate, as QAT gets.
    keras.utils.set_random_seed(s["seed"] + 1)
    control = tfc.zoo.compile_classifier(tfc.zoo.reference_cnn(),
                                         learning_rate=_fine_tune_learning_rate(s, len(x), keras.optimizers.schedules))
    control.set_weights(weights)
    control.fit(x, y, epochs=s["qat_epochs"], **fit_kwargs)
    control_row = {"keras_accuracy": bench_common.accuracy(control, x_test, y_test)}
    control_row.update(_tflite_metrics(tfc.to_tflite(control, mode="float32"), x_test, y_test))
    results["float32"] = control_row
    print(f"  float32: {json.dumps(control_row)}", flush=True)

    ptq_row = {"keras_accuracy": control_row["keras_accuracy"]}
    ptq_row.update(_tflite_metrics(tfc.to_tflite(control, mode="int8", representative_data=representative),
                                   x_test, y_test))
    results["PTQ int8"] = ptq_row
    print(f"  PTQ int8: {json.dumps(ptq_row)}", flush=True)

    def qat(model):
        keras.utils.set_random_seed(s["seed"] + 1)
        qat_model = tfc.zoo.compile_classifier(
            tfc.quantize_model(model), learning_rate=_fine_tune_learning_rate(s, len(x), keras.optimizers.schedules))
        callbacks = []
        if s["qat_epochs"] >= 2:
            callbacks.append(tfc.quantization.FreezeQuantization(start_epoch=s["qat_epochs"] - 1))
        qat_model.fit(x, y, epochs=s["qat_epochs"], callbacks=callbacks, **fit_kwargs)
        row = {"keras_accuracy": bench_common.accuracy(qat_model, x_test, y_test)}
        row.update(_tflite_metrics(tfc.to_tflite(qat_model, mode="int8", representative_data=representative),
                                   x_test, y_test))
        return row

    results["tfcompress QAT int8"] = qat(base)
    print(f"  tfcompress QAT int8: {json.dumps(results['tfcompress QAT int8'])}", flush=True)

    keras.utils.set_random_seed(s["seed"] + 2)
    pruned = tfc.zoo.compile_classifier(tfc.zoo.reference_cnn(), learning_rate=s["learning_rate"])
    pruned.set_weights(weights)
    steps = s["prune_epochs"] * -(-len(x) // s["batch_size"])
    schedule = tfc.PolynomialDecay(0.0, s["sparsity"], begin_step=0, end_step=max(1, int(0.7 * steps)),
                                   frequency=max(1, steps // 20))
    pruned.fit(x, y, epochs=s["prune_epochs"], callbacks=[tfc.PruningCallback(schedule, verbose=0)], **fit_kwargs)
    kernels = [layer.kernel.numpy() for layer in pruned.layers if hasattr(layer, "kernel")]
    zeros_before = int(sum(np.sum(k == 0) for k in kernels))
    row = qat(pruned)
    row["pruned_keras_accuracy"] = bench_common.accuracy(pruned, x_test, y_test)
    row["zeros_before_qat"] = zeros_before
    row["zeros_kept"] = row["zero_weights"] / max(zeros_before, 1)
    results[f"pruned {s['sparsity']:.0%} + tfcompress QAT int8"] = row
    print(f"  pruned + QAT: {json.dumps(row)}", flush=True)
    return results, weights


# Coverage -------------------------------------------------------------------------------


def _coverage(s):
    import keras
    import numpy as np

    import tfcompress as tfc

    (x, y), (x_test, _) = tfc.datasets.fashion_mnist(limit_train=s["coverage_train"],
                                                       limit_test=s["coverage_samples"])

    def upscale(images):
        resized = keras.ops.convert_to_numpy(keras.ops.image.resize(images, (96, 96)))
        return np.repeat(resized, 3, axis=-1) * 255.0

    results = {}
    for name in s["coverage_models"]:
        keras.utils.set_random_seed(s["seed"])
        if name == "MobileNetV2":
            model = keras.applications.MobileNetV2(input_shape=(96, 96, 3), alpha=0.35, weights=None, classes=10,
                                                   classifier_activation=None)
            prepare = keras.applications.mobilenet_v2.preprocess_input
        elif name == "EfficientNetB0":
            model = keras.applications.EfficientNetB0(input_shape=(96, 96, 3), weights=None, classes=10,
                                                      classifier_activation=None)
            prepare = keras.applications.efficientnet.preprocess_input
        else:
            raise ValueError(f"--coverage_models: unknown model {name!r}; use MobileNetV2 or EfficientNetB0.")
        x_train, x_eval = prepare(upscale(x)).astype("float32"), prepare(upscale(x_test)).astype("float32")
        tfc.zoo.compile_classifier(model)
        model.fit(x_train, y, epochs=s["coverage_epochs"], batch_size=32, verbose=0)
        bench_common.reestimate_batch_norm(model, x_train)
        row = {}
        try:
            qat = tfc.quantize_model(model)
            row["float_layers"] = qat.quantization_report.float_layers
            row["folded_bn"] = len(qat.quantization_report.folded)
            tfc.quantization.calibrate(qat, x_train[:256], batch_size=32)
            # One QAT epoch with ranges and BN frozen: the network learns to tolerate int8 rounding.
            tfc.quantization.freeze(qat)
            tfc.zoo.compile_classifier(qat, learning_rate=1e-4)
            qat.fit(x_train, y, epochs=1, batch_size=32, verbose=0)
            tflite = tfc.to_tflite(qat, mode="int8", representative_data=x_train[:32])
            info = tflite.info
            row["float_compute_ops"] = sorted({op.type for op in info.float_compute_ops()})
            row["op_census"] = info.op_census_by_dtype
            keras_top1 = np.argmax(qat.predict(x_eval, verbose=0, batch_size=64), -1)
            tflite_top1 = np.argmax(_run_tflite(tflite, x_eval), -1)
            builtin_top1 = np.argmax(_run_tflite(tflite, x_eval, builtin_kernels=True), -1)
            row["top1_agreement"] = float(np.mean(keras_top1 == tflite_top1))
            # The same file on TFLite's built-in int8 kernels, which round differently from XNNPACK:
            # how far two correct int8 runtimes disagree on this network bounds any simulation's agreement.
            row["top1_agreement_builtin"] = float(np.mean(keras_top1 == builtin_top1))
            row["xnnpack_vs_builtin"] = float(np.mean(tflite_top1 == builtin_top1))
            row["distinct_predictions"] = int(len(np.unique(keras_top1)))
            row["bytes"] = len(tflite)
        except Exception as exc:  # noqa: BLE001 - a coverage failure is a result to report
            row["error"] = f"{type(exc).__name__}: {str(exc)[:500]}"
        results[name] = row
        print(f"  {name}: {json.dumps({k: v for k, v in row.items() if k != 'op_census'})}", flush=True)
    return results


def _run_tflite(tflite, x, builtin_kernels=False):
    """Float outputs of a float-I/O .tflite for all of ``x`` in one call (XNNPACK, or the built-in kernels)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    resolver = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES if builtin_kernels else OpResolverType.AUTO
    interpreter = Interpreter(model_content=bytes(tflite), experimental_op_resolver_type=resolver)
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    interpreter.resize_tensor_input(inp["index"], x.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], x)
    interpreter.invoke()
    return interpreter.get_tensor(out["index"])



# Where QAT starts: PTQ vs QAT after 0 and 1 epochs --------------------------------------------


def _resnet8(keras, bn_momentum, input_shape=(28, 28, 1)):
    layers = keras.layers

    def bn():
        return layers.BatchNormalization(momentum=bn_momentum)

    inputs = keras.Input(input_shape)
    h = layers.ReLU()(bn()(layers.Conv2D(16, 3, padding="same", use_bias=False)(inputs)))
    for filters, stride in ((16, 1), (32, 2), (64, 2)):
        b = layers.Conv2D(filters, 3, stride, padding="same", use_bias=False)(h)
        b = layers.ReLU()(bn()(b))
        b = bn()(layers.Conv2D(filters, 3, padding="same", use_bias=False)(b))
        shortcut = h if stride == 1 and h.shape[-1] == filters else layers.Conv2D(filters, 1, stride, use_bias=False)(h)
        h = layers.ReLU()(layers.Add()([b, shortcut]))
    return keras.Model(inputs, layers.Dense(10)(layers.GlobalAveragePooling2D()(h)), name="resnet8_raw_pixels")


def _dense_autoencoder(keras):
    layers = keras.layers
    inputs = keras.Input((784,))
    h = layers.Dense(32)(layers.Dense(128, activation="relu")(inputs))
    outputs = layers.Dense(784)(layers.Dense(128, activation="relu")(h))
    return keras.Model(inputs, outputs, name="dense_autoencoder")


def _start(s):
    import keras
    import numpy as np

    import tfcompress as tfc
    from tfcompress.evaluation import litert

    (x, y), (x_test, y_test) = bench_common.fashion_mnist(s)
    # Keras's BN momentum 0.99 needs ~1,000 steps before the moving statistics fit the data; the quick mode's
    # float training is shorter, so it uses 0.9 (as the zoo advises for short runs).
    momentum = 0.9 if s["start_float_epochs"] * len(x) // s["batch_size"] < 1000 else 0.99
    cases = [("reference CNN, inputs 0-1", lambda: tfc.zoo.reference_cnn(bn_momentum=momentum), x, x_test,
              "classifier"),
             ("ResNet-8 + BN, raw 0-255 inputs", lambda: _resnet8(keras, momentum), 255.0 * x, 255.0 * x_test,
              "classifier"),
             ("Dense autoencoder, raw 0-255", lambda: _dense_autoencoder(keras), 255.0 * x.reshape(len(x), -1),
              255.0 * x_test.reshape(len(x_test), -1), "autoencoder")]
    results = {}
    for name, build, train, test, kind in cases:
        keras.utils.set_random_seed(s["seed"])
        model = build()
        if kind == "classifier":
            tfc.zoo.compile_classifier(model, learning_rate=s["learning_rate"])
            model.fit(train, y, epochs=s["start_float_epochs"], batch_size=s["batch_size"], verbose=0)
        else:
            model.compile(keras.optimizers.Adam(s["learning_rate"]), "mse")
            model.fit(train, train, epochs=2 * s["start_float_epochs"], batch_size=s["batch_size"], verbose=0)
        reference = model.predict(test, verbose=0, batch_size=512)
        unlabeled = train[: s["start_samples"]]
        targets = model.predict(unlabeled, verbose=0, batch_size=512)
        representative = train[:500]

        def score(tflite, outputs=None):
            out = litert.predict(bytes(tflite), test) if outputs is None else outputs
            if kind == "autoencoder":
                return {"relative_error": float(np.linalg.norm(out - reference) / np.linalg.norm(reference))}
            return {"agreement": float(np.mean(out.argmax(1) == reference.argmax(1))),
                    "accuracy": float(np.mean(out.argmax(1) == y_test))}

        def one_epoch(net):
            keras.utils.set_random_seed(s["seed"] + 1)
            net.compile(keras.optimizers.Adam(s["start_learning_rate"]), "mse")
            net.fit(unlabeled, targets, epochs=1, batch_size=32, verbose=0)
            return net

        rows = {"float (start)": score(None, reference)}
        rows["PTQ int8"] = score(tfc.to_tflite(model, mode="int8", representative_data=representative))
        rows["QAT 0 epochs (calibrated start)"] = score(tfc.to_tflite(tfc.quantize_model(model, representative),
                                                                      mode="int8"))
        rows["QAT 1 epoch, calibrated start"] = score(tfc.to_tflite(one_epoch(tfc.quantize_model(model, representative)),
                                                                    mode="int8"))
        rows["QAT 1 epoch, no data (first batches)"] = score(tfc.to_tflite(one_epoch(tfc.quantize_model(model)),
                                                                           mode="int8"))
        control = keras.models.clone_model(model)
        control.set_weights(model.get_weights())
        one_epoch(control)
        rows["float control, 1 epoch"] = score(None, control.predict(test, verbose=0, batch_size=512))
        rows["PTQ int8 of the control"] = score(tfc.to_tflite(control, mode="int8", representative_data=representative))
        results[name] = rows
        print(f"  {name}: {json.dumps(rows)}", flush=True)
    return results


def _start_markdown(s, results):
    if not results:
        return ""
    names = list(next(iter(results.values())))
    lines = [f"Where QAT starts: Fashion-MNIST ({s['train_limit'] or 60000} training images, "
             f"{s['test_limit'] or 10000} test), 1 epoch = Adam {s['start_learning_rate']:g} on "
             f"{s['start_samples']} unlabeled inputs towards the float model's outputs (batch 32); PTQ and the "
             "calibrated start use 500 training inputs. Classifiers: top-1 agreement with the float model / test "
             "accuracy; autoencoder: relative output error (lower is better).", "",
             "| model | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for model, rows in results.items():
        cells = []
        for name in names:
            r = rows[name]
            cells.append(f"{r['relative_error']:.4f}" if "relative_error" in r
                         else f"{r['agreement']:.1%} / {r['accuracy']:.1%}")
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# tfmot (subprocess, tf_keras) ---------------------------------------------------------------


def _tfmot_worker(job_path):
    import tensorflow as tf
    import tensorflow_model_optimization as tfmot
    import tf_keras

    job, s, weights = bench_common.read_tfmot_job(job_path)
    (x, y), (x_test, y_test) = bench_common.fashion_mnist(s)
    base = bench_common.tfmot_reference_cnn(tf_keras)
    base.set_weights(weights)
    tf_keras.utils.set_random_seed(s["seed"] + 1)
    model = bench_common.tfmot_compile(tf_keras, tfmot.quantization.keras.quantize_model(base),
                                       _fine_tune_learning_rate(s, len(x), tf_keras.optimizers.schedules))
    model.fit(x, y, epochs=s["qat_epochs"], batch_size=s["batch_size"], verbose=0)
    row = {"keras_accuracy": bench_common.accuracy(model, x_test, y_test)}
    row.update(_tflite_metrics(bench_common.tfmot_int8_tflite(tf, model, x, s["calibration_samples"]), x_test, y_test))
    print(f"  tfmot QAT int8: {json.dumps(row)}", flush=True)
    bench_common.write_tfmot_results(job, {"tfmot QAT int8": row})


# Report ---------------------------------------------------------------------------------


def _mean_std(values):
    import numpy as np

    return float(np.mean(values)), float(np.std(values))


def _markdown(s, ours_runs, theirs_runs, coverage):
    """The results table; with several seeds, accuracies are means (± standard deviation over seeds)."""
    if not ours_runs:
        return _coverage_markdown(s, coverage)
    seeds = s["seeds"]
    schedule = "cosine-decayed to 0" if s["qat_schedule"] == "cosine" else "constant"
    lines = [
        f"Fashion-MNIST, reference CNN: {s['float_epochs']} float epochs, then {s['qat_epochs']} epochs of QAT "
        f"(or of float fine-tuning for the float32 baseline) "
        f"(Adam {s['qat_learning_rate']:g} {schedule}, batch {s['batch_size']}, "
        f"{'seeds ' + ', '.join(map(str, seeds)) + ': mean ± std over seeds' if len(seeds) > 1 else f'seed {seeds[0]}'}"
        f"{', ' + str(s['train_limit']) + ' training images' if s['train_limit'] else ''}); "
        f"every .tflite scored on {'all 10k' if not s['test_limit'] else s['test_limit']} test images (XNNPACK).",
        "",
        "| run | Keras acc | TFLite acc | Δ vs float TFLite | Keras − TFLite | size KiB | gzip KiB "
        "| kernel sparsity in .tflite | float ops |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    names = ["float32 (QAT starting point)", "float32", "PTQ int8", "tfcompress QAT int8"]
    names += [name for name in (theirs_runs[0] if theirs_runs and theirs_runs[0] else {})]
    names += [name for name in ours_runs[0] if name.startswith("pruned")]

    floats_by_seed = [run["float32"]["tflite_accuracy"] for run in ours_runs]

    def runs_of(name):
        """[(row, float32 TFLite accuracy of the same seed)] over the seeds where ``name`` ran."""
        source = ours_runs if name in ours_runs[0] else theirs_runs
        return [(run[name], f) for run, f in zip(source, floats_by_seed) if run and name in run]

    for name in names:
        pairs = runs_of(name)
        if not pairs:
            continue
        runs = [r for r, _ in pairs]
        keras_acc, _ = _mean_std([r["keras_accuracy"] for r in runs])
        tflite_acc, tflite_std = _mean_std([r["tflite_accuracy"] * 100 for r in runs])
        delta, delta_std = _mean_std([(r["tflite_accuracy"] - f) * 100 for r, f in pairs])
        gap, _ = _mean_std([(r["keras_accuracy"] - r["tflite_accuracy"]) * 100 for r in runs])

        def spread(std):
            return f" ± {std:.2f}" if len(runs) > 1 else ""

        r = runs[0]
        floats = ", ".join(r["float_compute_ops"]) if "int8" in name and r["float_compute_ops"] else "-"
        lines.append(
            f"| {name} | {keras_acc:.2%} | {tflite_acc:.2f}%{spread(tflite_std)} | "
            f"{delta:+.2f}{spread(delta_std)} pt | {gap:+.2f} pt | {r['bytes'] / 1024:.1f} | "
            f"{r['gzip_bytes'] / 1024:.1f} | {r['sparsity']:.1%} | {floats} |"
        )
    pruned = [run[name] for run in ours_runs for name in run if name.startswith("pruned")]
    if pruned:
        kept = min(r["zeros_kept"] for r in pruned)
        r = pruned[0]
        lines.append(
            f"\nPruned + QAT (seed {seeds[0]}): {r['zeros_before_qat']} zero kernel weights before QAT, "
            f"{r['zero_weights']} zero int8 kernel weights in the .tflite; fewest kept over seeds: {kept:.1%}."
        )
    if len(seeds) > 1:
        qat_deltas = [(run["tfcompress QAT int8"]["tflite_accuracy"] - f) * 100
                      for run, f in zip(ours_runs, floats_by_seed)]
        lines.append(f"\ntfcompress QAT int8 vs float32 per seed: "
                     f"{', '.join(f'{seed}: {d:+.2f}' for seed, d in zip(seeds, qat_deltas))} pt.")
    return "\n".join(lines + ["", _coverage_markdown(s, coverage)])


def _coverage_markdown(s, coverage):
    lines = []
    if coverage:
        lines += ["| coverage (96x96, random init + short training) | float layers | folded BN | float ops in .tflite "
                  "| Keras vs TFLite top-1 agreement (XNNPACK) | Keras vs built-in kernels | XNNPACK vs built-in kernels |",
                  "|---|---|---|---|---|---|---|"]
        for name, r in coverage.items():
            if "error" in r:
                lines.append(f"| {name} | - | - | failed: {r['error']} | - | - | - |")
                continue
            floats = ", ".join(layer for layer, _ in r["float_layers"]) or "none"
            ops = ", ".join(r["float_compute_ops"]) or "none (int8 only)"
            lines.append(f"| {name} | {floats} | {r['folded_bn']} | {ops} | "
                         f"{r['top1_agreement']:.1%} of {s['coverage_samples']} | {r['top1_agreement_builtin']:.1%} | "
                         f"{r['xnnpack_vs_builtin']:.1%} |")
    return "\n".join(lines)


def main():
    s = _settings()
    ours_runs, theirs_runs = [], []
    for seed in (s["seeds"] if FLAGS.accuracy else []):
        run = dict(s, seed=seed)
        print(f"seed {seed}: tfcompress runs:", flush=True)
        ours, weights = _ours(run)
        ours_runs.append(ours)
        if FLAGS.tfmot:
            print(f"seed {seed}: tfmot run (subprocess, tf_keras):", flush=True)
            with tempfile.TemporaryDirectory(prefix="bench_qat_") as workdir:
                theirs_runs.append(bench_common.run_tfmot(__file__, run, weights, workdir))
    start = {}
    if FLAGS.start:
        print("where QAT starts:", flush=True)
        start = _start(dict(s, seed=s["seeds"][0]))
    coverage = {}
    if FLAGS.coverage:
        print("coverage:", flush=True)
        coverage = _coverage(s)
    table = "\n\n".join(part for part in (_start_markdown(s, start),
                                            _markdown(s, ours_runs, theirs_runs, coverage).rstrip()) if part)
    table += "\n\n" + bench_common.timed_on()
    print(table)
    bench_common.write_outputs(table, {"settings": s, "tfcompress": ours_runs, "tfmot": theirs_runs,
                                       "coverage": coverage, "start": start}, json_default=str)


if __name__ == "__main__":
    bench_common.run(main, tfmot_worker=_tfmot_worker)
