"""Checks that our latency numbers mean what the reference tool's mean.

The reference is the benchmark that ships inside ai-edge-litert,
``ai_edge_litert/tools/benchmark_litert_model.py`` (LiteRT's CompiledModel on the
CPU accelerator, which runs XNNPACK). On the same .tflite files, in rounds that
alternate ours (``evaluate_tflite``, backend ``xnnpack``) and the reference, both at
1 thread, we take each side's median and report ours / reference per file and the
median ratio over files. Target: within 0.9-1.1.

The reference prints medians rounded to 0.01 ms, so files faster than ~0.5 ms are
shown but left out of the verdict (their ratio is mostly rounding).

    python tools/bench_evaluator.py [--rounds 7] [--runs 100] [--out results.md]
"""

import argparse
import contextlib
import io
import os
import statistics
import tempfile
import time

from absl import app, flags

# bench_common first (tools/ is on sys.path: it is the script's own folder): it puts this checkout on sys.path.
import bench_common
import tfcompress as tfc

flags.DEFINE_integer("rounds", 7, "Alternating rounds (ours, reference) per file.")
flags.DEFINE_integer("runs", 100, "Timed runs per side per round.")
flags.DEFINE_string("out", None, "Also write the markdown to this file.")
FLAGS = flags.FLAGS

MIN_RESOLVED_MS = 0.5


def reference_median_ms(path, runs, threads=1):
    from ai_edge_litert.tools import benchmark_litert_model as reference

    args = argparse.Namespace(
        model=path, signature="", use_cpu=True, no_cpu=False, use_gpu=False, use_npu=False,
        require_full_delegation=False, dispatch_library_path="", compiler_plugin_path="", runtime_path="",
        num_runs=runs, warmup_runs=5, num_threads=threads, result_json="", verbose=False,
    )
    with contextlib.redirect_stdout(io.StringIO()):
        result = reference.run_benchmark(args)
    return result["latency"]["median_ms"]


def build_models(folder):
    """Small and mid-size models in float32 and int8, written to ``folder``."""
    import keras
    import numpy as np

    rng = np.random.default_rng(0)
    models = {
        "reference_cnn_28": tfc.zoo.reference_cnn(),
        "mobilenet_style_160": tfc.zoo.mobilenet_style(input_shape=(160, 160, 3)),
        "mobilenetv2_035_96": keras.applications.MobileNetV2(
            input_shape=(96, 96, 3), alpha=0.35, weights=None, classes=10),
        "reference_cnn_112": tfc.zoo.reference_cnn(input_shape=(112, 112, 1)),
    }
    paths = []
    for name, model in models.items():
        shape = (64,) + tuple(model.input_shape[1:])
        calibration = rng.random(shape, dtype=np.float32)
        for mode in ("float32", "int8"):
            path = os.path.join(folder, f"{name}_{mode}.tflite")
            tfc.to_tflite(model, mode=mode, representative_data=calibration if mode == "int8" else None,
                          output_path=path)
            paths.append(path)
    return paths


def main(argv):
    del argv
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        paths = build_models(folder)
        ours, theirs = {p: [] for p in paths}, {p: [] for p in paths}
        for round_index in range(FLAGS.rounds):
            for path in paths:
                # Alternate which side goes first, so neither always runs on a warmer cache.
                sides = ("ours", "ref") if round_index % 2 == 0 else ("ref", "ours")
                for side in sides:
                    if side == "ours":
                        report = tfc.evaluate_tflite(path, backends=("xnnpack",), threads=(1,), num_runs=FLAGS.runs)
                        ours[path].append(report.latency[0].median_ms)
                    else:
                        theirs[path].append(reference_median_ms(path, FLAGS.runs))
            print(f"[bench_evaluator] round {round_index + 1}/{FLAGS.rounds} done", flush=True)

        rows = ["| model | ours median ms | reference median ms | ours / reference |", "|---|---|---|---|"]
        ratios, long_ratios = [], []
        for path in paths:
            a, b = statistics.median(ours[path]), statistics.median(theirs[path])
            ratio = a / b if b else float("nan")
            ratios.append(ratio)
            if b >= MIN_RESOLVED_MS:
                long_ratios.append(ratio)
            # The reference prints 2 decimals and sub-0.5 ms runs are dominated by timer and cache noise.
            note = "" if b >= MIN_RESOLVED_MS else f" (under {MIN_RESOLVED_MS} ms)"
            rows.append(f"| {os.path.basename(path)} | {a:.3f} | {b:.2f} | {ratio:.3f}{note} |")
    verdict = statistics.median(ratios) if ratios else float("nan")
    met = 0.9 <= verdict <= 1.1
    outside = sum(not 0.9 <= r <= 1.1 for r in ratios)
    long_verdict = statistics.median(long_ratios) if long_ratios else float("nan")
    text = "\n".join(rows + [
        "",
        f"Median ratio over all {len(ratios)} files: **{verdict:.3f}** (target 0.9-1.1: "
        f"{'met' if met else 'NOT met'}); {outside} file(s) outside 0.9-1.1; over the files of "
        f"≥ {MIN_RESOLVED_MS} ms: {long_verdict:.3f}. {FLAGS.rounds} alternating rounds × {FLAGS.runs} runs, "
        "1 thread, XNNPACK.",
    ])
    print()
    print(text)
    print(f"\n{bench_common.timed_on()}")
    print(f"\n[bench_evaluator] done in {time.perf_counter() - start:.0f} s")
    if FLAGS.out:
        tfc.write_atomic(FLAGS.out, text + "\n", overwrite=True)


if __name__ == "__main__":
    app.run(main)
