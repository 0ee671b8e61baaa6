"""Post-training quantization benchmark: every conversion mode of the reference CNN on Fashion-MNIST.

For each mode: accuracy on all 10,000 test images, file size, gzip -9 size, and
single-image latency on LiteRT's built-in CPU kernels vs the XNNPACK delegate at 1
and 2 threads (runs interleaved). Also the size ratios of the MobileNet-style model.

    python tools/bench_ptq.py            # full: trains (or loads the cached) float models
    python tools/bench_ptq.py --quick    # small data, for a smoke test

Prints markdown tables (pasted into the README) and, with --out, writes them to a file.
"""

import os
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

import tfcompress as tfc  # noqa: E402
from tfcompress.pipeline import demo  # noqa: E402

flags.DEFINE_boolean("quick", False, "Small data and few runs (smoke test).")
flags.DEFINE_integer("epochs", 3, "Training epochs of the float models.")
flags.DEFINE_integer("runs", 200, "Timed runs per backend and thread count.")
flags.DEFINE_string("out", None, "Also write the markdown to this file (atomically, overwriting).")
FLAGS = flags.FLAGS

MODES = ("float32", "float16", "dynamic", "int8", "int16x8")


def trained_mobilenet_style(x, y, epochs, seed=0):
    import keras

    keras.utils.set_random_seed(seed)
    model = tfc.zoo.compile_classifier(tfc.zoo.mobilenet_style())
    model.fit(x, y, epochs=epochs, batch_size=128, verbose=2)
    return model


def bench_model(model, name, x, y, x_test, y_test, runs):
    keras_acc = float(np.mean(np.asarray(model.predict(x_test, batch_size=512, verbose=0)).argmax(1) == y_test))
    files = {mode: tfc.to_tflite(model, mode=mode, representative_data=x[:200] if mode in ("int8", "int16x8") else None)
             for mode in MODES}
    reports = tfc.evaluate_many(files, x=x_test, y=y_test, threads=(1, 2), num_runs=runs)
    for mode, r in reports.items():
        print(f"[bench_ptq] {name} {mode}: {r.file_bytes:,} B, acc {100 * r.accuracy:.2f}%", flush=True)
    return keras_acc, reports


def size_ratios():
    """float32 vs int8 file size of larger models (random weights: sizes do not depend on training)."""
    import keras

    rng = np.random.default_rng(0)
    candidates = {
        "mobilenet_style (28x28, 139k params)": tfc.zoo.mobilenet_style(),
        "reference_cnn width 4 (1.7M params)": tfc.zoo.reference_cnn(width=4),
        "Keras MobileNetV2 alpha 0.35, 96x96": keras.applications.MobileNetV2(
            input_shape=(96, 96, 3), alpha=0.35, weights=None, classes=10),
        "Keras MobileNetV2 alpha 1.0, 224x224": keras.applications.MobileNetV2(
            input_shape=(224, 224, 3), alpha=1.0, weights=None),
    }
    rows = ["| model | params | float32 | int8 | × smaller | int8 bytes that are not int8 weights |",
            "|---|---|---|---|---|---|"]
    for name, model in candidates.items():
        calibration = rng.random((32,) + tuple(model.input_shape[1:]), dtype=np.float32)
        f32 = tfc.to_tflite(model, mode="float32")
        i8 = tfc.to_tflite(model, mode="int8", representative_data=calibration)
        weights_int8 = i8.info.weight_bytes_by_dtype.get("int8", 0)
        overhead = 1 - weights_int8 / len(i8)
        rows.append(f"| {name} | {model.count_params():,} | {len(f32) / 1024:,.0f} KB | {len(i8) / 1024:,.0f} KB | "
                    f"{len(f32) / len(i8):.2f}x | {100 * overhead:.0f}% |")
        print(f"[bench_ptq] size ratio {name}: {len(f32) / len(i8):.2f}x", flush=True)
    return "\n".join(rows)


def main(argv):
    del argv
    start = time.perf_counter()
    limit = 8000 if FLAGS.quick else None
    (x, y), (x_test, y_test) = tfc.datasets.fashion_mnist(limit_train=limit, limit_test=1000 if FLAGS.quick else None)
    runs = 20 if FLAGS.quick else FLAGS.runs
    cnn = demo.trained_reference_cnn(x, y, FLAGS.epochs, batch_size=32 if FLAGS.quick else 128)
    cnn_acc, cnn_reports = bench_model(cnn, "reference_cnn", x, y, x_test, y_test, runs)
    mobile = trained_mobilenet_style(x, y, FLAGS.epochs)
    mob_acc, mob_reports = bench_model(mobile, "mobilenet_style", x, y, x_test, y_test, runs)

    out = [
        f"Reference CNN, Fashion-MNIST ({len(x):,} train images, {FLAGS.epochs} epochs; accuracy on "
        f"{len(x_test):,} test images). Keras float accuracy {100 * cnn_acc:.2f}%. Latency: median ms per "
        f"image over {runs} interleaved runs; `cpu` = LiteRT built-in kernels, `xnnpack` = XNNPACK delegate.",
        "",
        tfc.compare(cnn_reports, baseline="float32", reference_accuracy=cnn_acc),
        "",
        f"MobileNet-style (depthwise-separable) model, same data. Keras float accuracy {100 * mob_acc:.2f}%.",
        "",
        tfc.compare(mob_reports, baseline="float32", reference_accuracy=mob_acc),
        "",
    ]
    i8 = cnn_reports["int8"]
    ratio = cnn_reports["float32"].file_bytes / i8.file_bytes
    mob_ratio = mob_reports["float32"].file_bytes / mob_reports["int8"].file_bytes
    out += [
        "Size ratio float32 → int8 as models grow. Per-channel quantization stores a float32 scale and an "
        "int64 zero point per output channel, and biases stay int32; models with few weights per channel "
        "pay relatively more for them.",
        "",
        size_ratios(),
        "",
    ]
    delta = 100 * (i8.accuracy - cnn_acc)
    out += [
        "| target | measured | met |",
        "|---|---|---|",
        f"| reference CNN int8 file ≥ 3.5x smaller than float32 | {ratio:.2f}x | {'yes' if ratio >= 3.5 else 'NO'} |",
        f"| MobileNet-style int8 ratio (approaches 4x) | {mob_ratio:.2f}x | — |",
        f"| int8 accuracy within 1.0 pt of Keras | {delta:+.2f} pt | {'yes' if abs(delta) <= 1.0 else 'NO'} |",
    ]
    text = "\n".join(out)
    print()
    print(text)
    print(f"\n[bench_ptq] done in {time.perf_counter() - start:.0f} s")
    if FLAGS.out:
        tfc.write_atomic(FLAGS.out, text + "\n", overwrite=True)


if __name__ == "__main__":
    app.run(main)
