"""Deep-compression benchmark: float32 -> prune -> cluster -> int8 (PTQ and QAT) -> gzip, plus low rank.

Two models on Fashion-MNIST: the reference CNN (``tfc.zoo.reference_cnn()``) and a Dense-heavy
MLP, LeNet-300-100 (784-300-100-10, ReLU). Protocol, per model and seed:

* A **base** model is trained dense (Adam at a constant ``--learning_rate``; ``--pretrain_epochs``
  for the CNN, ``--mlp_pretrain_epochs`` for the MLP). The last ``--val`` training images are held
  out as a validation split (Keras accuracy on it is recorded for every model; nothing is chosen on
  the test set).
* Every later stage fine-tunes for E epochs (``--cnn_epochs`` / ``--epochs``) with Adam,
  ``--learning_rate`` cosine-decayed to 0 over the stage (what ``tfc.compress`` does). The **dense
  control** fine-tunes the base for 3E epochs, as long as the whole pipeline.
* Pipeline rows, each adding one stage: ``PruningCallback(PolynomialDecay(0 -> sparsity))`` over
  the first 2/3 of E epochs (scope "erk"); then ``ClusteringCallback(--clusters, per_channel,
  preserve_sparsity=True)`` for E epochs; then int8 PTQ (``to_tflite(mode="int8")`` with
  ``--calibration`` training images); then QAT (``quantize_model``, E epochs with the clustering
  callback on the QAT model so its weights stay on the centroids) -> int8. The gzip column is
  the last stage (gzip -9 of each file).
* Side rows: plain int8 PTQ of the control; clustering alone (base clustered for 3E epochs) + int8
  PTQ; with channel pruning: ``prune_channels(base, --channel_ratio, round_to=8)``, then the same
  prune (E) -> cluster (E) -> QAT (E) -> int8 chain; low rank: ``factorize(base, energy)`` fine-
  tuned 3E epochs (float32 and int8 PTQ files).
* All files of a model and seed are evaluated by one ``tfc.evaluate_many`` call (XNNPACK, 1 thread,
  ``--num_runs`` round-robin runs, medians) on the full 10k test images. Ratios: the control's
  float32 file bytes / the row's gzip bytes; speed-up: the control float32 file's median latency /
  the row's. Accuracy of each ``.tflite``: mean ± std over seeds; Δ in points vs the same seed's
  control float32 file.

Usage:
    python tools/bench_deep_compression.py --output=/tmp/deep.md --out=/tmp/deep.json   # full, 3 seeds
    python tools/bench_deep_compression.py --quick                                      # smoke test, ~3 min
"""

import json
import math
import statistics
import time

from absl import flags

import bench_common  # tools/ is on sys.path: it is the script's own folder

FLAGS = flags.FLAGS
flags.DEFINE_bool("quick", False, "Smoke test of every code path: little data, 1 epoch, 1 seed (numbers meaningless).")
flags.DEFINE_integer("seeds", 3, "Seeds 0..seeds-1.")
flags.DEFINE_integer("epochs", 2, "Fine-tuning epochs per stage of the MLP (the control gets 3x).")
flags.DEFINE_integer("cnn_epochs", 1, "Fine-tuning epochs per stage of the reference CNN (the control gets 3x).")
flags.DEFINE_integer("pretrain_epochs", 3, "Dense base training epochs of the reference CNN.")
flags.DEFINE_integer("mlp_pretrain_epochs", 5, "Dense base training epochs of the MLP.")
flags.DEFINE_list("models", ["mlp", "cnn"], "Which models: mlp, cnn.")
bench_common.define_data_flags(train_limit=0, test_limit=0, batch_help="Batch size.",
                               train_help="Training images of the MLP, validation included (0: all 60k).",
                               test_help="Test images (0: the full 10k).")
flags.DEFINE_integer("cnn_train_limit", 35000, "Training images of the CNN, validation included (0: all 60k).")
flags.DEFINE_integer("val", 5000, "Validation images held out from the end of the training images.")
flags.DEFINE_float("mlp_sparsity", 0.9, "Magnitude-pruning sparsity of the MLP.")
flags.DEFINE_float("cnn_sparsity", 0.85, "Magnitude-pruning sparsity of the CNN.")
flags.DEFINE_integer("clusters", 16, "Clusters per kernel (per output channel with --per_channel).")
flags.DEFINE_bool("per_channel", True, "Cluster each output channel separately.")
flags.DEFINE_float("channel_ratio", 0.3, "prune_channels ratio of the 'with channel pruning' rows.")
flags.DEFINE_list("mlp_energies", ["0.9", "0.8", "0.7"], "factorize energies of the MLP's low-rank rows.")
flags.DEFINE_list("cnn_energies", ["0.9", "0.7"], "factorize energies of the CNN's low-rank rows.")
flags.DEFINE_enum("form", "auto", ["auto", "pointwise", "separable"], "factorize form for the CNN's Conv2D layers.")
flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate (constant for the base, cosine per stage).")
flags.DEFINE_bool("reestimate_bn", True, "After every float fit, set BatchNormalization's moving statistics from "
                  "1,024 training images (bench_common.reestimate_batch_norm; the MLP has none).")
flags.DEFINE_integer("calibration", 200, "int8 calibration images.")
flags.DEFINE_integer("num_runs", 200, "Timed runs per file in evaluate_many.")
bench_common.define_output_flags(out="Also write every number as JSON to this file.",
                                 output="Also write the markdown to this file.")

_log = bench_common.Log("bench_deep")


def _settings():
    s = dict(seeds=FLAGS.seeds, epochs=FLAGS.epochs, cnn_epochs=FLAGS.cnn_epochs,
             pretrain_epochs=FLAGS.pretrain_epochs, mlp_pretrain_epochs=FLAGS.mlp_pretrain_epochs,
             models=list(FLAGS.models), train_limit=FLAGS.train_limit or None,
             cnn_train_limit=FLAGS.cnn_train_limit or None, val=FLAGS.val, test_limit=FLAGS.test_limit or None,
             mlp_sparsity=FLAGS.mlp_sparsity, cnn_sparsity=FLAGS.cnn_sparsity, clusters=FLAGS.clusters,
             per_channel=FLAGS.per_channel, channel_ratio=FLAGS.channel_ratio,
             mlp_energies=[float(e) for e in FLAGS.mlp_energies], cnn_energies=[float(e) for e in FLAGS.cnn_energies],
             form=FLAGS.form, batch_size=FLAGS.batch_size, reestimate_bn=FLAGS.reestimate_bn,
             learning_rate=FLAGS.learning_rate,
             calibration=FLAGS.calibration, num_runs=FLAGS.num_runs, quick=FLAGS.quick)
    if FLAGS.quick:
        s.update(seeds=1, epochs=1, cnn_epochs=1, pretrain_epochs=1, mlp_pretrain_epochs=1, train_limit=3000,
                 cnn_train_limit=3000, val=500, test_limit=1000, num_runs=20, mlp_energies=[0.9],
                 cnn_energies=[0.9])
    return s


def lenet_300_100(input_shape=(28, 28, 1), num_classes=10, name="lenet_300_100"):
    """LeNet-300-100: Flatten -> Dense(300, relu) -> Dense(100, relu) -> Dense(classes) logits."""
    import keras

    inputs = keras.Input(input_shape, name="image")
    x = keras.layers.Flatten(name="flatten")(inputs)
    x = keras.layers.Dense(300, activation="relu", name="fc1")(x)
    x = keras.layers.Dense(100, activation="relu", name="fc2")(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes, name="logits")(x), name=name)


def _build(kind):
    import tfcompress as tfc

    return tfc.zoo.reference_cnn() if kind == "cnn" else lenet_300_100()


def _fit(model, s, x, y, epochs, callbacks=(), cosine=True, qat=False):
    """Compiles ``model`` with Adam (cosine-decayed to 0 over the fit, or constant) and fits it."""
    import tfcompress as tfc

    steps = epochs * math.ceil(len(x) / s["batch_size"])
    rate = bench_common.cosine_learning_rate(s["learning_rate"], steps) if cosine else s["learning_rate"]
    tfc.zoo.compile_classifier(model, rate)
    model.fit(x, y, epochs=epochs, batch_size=s["batch_size"], verbose=0, callbacks=list(callbacks))
    if s["reestimate_bn"] and not qat:  # a QAT model folds BN, and a training-mode call would move its ranges
        # A few hundred steps leave BatchNormalization's moving statistics (momentum 0.99) behind the weights.
        bench_common.reestimate_batch_norm(model, x, batch=1024)
    return model


def _pruning(s, sparsity, n, epochs):
    import tfcompress as tfc

    end = max(1, int(epochs * math.ceil(n / s["batch_size"]) * 2 / 3))
    return tfc.PruningCallback(tfc.PolynomialDecay(0.0, sparsity, begin_step=0, end_step=end,
                                                   frequency=max(1, min(100, end // 10))), verbose=0)


def _clustering(s):
    import tfcompress as tfc

    return tfc.ClusteringCallback(s["clusters"], per_channel=s["per_channel"], preserve_sparsity=True, verbose=0)


def _model_seed(kind, s, seed, data):
    """All files of one model and seed, evaluated together: ``{row: dict}`` and the ``tfc.compare`` table."""
    import keras

    import tfcompress as tfc

    (x, y), (x_val, y_val), (x_test, y_test) = data
    e = s["cnn_epochs"] if kind == "cnn" else s["epochs"]
    sparsity = s["cnn_sparsity"] if kind == "cnn" else s["mlp_sparsity"]
    energies = s["cnn_energies"] if kind == "cnn" else s["mlp_energies"]
    calib = x[: s["calibration"]]
    rows, files = {}, {}

    def record(name, model, modes, seconds, qat=False, **extra):
        row = dict(extra, seconds=seconds, params=model.count_params(), macs=bench_common.macs(model),
                   val_keras=bench_common.accuracy(model, x_val, y_val))
        for mode in modes:
            if qat:
                files[f"{name}|{mode}"] = tfc.to_tflite(model, mode="int8")
            else:
                files[f"{name}|{mode}"] = tfc.to_tflite(model, mode=mode,
                                                        representative_data=calib if mode == "int8" else None)
        rows[name] = row
        _log(f"{kind} seed {seed}: {name}: val (Keras) {row['val_keras']:.2%}, {row['params']:,} params, "
             f"{row['macs']:,} MACs ({seconds:.0f} s)")

    def fresh(weights):
        model = _build(kind)
        model.set_weights(weights)
        return model

    start = time.perf_counter()
    keras.utils.set_random_seed(seed)
    base = _fit(_build(kind), s, x, y, s["pretrain_epochs"] if kind == "cnn" else s["mlp_pretrain_epochs"],
                cosine=False)
    weights = base.get_weights()
    _log(f"{kind} seed {seed}: base trained ({time.perf_counter() - start:.0f} s), "
         f"val {bench_common.accuracy(base, x_val, y_val):.2%}")

    # Dense control: 3E epochs, as long as prune + cluster + QAT.
    start = time.perf_counter()
    keras.utils.set_random_seed(seed + 1)
    control = _fit(fresh(weights), s, x, y, 3 * e)
    record("control", control, ("float32", "int8"), time.perf_counter() - start, epochs=3 * e)

    # Pipeline: prune -> cluster -> int8 PTQ / QAT.
    def chain(prefix, model, note):
        start = time.perf_counter()
        keras.utils.set_random_seed(seed + 1)
        _fit(model, s, x, y, e, [_pruning(s, sparsity, len(x), e)])
        record(f"{prefix}prune", model, ("float32",), time.perf_counter() - start, note=note)
        start = time.perf_counter()
        _fit(model, s, x, y, e, [_clustering(s)])
        record(f"{prefix}cluster", model, ("float32", "int8"), time.perf_counter() - start)
        start = time.perf_counter()
        qat = tfc.quantize_model(model)
        _fit(qat, s, x, y, e, [_clustering(s)], qat=True)
        record(f"{prefix}qat", qat, ("int8",), time.perf_counter() - start, qat=True)

    chain("", fresh(weights), "")
    start = time.perf_counter()
    keras.utils.set_random_seed(seed + 1)
    narrow = tfc.prune_channels(fresh(weights), s["channel_ratio"], round_to=8, verbose=0)
    _log(f"{kind} seed {seed}: prune_channels {s['channel_ratio']:.0%}: {bench_common.macs(narrow):,} MACs "
         f"({time.perf_counter() - start:.0f} s)")
    chain("channels+", narrow, f"prune_channels {s['channel_ratio']:.0%}")

    # Clustering alone, as long as the control.
    start = time.perf_counter()
    keras.utils.set_random_seed(seed + 1)
    clustered = _fit(fresh(weights), s, x, y, 3 * e, [_clustering(s)])
    record("cluster only", clustered, ("int8",), time.perf_counter() - start)

    # Low rank, as long as the control.
    for energy in energies:
        start = time.perf_counter()
        keras.utils.set_random_seed(seed + 1)
        small = tfc.factorize(fresh(weights), energy=energy, form=s["form"], verbose=0)
        report = small.factorization_report
        _fit(small, s, x, y, 3 * e)
        record(f"lowrank {energy:g}", small, ("float32", "int8"), time.perf_counter() - start,
               factorized=[(r[0], r[1], r[2], r[3]) for r in report.rows if r[-1] == "factorized"])
        del small

    start = time.perf_counter()
    reports = tfc.evaluate_many(files, x=x_test, y=y_test, backends=("xnnpack",), threads=(1,),
                                num_runs=s["num_runs"])
    _log(f"{kind} seed {seed}: {len(files)} files evaluated together ({time.perf_counter() - start:.0f} s)")
    out = {}
    for key, report in reports.items():
        name, mode = key.split("|")
        out[key] = dict(rows[name], name=name, mode=mode, file_bytes=report.file_bytes, gzip_bytes=report.gzip_bytes,
                        accuracy=float(report.accuracy), ms=report.latency_for("xnnpack", 1).median_ms,
                        sparsity=report.sparsity)
    return out, tfc.compare(reports)


def _data(s, kind):
    import tfcompress as tfc

    limit = s["cnn_train_limit"] if kind == "cnn" else s["train_limit"]
    (x, y), (x_test, y_test) = tfc.datasets.fashion_mnist(limit_train=limit, limit_test=s["test_limit"])
    v = s["val"]
    return (x[:-v], y[:-v]), (x[-v:], y[-v:]), (x_test, y_test)


# Report ----------------------------------------------------------------------------------------


def _rows_spec(kind, s):
    sp = s["cnn_sparsity"] if kind == "cnn" else s["mlp_sparsity"]
    k, pc = s["clusters"], " per channel" if s["per_channel"] else ""
    spec = [
        ("float32 (dense control)", "control|float32"),
        (f"+ prune {sp:.0%} (float32)", "prune|float32"),
        (f"+ cluster {k}{pc} (float32)", "cluster|float32"),
        ("+ int8 PTQ", "cluster|int8"),
        ("+ int8 QAT (instead of PTQ)", "qat|int8"),
        ("dense control int8 PTQ (plain int8)", "control|int8"),
        (f"cluster {k}{pc} only + int8 PTQ", "cluster only|int8"),
        (f"channels {s['channel_ratio']:.0%} (`prune_channels`) + prune {sp:.0%} (float32)", "channels+prune|float32"),
        (f"+ cluster {k}{pc} (float32)", "channels+cluster|float32"),
        ("+ int8 PTQ", "channels+cluster|int8"),
        ("+ int8 QAT (instead of PTQ)", "channels+qat|int8"),
    ]
    for energy in (s["cnn_energies"] if kind == "cnn" else s["mlp_energies"]):
        spec += [(f"low-rank energy {energy:g} (float32)", f"lowrank {energy:g}|float32"),
                 (f"low-rank energy {energy:g} int8 PTQ", f"lowrank {energy:g}|int8")]
    return spec


def summarize_times(per_seed, key):
    rows = [seed[key] for seed in per_seed]
    controls = [seed["control|float32"] for seed in per_seed]
    return dict(
        file_kb=statistics.fmean(r["file_bytes"] for r in rows) / 1024,
        gzip_kb=statistics.fmean(r["gzip_bytes"] for r in rows) / 1024,
        ratio=statistics.fmean(c["file_bytes"] / r["gzip_bytes"] for r, c in zip(rows, controls)),
        accuracy=[r["accuracy"] for r in rows],
        delta=[r["accuracy"] - c["accuracy"] for r, c in zip(rows, controls)],
        ms=statistics.median(r["ms"] for r in rows),
        speedup=statistics.fmean(c["ms"] / r["ms"] for r, c in zip(rows, controls)),
        speedup_same=statistics.fmean(seed[f"control|{r['mode']}"]["ms"] / r["ms"] for r, seed in zip(rows, per_seed)),
        sparsity=statistics.fmean(r["sparsity"] for r in rows),
        macs=statistics.fmean(r["macs"] for r in rows),
        val_delta=[r["val_keras"] - c["val_keras"] for r, c in zip(rows, controls)],
    )


def _markdown(kind, s, per_seed, sizes):
    e = s["cnn_epochs"] if kind == "cnn" else s["epochs"]
    title = "Reference CNN" if kind == "cnn" else "LeNet-300-100 (784-300-100-10 MLP)"
    n_train, n_val, n_test = sizes
    base_epochs = s["pretrain_epochs"] if kind == "cnn" else s["mlp_pretrain_epochs"]
    lines = [
        f"**{title}**, Fashion-MNIST ({n_train} training / {n_val} validation / {n_test} test images): "
        f"{base_epochs} dense base epochs, then {e} fine-tuning epoch(s) per stage (the dense control: "
        f"{3 * e}), batch {s['batch_size']}; seeds {list(range(s['seeds']))}. Ratio: the control's float32 file / the row's gzip -9 bytes. "
        "Accuracy: the `.tflite` on the test set (XNNPACK), mean ± std; Δ in points vs the same seed's control "
        "float32 file. Latency: median XNNPACK 1-thread ms (all files of a seed timed together by "
        "`evaluate_many`); speed-up = the control float32 (or same-dtype: float32 / int8) file's latency / the row's, "
        "mean over seeds.",
        "",
        "| stage | file KB | gzip KB | ratio vs float32 file | MACs | accuracy | Δ vs control | XNNPACK ms | XNNPACK speed-up vs control float32 | vs control of the same dtype |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    summary = {}
    for label, key in _rows_spec(kind, s):
        a = summary[key] = summarize_times(per_seed, key)
        lines.append(f"| {label} | {a['file_kb']:.1f} | {a['gzip_kb']:.1f} | {a['ratio']:.1f}x | "
                     f"{a['macs'] / 1e3:,.0f} k | {bench_common.mean_pm(a['accuracy'])}% | "
                     f"{bench_common.mean_pm(a['delta'], fmt='{:+.2f}')} | "
                     f"{a['ms']:.4f} | {a['speedup']:.2f}x | {a['speedup_same']:.2f}x |")
    ranks = []
    for key in summary:
        if key.startswith("lowrank") and key.endswith("float32"):
            ranks.append(f"{key.split('|')[0]}: " + ", ".join(f"{n} {form} rank {r}/{f}" for n, form, r, f in
                                                             per_seed[0][key].get("factorized", [])))
    if ranks:
        lines += ["", "Factorized layers (seed 0): " + "; ".join(ranks) + "."]
    return "\n".join(lines), summary


def _targets(kind, summary):
    def within(a, points):
        return statistics.fmean(a["delta"]) * 100 >= -points

    def fmt(a):
        return f"{statistics.fmean(a['delta']) * 100:+.2f} pt"

    lines = []
    plain, clus = summary["control|int8"], summary["cluster only|int8"]
    gain = plain["gzip_kb"] / clus["gzip_kb"]
    ok = gain >= 1.6 and within(clus, 0.5)
    lines.append(f"* {kind}: clustering + int8 gzip ≥ 1.6x smaller than plain int8 gzip at ≤ 0.5 pt: "
                 f"{'MET' if ok else 'NOT MET'} ({gain:.2f}x, {clus['gzip_kb']:.1f} vs {plain['gzip_kb']:.1f} KB, "
                 f"{fmt(clus)})")
    pipe = summary["cluster|int8"]
    pipe_gain = plain["gzip_kb"] / pipe["gzip_kb"]
    lines.append(f"  (prune + cluster + int8 PTQ vs plain int8 gzip: {pipe_gain:.2f}x at {fmt(pipe)})")
    need = 15.0 if kind == "cnn" else 20.0
    for key, label in (("qat|int8", "full pipeline (QAT)"), ("cluster|int8", "full pipeline (PTQ)"),
                       ("channels+qat|int8", "with channel pruning (QAT)"),
                       ("channels+cluster|int8", "with channel pruning (PTQ)")):
        a = summary[key]
        ok = a["ratio"] >= need and within(a, 1.0)
        lines.append(f"* {kind}: {label}: float32 file ÷ gzip ≥ {need:g}x at ≤ 1.0 pt: "
                     f"{'MET' if ok else 'NOT MET'} ({a['ratio']:.1f}x, {fmt(a)})")
    for key, a in summary.items():
        if key.startswith("lowrank"):
            if kind == "mlp":
                ok = a["speedup_same"] >= 1.5 and within(a, 0.5)
                lines.append(f"* {kind}: {key}: ≥ 1.5x XNNPACK speed-up (vs the control of the same dtype) at ≤ 0.5 pt: "
                             f"{'MET' if ok else 'NOT MET'} ({a['speedup_same']:.2f}x, {fmt(a)}; validation Δ (Keras) "
                             f"{statistics.fmean(a['val_delta']) * 100:+.2f} pt)")
            else:
                lines.append(f"* {kind}: {key}: {a['speedup_same']:.2f}x XNNPACK speed-up (same dtype) at {fmt(a)} "
                             "(report only)")
    return lines


def main():
    import keras

    s = _settings()
    _log(f"settings: {json.dumps(s)}")
    sections, targets, blob = [], [], {"settings": s}
    for kind in s["models"]:
        data = _data(s, kind)
        per_seed, compares = [], []
        for seed in range(s["seeds"]):
            rows, compare = _model_seed(kind, s, seed, data)
            per_seed.append(rows)
            compares.append(compare)
            keras.backend.clear_session()
        text, summary = _markdown(kind, s, per_seed, tuple(len(d[0]) for d in data))
        sections.append(text)
        targets += _targets(kind, summary)
        blob[kind] = {"per_seed": per_seed, "summary": summary}
        sections.append(f"{kind} seed 0, every file (`tfc.compare`):\n\n{compares[0]}")
        print("\n" + text + "\n", flush=True)
    sections.append("Targets (means over seeds):\n\n" + "\n".join(targets))
    sections.append(f"Total wall time: {_log.seconds:.0f} s.")
    sections.append(bench_common.timed_on())
    text = "\n\n".join(sections)
    print("\n" + text, flush=True)
    blob["seconds"] = _log.seconds
    bench_common.write_outputs(text, blob)


if __name__ == "__main__":
    bench_common.run(main)
