"""Structural (channel) pruning benchmark: the reference CNN on Fashion-MNIST, and MobileNetV2.

Protocol (reference CNN, per seed):

* The float ``tfc.zoo.reference_cnn()`` is trained dense once (``--pretrain_epochs``,
  Adam at a constant ``--learning_rate``; the weights are cached under ``--cache_dir``).
* From those weights every variant fine-tunes for the same ``--finetune_epochs`` with
  the same optimizer (Adam, ``--learning_rate`` cosine-decayed to 0 over the
  fine-tuning, as ``tfc.compress`` does), the same seed and data order:
  the **dense control** without pruning; each **pruned** variant with
  ``tfc.ChannelPruningCallback`` (PolynomialDecay 0 -> fraction over the first --ramp_fraction (2/3) of
  the fine-tuning steps, mask updates every max(1, min(100, ramp_steps // 10)) steps,
  like the ``PruneChannels`` recipe step), then ``tfc.shrink``. No variant gets any
  extra training after ``shrink``.
* Distillation recovery: the same pruning run, but the fit is a ``tfc.Distiller`` with
  the dense pretrained model (``--teacher=pretrained``) or the dense control
  (``--teacher=control``) as the teacher; same epochs, optimizer and schedule.
* Every variant is converted to float32 and to int8 (``--calibration`` training images),
  and ALL files of one seed are evaluated by one ``tfc.evaluate_many`` call (XNNPACK,
  1 thread, ``--num_runs`` round-robin runs; medians), so latency ratios share the
  machine's load. Accuracy is on the test set (the full 10k unless ``--test_limit``).
  Speed-ups and size ratios are against the dense control's float32 file.
* MACs are counted from the Keras model: Conv H_out*W_out*k*k*C_in*C_out/groups,
  Dense in*out (per position), DepthwiseConv H_out*W_out*k*k*C*multiplier.
* ``shrink`` exactness: max |masked - shrunk| / max |masked| over the logits of 512 test images.

MobileNetV2 (``keras.applications``, alpha per ``--mnv2_alphas``, 96x96x3, Fashion-MNIST
upscaled bilinearly, channels tiled, scaled to [-1, 1]) follows the same protocol on
``--mnv2_train`` images with a short training; its residual streams (the ``Add``-tied
``block_*_project`` convolutions) are pruned as groups. Its BatchNormalization
statistics are re-estimated on one training batch after every training (a few hundred
steps leave them stale), for the control and the pruned model alike.

Usage:
    python tools/bench_channels.py --out=/tmp/channels.json --output=/tmp/channels.md   # full (~40 min, 2 cores)
    python tools/bench_channels.py --quick                 # smoke test (< 5 min; numbers meaningless)
    python tools/bench_channels.py --seeds=1 --finetune_epochs=3 --mnv2_alphas=
"""

import json
import math
import os
import statistics
import time

from absl import flags

import bench_common  # tools/ is on sys.path: it is the script's own folder

FLAGS = flags.FLAGS
flags.DEFINE_bool("quick", False, "Smoke test of every code path: little data, 1 epoch, 1 seed, MobileNetV2 0.35 only.")
flags.DEFINE_integer("seeds", 3, "Seeds of the reference-CNN part (0..seeds-1).")
flags.DEFINE_integer("pretrain_epochs", 3, "Dense training epochs of the reference CNN (cached).")
flags.DEFINE_integer("finetune_epochs", 2, "Fine-tuning epochs of every variant (control included).")
flags.DEFINE_list("fractions", ["0.3", "0.5", "0.7"], "Fractions of the removable channels to remove.")
flags.DEFINE_enum("criterion", "l2", ["l1", "l2", "bn", "taylor"], "Importance criterion of the main table.")
flags.DEFINE_list("criteria", ["l1", "l2", "bn", "taylor"], "Criteria compared in the criteria table.")
flags.DEFINE_float("criteria_fraction", 0.7, "Channel fraction of the criteria / distillation table.")
flags.DEFINE_enum("teacher", "control", ["pretrained", "control"],
                  "Teacher of the distillation-recovery runs: the dense control (fine-tuned with the same cosine "
                  "schedule) or the dense pretrained model. The latter ends at a constant learning rate and is a "
                  "weak teacher (about 75% test accuracy vs 88.5% for the control in the full run), so "
                  "distillation from it loses points against plain fine-tuning.")
flags.DEFINE_enum("scope", "global", ["global", "layer"], "ChannelPruningCallback scope.")
flags.DEFINE_integer("round_to", 8, "Kept widths are multiples of this where possible (SIMD-friendly).")
flags.DEFINE_float("ramp_fraction", 2 / 3, "Share of the fine-tuning steps over which the channel fraction ramps.")
flags.DEFINE_bool("distillation", True, "Also run the distillation-recovery variant.")
flags.DEFINE_float("max_group_ratio", None, "At most this fraction of any one group is removed (None: no cap).")
flags.DEFINE_float("mnv2_max_group_ratio", None, "max_group_ratio of the MobileNetV2 part (None: no cap).")
bench_common.define_data_flags(train_limit=20000, test_limit=0, batch_help="Batch size of the reference CNN's fits.",
                               train_help="Training images of the reference CNN (0: all 60k).",
                               test_help="Test images (0: the full 10k).")
flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate (constant for pretraining, cosine for fine-tuning).")
flags.DEFINE_integer("calibration", 200, "int8 calibration images.")
flags.DEFINE_integer("num_runs", 200, "Timed runs per file in evaluate_many.")
flags.DEFINE_list("mnv2_alphas", ["1.0", "0.35"], "MobileNetV2 width multipliers (empty: skip MobileNetV2).")
flags.DEFINE_integer("mnv2_seeds", 1, "Seeds of the MobileNetV2 part.")
flags.DEFINE_integer("mnv2_train", 3000, "Upscaled training images of MobileNetV2.")
flags.DEFINE_integer("mnv2_test", 2000, "Upscaled test images of MobileNetV2.")
flags.DEFINE_integer("mnv2_epochs", 2, "MobileNetV2 training epochs from scratch (cached).")
flags.DEFINE_integer("mnv2_finetune_epochs", 2, "MobileNetV2 fine-tuning epochs (control and pruned).")
flags.DEFINE_float("mnv2_fraction", 0.5, "Channel fraction removed from MobileNetV2.")
flags.DEFINE_integer("mnv2_batch_size", 32, "Batch size of MobileNetV2's fits.")
flags.DEFINE_string("cache_dir", "/tmp/bench_channels_cache", "Where pretrained weights are cached.")
bench_common.define_output_flags(out="Also write every number as JSON to this file.",
                                 output="Also write the markdown tables to this file.")

_log = bench_common.Log("bench_channels")


def _settings():
    s = dict(
        seeds=FLAGS.seeds, pretrain_epochs=FLAGS.pretrain_epochs, finetune_epochs=FLAGS.finetune_epochs,
        fractions=[float(v) for v in FLAGS.fractions], criterion=FLAGS.criterion, criteria=list(FLAGS.criteria),
        criteria_fraction=FLAGS.criteria_fraction, teacher=FLAGS.teacher, scope=FLAGS.scope,
        round_to=FLAGS.round_to, max_group_ratio=FLAGS.max_group_ratio, ramp_fraction=FLAGS.ramp_fraction,
        distillation=FLAGS.distillation,
        mnv2_max_group_ratio=FLAGS.mnv2_max_group_ratio, train_limit=FLAGS.train_limit or None,
        test_limit=FLAGS.test_limit or None,
        batch_size=FLAGS.batch_size, learning_rate=FLAGS.learning_rate, calibration=FLAGS.calibration,
        num_runs=FLAGS.num_runs, mnv2_alphas=[float(a) for a in FLAGS.mnv2_alphas], mnv2_seeds=FLAGS.mnv2_seeds,
        mnv2_train=FLAGS.mnv2_train, mnv2_test=FLAGS.mnv2_test, mnv2_epochs=FLAGS.mnv2_epochs,
        mnv2_finetune_epochs=FLAGS.mnv2_finetune_epochs, mnv2_fraction=FLAGS.mnv2_fraction,
        mnv2_batch_size=FLAGS.mnv2_batch_size, quick=FLAGS.quick,
    )
    if FLAGS.quick:
        s.update(seeds=1, pretrain_epochs=1, finetune_epochs=1, fractions=[0.5], criteria_fraction=0.5,
                 train_limit=2000, test_limit=1000, num_runs=30, mnv2_alphas=[0.35], mnv2_seeds=1, mnv2_train=128,
                 mnv2_test=100, mnv2_epochs=1, mnv2_finetune_epochs=1)
    return s


def _cap_text(max_group_ratio):
    return "" if max_group_ratio is None else f", max_group_ratio {max_group_ratio:g}"


# Helpers -----------------------------------------------------------------------------------


def _producer_widths(model):
    from tfcompress.pruning.channels import PRODUCERS

    return {layer.name: int(layer.output.shape[-1]) for layer in model.layers if type(layer) in PRODUCERS}


def _max_relative_difference(a, b, x):
    import numpy as np

    ya = np.asarray(a.predict(x, verbose=0, batch_size=128))
    yb = np.asarray(b.predict(x, verbose=0, batch_size=128))
    return float(np.max(np.abs(ya - yb)) / max(float(np.max(np.abs(ya))), 1e-12))


def _ramp(end_fraction_steps, fraction):
    import tfcompress as tfc

    end = max(1, end_fraction_steps)
    return tfc.PolynomialDecay(0.0, fraction, begin_step=0, end_step=end, frequency=max(1, min(100, end // 10)))


def _adam(learning_rate, steps):
    import keras

    return keras.optimizers.Adam(bench_common.cosine_learning_rate(learning_rate, steps))


def _convert(files, row, name, model, calibration):
    """Adds ``model``'s float32 and int8 files to ``files`` (as ``"{name} {mode}"``), their sizes to ``row``."""
    import tfcompress as tfc

    for mode in ("float32", "int8"):
        flatbuffer = tfc.to_tflite(model, mode=mode, representative_data=calibration if mode == "int8" else None)
        files[f"{name} {mode}"] = flatbuffer
        row.update({f"{mode}_bytes": len(flatbuffer), f"{mode}_gzip": bench_common.gzip_bytes(flatbuffer)})


def _score(rows, reports, base):
    """Accuracy, median XNNPACK 1-thread ms and speed-up vs ``base(row)``'s float32 file, into every row."""
    for name, row in rows.items():
        base_ms = reports[f"{base(row)} float32"].latency_for("xnnpack", 1).median_ms
        for mode in ("float32", "int8"):
            report = reports[f"{name} {mode}"]
            ms = report.latency_for("xnnpack", 1).median_ms
            row[f"{mode}_accuracy"] = float(report.accuracy)
            row[f"{mode}_ms"] = ms
            row[f"{mode}_speedup"] = base_ms / ms


# Reference CNN -------------------------------------------------------------------------------


def _fresh_cnn(weights):
    import tfcompress as tfc

    model = tfc.zoo.reference_cnn()
    model.set_weights(weights)
    return model


def _pretrained_cnn(s, seed, x, y):
    import keras

    import tfcompress as tfc

    key = f"cnn_seed{seed}_n{len(x)}_e{s['pretrain_epochs']}_b{s['batch_size']}_lr{s['learning_rate']:g}.npz"
    path = os.path.join(FLAGS.cache_dir, key)
    if os.path.exists(path):
        _log(f"seed {seed}: dense reference CNN loaded from {path}")
        return bench_common.load_weights(path)
    keras.utils.set_random_seed(seed)
    model = tfc.zoo.compile_classifier(tfc.zoo.reference_cnn(), learning_rate=s["learning_rate"])
    start = time.perf_counter()
    model.fit(x, y, epochs=s["pretrain_epochs"], batch_size=s["batch_size"], verbose=0)
    weights = model.get_weights()
    bench_common.save_weights(path, weights)
    _log(f"seed {seed}: dense reference CNN trained in {time.perf_counter() - start:.0f} s, cached to {path}")
    return weights


def _cnn_variants(s):
    """``[(name, fraction or None, criterion, distill)]``, without duplicates, the control first."""
    specs = [("dense control", None, None, False)]
    specs += [(f"{s['criterion']} {f:.0%}", f, s["criterion"], False) for f in s["fractions"]]
    specs += [(f"{c} {s['criteria_fraction']:.0%}", s["criteria_fraction"], c, False) for c in s["criteria"]]
    if s["distillation"]:
        specs.append((f"{s['criterion']} {s['criteria_fraction']:.0%} + distillation", s["criteria_fraction"],
                      s["criterion"], True))
    seen, out = set(), []
    for spec in specs:
        if spec[0] not in seen:
            seen.add(spec[0])
            out.append(spec)
    return out


def _cnn_seed(s, seed, data):
    import keras

    import tfcompress as tfc

    (x, y), (x_test, y_test) = data
    weights = _pretrained_cnn(s, seed, x, y)
    steps = s["finetune_epochs"] * math.ceil(len(x) / s["batch_size"])
    ramp_steps = int(steps * s["ramp_fraction"])
    probe = x_test[:512]
    rows, files = {}, {}
    control_model = None
    pretrained = _fresh_cnn(weights)
    pretrained_accuracy = float((pretrained.predict(x_test, verbose=0, batch_size=512).argmax(1) == y_test).mean())
    _log(f"seed {seed}: dense pretrained model (Keras) test accuracy {pretrained_accuracy:.2%}")
    for name, fraction, criterion, distill in _cnn_variants(s):
        start = time.perf_counter()
        keras.utils.set_random_seed(seed + 1)
        model = _fresh_cnn(weights)
        tfc.zoo.compile_classifier(model, bench_common.cosine_learning_rate(s["learning_rate"], steps))
        row = {"fraction_target": fraction, "criterion": criterion, "distill": distill}
        if fraction is None:
            model.fit(x, y, epochs=s["finetune_epochs"], batch_size=s["batch_size"], verbose=0)
            small = model
            control_model = model
            row.update(removed=0.0, shrink_max_rel_diff=0.0)
        else:
            kwargs = dict(importance=criterion, scope=s["scope"], round_to=s["round_to"],
                          max_group_ratio=s["max_group_ratio"], verbose=0,
                          data=(x[:512], y[:512]) if criterion == "taylor" else None)
            if distill:
                if s["teacher"] == "control":
                    teacher = control_model
                else:
                    teacher = _fresh_cnn(weights)
                callback = tfc.ChannelPruningCallback(_ramp(ramp_steps, fraction), **kwargs)  # prunes the student
                distiller = tfc.Distiller(teacher=teacher, student=model)
                distiller.compile(optimizer=_adam(s["learning_rate"], steps), metrics=["accuracy"])
                dataset = distiller.cache_teacher(x, y, batch_size=s["batch_size"], seed=seed + 1)
                distiller.fit(dataset, epochs=s["finetune_epochs"], shuffle=False, callbacks=[callback], verbose=0)
                model = distiller.student
            else:
                callback = tfc.ChannelPruningCallback(_ramp(ramp_steps, fraction), **kwargs)
                model.fit(x, y, epochs=s["finetune_epochs"], batch_size=s["batch_size"], verbose=0,
                          callbacks=[callback])
            small = tfc.shrink(model, verbose=0)
            row.update(removed=callback.sparsity, notes=list(callback.notes),
                       shrink_max_rel_diff=_max_relative_difference(model, small, probe))
        row.update(params=small.count_params(), macs=bench_common.macs(small), widths=_producer_widths(small),
                   train_seconds=time.perf_counter() - start)
        _convert(files, row, name, small, x[: s["calibration"]])
        rows[name] = row
        _log(f"seed {seed}: {name}: removed {row['removed']:.1%} of the channels, {row['params']:,} params, "
             f"{row['macs'] / 1e6:.2f} M MACs, shrink max rel diff {row['shrink_max_rel_diff']:.1e}, widths "
             f"{list(row['widths'].values())} ({time.perf_counter() - start:.0f} s)")
    start = time.perf_counter()
    reports = tfc.evaluate_many(files, x=x_test, y=y_test, backends=("xnnpack",), threads=(1,),
                                num_runs=s["num_runs"])
    _log(f"seed {seed}: {len(files)} files evaluated together in {time.perf_counter() - start:.0f} s")
    _score(rows, reports, lambda row: "dense control")
    compare = tfc.compare(reports, baseline="dense control float32")
    _log(f"seed {seed}:\n{compare}")  # in the log as soon as measured: a later failure loses nothing
    return rows, compare, pretrained_accuracy


# MobileNetV2 ---------------------------------------------------------------------------------



def _mnv2(alpha):
    import keras

    return keras.applications.MobileNetV2(input_shape=(96, 96, 3), alpha=alpha, weights=None, classes=10,
                                          classifier_activation=None)


def _mnv2_seed(s, seed, data):
    import keras

    import tfcompress as tfc

    x, y, x_test, y_test = data
    steps = s["mnv2_finetune_epochs"] * math.ceil(len(x) / s["mnv2_batch_size"])
    rows, files = {}, {}
    for alpha in s["mnv2_alphas"]:
        key = (f"mnv2_a{alpha:g}_seed{seed}_n{len(x)}_e{s['mnv2_epochs']}_b{s['mnv2_batch_size']}"
               f"_lr{s['learning_rate']:g}.npz")
        path = os.path.join(FLAGS.cache_dir, key)
        start = time.perf_counter()
        if os.path.exists(path):
            weights = bench_common.load_weights(path)
            _log(f"MobileNetV2 {alpha:g} seed {seed}: loaded from {path}")
        else:
            keras.utils.set_random_seed(seed)
            net = tfc.zoo.compile_classifier(_mnv2(alpha), learning_rate=s["learning_rate"])
            net.fit(x, y, epochs=s["mnv2_epochs"], batch_size=s["mnv2_batch_size"], verbose=0)
            bench_common.reestimate_batch_norm(net, x)
            weights = net.get_weights()
            bench_common.save_weights(path, weights)
            _log(f"MobileNetV2 {alpha:g} seed {seed}: trained in {time.perf_counter() - start:.0f} s, cached")
        for pruned in (False, True):
            start = time.perf_counter()
            name = f"MobileNetV2 {alpha:g} " + (f"{s['criterion']} {s['mnv2_fraction']:.0%}" if pruned else "dense control")
            keras.utils.set_random_seed(seed + 1)
            net = _mnv2(alpha)
            net.set_weights(weights)
            tfc.zoo.compile_classifier(net, bench_common.cosine_learning_rate(s["learning_rate"], steps))
            before = _producer_widths(net)
            row = {"alpha": alpha, "pruned": pruned}
            if pruned:
                callback = tfc.ChannelPruningCallback(
                    _ramp(int(steps * s["ramp_fraction"]), s["mnv2_fraction"]), importance=s["criterion"], scope=s["scope"],
                    round_to=s["round_to"], max_group_ratio=s["mnv2_max_group_ratio"],
                    data=(x[:512], y[:512]) if s["criterion"] == "taylor" else None, verbose=0)
                net.fit(x, y, epochs=s["mnv2_finetune_epochs"], batch_size=s["mnv2_batch_size"], verbose=0,
                        callbacks=[callback])
                shrink_start = time.perf_counter()
                small = tfc.shrink(net, verbose=0)
                row["shrink_seconds"] = time.perf_counter() - shrink_start
                row["shrink_max_rel_diff"] = _max_relative_difference(net, small, x_test[:256])
                row["removed"] = callback.sparsity
                after = _producer_widths(small)
                residual = {tuple(g): (before[g[0]], after[g[0]]) for g in callback.graph.groups.values() if len(g) > 1}
                row["residual_groups"] = {"+".join(k): v for k, v in residual.items()}
                row["notes"] = list(callback.notes)
            else:
                net.fit(x, y, epochs=s["mnv2_finetune_epochs"], batch_size=s["mnv2_batch_size"], verbose=0)
                small = net
                row.update(removed=0.0)
            bench_common.reestimate_batch_norm(small, x)
            row.update(params=small.count_params(), macs=bench_common.macs(small),
                       train_seconds=time.perf_counter() - start)
            _convert(files, row, name, small, x[: s["calibration"]])
            rows[name] = row
            _log(f"{name} seed {seed}: {row['params']:,} params, {row['macs'] / 1e6:.1f} M MACs"
                 + (f", removed {row['removed']:.1%}, shrink max rel diff {row['shrink_max_rel_diff']:.1e} "
                    f"({row['shrink_seconds']:.1f} s), residual groups {row['residual_groups']}" if pruned else "")
                 + f" ({time.perf_counter() - start:.0f} s)")
            del net, small
    start = time.perf_counter()
    reports = tfc.evaluate_many(files, x=x_test, y=y_test, backends=("xnnpack",), threads=(1,),
                                num_runs=s["num_runs"])
    _log(f"MobileNetV2 seed {seed}: {len(files)} files evaluated together in {time.perf_counter() - start:.0f} s")
    for row in rows.values():
        row["base"] = f"MobileNetV2 {row['alpha']:g} dense control"
    _score(rows, reports, lambda row: row["base"])
    return rows, tfc.compare(reports)


# Report --------------------------------------------------------------------------------------


def _mean(values):
    return statistics.fmean(values)


def _pm(values):
    return bench_common.mean_pm(values, fmt="{:+.2f}")


def _aggregate(per_seed, control_key, float_base_bytes_key="float32_bytes"):
    """``{name: summary}`` over seeds: means, and Δ in points vs the control of the same seed."""
    out = {}
    for name in per_seed[0]:
        rows = [seed_rows[name] for seed_rows in per_seed]
        controls = [seed_rows[control_key(seed_rows[name])] for seed_rows in per_seed]
        out[name] = {
            "removed": _mean([r["removed"] for r in rows]),
            "params": _mean([r["params"] for r in rows]),
            "macs": _mean([r["macs"] for r in rows]),
            "float32_accuracy": [r["float32_accuracy"] for r in rows],
            "int8_accuracy": [r["int8_accuracy"] for r in rows],
            "float32_delta": [r["float32_accuracy"] - c["float32_accuracy"] for r, c in zip(rows, controls)],
            "int8_delta": [r["int8_accuracy"] - c["float32_accuracy"] for r, c in zip(rows, controls)],
            "float32_speedup": _mean([r["float32_speedup"] for r in rows]),
            "int8_speedup": _mean([r["int8_speedup"] for r in rows]),
            "float32_ms": _mean([r["float32_ms"] for r in rows]),
            "int8_ms": _mean([r["int8_ms"] for r in rows]),
            "float32_gzip_ratio": _mean([c[float_base_bytes_key] / r["float32_gzip"] for r, c in zip(rows, controls)]),
            "int8_gzip_ratio": _mean([c[float_base_bytes_key] / r["int8_gzip"] for r, c in zip(rows, controls)]),
            "int8_gzip_vs_gzip": _mean([c["float32_gzip"] / r["int8_gzip"] for r, c in zip(rows, controls)]),
            "shrink_max_rel_diff": max(r.get("shrink_max_rel_diff", 0.0) for r in rows),
            "control_params": controls[0]["params"], "control_macs": controls[0]["macs"],
        }
    return out


HEADER = ("| variant | channels removed | params | MACs | float32 acc | Δ vs control | XNNPACK float32 speed-up "
          "| int8 acc | int8 Δ vs control | XNNPACK int8 speed-up | float32 gzip ratio | int8 gzip ratio |")


def _row(name, a):
    return (f"| {name} | {a['removed']:.0%} | {a['params'] / 1e3:.1f} k ({a['params'] / a['control_params']:.2f}x) "
            f"| {a['macs'] / 1e6:.2f} M ({a['macs'] / a['control_macs']:.2f}x) "
            f"| {100 * _mean(a['float32_accuracy']):.2f}% | {_pm(a['float32_delta'])} pt "
            f"| {a['float32_speedup']:.2f}x | {100 * _mean(a['int8_accuracy']):.2f}% | {_pm(a['int8_delta'])} pt "
            f"| {a['int8_speedup']:.2f}x | {a['float32_gzip_ratio']:.1f}x | {a['int8_gzip_ratio']:.1f}x "
            f"({a['int8_gzip_vs_gzip']:.1f}x) |")


def _cnn_markdown(s, agg, per_seed, n_train, n_test, pretrained_accuracies):
    control = agg["dense control"]
    seeds = list(range(s["seeds"]))
    base_ms = _mean([r["dense control"]["float32_ms"] for r in per_seed])
    lines = [
        f"Reference CNN, Fashion-MNIST ({n_train} training / {n_test} test images): {s['pretrain_epochs']} dense "
        f"epochs (Adam {s['learning_rate']:g}), then {s['finetune_epochs']} fine-tuning epochs for every variant "
        f"(Adam {s['learning_rate']:g} cosine-decayed to 0; pruning ramps over {s['ramp_fraction']:.0%} of the steps; scope "
        f"{s['scope']}, round_to {s['round_to']}{_cap_text(s['max_group_ratio'])}), `shrink`, no further training; "
        f"seeds {seeds}, mean ± std. "
        f"Δ in points vs the dense control's float32 file of the same seed (control: "
        f"{100 * _mean(control['float32_accuracy']):.2f}%; the dense pretrained model they start from: "
        f"{100 * _mean(pretrained_accuracies):.2f}% in Keras). Speed-ups: median XNNPACK 1-thread latency of the "
        f"dense control float32 file ({base_ms:.3f} ms) / the variant's, all files of a seed timed together "
        f"(`evaluate_many`, {s['num_runs']} runs). gzip ratio: dense float32 .tflite bytes / the variant's gzipped "
        f"file (in brackets: gzipped dense float32 / gzipped int8).",
        "",
        HEADER,
        "|" + "---|" * 12,
    ]
    main = ["dense control"] + [f"{s['criterion']} {f:.0%}" for f in s["fractions"]]
    lines += [_row(name, agg[name]) for name in main]
    lines += ["", f"Criteria and distillation recovery at {s['criteria_fraction']:.0%} of the channels (same protocol; "
              f"distillation: `tfc.Distiller` with the dense {s['teacher']} model as teacher, default T and alpha, "
              "same epochs and schedule as plain fine-tuning).", "", HEADER, "|" + "---|" * 12,
              _row("dense control", control)]
    crit = [f"{c} {s['criteria_fraction']:.0%}" for c in s["criteria"]]
    if s["distillation"]:
        crit.append(f"{s['criterion']} {s['criteria_fraction']:.0%} + distillation")
    lines += [_row(name, agg[name]) for name in crit]
    worst = max(a["shrink_max_rel_diff"] for a in agg.values())
    lines += ["", f"`shrink` exactness: max |masked − shrunk| / max |masked| over 512 test images' logits, worst of "
              f"all runs: {worst:.1e}."]
    return "\n".join(lines)


def _mnv2_markdown(s, agg, per_seed, n_train, n_test):
    lines = [
        f"MobileNetV2 (96×96, Fashion-MNIST upscaled; {n_train} training / {n_test} test images): "
        f"{s['mnv2_epochs']} epochs from scratch, then {s['mnv2_finetune_epochs']} fine-tuning epochs (control and "
        f"pruned alike: Adam {s['learning_rate']:g} cosine, pruning ramp over {s['ramp_fraction']:.0%} of the steps, "
        f"{s['criterion']}, scope {s['scope']}, round_to {s['round_to']}{_cap_text(s['mnv2_max_group_ratio'])}), "
        f"BN statistics re-estimated; "
        f"seeds {list(range(s['mnv2_seeds']))}. Δ and speed-ups vs the same alpha's dense control float32 file; "
        f"all files timed together.",
        "",
        HEADER.replace("| variant |", "| variant |"),
        "|" + "---|" * 12,
    ]
    lines += [_row(name, a) for name, a in agg.items()]
    lines.append("")
    for name, row in per_seed[0].items():
        if row["pruned"]:
            groups = ", ".join(f"{k.replace('block_', 'b').replace('_project', '')}: {a}→{b}"
                               for k, (a, b) in row["residual_groups"].items())
            lines.append(f"{name}: residual groups (Add-tied project convs, channels before→after) {groups}; "
                         f"`shrink` max relative difference vs the masked model {row['shrink_max_rel_diff']:.1e} "
                         f"({row['shrink_seconds']:.1f} s).")
    return "\n".join(lines)


def _targets(s, agg, mnv2_agg):
    lines = ["Targets (means over seeds):"]
    plain = {n: a for n, a in agg.items() if n != "dense control"}

    def best(candidates, key):
        return max(candidates.items(), key=lambda kv: kv[1][key]) if candidates else (None, None)

    ok_float = {n: a for n, a in plain.items() if _mean(a["float32_delta"]) >= -0.010}
    name, a = best(ok_float, "float32_speedup")
    met = a is not None and a["float32_speedup"] >= 2.5
    lines.append(f"* ≥ 2.5x faster float32 on XNNPACK at ≤ 1.0 pt below the control: {'MET' if met else 'NOT MET'}"
                 + (f" — best within 1 pt: {name}, {a['float32_speedup']:.2f}x at {100 * _mean(a['float32_delta']):+.2f} pt"
                    if a else " — no variant within 1 pt"))
    fastest_name, fastest = best(plain, "float32_speedup")
    if fastest is not None and fastest_name != name:
        lines.append(f"  (fastest float32 variant: {fastest_name}, {fastest['float32_speedup']:.2f}x at "
                     f"{100 * _mean(fastest['float32_delta']):+.2f} pt)")
    ok_int8 = {n: a for n, a in plain.items() if _mean(a["int8_delta"]) >= -0.010}
    name, a = best(ok_int8, "int8_speedup")
    met = a is not None and a["int8_speedup"] >= 6.0 and a["int8_gzip_ratio"] >= 12.0
    lines.append(f"* int8 + channel pruning ≥ 6x faster than the dense float32 file and gzip ≥ 12x smaller, at ≤ 1.0 pt "
                 f"below the control: {'MET' if met else 'NOT MET'}"
                 + (f" — best within 1 pt: {name}, {a['int8_speedup']:.2f}x, gzip {a['int8_gzip_ratio']:.1f}x "
                    f"({a['int8_gzip_vs_gzip']:.1f}x gzip vs gzip) at {100 * _mean(a['int8_delta']):+.2f} pt"
                    if a else " — no int8 variant within 1 pt"))
    fastest_name, fastest = best(plain, "int8_speedup")
    if fastest is not None and fastest_name != name:
        lines.append(f"  (fastest int8 variant: {fastest_name}, {fastest['int8_speedup']:.2f}x, gzip "
                     f"{fastest['int8_gzip_ratio']:.1f}x at {100 * _mean(fastest['int8_delta']):+.2f} pt)")
    if mnv2_agg is not None:
        worst = max((a["shrink_max_rel_diff"] for a in mnv2_agg.values()), default=0.0)
        lines.append(f"* MobileNetV2: residual groups pruned and `shrink` exact (worst max relative difference "
                     f"{worst:.1e}); speed-ups and accuracy in the MobileNetV2 table.")
    return "\n".join(lines)


def main():
    import keras

    import tfcompress as tfc

    s = _settings()
    _log(f"settings: {json.dumps(s)}")
    data = bench_common.fashion_mnist(s)
    (x, _), (x_test, _) = data
    per_seed, compares, pretrained_accuracies = [], [], []
    for seed in range(s["seeds"]):
        rows, compare, pretrained_accuracy = _cnn_seed(s, seed, data)
        pretrained_accuracies.append(pretrained_accuracy)
        per_seed.append(rows)
        compares.append(compare)
        keras.backend.clear_session()
    agg = _aggregate(per_seed, lambda row: "dense control")
    sections = [_cnn_markdown(s, agg, per_seed, len(x), len(x_test), pretrained_accuracies)]

    mnv2_seeds, mnv2_agg, mnv2_compares = [], None, []
    if s["mnv2_alphas"]:
        (mx, my), (mxt, myt) = tfc.datasets.fashion_mnist(limit_train=s["mnv2_train"], limit_test=s["mnv2_test"])
        mdata = (bench_common.upscale_to_mobilenet(mx), my, bench_common.upscale_to_mobilenet(mxt), myt)
        for seed in range(s["mnv2_seeds"]):
            rows, compare = _mnv2_seed(s, seed, mdata)
            mnv2_seeds.append(rows)
            mnv2_compares.append(compare)
            keras.backend.clear_session()
        mnv2_agg = _aggregate(mnv2_seeds, lambda row: f"{row['base']}")
        sections.append(_mnv2_markdown(s, mnv2_agg, mnv2_seeds, len(mx), len(mxt)))
    sections.append(_targets(s, agg, mnv2_agg))
    sections.append(f"Seed 0, every file (`tfc.compare`):\n\n{compares[0]}")
    if mnv2_compares:
        sections.append(f"MobileNetV2 seed 0, every file (`tfc.compare`):\n\n{mnv2_compares[0]}")
    sections.append(f"Total wall time: {_log.seconds:.0f} s.")
    sections.append(bench_common.timed_on())
    text = "\n\n".join(sections)
    print("\n" + text, flush=True)
    bench_common.write_outputs(text, {"settings": s, "cnn": per_seed, "cnn_summary": agg,
                                      "pretrained_accuracy": pretrained_accuracies, "mnv2": mnv2_seeds,
                                      "mnv2_summary": mnv2_agg, "seconds": _log.seconds})


if __name__ == "__main__":
    bench_common.run(main)
