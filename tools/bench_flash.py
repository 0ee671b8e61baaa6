"""Flash benchmark: int8 vs clustered int8 stored as TFLite Micro look-up tables (``tfc.micro.compress``).

Protocol:

* The reference CNN (``tfc.zoo.reference_cnn``, BN momentum 0.9) trained ``--epochs`` epochs on
  Fashion-MNIST (batch 64, Adam 1e-3, seed 0).
* Variants: int8 PTQ of it (200 calibration images); for each of ``--clusters`` (16, 8, 4):
  ``tfc.cluster_weights(model, k)``, one epoch of fine-tuning with ``tfc.ClusteringCallback(k)``
  (Adam 1e-4), int8 PTQ, then ``tfc.micro.compress`` (default settings) and, when
  ``--max_tensor_bytes`` is set, ``tfc.micro.compress(..., max_tensor_bytes=N)`` too (the arena cap).
* Each file: flash (its size) and TFLite Micro's arena, accuracy and top-1 agreement with LiteRT on the first
  ``--micro_samples`` test images (``tfc.evaluate_tflite(..., backends=("xnnpack", "micro"))``; LiteRT runs
  the decoded twin of a compressed file); and whether TFLM's raw outputs of the compressed file equal those of
  the uncompressed clustered file on the same images (they must: DECODE writes the same int8 values).

Usage:
    python tools/bench_flash.py --out=/tmp/flash.json --output=/tmp/flash.md
    python tools/bench_flash.py --quick   # smoke test (about two minutes on 2 loaded cores)
"""

import warnings

from absl import flags

import bench_common  # tools/ is on sys.path: it is the script's own folder

FLAGS = flags.FLAGS
flags.DEFINE_bool("quick", False, "Smoke test: 4,000 training / 500 test images, 1 epoch, clusters 16 only, "
                                  "50 TFLM samples (numbers meaningless).")
flags.DEFINE_integer("epochs", 2, "Training epochs of the float reference CNN.")
flags.DEFINE_list("clusters", ["16", "8", "4"], "Cluster counts to compare.")
flags.DEFINE_integer("micro_samples", 300, "Test images run on TFLite Micro (one at a time).")
flags.DEFINE_integer("max_tensor_bytes", 32768, "Also compress with this max_tensor_bytes (0: skip that row).")
bench_common.define_output_flags(out="Also write every number as JSON to this file.",
                                 output="Also write the markdown table to this file.")
bench_common.define_data_flags(batch_size=64, train_limit=20000, test_limit=1000)

_log = bench_common.Log("bench_flash")


def _settings():
    s = dict(epochs=FLAGS.epochs, clusters=[int(k) for k in FLAGS.clusters], micro_samples=FLAGS.micro_samples,
             max_tensor_bytes=FLAGS.max_tensor_bytes, train_limit=FLAGS.train_limit, test_limit=FLAGS.test_limit,
             batch_size=FLAGS.batch_size, calibration=200, quick=FLAGS.quick)
    if FLAGS.quick:
        s.update(epochs=1, clusters=[16], micro_samples=50, train_limit=4000, test_limit=500)
    return s


def _tflm_raw_outputs(tfc, raw, x):
    arena = tfc.micro.first_load(bytes(raw), 1)
    return tfc.micro.run(bytes(raw), arena, [x.astype("float32")], 0)[0]


def main():
    import keras
    import numpy as np

    import tfcompress as tfc

    s = _settings()
    (x, y), (x_test, y_test) = bench_common.fashion_mnist(s)
    keras.utils.set_random_seed(0)
    model = tfc.zoo.compile_classifier(tfc.zoo.reference_cnn(bn_momentum=0.9))
    model.fit(x, y, epochs=s["epochs"], batch_size=s["batch_size"], verbose=0)
    _log(f"reference CNN trained: Keras test accuracy {100 * bench_common.accuracy(model, x_test, y_test):.2f}%")
    rep, probe = x[:s["calibration"]], x_test[:s["micro_samples"]]
    files, plain, reports = {"int8": tfc.to_tflite(model, mode="int8", representative_data=rep)}, {}, {}
    for k in s["clusters"]:
        clustered = tfc.cluster_weights(model, k)
        tfc.zoo.compile_classifier(clustered, learning_rate=1e-4)
        clustered.fit(x, y, epochs=1, batch_size=s["batch_size"], verbose=0,
                      callbacks=[tfc.ClusteringCallback(k, verbose=0)])
        b = tfc.to_tflite(clustered, mode="int8", representative_data=rep)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a variant with nothing to compress shows it in its row
            files[f"cluster{k}+int8+LUT"] = small = tfc.micro.compress(b)
            plain[f"cluster{k}+int8+LUT"] = b
            if s["max_tensor_bytes"]:
                name = f"cluster{k}+int8+LUT (max_tensor_bytes={s['max_tensor_bytes']})"
                files[name] = tfc.micro.compress(b, max_tensor_bytes=s["max_tensor_bytes"])
                plain[name] = b
        _log(f"cluster {k}: {len(b):,} B int8 → {len(small):,} B with look-up tables")
    rows, results = [], {}
    for name, f in files.items():
        r = tfc.evaluate_tflite(f, x=x_test, y=y_test, backends=("xnnpack", "micro"), num_runs=5,
                                micro_samples=s["micro_samples"])
        reports[name] = r
        m = r.micro
        identical = "—"
        if name in plain:
            identical = bool(np.array_equal(_tflm_raw_outputs(tfc, f, probe), _tflm_raw_outputs(tfc, plain[name], probe)))
        bits = sorted({t.bits for t in getattr(f, "compressed", [])})
        rows.append((name, f"{len(f):,}", f"{m.arena_bytes:,}", ",".join(map(str, bits)) or "—",
                     f"{100 * r.accuracy:.2f}%", f"{100 * m.agreement:.1f}%", identical))
        results[name] = {"flash_bytes": len(f), "arena_bytes": m.arena_bytes, "bits": bits, "accuracy": r.accuracy,
                         "tflm_agreement": m.agreement, "tflm_identical_to_uncompressed": identical}
        _log(f"  {name}: flash {len(f):,} B, arena {m.arena_bytes:,} B, TFLM agreement {100 * m.agreement:.1f}%")
    from tfcompress.core.tables import markdown_table

    text = (markdown_table(("variant", "flash B", "TFLM arena B", "index bits", "accuracy (XNNPACK)",
                            "TFLM agreement with LiteRT", "TFLM outputs = uncompressed"), rows)
            + f"\n\nReference CNN, Fashion-MNIST ({len(x):,} train images, {s['epochs']} epochs; accuracy on "
            f"{len(x_test):,} test images, TFLM on {s['micro_samples']}). " + bench_common.timed_on())
    print("\n" + text + "\n", flush=True)
    bench_common.write_outputs(text, {"settings": s, "variants": results, "seconds": _log.seconds})


if __name__ == "__main__":
    bench_common.run(main)
