"""Fuzzes the evaluator with mutated .tflite files: every one must give a report or a clear error.

    python tools/fuzz_evaluator.py [--files 300]

Each mutated file (bit flips, header damage, truncation, zeroed/duplicated/random spans) goes
through ``evaluate_tflite`` with ``verify=True`` (the first load runs in a child process, so a
native crash cannot take this process down). Prints how many ran, were rejected with
InvalidTFLiteFileError, or escaped as anything else (must be 0).
"""

import collections
import os
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import tfcompress as tfc  # noqa: E402
import tflite_mutations as fuzz  # noqa: E402  (tools/ is on sys.path: the script's own folder)

flags.DEFINE_integer("files", 300, "Mutated files to try.")
flags.DEFINE_string("out", None, "Also write the markdown to this file.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    (x, _), _ = tfc.datasets.digits()
    import keras

    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(8, 3)(inputs)
    model = keras.Model(inputs, keras.layers.Dense(10)(keras.layers.Flatten()(h)))
    seeds = {"int8": bytes(tfc.to_tflite(model, mode="int8", representative_data=x[:32])),
             "float32": bytes(tfc.to_tflite(model, mode="float32"))}
    outcomes = collections.Counter()
    escaped = []
    start = time.perf_counter()
    per_seed = FLAGS.files // len(seeds)
    for seed_name, raw in seeds.items():
        for kind, data in fuzz.mutations(raw, per_seed, seed=7):
            try:
                tfc.evaluate_tflite(data, num_runs=1, warmup_runs=0, verify=True)
                outcomes[(kind, "ran")] += 1
            except tfc.InvalidTFLiteFileError:
                outcomes[(kind, "rejected")] += 1
            except Exception as exc:  # anything else is a bug to fix
                outcomes[(kind, "escaped")] += 1
                escaped.append(f"{seed_name}/{kind}: {type(exc).__name__}: {str(exc)[:200]}")
    kinds = sorted({k for k, _ in outcomes})
    rows = ["| mutation | ran | rejected with a clear error | escaped |", "|---|---|---|---|"]
    for kind in kinds:
        rows.append(f"| {kind} | {outcomes[(kind, 'ran')]} | {outcomes[(kind, 'rejected')]} | "
                    f"{outcomes[(kind, 'escaped')]} |")
    total = sum(outcomes.values())
    rows.append(f"| **all {total} files** | {sum(v for (k, o), v in outcomes.items() if o == 'ran')} | "
                f"{sum(v for (k, o), v in outcomes.items() if o == 'rejected')} | {len(escaped)} |")
    text = "\n".join(rows) + f"\n\n{time.perf_counter() - start:.0f} s; the fuzzing process never crashed."
    print(text)
    for line in escaped:
        print("ESCAPED", line)
    if FLAGS.out:
        tfc.write_atomic(FLAGS.out, text + "\n", overwrite=True)
    return 1 if escaped else 0


if __name__ == "__main__":
    app.run(main)
