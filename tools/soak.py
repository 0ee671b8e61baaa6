"""Soak test: many convert + evaluate cycles in one process; memory stays bounded, no temp files remain.

    python tools/soak.py [--cycles 200]

Prints RSS after warm-up and at the end (growth per cycle) and the temp files
tfcompress left behind (should be none).
"""

import os
import sys
import tempfile
import time

from absl import app, flags

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import tfcompress as tfc  # noqa: E402

flags.DEFINE_integer("cycles", 200, "Convert + evaluate cycles.")
flags.DEFINE_integer("warmup", 20, "Cycles before the RSS baseline is taken.")
flags.DEFINE_string("out", None, "Also write the markdown to this file.")
FLAGS = flags.FLAGS


def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def leftovers():
    folder = tempfile.gettempdir()
    return sorted(n for n in os.listdir(folder) if n.startswith(("tfcompress_", ".tmp_")))


def main(argv):
    del argv
    (x, y), (x_test, y_test) = tfc.datasets.digits()
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(16, 3, padding="same")(inputs)
    h = keras.layers.Flatten()(keras.layers.BatchNormalization()(h))
    model = keras.Model(inputs, keras.layers.Dense(10)(h))
    before = set(leftovers())
    modes = ("float32", "dynamic", "int8", "float16")
    baseline, start = None, time.perf_counter()
    samples = []
    for cycle in range(FLAGS.cycles):
        mode = modes[cycle % len(modes)]
        b = tfc.to_tflite(model, mode=mode, representative_data=x[:32] if mode == "int8" else None)
        tfc.evaluate_tflite(b, x=x_test[:64], y=y_test[:64], num_runs=3, warmup_runs=1)
        if cycle + 1 == FLAGS.warmup:
            baseline = rss_mb()
        if (cycle + 1) % 20 == 0:
            samples.append((cycle + 1, rss_mb()))
            print(f"[soak] cycle {cycle + 1}: RSS {samples[-1][1]:.0f} MB", flush=True)
    end = rss_mb()
    left = sorted(set(leftovers()) - before)
    measured = FLAGS.cycles - FLAGS.warmup
    growth = (end - baseline) / measured if measured > 0 else float("nan")
    text = "\n".join([
        "| cycles | RSS after warm-up | RSS at end | growth per cycle | temp files left | seconds |",
        "|---|---|---|---|---|---|",
        f"| {FLAGS.cycles} (convert float32/dynamic/int8/float16 + evaluate) | {baseline:.0f} MB | {end:.0f} MB | "
        f"{1024 * growth:.0f} KB | {len(left)} | {time.perf_counter() - start:.0f} |",
        "",
        "RSS every 20 cycles: " + ", ".join(f"{c}: {m:.0f} MB" for c, m in samples),
    ])
    print(text)
    if FLAGS.out:
        tfc.write_atomic(FLAGS.out, text + "\n", overwrite=True)
    if left:
        print("left behind:", left)
        return 1
    return 0


if __name__ == "__main__":
    app.run(main)
