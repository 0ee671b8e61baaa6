"""Behaviour that had no test: backends really differ, latency rounds interleave, pruning under
``steps_per_execution`` and XLA, and a killed ``compress`` chain resuming where it stopped."""

import gc
import json
import os
import signal
import statistics
import subprocess
import sys
import textwrap
import time

import keras
import numpy as np
import pytest
from conftest import small_cnn

import tfcompress as tfc
from tfcompress.evaluation import litert as evaluate_module

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT)
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
# The QAT recipe step, under its current name (QuantizeAware is its deprecated alias).
QAT_STEP = getattr(tfc, "QuantizationAwareTraining", None) or tfc.QuantizeAware


# --- a. "cpu" and "xnnpack" are different runtimes -------------------------------------------


def _delegate_nodes(interpreter):
    # LiteRT lists a delegated partition as a node named DELEGATE; no public API lists the nodes.
    return [op for op in interpreter._get_ops_details() if op["op_name"] == "DELEGATE"]


@pytest.fixture(scope="module")
def wide_float_tflite():
    """A float model with 512-wide layers: enough accumulation that kernels summing in another order differ."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((512,), name="features")
    hidden = keras.layers.Dense(512, activation="relu", name="wide")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(10, name="logits")(hidden), name="wide")
    x = np.random.default_rng(0).normal(size=(64, 512)).astype("float32")
    return tfc.to_tflite(model, mode="float32"), x


@pytest.fixture(scope="module")
def cnn_tflites(trained_digits_model, digits_data):
    (x, _), _ = digits_data
    return {"float32": tfc.to_tflite(trained_digits_model, mode="float32"),
            "int8": tfc.to_tflite(trained_digits_model, mode="int8", representative_data=x[:64])}


@pytest.mark.parametrize("mode", ["float32", "int8"])
def test_interpreter_factory_applies_xnnpack_only_for_the_xnnpack_backend(cnn_tflites, mode):
    raw = bytes(cnn_tflites[mode])
    cpu = evaluate_module.make_interpreter(raw, "cpu", 1)
    xnnpack = evaluate_module.make_interpreter(raw, "xnnpack", 1)
    assert _delegate_nodes(cpu) == []
    delegated = _delegate_nodes(xnnpack)
    assert delegated, "the xnnpack backend must run the model through the XNNPACK delegate"
    # The delegate takes over the compute: it consumes the weights of every convolution and dense
    # layer, and the model's output comes out of it.
    consumed = {int(t) for node in delegated for t in node["inputs"]}
    weights = [int(op["inputs"][1]) for op in cpu._get_ops_details() if op["op_name"] in ("CONV_2D", "FULLY_CONNECTED")]
    assert len(weights) == 4 and set(weights) <= consumed, (weights, delegated)
    produced = {int(t) for node in delegated for t in node["outputs"]}
    assert xnnpack.get_output_details()[0]["index"] in produced
    # Both compute the same function.
    x = np.random.default_rng(0).random((1, 8, 8, 1), dtype=np.float32)
    outs = []
    for interpreter in (cpu, xnnpack):
        detail = interpreter.get_input_details()[0]
        interpreter.set_tensor(detail["index"], evaluate_module.quantize_input(x, detail))
        interpreter.invoke()
        outs.append(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).astype(np.float32))
    if mode == "float32":
        np.testing.assert_allclose(outs[0], outs[1], atol=1e-4)  # float kernels differ in summation order only
    else:
        # The built-in kernels requantize each layer's int32 accumulator with gemmlowp's fixed-point multiplier
        # (rounding twice), XNNPACK with a float scale (rounding once): values near a rounding tie land one int8
        # step apart (measured on an AVX2-only EPYC: 0.2-3% of each layer's values, never more than one step).
        # The output layer's own rounding gives at most one output step; a step flipped upstream about one more.
        step = cnn_tflites[mode].info.output_steps[0]
        assert step > 0 and np.abs(outs[0] - outs[1]).max() <= 2 * step + 1e-6, (np.abs(outs[0] - outs[1]).max(), step)


def test_evaluate_tflite_times_and_scores_each_backend_on_its_own_runtime(cnn_tflites, digits_data, monkeypatch):
    _, (x_test, y_test) = digits_data
    made = []
    real = evaluate_module.make_interpreter

    def recording(raw, backend, threads):
        interpreter = real(raw, backend, threads)
        made.append((backend, bool(_delegate_nodes(interpreter))))
        return interpreter

    monkeypatch.setattr(evaluate_module, "make_interpreter", recording)
    report = tfc.evaluate_tflite(cnn_tflites["float32"], x=x_test, y=y_test, threads=(1, 2), num_runs=2)
    # Timing (1 and 2 threads), parity and accuracy each built interpreters; every one matches its backend.
    assert {b for b, _ in made} == {"cpu", "xnnpack"} and len(made) >= 6
    assert all(delegated == (backend == "xnnpack") for backend, delegated in made), made
    assert report.accuracy_backend == "xnnpack" and report.failed_backends == {}

    made.clear()
    report = tfc.evaluate_tflite(cnn_tflites["float32"], x=x_test, y=y_test, backends=("cpu",), num_runs=2)
    assert made and all(b == "cpu" and not delegated for b, delegated in made), made
    assert report.accuracy_backend == "cpu" and [r.backend for r in report.latency] == ["cpu"]


def test_parity_compares_two_different_kernel_sets(wide_float_tflite):
    # Deterministic for a given LiteRT build: the same kernels on the same input give the same bits,
    # so a nonzero difference shows the two backends ran different float kernels (XNNPACK's GEMMs
    # accumulate in another order than the built-in ones), and a tiny one that they agree.
    flatbuffer, x = wide_float_tflite
    report = tfc.evaluate_tflite(flatbuffer, x=x, num_runs=1)
    parity = report.parity["backends"]["xnnpack"]
    assert report.parity["reference"] == "cpu"
    assert 0.0 < parity["max_abs_diff"] < 1e-3
    assert parity["top1_agreement"] == 1.0


# --- b. latency rounds are interleaved round-robin ---------------------------------------------


class _Invoker:
    """Stands in for an interpreter: ``invoke()`` records its name and whether gc was on."""

    def __init__(self, name, log, seconds=0.0, fail=False):
        self.name, self.log, self.seconds, self.fail = name, log, seconds, fail

    def invoke(self):
        self.log.append((self.name, gc.isenabled()))
        if self.seconds:
            time.sleep(self.seconds)
        if self.fail:
            raise RuntimeError("invoke failed")


def test_round_robin_runs_a_warm_burst_of_each_config_per_round():
    log = []
    invokers = {key: _Invoker(key, log, seconds=0.005 if key == "slow" else 0.0) for key in ("a", "slow", "c")}
    assert gc.isenabled()
    times = evaluate_module.time_round_robin(invokers, num_runs=4, warmup_runs=2, burst=4)
    # 2 warm-up rounds; then rounds of 1 untimed (cache-warming) + up to 3 timed runs per config: 3 + 1 timed.
    keys = ["a", "slow", "c"]
    assert [name for name, _ in log] == keys * 2 + [k for k in keys for _ in range(4)] + [k for k in keys
                                                                                         for _ in range(2)]
    assert not any(enabled for _, enabled in log), "gc must be off while timing"
    assert gc.isenabled(), "gc is switched back on afterwards"
    assert {k: len(v) for k, v in times.items()} == {"a": 4, "slow": 4, "c": 4}
    # Each run's time is charged to the config that ran.
    assert min(times["slow"]) >= 5.0
    assert statistics.median(times["a"]) < statistics.median(times["slow"])
    assert statistics.median(times["c"]) < statistics.median(times["slow"])


def test_round_robin_times_the_cold_first_run_of_each_burst_when_asked():
    # tools/bench_deploy.py reports both: warm runs (the burst's rest) and the cold first run of each burst.
    log = []
    invokers = {key: _Invoker(key, log, seconds=0.005 if key == "slow" else 0.0) for key in ("a", "slow")}
    cold = {}
    warm = evaluate_module.time_round_robin(invokers, num_runs=6, warmup_runs=0, burst=4, cold=cold)
    assert {k: len(v) for k, v in warm.items()} == {"a": 6, "slow": 6}
    assert {k: len(v) for k, v in cold.items()} == {"a": 2, "slow": 2}  # one per round, 2 rounds of 3 warm
    assert len(log) == 2 * 2 * 4  # the cold runs are the same untimed cache-warming runs, now timed
    assert min(cold["slow"]) >= 5.0 and max(cold["a"]) < min(cold["slow"])


def test_round_robin_restores_gc_when_an_invoke_fails():
    log = []
    with pytest.raises(RuntimeError, match="invoke failed"):
        evaluate_module.time_round_robin({"ok": _Invoker("ok", log), "bad": _Invoker("bad", log, fail=True)}, 3, 0)
    assert gc.isenabled()
    gc.disable()
    try:  # a caller that had gc off keeps it off
        evaluate_module.time_round_robin({"ok": _Invoker("ok", log)}, 1, 0)
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_evaluate_many_times_every_model_backend_and_thread_count_in_the_same_rounds(cnn_tflites, digits_data,
                                                                                    monkeypatch):
    _, (x_test, y_test) = digits_data
    calls = []
    real = evaluate_module.time_round_robin

    class Recorded:
        """Forwards to a real interpreter and records the order of invokes."""

        def __init__(self, key, interpreter, log):
            self.key, self.interpreter, self.log = key, interpreter, log

        def invoke(self):
            self.log.append(self.key)
            self.interpreter.invoke()

    def spy(interpreters, num_runs, warmup_runs):
        log = []
        wrapped = {key: Recorded(key, it, log) for key, it in interpreters.items()}
        times = real(wrapped, num_runs, warmup_runs, burst=4)
        calls.append(dict(interpreters=dict(interpreters), log=log, times=times, num_runs=num_runs,
                          warmup_runs=warmup_runs))
        return times

    monkeypatch.setattr(evaluate_module, "time_round_robin", spy)
    models = {"float32": cnn_tflites["float32"], "int8": cnn_tflites["int8"]}
    reports = tfc.evaluate_many(models, x=x_test, y=y_test, backends=("cpu", "xnnpack"), threads=(1, 2),
                                num_runs=5, warmup_runs=2)

    # evaluate_many's own call, keyed (model, backend, threads); evaluate_tflite's are keyed (backend, threads).
    joint = [c for c in calls if {key[0] for key in c["interpreters"]} & set(models)]
    assert len(joint) == 1, "all models must be timed in one round-robin call"
    joint = joint[0]
    keys = list(joint["interpreters"])
    assert set(keys) == {(m, b, t) for m in models for b in ("cpu", "xnnpack") for t in (1, 2)}
    assert (joint["num_runs"], joint["warmup_runs"]) == (5, 2)
    # Every round visits each of the 8 configs in the same order, a short warm burst each: 2 warm-up rounds,
    # then 2 rounds (1 untimed + 3 timed runs, then 1 untimed + the last 2 timed).
    assert joint["log"] == keys * 2 + [k for k in keys for _ in range(4)] + [k for k in keys for _ in range(3)]
    for (name, backend, threads), interpreter in joint["interpreters"].items():
        assert bool(_delegate_nodes(interpreter)) == (backend == "xnnpack"), (name, backend, threads)
    # What the reports show is what that call measured.
    for (name, backend, threads), samples in joint["times"].items():
        latency = reports[name].latency_for(backend, threads)
        assert latency.runs == 5
        assert latency.median_ms == statistics.median(samples)
    assert reports["float32"].accuracy > 0.9 and reports["int8"].accuracy > 0.9


# --- c/d. PruningCallback with steps_per_execution > 1 and with XLA ------------------------------


class _ClockAndZeros(keras.callbacks.Callback):
    """After PruningCallback in the callback list: records its clock and checks its zeros at every batch boundary."""

    def __init__(self, pruning):
        super().__init__()
        self.pruning = pruning
        self.begins = []  # (epoch, batch, optimizer.iterations, schedule step, overall sparsity)
        self.regrown = 0
        self._epoch = 0

    def _sparsity(self):
        weights = [e.variable.numpy() for e in self.pruning.pruner.targets]
        return sum(int(np.sum(w == 0)) for w in weights) / sum(w.size for w in weights)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        self.begins.append((self._epoch, batch, int(self.model.optimizer.iterations.numpy()),
                            self.pruning.pruner.step, self._sparsity()))

    def on_train_batch_end(self, batch, logs=None):
        for entry, mask in zip(self.pruning.pruner.targets, self.pruning.pruner.masks):
            self.regrown += int(np.sum(entry.variable.numpy()[mask.numpy() == 0] != 0))


def _prune_from_scratch(digits_data, steps_per_execution=1, jit_compile=False, epochs=3):
    (x, y), _ = digits_data
    keras.utils.set_random_seed(0)
    model = small_cnn()
    model.compile(keras.optimizers.Adam(1e-3), LOSS, metrics=["accuracy"], steps_per_execution=steps_per_execution,
                  jit_compile=jit_compile)
    # Mask updates due at steps 10, 20, ..., 50: with 4 steps per execution every one falls inside an
    # execution (steps 9-12, 17-20, ...), never on the boundary where the callback runs.
    schedule = tfc.PolynomialDecay(0.0, 0.7, begin_step=0, end_step=50, frequency=10)
    pruning = tfc.PruningCallback(schedule, verbose=0)
    check = _ClockAndZeros(pruning)
    history = model.fit(x, y, epochs=epochs, batch_size=32, verbose=0, callbacks=[pruning, check])
    return model, schedule, pruning, check, history, len(x)


def _assert_pruned_on_the_optimizer_clock(model, schedule, pruning, check, history, steps_per_epoch, epochs,
                                          steps_per_execution):
    assert int(model.optimizer.iterations.numpy()) == epochs * steps_per_epoch
    begins = check.begins
    assert len(begins) == epochs * -(-steps_per_epoch // steps_per_execution)
    assert [b for e, b, *_ in begins if e == 0] == list(range(0, steps_per_epoch, steps_per_execution))
    previous = 0
    expected = 0.0
    for epoch, batch, iterations, step, sparsity in begins:
        # The schedule's clock is the optimizer's: step n is about to run after n - 1 updates.
        assert step == iterations + 1 == epoch * steps_per_epoch + batch + 1, (epoch, batch, iterations, step)
        if any(schedule.should_prune(s) for s in range(previous + 1, step + 1)):
            expected = schedule.sparsity(step)  # a due step skipped inside an execution still updates
        assert sparsity == pytest.approx(expected, abs=2e-3), (step, sparsity, expected)
        previous = step
    assert expected == pytest.approx(0.7)
    assert check.regrown == 0, "pruned weights must stay exactly zero at every batch boundary"
    final = [e.variable.numpy() for e in pruning.pruner.targets]
    assert sum(int(np.sum(w == 0)) for w in final) / sum(w.size for w in final) == pytest.approx(0.7, abs=2e-3)
    for entry, mask in zip(pruning.pruner.targets, pruning.pruner.masks):
        assert np.all(entry.variable.numpy()[mask.numpy() == 0] == 0), entry.path
    assert history.history["accuracy"][-1] > 0.8


def test_pruning_with_steps_per_execution_follows_the_optimizer_clock(digits_data):
    model, schedule, pruning, check, history, n = _prune_from_scratch(digits_data, steps_per_execution=4)
    steps_per_epoch = -(-n // 32)
    assert steps_per_epoch % 4 != 0  # every epoch ends on a short execution, which must not shift the clock
    _assert_pruned_on_the_optimizer_clock(model, schedule, pruning, check, history, steps_per_epoch, 3, 4)


def test_pruning_and_qat_under_jit_compile_give_a_sparse_int8_model(digits_data):
    (x, y), (x_test, y_test) = digits_data
    model, schedule, pruning, check, history, n = _prune_from_scratch(digits_data, jit_compile=True)
    assert model.jit_compile is True  # Keras did not fall back to a plain tf.function
    _assert_pruned_on_the_optimizer_clock(model, schedule, pruning, check, history, -(-n // 32), 3, 1)
    pruned_sparsity = tfc.to_tflite(model, mode="int8", representative_data=x[:64]).info.sparsity

    qat = tfc.quantize_model(model)
    qat.compile(keras.optimizers.Adam(1e-4), LOSS, metrics=["accuracy"], jit_compile=True)
    assert qat.jit_compile is True
    qat.fit(x, y, epochs=1, batch_size=32, verbose=0)
    flatbuffer = tfc.to_tflite(qat, mode="int8", strict=True)
    assert flatbuffer.info.float_compute_ops() == []
    assert flatbuffer.info.op_census_by_dtype.get("FULLY_CONNECTED/int8") == 2
    assert flatbuffer.info.sparsity == pytest.approx(pruned_sparsity, abs=0.01), "QAT under XLA kept the zeros"
    keras_top1 = float(np.mean(np.asarray(qat.predict(x_test, verbose=0)).argmax(1) == y_test))
    report = tfc.evaluate_tflite(flatbuffer, x=x_test, y=y_test, num_runs=1, backends=("cpu",))
    assert report.accuracy > 0.85
    assert report.accuracy == pytest.approx(keras_top1, abs=0.02)


# --- e. a killed compress() chain resumes where it stopped -------------------------------------

CHAIN = """
import hashlib, json, os, sys, time
import keras, numpy as np
import tfcompress as tfc
from tfcompress.core.backup import BackupAndRestore

model_path, backup_dir, log_path, result_path = sys.argv[1:5]


def log(**entry):
    with open(log_path, "a") as f:
        f.write(json.dumps(dict(entry, pid=os.getpid())) + "\\n")
        f.flush()
        os.fsync(f.fileno())


def step(callback):
    return os.path.basename(callback.backup_dir)  # compress names them step<i>-<kind>


def weights_digest(model):
    return hashlib.sha256(b"".join(np.ascontiguousarray(w).tobytes() for w in model.get_weights())).hexdigest()


# Observation only: every backup callback compress creates reports what its fit does.
original = {name: getattr(BackupAndRestore, name)
            for name in ("on_train_begin", "on_epoch_begin", "on_train_batch_end", "on_train_end")}


def on_train_begin(self, logs=None):
    original["on_train_begin"](self, logs)
    log(step=step(self), event="train_begin", iterations=int(self.model.optimizer.iterations.numpy()))


def on_epoch_begin(self, epoch, logs=None):
    original["on_epoch_begin"](self, epoch, logs)
    log(step=step(self), event="epoch", epoch=epoch)


def on_train_batch_end(self, batch, logs=None):
    original["on_train_batch_end"](self, batch, logs)
    if step(self).endswith("qat"):
        time.sleep(0.03)  # QAT epochs of over a second: the kill lands inside one


def on_train_end(self, logs=None):
    log(step=step(self), event="train_end", weights=weights_digest(self.model),
        iterations=int(self.model.optimizer.iterations.numpy()))
    original["on_train_end"](self, logs)


BackupAndRestore.on_train_begin, BackupAndRestore.on_epoch_begin = on_train_begin, on_epoch_begin
BackupAndRestore.on_train_batch_end, BackupAndRestore.on_train_end = on_train_batch_end, on_train_end

model = keras.models.load_model(model_path)
QAT_STEP = getattr(tfc, "QuantizationAwareTraining", None) or tfc.QuantizeAware
recipe = [tfc.Prune(0.5, epochs=2), QAT_STEP(epochs=2), tfc.Convert("int8")]  # as in the test
result = tfc.compress(model, tfc.datasets.digits(), recipe, batch_size=32, backup_dir=backup_dir, verbose=0,
                      num_runs=2)
report = result.reports["prune50-qat-int8"]
with open(result_path, "w") as f:
    json.dump({"sparsity": report.sparsity, "accuracy": report.accuracy}, f)
"""


def _events(log_path, pid=None):
    entries = [json.loads(line) for line in log_path.read_text().splitlines()]
    return [e for e in entries if pid is None or e["pid"] == pid]


def test_killed_compress_chain_resumes_the_interrupted_step_and_skips_finished_ones(tmp_path, trained_digits_model,
                                                                                    digits_data):
    """A real SIGKILL of a real chain in a subprocess, then the same call again.

    QAT runs two epochs (not one) so that the interrupted step has a backed-up epoch to resume from:
    compress backs up at epoch ends, and a step killed in its only epoch simply starts that epoch again.
    """
    model_path, backup, log, result_path = (tmp_path / "model.keras", tmp_path / "backup", tmp_path / "log.jsonl",
                                            tmp_path / "result.json")
    trained_digits_model.save(model_path)
    command = [sys.executable, "-c", textwrap.dedent(CHAIN), str(model_path), str(backup), str(log), str(result_path)]

    # Run 1: SIGKILL once QAT (step 2 of 3) has backed up its first epoch and is inside its second.
    stderr_path = tmp_path / "killed.stderr"
    with open(stderr_path, "wb") as stderr:
        child = subprocess.Popen(command, env=ENV, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=stderr)
    deadline = time.monotonic() + 300
    qat_in_epoch_1 = lambda: log.exists() and any(  # noqa: E731
        e["step"] == "step1-qat" and e["event"] == "epoch" and e["epoch"] == 1 for e in _events(log))
    while child.poll() is None and time.monotonic() < deadline and not qat_in_epoch_1():
        time.sleep(0.02)
    time.sleep(0.2)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL, f"the chain ended before the kill: {stderr_path.read_text()[-2000:]}"
    killed = _events(log, child.pid)
    assert not result_path.exists()
    assert [(e["step"], e["event"]) for e in killed] == [
        ("step0-prune", "train_begin"), ("step0-prune", "epoch"), ("step0-prune", "epoch"),
        ("step0-prune", "train_end"), ("step1-qat", "train_begin"), ("step1-qat", "epoch"), ("step1-qat", "epoch")]
    pruned_digest = killed[3]["weights"]
    steps_per_epoch = -(-len(digits_data[0][0]) // 32)
    assert killed[3]["iterations"] == 2 * steps_per_epoch
    manifests = {p.parent.name: json.loads(p.read_text()) for p in backup.glob("*/tfcompress_backup.json")}
    assert {k: m["epoch"] for k, m in manifests.items()} == {"step0-prune": 2, "step1-qat": 1}

    # Run 2: the same call.
    rerun = subprocess.run(command, env=ENV, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    resumed = [e for e in _events(log) if e["pid"] != child.pid]
    assert [(e["step"], e["event"], e.get("epoch")) for e in resumed] == [
        ("step0-prune", "train_begin", None), ("step0-prune", "train_end", None),  # restored, not one epoch trained
        ("step1-qat", "train_begin", None), ("step1-qat", "epoch", 1), ("step1-qat", "train_end", None)]
    assert resumed[0]["iterations"] == 2 * steps_per_epoch
    assert resumed[1]["weights"] == pruned_digest, "the finished step's weights come back bit for bit"
    assert resumed[2]["iterations"] == steps_per_epoch, "QAT resumes after its backed-up first epoch"
    assert resumed[4]["iterations"] == 2 * steps_per_epoch
    assert not backup.exists(), "a finished chain removes its backups"

    # The same call never interrupted.
    recipe = [tfc.Prune(0.5, epochs=2), QAT_STEP(epochs=2), tfc.Convert("int8")]  # as in CHAIN
    reference = tfc.compress(trained_digits_model, digits_data, recipe, batch_size=32, verbose=0, num_runs=2)
    expected = reference.reports["prune50-qat-int8"]
    got = json.loads(result_path.read_text())
    assert got["sparsity"] == pytest.approx(expected.sparsity, abs=0.002)
    assert got["sparsity"] == pytest.approx(0.5, abs=0.03)
    assert got["accuracy"] == pytest.approx(expected.accuracy, abs=0.02)
    assert got["accuracy"] > reference.keras_accuracy - 0.03
