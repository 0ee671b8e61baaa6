"""`tfcompress auto` targets: the reference CNN (3 epochs, Fashion-MNIST), 15-minute searches on 2 cores.

Protocol:

* The float ``tfc.zoo.reference_cnn()`` trains 3 epochs on the 60k Fashion-MNIST training
  images (Adam 1e-3; cached like the demo's, ``demo.trained_reference_cnn``).
* ``tfc.auto_compress(model, data, max_accuracy_drop=1.0, objective=..., time_budget=900)``
  chooses on the last 10% of the training images and reports the chosen file on the 10k test
  images; latency is XNNPACK, 1 thread, every candidate timed in one final round-robin run.
* Targets (issue 18): latency ≥ 4x faster than the float32 file within 1.0 pt on the test split;
  size ≥ 15x smaller (gzip -9) than the float32 file within 1.0 pt.
* ``--objectives macs``: the hardware-independent search (fewest MACs, int8 preferred), for a target that
  is not this host; target ≥ 4x fewer MACs than the float32 file within 1.0 pt.
* ``--mobilenet``: the same search on ``tfc.zoo.mobilenet_style()`` (3 epochs), report only.
* Every summary row gives both the speed-up measured on this host and the MACs ratio, and the output
  names the CPU (int8 is slower than float32 on CPUs without integer dot products; see tfc.machine).

    python tools/bench_auto.py [--time_budget 900] [--objectives latency,size,macs] [--mobilenet] [--quick]
"""

import argparse
import os
import time

# bench_common first (tools/ is on sys.path: it is the script's own folder): it puts this checkout on sys.path.
import bench_common
import tfcompress as tfc
from tfcompress.pipeline import demo


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--time_budget", type=float, default=900)
    parser.add_argument("--objectives", default="latency,size")
    parser.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs per training step")
    parser.add_argument("--mobilenet", action="store_true")
    parser.add_argument("--quick", action="store_true", help="10k training images, 2-minute budgets")
    parser.add_argument("--out", default="/tmp/bench_auto")
    args = parser.parse_args()

    (x, y), (x_test, y_test) = tfc.datasets.fashion_mnist()
    budget = args.time_budget
    if args.quick:
        x, y, budget = x[:10000], y[:10000], 120
    models = {"reference_cnn": demo.trained_reference_cnn(x, y, epochs=3)}
    if args.mobilenet:
        import keras

        keras.utils.set_random_seed(0)
        mobile = tfc.zoo.compile_classifier(tfc.zoo.mobilenet_style())
        mobile.fit(x, y, epochs=3, batch_size=128, verbose=2)
        models["mobilenet_style"] = mobile
    targets = {"latency": ("speed-up", 4.0), "size": ("× smaller (gzip)", 15.0), "macs": ("fewer MACs", 4.0)}
    summary = []
    for model_name, model in models.items():
        for objective in args.objectives.split(","):
            start = time.perf_counter()
            result = tfc.auto_compress(model, ((x, y), (x_test, y_test)), max_accuracy_drop=1.0, objective=objective,
                                       time_budget=budget, epochs=args.epochs, overwrite=True,
                                       out_dir=os.path.join(args.out, f"{model_name}_{objective}"))
            seconds = time.perf_counter() - start
            print(f"\n### {model_name}, objective={objective} ({seconds:.0f} s)\n")
            print(result.to_markdown())
            best = next(c for c in result.candidates if c.name == result.best)
            base = next(c for c in result.candidates if c.name == "float32")
            speed_up = base.latency_ms["xnnpack/1t"] / best.latency_ms["xnnpack/1t"]
            fewer_macs = base.macs / best.macs
            ratio = {"latency": speed_up, "size": base.gzip_bytes / best.gzip_bytes, "macs": fewer_macs}[objective]
            label, target = targets[objective]
            drop = 100 * (best.test_accuracy - result.keras_accuracy)
            met = model_name != "reference_cnn" or (ratio >= target and result.budget_met_on_test)
            summary.append((model_name, objective, result.best, f"{ratio:.2f}x {label}", f"{speed_up:.2f}x",
                            f"{fewer_macs:.2f}x", f"{drop:+.2f} pt", f"{seconds:.0f} s",
                            ("met" if met else "missed") if model_name == "reference_cnn" else "report"))
    print("\n### Summary\n")
    print(tfc.reports.markdown_table(("model", "objective", "chosen", "vs float32 file", "XNNPACK speed-up here",
                                      "fewer MACs", "Δ test vs input", "search time", "target"), summary))
    print(f"\n{bench_common.timed_on()}")


if __name__ == "__main__":
    main()
