"""One process of tests/test_multiworker.py: trains with pruning, QAT and distillation and saves the results.

Run by the test with ``sys.executable``; pytest does not collect it (no ``test_`` prefix).

    python multiworker_worker.py --out DIR --role worker --index I [--reference prune,distill]
    python multiworker_worker.py --out DIR --role single

A ``worker`` (TF_CONFIG names the 2-worker cluster on 127.0.0.1) first records how plain
Keras ``fit`` fails under ``tf.distribute.MultiWorkerMirroredStrategy`` and patches Keras
(see ``probe_and_patch_keras``), then trains every scenario under the strategy and writes
``DIR/worker<I>_<scenario>.npz``; ``--reference`` scenarios are then rerun on the default
strategy (one device) into ``DIR/reference_<scenario>.npz``. ``single`` runs every scenario
on one device into ``DIR/single_<scenario>.npz`` (bitwise the same as ``reference``).
The arrays: weights by path before and after training, masks, accuracy, per-epoch losses.
``--crash-after-setup`` makes a worker exit with status 3 once its strategy is up, for the
harness's failure test.
"""

import argparse
import os
import sys
import time
import types

from replica_checks import mask_held_callback  # this script's folder is first on sys.path

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

BATCH = 64
N_TRAIN = 1344  # 21 full global batches of 64: no partial last batch to split across workers
PRUNE_EPOCHS, PRUNE_END_STEP = 3, 40  # masks updated at steps 10, 20, 30, 40, then 23 steps at 75%
QAT_EPOCHS = 2
DISTILL_EPOCHS = 2


def log(*parts):
    print(f"[{os.environ.get('MW_ROLE', '?')} {time.strftime('%H:%M:%S')}]", *parts, file=sys.stderr, flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--role", choices=("worker", "single"), required=True)
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--scenarios", default="prune,qat,distill")
    parser.add_argument("--reference", default="", help="scenarios to rerun on one device afterwards")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--collective-timeout", type=float, default=120.0)
    parser.add_argument("--crash-after-setup", action="store_true")
    args = parser.parse_args()
    os.environ["MW_ROLE"] = f"{args.role}{args.index}"

    import tensorflow as tf

    # Two processes share 2 cores: one intra-op thread each keeps them from fighting,
    # and makes every reduction's summation order fixed.
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(max(args.threads, 2))

    if args.role == "worker":
        # Must be created before any other TensorFlow op runs in this process.
        options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=args.collective_timeout)
        strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    else:
        strategy = tf.distribute.get_strategy()
    log("strategy", type(strategy).__name__, "replicas", strategy.num_replicas_in_sync)
    if args.crash_after_setup:
        log("crashing on purpose (--crash-after-setup)")
        _exit(3)  # abruptly, like a killed or crashed process

    import keras
    import numpy as np

    if args.role == "worker":
        probe_and_patch_keras(tf, keras, np, strategy, args.out, args.index)

    import tfcompress as tfc

    (x, y), (x_test, y_test) = tfc.datasets.digits()
    x, y = x[:N_TRAIN], y[:N_TRAIN]
    data = (x, y, x_test, y_test)

    def accuracy(model):
        logits = np.asarray(model(x_test, training=False))
        return float(np.mean(logits.argmax(-1) == y_test))

    def variables(model, prefix):
        values = {f"{prefix}{v.path}": np.asarray(v.numpy()) for v in model.weights}
        values[f"{prefix}trainable_paths"] = np.array([v.path for v in model.trainable_weights])
        return values

    trained = {}  # per strategy: the pruned model, the distillation teacher

    def run(scenario, run_strategy, tag):
        start = time.time()
        ctx = types.SimpleNamespace(
            tf=tf, keras=keras, np=np, tfc=tfc, strategy=run_strategy, data=data, accuracy=accuracy,
            variables=variables, trained=trained.setdefault(id(run_strategy), {}))
        result = SCENARIOS[scenario](ctx)
        result["seconds"] = np.float64(time.time() - start)
        result["num_replicas"] = np.int64(run_strategy.num_replicas_in_sync)
        result["strategy"] = np.str_(type(run_strategy).__name__)
        path = os.path.join(args.out, f"{tag}_{scenario}.npz")
        np.savez(path + ".part.npz", **result)
        os.replace(path + ".part.npz", path)
        log(f"{tag} {scenario}: {time.time() - start:.1f}s, accuracy {float(result['accuracy']):.4f}")

    tag = f"worker{args.index}" if args.role == "worker" else "single"
    for scenario in filter(None, args.scenarios.split(",")):
        run(scenario, strategy, tag)
    # The single-device reference, in this process once the cluster's work is done: models built
    # outside the strategy's scope train on the default strategy (one device, no collectives).
    for scenario in filter(None, args.reference.split(",")):
        run(scenario, tf.distribute.get_strategy(), "reference")
    log("done")


def probe_and_patch_keras(tf, keras, np, strategy, out, index):
    """Records whether plain Keras ``fit`` works under this strategy, then patches Keras so it does.

    Keras 3.15 (and keras-team/keras master in 2026) cannot ``fit`` under
    MultiWorkerMirroredStrategy with 2+ workers, whatever the model (keras-team/keras#20585,
    tensorflow/tensorflow#72388). Two bugs in keras/src/backend/tensorflow/trainer.py:

    1. ``TensorFlowTrainer._maybe_symbolic_build`` passes the whole ``(x, y)`` batch, a nest of
       PerReplica values, to ``strategy.reduce("MEAN", batch, axis=None)``; with more than one
       worker CollectiveAllReduceStrategy hands the tuple to ``convert_to_tensor``:
       ``ValueError: Attempt to convert a value (PerReplica:{...}) with an unsupported type``.
       It only needs one replica's batch for its shapes, so the patch passes the local batch.
    2. ``reduce_per_replica(..., reduction="auto")`` reduces the step's scalar logs with
       ``strategy.reduce("MEAN", v, axis=0)`` on multi-worker strategies:
       ``ValueError: Invalid reduction dimension 0 for input with 0 dimensions``.
       The patch reduces them with ``axis=None`` (the mean over replicas).

    Each probe fits a 1-layer model for one step; both workers fail the same way at the same
    point, so they stay in step. The errors are saved to ``probe<index>.npz``.
    """
    import traceback

    from keras.src.backend.tensorflow import trainer as tf_trainer

    x = np.zeros((2 * BATCH, 8, 8, 1), np.float32)
    y = np.zeros((2 * BATCH,), np.int64)

    def probe():
        with strategy.scope():
            model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
            model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        keras.config.disable_traceback_filtering()  # keep Keras's own frames in the record
        try:
            model.fit(x, y, batch_size=BATCH, epochs=1, steps_per_epoch=1, shuffle=False, verbose=0)
        except Exception as exc:  # noqa: BLE001 -- the point is to record whatever Keras raises
            frames = [
                f"{os.path.basename(f.filename)}:{f.name}" for f in traceback.extract_tb(exc.__traceback__)
                if "keras" in f.filename and "traceback_utils" not in f.filename
            ]
            message = " ".join(str(exc).split())
            where = frames[-1] if frames else "?"
            return f"{type(exc).__name__} raised in {where}: {message[:100]} ... {message[-100:]}"
        finally:
            keras.config.enable_traceback_filtering()
        return ""

    def is_distributed(value):
        return isinstance(value, tf.distribute.DistributedValues)

    probes = {"unpatched": probe()}
    log("probe unpatched:", probes["unpatched"] or "fit works")

    original_build = tf_trainer.TensorFlowTrainer._maybe_symbolic_build

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        if iterator is not None and data_batch is None and self._distribute_strategy is not None:
            local = self.distribute_strategy.experimental_local_results
            for _, _, it in iterator:
                data_batch = keras.tree.map_structure(lambda v: local(v)[0] if is_distributed(v) else v, next(it))
                break
        return original_build(self, iterator=None, data_batch=data_batch)

    tf_trainer.TensorFlowTrainer._maybe_symbolic_build = _maybe_symbolic_build
    probes["symbolic_build_patched"] = probe()
    log("probe with patch 1:", probes["symbolic_build_patched"] or "fit works")

    original_reduce = tf_trainer.reduce_per_replica

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and tf_trainer._collective_all_reduce_multi_worker(strategy):
            return keras.tree.map_structure(
                lambda v: strategy.reduce("MEAN", v, axis=None) if is_distributed(v) else v, values)
        return original_reduce(values, strategy, reduction)

    tf_trainer.reduce_per_replica = reduce_per_replica
    probes["both_patched"] = probe()
    log("probe with patches 1+2:", probes["both_patched"] or "fit works")
    np.savez(os.path.join(out, f"probe{index}.npz"), **{k: np.str_(v) for k, v in probes.items()})
    if probes["both_patched"]:
        raise RuntimeError(f"Keras fit fails under MultiWorkerMirroredStrategy even patched: {probes['both_patched']}")


def timing(keras, name):
    """Logs how long ``fit`` took to its first step (tracing) and for the rest."""

    class Timing(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.start, self.first, self.steps = time.time(), None, 0

        def on_train_batch_end(self, batch, logs=None):
            self.steps += 1
            if self.first is None:
                self.first = time.time()

        def on_train_end(self, logs=None):
            end = time.time()
            log(f"fit {name}: first step {self.first - self.start:.1f}s, "
                f"{self.steps - 1} more in {end - self.first:.1f}s")

    return Timing()


def dense_cnn(keras, name, width=16, batch_norm=False):
    layers = keras.layers
    inputs = keras.Input((8, 8, 1), name="image")
    h = layers.Conv2D(width, 3, padding="same", name="conv1")(inputs)
    if batch_norm:
        h = layers.BatchNormalization(name="bn1")(h)
    h = layers.ReLU(name="relu1")(h)
    h = layers.Conv2D(2 * width, 3, padding="same", name="conv2")(h)
    if batch_norm:
        h = layers.BatchNormalization(name="bn2")(h)
    h = layers.ReLU(name="relu2")(h)
    h = layers.MaxPooling2D(name="pool")(h)
    h = layers.Flatten(name="flatten")(h)
    h = layers.Dense(32, activation="relu", name="fc1")(h)
    outputs = layers.Dense(10, name="logits")(h)
    return keras.Model(inputs, outputs, name=name)


def prune(ctx):
    keras, np, tfc, strategy, variables = ctx.keras, ctx.np, ctx.tfc, ctx.strategy, ctx.variables
    x, y, _, _ = ctx.data
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = tfc.zoo.compile_classifier(dense_cnn(keras, "pruned"), learning_rate=3e-3)
    initial = variables(model, "initial/")
    callback = tfc.PruningCallback(
        tfc.PolynomialDecay(0.0, 0.75, begin_step=0, end_step=PRUNE_END_STEP, frequency=10), verbose=0)
    # After every step: every local replica of every pruned kernel is zero where its mask is.
    mask_held = mask_held_callback(strategy, callback)
    history = model.fit(x, y, epochs=PRUNE_EPOCHS, batch_size=BATCH, shuffle=False, verbose=0,
                        callbacks=[callback, mask_held, timing(keras, "prune")])
    result = {**initial, **variables(model, "final/")}
    for entry, mask in zip(callback.pruner.targets, callback.pruner.masks):
        result[f"mask/{entry.path}"] = np.asarray(mask.numpy())
    result["model_strategy"] = np.str_(type(model.distribute_strategy).__name__)
    result["mask_held"] = np.asarray(mask_held.held)
    result["steps"] = np.int64(callback.pruner.step)
    result["sparsity"] = np.float64(tfc.sparsity_report(model).overall)
    result["loss"] = np.asarray(history.history["loss"])
    result["accuracy"] = np.float64(ctx.accuracy(model))
    ctx.trained["pruned"] = model
    return result


def qat(ctx):
    keras, np, tfc, strategy, variables = ctx.keras, ctx.np, ctx.tfc, ctx.strategy, ctx.variables
    x, y, _, _ = ctx.data
    keras.utils.set_random_seed(1)
    with strategy.scope():
        float_model = dense_cnn(keras, "float", batch_norm=True)
        model = tfc.quantize_model(float_model)
        tfc.zoo.compile_classifier(model, learning_rate=3e-3)
    initial = variables(model, "initial/")
    history = model.fit(x, y, epochs=QAT_EPOCHS, batch_size=BATCH, shuffle=False, verbose=0,
                        callbacks=[timing(keras, "qat")])
    result = {**initial, **variables(model, "final/")}
    result["model_strategy"] = np.str_(type(model.distribute_strategy).__name__)
    result["loss"] = np.asarray(history.history["loss"])
    result["accuracy"] = np.float64(ctx.accuracy(model))
    return result


def distill(ctx):
    """Distils the pruned model of the ``prune`` scenario (run first, same strategy) into a narrower student."""
    keras, np, tfc, strategy, variables = ctx.keras, ctx.np, ctx.tfc, ctx.strategy, ctx.variables
    x, y, _, _ = ctx.data
    if "pruned" not in ctx.trained:
        raise RuntimeError("the distill scenario distils the pruned model: run the prune scenario first")
    teacher = ctx.trained["pruned"]
    keras.utils.set_random_seed(2)
    with strategy.scope():
        student = dense_cnn(keras, "student", width=8)
        distiller = tfc.Distiller(teacher=teacher, student=student)
        distiller.compile(optimizer=keras.optimizers.Adam(3e-3), metrics=["accuracy"])
    initial = variables(student, "initial/")
    history = distiller.fit(x, y, epochs=DISTILL_EPOCHS, batch_size=BATCH, shuffle=False, verbose=0,
                             callbacks=[timing(keras, "distill")])
    result = {**initial, **variables(student, "final/"), **variables(teacher, "teacher/")}
    for key in ("loss", "student_loss", "distillation_loss", "accuracy"):
        if key in history.history:
            result[f"history/{key}"] = np.asarray(history.history[key])
    result["model_strategy"] = np.str_(type(distiller.distribute_strategy).__name__)
    result["teacher_accuracy"] = np.float64(ctx.accuracy(teacher))
    result["accuracy"] = np.float64(ctx.accuracy(student))
    return result


SCENARIOS = {"prune": prune, "qat": qat, "distill": distill}

def _exit(status):
    """Leaves at once. TensorFlow's gRPC server cannot be shut down, and tearing down an
    interpreter that started one takes seconds (or hangs), while the harness waits."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    try:
        main()
    except SystemExit as exc:  # argparse errors
        _exit(exc.code if isinstance(exc.code, int) else 1)
    except BaseException:  # noqa: BLE001 -- report anything, then leave at once
        import traceback

        traceback.print_exc()
        _exit(1)
    _exit(0)
