"""Deployment-targets benchmark: the demo's variants on LiteRT CPU, XNNPACK, TFLite Micro and ONNX Runtime.

Protocol:

* The reference CNN is the demo's: ``tfcompress.pipeline.demo.trained_reference_cnn`` on
  Fashion-MNIST (all 60,000 training images, ``--epochs`` epochs, batch 128, BN
  momentum 0.99, seed 0), loaded from the demo's cache when a demo run left it there.
* Variants, made as the demo makes its own (fine-tuning: ``--finetune_epochs``, Adam
  cosine-decayed to 0, batch 128, 200 calibration images):
  float32, float16, dynamic and int8 PTQ of it; int8 with int8 inputs/outputs
  (``io_type="int8"``, what firmware ships); ``Prune(0.5)`` + int8; one-shot
  ``tfc.prune_channels(model, 0.5, round_to=8)`` + fine-tuning, as float32 and int8;
  the demo's small student (``zoo.small_student``) distilled from the reference
  CNN, as float32 and int8.
* Every ``.tflite`` goes through ONE ``tfc.evaluate_many`` call with
  ``backends=("cpu", "xnnpack", "micro")``: accuracy on the whole test set
  (XNNPACK), TFLite Micro arena / flash / top-1 agreement with LiteRT on the first
  ``--micro_samples`` test images (files TFLM cannot run are reported with the
  audit's reason).
* ONNX: ``tfc.to_onnx(..., "float32")`` of the Keras models and ``"int8"``
  translated from the int8 ``.tflite`` files (QDQ), accuracy by ``tfc.evaluate_onnx``
  on the whole test set.
* Latency: after those calls, a timing pass puts every LiteRT (cpu, xnnpack) and ONNX
  Runtime configuration into the same rounds, one thread, the first test image as
  input. Each round runs every configuration ``BURST`` (10) times back to back: the
  first run of a burst is "cold" (it follows the other configurations' runs, whose
  weights have pushed this one's out of the caches), the others are "warm" (as when one
  model runs alone). ``--num_runs`` runs per configuration and pass, ``--timing_repeats``
  passes; the tables give the median over passes of each pass's median. One run per
  configuration per round would make every run cold, which costs ONNX Runtime far more
  than LiteRT (2.5x vs 1.25x for the float32 CNN here) and would misreport it (found by
  this benchmark; ``evaluate.time_round_robin`` now drops the first run of a short
  burst too). This pass also keeps the cold runs, for their own table. The separate
  ``evaluate_many`` / ``evaluate_onnx`` timings are printed and kept in the JSON.

Usage:
    # full: ~14 min on 2 loaded cores, ~10 with the float model cached
    python tools/bench_deploy.py --out=/tmp/deploy.json --output=/tmp/deploy.md
    python tools/bench_deploy.py --quick   # smoke test (about a minute)
"""

import json
import math
import os
import statistics
import time

from absl import flags

import bench_common  # tools/ is on sys.path: it is the script's own folder

FLAGS = flags.FLAGS
flags.DEFINE_bool("quick", False, "Smoke test (about a minute): 4,000 training / 1,000 test images, 1 epoch "
                                  "everywhere, 100 TFLM samples, 30 timed runs, one pass (numbers meaningless).")
flags.DEFINE_integer("epochs", 3, "Training epochs of the float reference CNN (the demo's: 3; cached).")
flags.DEFINE_integer("finetune_epochs", 2, "Epochs of pruning, channel-pruning fine-tuning and distillation.")
flags.DEFINE_integer("train_limit", 0, "Training images (0: all 60,000).")
flags.DEFINE_integer("test_limit", 0, "Test images for accuracy (0: all 10,000).")
flags.DEFINE_integer("micro_samples", 500, "Test images run on TFLite Micro (one at a time).")
flags.DEFINE_integer("num_runs", 500, "Timed single-image runs per configuration in each interleaved pass.")
flags.DEFINE_integer("timing_repeats", 3, "Interleaved timing passes; the table gives the median of their medians.")
flags.DEFINE_integer("calibration", 200, "int8 calibration images.")
flags.DEFINE_bool("student", True, "Also distil the demo's small student (about a minute).")
flags.DEFINE_string("cache_dir", None, "Cache of the float model (default: the demo's, ~/.cache/tfcompress).")
bench_common.define_output_flags(out="Also write every number as JSON to this file.",
                                 output="Also write the markdown to this file.")

BURST = 10  # back-to-back runs of one configuration per round of the timing pass
_log = bench_common.Log("bench_deploy")


def _settings():
    s = dict(epochs=FLAGS.epochs, finetune_epochs=FLAGS.finetune_epochs, train_limit=FLAGS.train_limit or None,
             test_limit=FLAGS.test_limit or None, micro_samples=FLAGS.micro_samples, num_runs=FLAGS.num_runs,
             timing_repeats=FLAGS.timing_repeats, calibration=FLAGS.calibration, student=FLAGS.student,
             batch_size=128, bn_momentum=0.99, quick=FLAGS.quick)
    if FLAGS.quick:
        s.update(epochs=1, finetune_epochs=1, train_limit=4000, test_limit=1000, micro_samples=100, num_runs=30,
                 timing_repeats=1, batch_size=64, bn_momentum=0.9)
    return s


def _adam(steps, learning_rate=1e-3):
    import keras

    return keras.optimizers.Adam(bench_common.cosine_learning_rate(learning_rate, steps))


class _OrtSession:
    """An ONNX Runtime session with one input set, timed like a LiteRT interpreter (``invoke()``).

    Same settings as ``tfc.evaluate_onnx`` (CPU provider, sequential, one inter-op thread).
    """

    def __init__(self, raw, threads, x_one):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        self.session = ort.InferenceSession(bytes(raw), sess_options=options, providers=["CPUExecutionProvider"])
        (inp,) = self.session.get_inputs()
        self.feeds = {inp.name: x_one.astype("float32")}

    def invoke(self):
        return self.session.run(None, self.feeds)


def _interleaved_latency(tflite_files, onnx_files, x_one, num_runs, burst=None, threads=1):
    """Warm and cold median ms of every LiteRT (cpu, xnnpack) and ONNX Runtime configuration, timed together."""
    import numpy as np

    from tfcompress.evaluation import litert as evaluate, tflite_file

    burst = burst or BURST
    rng = np.random.default_rng(0)
    runners = {}
    for name, data in tflite_files.items():
        raw = tflite_file.read_bytes(data)
        for backend in ("cpu", "xnnpack"):
            interpreter = evaluate.make_interpreter(raw, backend, threads)
            details = interpreter.get_input_details()
            checked = evaluate.check_inputs(x_one, details)
            for detail, array in zip(details, evaluate.timing_inputs(details, checked, rng)):
                interpreter.set_tensor(detail["index"], array)
            runners[(name, backend)] = interpreter
    for name, data in onnx_files.items():
        runners[(name, "onnxruntime")] = _OrtSession(data, threads, x_one)
    # Per round, `burst` back-to-back runs of each runner: the first follows the other runners' runs ("cold":
    # their weights and buffers have pushed this one's out of the caches), the rest follow its own ("warm",
    # as when one model runs alone). Rounds interleave the runners, so drifts of the machine's load hit all alike.
    rounds = max(1, num_runs // burst)
    cold = {}
    warm = evaluate.time_round_robin(runners, rounds * (burst - 1), warmup_runs=10, burst=burst, cold=cold)
    return {key: {"median_ms": statistics.median(warm[key]), "cold_median_ms": statistics.median(cold[key]),
                  "warm_runs": len(warm[key]), "cold_runs": len(cold[key])} for key in runners}


def _variants(s, model, data):
    """``(tflite_files, keras_models)``: ``{name: ConvertedModel}`` and the Keras model behind each family."""
    import keras

    import tfcompress as tfc

    (x, y), _ = data
    rep = x[: s["calibration"]]
    files, models = {}, {"reference": model}
    start = time.perf_counter()
    for mode in ("float32", "float16", "dynamic", "int8"):
        files[mode] = tfc.to_tflite(model, mode=mode, representative_data=rep if mode == "int8" else None)
    files["int8 (int8 I/O)"] = tfc.to_tflite(model, mode="int8", representative_data=rep, io_type="int8")
    _log(f"PTQ: {len(files)} files ({time.perf_counter() - start:.0f} s)")

    start = time.perf_counter()
    result = tfc.compress(model, data, [tfc.Prune(0.5, epochs=s["finetune_epochs"]),
                                        tfc.Convert("int8", name="prune50-int8", sparse=False)],
                          batch_size=s["batch_size"], evaluate=False, verbose=0, calibration_samples=s["calibration"])
    files.update(result.artifacts)
    _log(f"prune50-int8 ({time.perf_counter() - start:.0f} s)")

    start = time.perf_counter()
    keras.utils.set_random_seed(1)
    small = tfc.prune_channels(model, 0.5, round_to=8, verbose=0)
    steps = s["finetune_epochs"] * math.ceil(len(x) / s["batch_size"])
    small.compile(optimizer=_adam(steps), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    small.fit(x, y, epochs=s["finetune_epochs"], batch_size=s["batch_size"], verbose=0)
    files["ch50-float32"] = tfc.to_tflite(small, mode="float32")
    files["ch50-int8"] = tfc.to_tflite(small, mode="int8", representative_data=rep)
    models["ch50"] = small
    _log(f"ch50: prune_channels 0.5 (round_to 8) + {s['finetune_epochs']} epochs, {small.count_params():,} params "
         f"({model.count_params():,} before) ({time.perf_counter() - start:.0f} s)")

    if s["student"]:
        start = time.perf_counter()
        keras.utils.set_random_seed(2)
        student = tfc.zoo.compile_classifier(tfc.zoo.small_student(bn_momentum=0.9))
        result = tfc.compress(student, data, [tfc.Distill(model, epochs=s["finetune_epochs"]),
                                              tfc.Convert("float32", name="student-float32"),
                                              tfc.Convert("int8", name="student-int8")],
                              batch_size=s["batch_size"], evaluate=False, verbose=0,
                              calibration_samples=s["calibration"])
        files.update(result.artifacts)
        models["student"] = result.model
        _log(f"student: {result.model.count_params():,} params, distilled {s['finetune_epochs']} epochs "
             f"({time.perf_counter() - start:.0f} s)")
    return files, models


def _onnx_files(files, models, s):
    """``{name: ONNXModel}``: float32 from each Keras model, int8 translated from each family's int8 .tflite."""
    import tfcompress as tfc

    out = {}
    for family, keras_model in models.items():
        prefix = "" if family == "reference" else f"{family}-"
        start = time.perf_counter()
        out[f"{prefix}float32 (ONNX)"] = tfc.to_onnx(keras_model, mode="float32")
        out[f"{prefix}int8 (ONNX)"] = tfc.to_onnx(files[f"{prefix}int8"], mode="int8")
        _log(f"ONNX {family}: float32 {len(out[f'{prefix}float32 (ONNX)']) / 1024:.1f} KB, int8 "
             f"{len(out[f'{prefix}int8 (ONNX)']) / 1024:.1f} KB ({time.perf_counter() - start:.0f} s)")
    return out


def _kb(n):
    return f"{n / 1024:.1f}"


def _tflm_cells(m):
    if m is None:
        return ["—", "—", "—", "—"]
    if m.arena_bytes is None:
        rules = sorted({f.rule for f in m.findings if f.blocking}) or ["refused"]
        return [f"no ({', '.join(rules)})", "—", "—", "—"]
    runs = "yes" if m.runs else "runs, wrongly"
    return [runs, _kb(m.arena_bytes), _kb(m.flash_bytes), f"{100 * m.agreement:.1f}%"]


def _markdown(s, reports, onnx_reports, latency, keras_accuracy, n_train, n_test, params, seconds, load):
    header = ("| variant | runtime | file KB | gzip KB | accuracy | LiteRT cpu ms | XNNPACK ms | ORT ms "
              "| runs on TFLM | TFLM arena KB | TFLM flash KB | TFLM agreement |")
    lines = [header, "|" + "---|" * 12]

    def ms(name, backend):
        t = latency.get((name, backend))
        return "—" if t is None else f"{t['median_ms']:.3f}"

    for name, r in reports.items():
        acc = "—" if r.accuracy is None else f"{100 * r.accuracy:.2f}%"
        lines.append("| " + " | ".join([name, "LiteRT", _kb(r.file_bytes), _kb(r.gzip_bytes), acc, ms(name, "cpu"),
                                         ms(name, "xnnpack"), "—"] + _tflm_cells(r.micro)) + " |")
    for name, r in onnx_reports.items():
        acc = "—" if r.accuracy is None else f"{100 * r.accuracy:.2f}%"
        lines.append("| " + " | ".join([name, "ONNX Runtime", _kb(r.file_bytes), _kb(r.gzip_bytes), acc, "—", "—",
                                         ms(name, "onnxruntime"), "—", "—", "—", "—"]) + " |")
    ort_own = ", ".join(f"{name.replace(' (ONNX)', '')} {r.latency[0].median_ms:.3f}"
                        for name, r in onnx_reports.items()) + " ms"
    micro_n = next((r.micro.samples for r in reports.values() if r.micro is not None and r.micro.samples), 0)
    student = (f"; student = `zoo.small_student()` distilled ({params['student']:,} parameters). "
               if "student" in params else ". ")
    lines += [
        "",
        f"Reference CNN ({params['reference']:,} parameters) trained {s['epochs']} epoch(s) on {n_train:,} "
        f"Fashion-MNIST images (Keras test accuracy {100 * keras_accuracy:.2f}%); accuracy on {n_test:,} test "
        f"images (LiteRT: XNNPACK; ONNX: ONNX Runtime CPU). Fine-tuning {s['finetune_epochs']} epoch(s) (Adam, "
        f"cosine to 0): prune50 = `Prune(0.5)`; ch50 = `prune_channels(model, 0.5, round_to=8)` + fine-tuning "
        f"({params.get('ch50', 0):,} parameters){student}"
        f"Latency: median ms of one image, one thread, warm: every LiteRT and ONNX Runtime configuration timed in "
        f"the same rounds, each round running every configuration {BURST} times back to back and keeping runs "
        f"2-{BURST} ({s['num_runs']} runs per configuration and pass, median of {s['timing_repeats']} passes; "
        f"cold first runs in the last table). ONNX Runtime's own `evaluate_onnx` calls, timed apart from LiteRT: "
        f"{ort_own}. TFLite Micro (the `tflite-micro` interpreter, reference kernels): arena = what its allocator "
        f"used; flash = the model's bytes (without the TFLM library); agreement = top-1 agreement with LiteRT on "
        f"{micro_n} test images. int8 ONNX files are QDQ translations of the int8 `.tflite` (tf2onnx). "
        f"{bench_common.timed_on(end='')}; 1-minute load average {load[0]:.1f} → {load[1]:.1f} during "
        f"the timing passes; {seconds / 60:.1f} min in all.",
    ]
    # int8 vs float32 of the same model, per runtime.
    families = [("reference", "float32", "int8", "float32 (ONNX)", "int8 (ONNX)")]
    for fam in ("ch50", "student"):
        if f"{fam}-int8" in reports:
            families.append((fam, f"{fam}-float32", f"{fam}-int8", f"{fam}-float32 (ONNX)", f"{fam}-int8 (ONNX)"))
    lines += ["", "int8 speed-up over float32 of the same model (interleaved medians; < 1.00x: int8 is slower):", "",
              "| model | LiteRT cpu | XNNPACK | ONNX Runtime | ONNX Runtime int8 vs XNNPACK int8 |",
              "|---|---|---|---|---|"]
    for fam, f32, i8, of32, oi8 in families:
        cells = []
        for a, b, backend in ((f32, i8, "cpu"), (f32, i8, "xnnpack"), (of32, oi8, "onnxruntime")):
            ta, tb = latency.get((a, backend)), latency.get((b, backend))
            cells.append("—" if ta is None or tb is None else f"{ta['median_ms'] / tb['median_ms']:.2f}x "
                         f"({ta['median_ms']:.3f} → {tb['median_ms']:.3f} ms)")
        to, tx = latency.get((oi8, "onnxruntime")), latency.get((i8, "xnnpack"))
        cells.append("—" if to is None or tx is None else f"{to['median_ms'] / tx['median_ms']:.2f}x slower"
                     if to["median_ms"] > tx["median_ms"] else f"{tx['median_ms'] / to['median_ms']:.2f}x faster")
        lines.append(f"| {fam} | " + " | ".join(cells) + " |")
    lines += ["", f"Cold: median ms of the first run of each burst, right after the other {len(latency) - 1} "
              "configurations ran (their weights have pushed this model's out of the caches, as in an app that "
              "runs other work between inferences); warm in brackets:", "",
              "| variant | LiteRT cpu | XNNPACK | ONNX Runtime |", "|---|---|---|---|"]
    for fam, f32, i8, of32, oi8 in families:
        for lite, onnx in ((f32, of32), (i8, oi8)):
            cells = []
            for name, backend in ((lite, "cpu"), (lite, "xnnpack"), (onnx, "onnxruntime")):
                v = latency.get((name, backend))
                cells.append("—" if v is None else f"{v['cold_median_ms']:.3f} ({v['median_ms']:.3f})")
            lines.append(f"| {lite} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    import numpy as np

    import tfcompress as tfc
    from tfcompress.pipeline import demo

    s = _settings()
    _log(f"settings: {json.dumps(s)}")
    data = tfc.datasets.fashion_mnist(limit_train=s["train_limit"], limit_test=s["test_limit"])
    (x, y), (x_test, y_test) = data
    start = time.perf_counter()
    model = demo.trained_reference_cnn(x, y, s["epochs"], cache_dir=FLAGS.cache_dir, batch_size=s["batch_size"],
                                       bn_momentum=s["bn_momentum"])
    keras_accuracy = float(model.evaluate(x_test, y_test, verbose=0, batch_size=512)[1])
    _log(f"reference CNN: Keras test accuracy {100 * keras_accuracy:.2f}% ({time.perf_counter() - start:.0f} s)")

    files, models = _variants(s, model, data)
    params = {k: int(m.count_params()) for k, m in models.items()}

    start = time.perf_counter()
    reports = tfc.evaluate_many(files, x=x_test, y=y_test, backends=("cpu", "xnnpack", "micro"), threads=(1,),
                                num_runs=50, micro_samples=s["micro_samples"])
    _log(f"evaluate_many: {len(files)} files on cpu, xnnpack and micro ({time.perf_counter() - start:.0f} s)")
    for name, r in reports.items():
        m = r.micro
        _log(f"  {name}: acc {100 * r.accuracy:.2f}%, TFLM "
             + (f"arena {m.arena_bytes:,} B, agreement {100 * m.agreement:.1f}%, host {m.host_ms:.2f} ms"
                if m.arena_bytes is not None else f"refused: {m.error[:120]}")
             + ", LiteRT (own evaluate_many rounds) " + ", ".join(f"{t.key} {t.median_ms:.3f} ms" for t in r.latency))

    start = time.perf_counter()
    onnx_files = _onnx_files(files, models, s)
    onnx_reports = {}
    for name, data_onnx in onnx_files.items():
        onnx_reports[name] = tfc.evaluate_onnx(data_onnx, x=x_test, y=y_test, num_runs=50, name=name)
    _log(f"ONNX: {len(onnx_files)} files exported and evaluated ({time.perf_counter() - start:.0f} s)")
    for name, r in onnx_reports.items():
        _log(f"  {name}: acc {100 * r.accuracy:.2f}%, ORT {r.latency[0].median_ms:.3f} ms (separate call)")

    start = time.perf_counter()
    load_before = os.getloadavg()[0]
    passes = [_interleaved_latency(files, onnx_files, x_test[:1], s["num_runs"]) for _ in range(s["timing_repeats"])]
    latency = {key: {"median_ms": statistics.median(p[key]["median_ms"] for p in passes),
                     "cold_median_ms": statistics.median(p[key]["cold_median_ms"] for p in passes),
                     "pass_medians_ms": [p[key]["median_ms"] for p in passes],
                     "pass_cold_medians_ms": [p[key]["cold_median_ms"] for p in passes]} for key in passes[0]}
    load = (load_before, os.getloadavg()[0])
    _log(f"interleaved timing: {s['timing_repeats']} passes of {len(latency)} configurations "
         f"({time.perf_counter() - start:.0f} s; 1-minute load average {load[0]:.1f} before, {load[1]:.1f} after)")
    for key, v in latency.items():
        _log(f"  {key[0]} / {key[1]}: warm {[round(m, 3) for m in v['pass_medians_ms']]} ms, cold "
             f"{[round(m, 3) for m in v['pass_cold_medians_ms']]} ms")

    seconds = _log.seconds
    text = _markdown(s, reports, onnx_reports, latency, keras_accuracy, len(x), len(x_test), params, seconds, load)
    print("\n" + text + "\n", flush=True)
    blob = {
        "settings": s, "keras_accuracy": keras_accuracy, "params": params, "seconds": seconds, "load": load,
        "tflite": {k: r.to_dict() for k, r in reports.items()},
        "onnx": {k: r.to_dict() for k, r in onnx_reports.items()},
        "interleaved_latency": {f"{k[0]} / {k[1]}": v for k, v in latency.items()},
    }
    bench_common.write_outputs(text, blob, json_default=lambda v: np.asarray(v).tolist())


if __name__ == "__main__":
    bench_common.run(main)
