"""Sensitivity, accuracy budget, calibration methods and untrained-QAT conversion, measured on Fashion-MNIST.

Four tables, for the APIs that help when int8 hurts:

1. ``tfc.quantization_sensitivity``: the most sensitive layers (lowest local
   SQNR) of the MobileNet-style model and of Keras MobileNetV2 (96x96, alpha per
   ``--mnv2_alphas``), with the accuracy of real int8 files in which only that
   layer is float / only that layer is int8 for the top ``--accuracy_layers``
   (where the API's own accuracy pass raises, its SQNR report is kept and the
   columns are measured one ``to_tflite(keep_float=...)`` at a time, a failed
   conversion shown as —, and the table says so).
2. Plain int8 vs ``to_tflite(mode="int8", max_accuracy_drop=..., validation_data=...)``:
   the layers the budget keeps float, accuracy on a held-out validation split
   (carved from the training data, which the budget checks) and on the test set,
   size and XNNPACK 1-thread latency (every file of a model timed together by
   ``tfc.evaluate_many``), against the float32 file. Besides the naturally
   trained models, a reference CNN whose ``fc1`` has one outlier unit (its
   output ``--outlier_scale`` times larger, the logits' weights for it that much
   smaller: the same float function, since ReLU is positively homogeneous) shows
   a model plain per-tensor int8 breaks. The MobileNet-style model also gets a
   tighter budget (``--tight_budget``), since plain int8 usually meets 0.5 pt.
   The "float ops in file" column counts what is float in the file, which can
   be more than the layers the budget names.
3. ``calibration=`` None (the converter's min-max) / "minmax" / "percentile" /
   "mse" on the MobileNet-style model with clean calibration data and with a few
   glitched pixels in it (value ``--glitch_value`` in images that live in
   [0, 1]), and on the outlier-unit CNN: test accuracy, top-1 agreement with
   Keras, output MSE against the float logits.
4. An untrained QAT model (``quantize_model`` straight after float training)
   converted to int8: top-1 agreement with the float model of plain PTQ, of the
   old behaviour (the initial [-6, 6] ranges converted as if trained: emulated by
   marking every ActivationQuantizer as updated without touching its range), and
   of today's (the never-trained ranges calibrated from representative_data).

MobileNetV2 gets Fashion-MNIST upscaled to 96x96x3 (bilinear, channels tiled,
scaled to [-1, 1] as ``mobilenet_v2.preprocess_input`` does) and a short
training; every model's BatchNormalization statistics are re-estimated on one
large training batch afterwards (a few hundred steps leave them stale).

Usage:
    python tools/bench_sensitivity.py --out=/tmp/sensitivity.json           # full (~20 min on 2 idle cores)
    python tools/bench_sensitivity.py --quick --out=/tmp/sensitivity_quick.json   # smoke test (a few minutes)
    python tools/bench_sensitivity.py --mnv2_alphas=0.35,1.0 --max_accuracy_drop=0.2   # + MobileNetV2 1.0 (~15 min)

Prints markdown tables (pasted into the README) and, with --out, writes every
number as JSON.
"""

import dataclasses
import json
import time

import numpy as np
from absl import flags

# bench_common first (tools/ is on sys.path: it is the script's own folder): it puts this checkout on sys.path.
import bench_common
import tfcompress as tfc
from tfcompress.export import sensitivity

FLAGS = flags.FLAGS
flags.DEFINE_boolean("quick", False, "Smoke test: little data, 1 epoch, MobileNetV2 alpha 0.35 only (numbers meaningless).")
flags.DEFINE_integer("seed", 0, "Random seed of every training run.")
flags.DEFINE_integer("train_images", 20000, "Fashion-MNIST training images of the 28x28 models (validation excluded).")
flags.DEFINE_integer("val_images", 2000, "Held-out validation images carved from the training set (28x28 models).")
flags.DEFINE_integer("test_limit", None, "Test images of the 28x28 models (None: all 10k).")
flags.DEFINE_integer("epochs", 2, "Training epochs of the 28x28 models.")
flags.DEFINE_integer("batch_size", 128, "Batch size of the 28x28 models.")
flags.DEFINE_list("mnv2_alphas", ["0.35"], "MobileNetV2 width multipliers to run (empty: none; 1.0 adds ~15 min).")
flags.DEFINE_integer("mnv2_train", 3000, "Upscaled training images of MobileNetV2.")
flags.DEFINE_integer("mnv2_epochs", 2, "Training epochs of MobileNetV2.")
flags.DEFINE_integer("mnv2_val", 1000, "Upscaled validation images of MobileNetV2 (carved from the training set).")
flags.DEFINE_integer("mnv2_test", 2000, "Upscaled test images of MobileNetV2.")
flags.DEFINE_integer("calibration_samples", 200, "Representative samples given to the converter.")
flags.DEFINE_integer("accuracy_layers", 4, "Layers (most sensitive first) that get the sensitivity accuracy columns.")
flags.DEFINE_integer("sqnr_samples", 200, "Samples on which quantization_sensitivity measures SQNR.")
flags.DEFINE_integer("mnv2_accuracy_layers", 3, "Layers of MobileNetV2 that get the sensitivity accuracy columns.")
flags.DEFINE_integer("mnv2_sqnr_samples", 100, "Samples on which MobileNetV2's SQNR is measured (~50 MB each at alpha 1).")
flags.DEFINE_float("tight_budget", 0.1, "A second, tighter budget for the MobileNet-style model (0: none).")
flags.DEFINE_float("budget_memory_gb", 16.0, "Skip a budgeted conversion whose layer ranking would need more RAM.")
flags.DEFINE_integer("top", 8, "Sensitivity rows printed per model.")
flags.DEFINE_float("max_accuracy_drop", 0.5, "Accuracy budget (points, on the validation split) of table 2.")
flags.DEFINE_float("outlier_scale", 1000.0, "How much larger the outlier unit of the constructed CNN is.")
flags.DEFINE_float("glitch_value", 60.0, "Value of the glitched calibration pixels (images are in [0, 1]).")
flags.DEFINE_integer("glitches", 3, "Calibration images that get one glitched pixel each.")
flags.DEFINE_integer("runs", 50, "Timed runs per file (interleaved by tfc.evaluate_many).")
bench_common.define_output_flags(output=None, overwrite=True)


def _settings():
    s = dict(seed=FLAGS.seed, train_images=FLAGS.train_images, val_images=FLAGS.val_images,
             test_limit=FLAGS.test_limit, epochs=FLAGS.epochs, batch_size=FLAGS.batch_size,
             mnv2_alphas=[float(a) for a in FLAGS.mnv2_alphas], mnv2_train=FLAGS.mnv2_train,
             mnv2_epochs=FLAGS.mnv2_epochs, mnv2_val=FLAGS.mnv2_val, mnv2_test=FLAGS.mnv2_test,
             calibration_samples=FLAGS.calibration_samples, accuracy_layers=FLAGS.accuracy_layers,
             sqnr_samples=FLAGS.sqnr_samples, mnv2_accuracy_layers=FLAGS.mnv2_accuracy_layers,
             mnv2_sqnr_samples=FLAGS.mnv2_sqnr_samples, tight_budget=FLAGS.tight_budget,
             budget_memory_gb=FLAGS.budget_memory_gb, top=FLAGS.top, max_accuracy_drop=FLAGS.max_accuracy_drop,
             outlier_scale=FLAGS.outlier_scale, glitch_value=FLAGS.glitch_value, glitches=FLAGS.glitches,
             runs=FLAGS.runs, quick=FLAGS.quick)
    if FLAGS.quick:
        s.update(train_images=2000, val_images=500, test_limit=500, epochs=1, mnv2_alphas=[0.35], mnv2_train=256,
                 mnv2_epochs=1, mnv2_val=100, mnv2_test=100, accuracy_layers=1, sqnr_samples=64,
                 mnv2_accuracy_layers=1, mnv2_sqnr_samples=16, calibration_samples=64, tight_budget=0.0, runs=5)
    return s


_log = bench_common.Log("bench_sensitivity", elapsed=False)


# Models ------------------------------------------------------------------------------------


def _small_data(s):
    (x, y), (x_test, y_test) = tfc.datasets.fashion_mnist(limit_train=s["train_images"] + s["val_images"],
                                                          limit_test=s["test_limit"])
    n = s["train_images"]
    return dict(x=x[:n], y=y[:n], x_val=x[n:], y_val=y[n:], x_test=x_test, y_test=y_test)


def _mnv2_data(s):
    (x, y), (x_test, y_test) = tfc.datasets.fashion_mnist(limit_train=s["mnv2_train"] + s["mnv2_val"],
                                                          limit_test=s["mnv2_test"])
    n = s["mnv2_train"]
    upscale = bench_common.upscale_to_mobilenet
    return dict(x=upscale(x[:n]), y=y[:n], x_val=upscale(x[n:]), y_val=y[n:], x_test=upscale(x_test), y_test=y_test)


def _train(model, data, epochs, batch_size, learning_rate, seed):
    import keras

    keras.utils.set_random_seed(seed)
    tfc.zoo.compile_classifier(model, learning_rate=learning_rate)
    model.fit(data["x"], data["y"], epochs=epochs, batch_size=batch_size, verbose=0)
    bench_common.reestimate_batch_norm(model, data["x"])
    return model


# Measurements --------------------------------------------------------------------------------


def _keras_logits(model, x):
    return np.asarray(model.predict(x, verbose=0, batch_size=256))


def _file_stats(flatbuffer, x, y, reference_logits):
    """Accuracy, top-1 agreement with Keras and output MSE of a .tflite on ``x``."""
    logits = tfc.evaluate.predict(bytes(flatbuffer), x)
    return {"accuracy": float(np.mean(logits.argmax(1) == y)),
            "agreement": float(np.mean(logits.argmax(1) == reference_logits.argmax(1))),
            "mse": float(np.mean((logits - reference_logits) ** 2))}


def _sensitivity(name, model, data, s, columns_by_api=True):
    """`tfc.quantization_sensitivity` with its accuracy columns.

    If the API's own accuracy pass raises (or ``columns_by_api`` is False because it already raised on an earlier
    model), the report is taken with ``accuracy_layers=0`` and the columns are measured here, one
    ``to_tflite(keep_float=...)`` at a time, exactly as the API does them; a conversion that fails leaves None.
    """
    start = time.perf_counter()
    rep = data["x"][:s["calibration_samples"]]
    x_val, y_val = data["x_val"], data["y_val"]
    layers = s["accuracy_layers"] if data["x"].shape[1] == 28 else s["mnv2_accuracy_layers"]
    samples = s["sqnr_samples"] if data["x"].shape[1] == 28 else s["mnv2_sqnr_samples"]
    error, failures = None, {}
    report = None
    if columns_by_api:
        try:
            report = tfc.quantization_sensitivity(model, rep, x_val, y_val, accuracy_layers=layers, max_samples=samples)
        except tfc.ConversionError as exc:
            error = f"{type(exc).__name__}: {exc}"
            _log(f"{name}: quantization_sensitivity(..., y) raised {error[:300]}")
    else:
        error = "not tried: it raised on an earlier model"
    if report is None:
        report = tfc.quantization_sensitivity(model, rep, x_val, y_val, accuracy_layers=0, max_samples=samples)
        names = [row.layer for row in report.rows]
        for row in report.rows[:layers]:
            for field, kept in (("accuracy_kept_float", [row.layer]),
                                ("accuracy_only_int8", [n for n in names if n != row.layer])):
                try:
                    flatbuffer = tfc.to_tflite(model, mode="int8", representative_data=rep, keep_float=kept)
                    setattr(row, field, sensitivity.tflite_accuracy(flatbuffer, x_val, y_val))
                except tfc.ConversionError as exc:
                    failures[f"{row.layer}: {field}"] = str(exc)[:300]
    seconds = time.perf_counter() - start
    _log(f"{name}: sensitivity of {len(report.rows)} layers in {seconds:.0f} s; most sensitive "
         f"{report.most_sensitive(3)}; {len(failures)} conversions failed")
    return {"report": report, "seconds": seconds, "api_error": error, "failed_conversions": failures,
            "accuracy_layers": layers, "validation_samples": len(y_val)}


def _activation_mb_per_sample(model):
    """MB of all layer outputs of one sample (float32): what quantization_sensitivity holds per SQNR sample."""
    import keras

    return sum(4 * int(np.prod(layer.output.shape[1:])) for layer in model.layers
               if not isinstance(layer, keras.layers.InputLayer)) / 1e6


def _budget(name, model, data, s, budgets):
    """float32, plain int8 and the budgeted int8 files: validation and test accuracy, size, latency (timed together).

    `convert_within_budget` ranks layers with `quantization_sensitivity` on (up to 500 of) the validation
    inputs when plain int8 misses the budget; that holds every layer's output of every sample, float and
    fake-quant (3-4x the model's per-sample activations per sample, measured: MobileNetV2 alpha 0.35 at 96x96
    with 1,000 validation images peaked at 17 GB RSS). Where that would exceed
    ``--budget_memory_gb`` the budgeted conversion is skipped and said so.
    """
    rep = data["x"][:s["calibration_samples"]]
    x_val, y_val = data["x_val"], data["y_val"]
    files = {"float32": tfc.to_tflite(model, mode="float32"),
             "int8": tfc.to_tflite(model, mode="int8", representative_data=rep)}
    keras_val = sensitivity.keras_accuracy(model, x_val, y_val)
    plain_drop = 100 * (keras_val - sensitivity.tflite_accuracy(files["int8"], x_val, y_val))
    memory_gb = 4 * _activation_mb_per_sample(model) * min(500, len(y_val)) / 1e3
    chosen = {}
    for drop in budgets:
        label = f"int8, budget {drop:g} pt"
        entry = {"max_accuracy_drop": drop, "budget": None, "error": None, "skipped": None}
        start = time.perf_counter()
        if plain_drop > drop and memory_gb > s["budget_memory_gb"]:
            entry["skipped"] = (f"plain int8 drops {plain_drop:.2f} pt > {drop:g}, so the budget would rank layers "
                                f"on {min(500, len(y_val))} validation samples: ~{memory_gb:.0f} GB > "
                                f"--budget_memory_gb={s['budget_memory_gb']:g}")
        else:
            try:
                budgeted = tfc.to_tflite(model, mode="int8", representative_data=rep, max_accuracy_drop=drop,
                                         validation_data=(x_val, y_val))
                entry["budget"] = budgeted.budget
                files[label] = budgeted
            except tfc.AccuracyBudgetError as exc:
                entry["error"] = str(exc)
        entry["seconds"] = time.perf_counter() - start
        chosen[label] = entry
        b = entry["budget"]
        what = (entry["skipped"] or entry["error"] or
                f"mode {b['mode']}, kept float {b['kept_float']}, {len(b['tries'])} tries")
        _log(f"{name}: budget {drop:g} pt in {entry['seconds']:.0f} s: {what[:300]}")
    reports = tfc.evaluate_many(files, x=data["x_test"], y=data["y_test"], backends=("xnnpack",), threads=(1,),
                                num_runs=s["runs"], parity_samples=0)
    rows = {}
    for variant, flatbuffer in files.items():
        report = reports[variant]
        latency = report.latency_for("xnnpack", 1)
        floats = flatbuffer.info.float_compute_ops()
        rows[variant] = {
            "val_accuracy": sensitivity.tflite_accuracy(flatbuffer, x_val, y_val),
            "test_accuracy": report.accuracy, "bytes": report.file_bytes,
            "xnnpack_1t_ms": latency.median_ms if latency and latency.median_ms else None,
            "float_compute_ops": [op.type for op in floats],
        }
    result = {"variants": rows, "budgets": chosen, "plain_int8_val_drop": plain_drop,
              "budget_memory_estimate_gb": memory_gb, "keras_val_accuracy": keras_val,
              "keras_test_accuracy": sensitivity.keras_accuracy(model, data["x_test"], data["y_test"]),
              "validation_samples": len(y_val), "test_samples": len(data["y_test"])}
    return result, files["int8"]


def _calibrations(name, model, data, calibration, s):
    reference = _keras_logits(model, data["x_test"])
    rows = {}
    for method in (None, "minmax", "percentile", "mse"):
        flatbuffer = tfc.to_tflite(model, mode="int8", representative_data=calibration, calibration=method)
        rows["converter" if method is None else method] = _file_stats(flatbuffer, data["x_test"], data["y_test"],
                                                                      reference)
    _log(f"{name}: calibrations " + ", ".join(f"{k} {100 * v['accuracy']:.2f}%" for k, v in rows.items()))
    return rows


def _untrained_qat(name, model, data, ptq_file, s):
    rep = data["x"][:s["calibration_samples"]]
    reference = _keras_logits(model, data["x_test"])
    qat = tfc.quantize_model(model)
    now = tfc.to_tflite(qat, mode="int8", representative_data=rep)
    for layer in tfc.quantization.quantize.graph.layers_of(qat):
        if isinstance(layer, tfc.quantization.ActivationQuantizer):
            layer.num_updates.assign(1.0)  # the old behaviour: the initial [-6, 6] ranges taken as trained
    old = tfc.to_tflite(qat, mode="int8", representative_data=rep)
    rows = {"PTQ int8": _file_stats(ptq_file, data["x_test"], data["y_test"], reference),
            "untrained QAT, before (ranges [-6, 6])": _file_stats(old, data["x_test"], data["y_test"], reference),
            "untrained QAT, now (calibrated)": _file_stats(now, data["x_test"], data["y_test"], reference)}
    _log(f"{name}: untrained QAT agreement " + ", ".join(f"{k} {100 * v['agreement']:.1f}%" for k, v in rows.items()))
    return rows


# Markdown --------------------------------------------------------------------------------------


def _pct(value):
    return "—" if value is None else f"{100 * value:.2f}%"


def _sensitivity_markdown(result, top):
    report = result["report"]
    shown = dataclasses.replace(report, rows=report.rows[:top])
    text = (shown.to_markdown() + f"\n\n(top {top} of {len(report.rows)} quantizable layers by local SQNR; accuracy "
            f"columns for the first {result['accuracy_layers']}, on {result['validation_samples']} validation images; "
            f"{result['seconds']:.0f} s)")
    if result["api_error"]:
        failed = result["failed_conversions"]
        text += (f"\n`quantization_sensitivity(model, x[:N], x_val, y_val, accuracy_layers=k)`: "
                 f"{result['api_error'][:170]}...; so the accuracy columns were measured one "
                 f"`to_tflite(keep_float=...)` at a time, and {len(failed)} of {2 * result['accuracy_layers']} "
                 "of those conversions failed (—): " + (", ".join(sorted(failed)) or "none"))
    return text


def _float_ops(ops):
    if not ops:
        return "0"
    counts = {}
    for op in ops:
        counts[op] = counts.get(op, 0) + 1
    return f"{len(ops)}: " + ", ".join(f"{k}" + (f" x{v}" if v > 1 else "") for k, v in sorted(counts.items()))


def _budget_markdown(results):
    lines = ["| model | file | kept float (budget's choice) | float ops in file | val acc | test acc | size KiB "
             "| XNNPACK 1 thread ms |", "|---|---|---|---|---|---|---|---|"]
    notes = []
    for model_name, r in results.items():
        for variant, row in r["variants"].items():
            kept = "all" if variant == "float32" else "none"
            if variant in r["budgets"]:
                b = r["budgets"][variant]["budget"]
                kept = (", ".join(b["kept_float"]) or "none") + ("" if b["mode"] == "int8" else f" ({b['mode']})")
            ms = "—" if row["xnnpack_1t_ms"] is None else f"{row['xnnpack_1t_ms']:.3f}"
            floats = "all" if variant == "float32" else _float_ops(row["float_compute_ops"])
            lines.append(f"| {model_name} | {variant} | {kept} | {floats} | {_pct(row['val_accuracy'])} | "
                         f"{_pct(row['test_accuracy'])} | {row['bytes'] / 1024:.1f} | {ms} |")
        lines.append(f"| {model_name} | Keras float | — | — | {_pct(r['keras_val_accuracy'])} | "
                     f"{_pct(r['keras_test_accuracy'])} | — | — |")
        for label, entry in r["budgets"].items():
            head = f"- {model_name}, {label} ({r['validation_samples']} validation images): "
            if entry["skipped"]:
                notes.append(head + "skipped: " + entry["skipped"])
            elif entry["error"]:
                notes.append(head + f"AccuracyBudgetError after {entry['seconds']:.0f} s: {entry['error'][:400]}")
            else:
                b = entry["budget"]
                tries = "; ".join(f"{t['mode']}{' + ' + ','.join(t['kept_float']) + ' float' if t['kept_float'] else ''}"
                                  f" {100 * t['accuracy']:.2f}%" for t in b["tries"])
                notes.append(head + f"drop {b['drop']:+.2f} pt after {len(b['tries'])} tries "
                                    f"({entry['seconds']:.0f} s): {tries}")
    return "\n".join(lines + [""] + notes)


def _stats_markdown(first_header, results):
    lines = [f"| {first_header} | test acc | top-1 agreement with Keras | output MSE vs float |", "|---|---|---|---|"]
    for label, rows in results.items():
        for variant, r in rows.items():
            lines.append(f"| {label}: {variant} | {_pct(r['accuracy'])} | {100 * r['agreement']:.1f}% | "
                         f"{r['mse']:.4g} |")
    return "\n".join(lines)


# Main ----------------------------------------------------------------------------------------


def main():
    import keras

    s = _settings()
    start = time.perf_counter()
    timings = {}
    small = _small_data(s)

    def timed(key, fn, *args):
        t = time.perf_counter()
        value = fn(*args)
        timings[key] = round(time.perf_counter() - t, 1)
        return value

    models = {}
    models["mobilenet_style"] = (timed("train mobilenet_style", _train, tfc.zoo.mobilenet_style(), small, s["epochs"],
                                       s["batch_size"], 1e-3, s["seed"]), small)
    _log(f"mobilenet_style trained in {timings['train mobilenet_style']:.0f} s")
    cnn = timed("train reference_cnn", _train, tfc.zoo.reference_cnn(bn_momentum=0.9), small, s["epochs"],
                s["batch_size"], 1e-3, s["seed"])
    outlier_name = f"reference_cnn, fc1 outlier unit x{s['outlier_scale']:g}"
    outlier = bench_common.with_outlier_unit(cnn, s["outlier_scale"])
    _log(f"reference_cnn trained in {timings['train reference_cnn']:.0f} s")
    big = _mnv2_data(s) if s["mnv2_alphas"] else None
    for alpha in s["mnv2_alphas"]:
        name = f"MobileNetV2 alpha {alpha:g}"
        net = keras.applications.MobileNetV2(input_shape=(96, 96, 3), alpha=alpha, weights=None, classes=10,
                                             classifier_activation=None)
        models[name] = (timed(f"train {name}", _train, net, big, s["mnv2_epochs"], 32, 1e-3, s["seed"]), big)
        _log(f"{name} trained in {timings[f'train {name}']:.0f} s")

    sens, budgets, qat = {}, {}, {}
    columns_by_api = True
    for name, (model, data) in models.items():
        sens[name] = _sensitivity(name, model, data, s, columns_by_api)
        columns_by_api = columns_by_api and not sens[name]["api_error"]
        timings[f"sensitivity {name}"] = round(sens[name]["seconds"], 1)
        drops = [s["max_accuracy_drop"]]
        if name == "mobilenet_style" and s["tight_budget"] > 0:
            drops.append(s["tight_budget"])
        (budgets[name], ptq_file) = timed(f"budget {name}", _budget, name, model, data, s, drops)
        qat[name] = timed(f"untrained QAT {name}", _untrained_qat, name, model, data, ptq_file, s)
    budgets[outlier_name], _ = timed("budget outlier CNN", _budget, outlier_name, outlier, small, s,
                                     [s["max_accuracy_drop"]])

    clean = small["x"][:s["calibration_samples"]]
    glitched = clean.copy()
    rng = np.random.default_rng(s["seed"])
    for i in rng.choice(len(glitched), size=s["glitches"], replace=False):
        glitched[i, rng.integers(28), rng.integers(28), 0] = s["glitch_value"]
    mobile = models["mobilenet_style"][0]
    calib = {}
    if not s["quick"]:  # --quick: only the glitched data
        calib["mobilenet_style, clean calibration"] = timed("calibration clean", _calibrations, "clean", mobile, small,
                                                            clean, s)
    calib[f"mobilenet_style, {s['glitches']} glitched pixels ({s['glitch_value']:g})"] = timed(
        "calibration glitched", _calibrations, "glitched", mobile, small, glitched, s)
    if not s["quick"]:
        calib[f"{outlier_name}, clean calibration"] = timed("calibration outlier", _calibrations, "outlier", outlier,
                                                            small, clean, s)

    out = []
    for name, r in sens.items():
        out += [_sensitivity_markdown(r, s["top"]), ""]
    sizes = ", ".join(f"{k} {r['validation_samples']:,} / {r['test_samples']:,}" for k, r in budgets.items())
    out += [f"Plain int8 vs `to_tflite(model, mode='int8', representative_data=x[:{s['calibration_samples']}], "
            "max_accuracy_drop=..., validation_data=(x_val, y_val))`; the validation split is carved from the "
            f"training data (validation / test images: {sizes}); latency: median of {s['runs']} interleaved runs, "
            "all files of a model timed together by tfc.evaluate_many.", "", _budget_markdown(budgets), ""]
    out += [f"Calibration methods, {s['calibration_samples']} calibration images, {len(small['y_test']):,} test "
            "images (`calibration=None` is the converter's own min-max).", "",
            _stats_markdown("model, calibration data: method", calib), ""]
    out += ["Untrained QAT model (`quantize_model` right after float training, no fit) converted to int8 with "
            f"representative_data=x[:{s['calibration_samples']}]; agreement = top-1 agreement with the float Keras "
            "model on the test set.", "", _stats_markdown("model: file", qat), ""]
    total = time.perf_counter() - start
    text = "\n".join(out)
    print()
    print(text)
    print(f"\n{bench_common.timed_on()}")
    _log(f"done in {total:.0f} s; timings (s): {json.dumps(timings)}")
    blob = {"settings": s, "seconds": total, "timings": timings,
            "sensitivity": {name: dict(r, report=r["report"].to_dict()) for name, r in sens.items()},
            "budget": budgets, "calibration": calib, "untrained_qat": qat, "markdown": text}
    bench_common.write_outputs(results=blob, json_default=str)


if __name__ == "__main__":
    bench_common.run(main)
