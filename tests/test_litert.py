"""evaluation/litert.py on real LiteRT: "cpu" and "xnnpack" are different runtimes, and latency rounds interleave
every configuration round-robin."""

import gc
import statistics
import time

import keras
import numpy as np
import pytest

import tfcompress as tfc
from tfcompress.evaluation import litert as evaluate_module


# --- "cpu" and "xnnpack" are different runtimes ----------------------------------------------


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


@pytest.mark.parametrize("mode", ["float32", "int8"])
def test_interpreter_factory_applies_xnnpack_only_for_the_xnnpack_backend(digits_tflites, mode):
    raw = bytes(digits_tflites[mode])
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
        step = digits_tflites[mode].info.output_steps[0]
        assert step > 0 and np.abs(outs[0] - outs[1]).max() <= 2 * step + 1e-6, (np.abs(outs[0] - outs[1]).max(), step)


def test_evaluate_tflite_times_and_scores_each_backend_on_its_own_runtime(digits_tflites, digits_data, monkeypatch):
    _, (x_test, y_test) = digits_data
    made = []
    real = evaluate_module.make_interpreter

    def recording(raw, backend, threads):
        interpreter = real(raw, backend, threads)
        made.append((backend, bool(_delegate_nodes(interpreter))))
        return interpreter

    monkeypatch.setattr(evaluate_module, "make_interpreter", recording)
    report = tfc.evaluate_tflite(digits_tflites["float32"], x=x_test, y=y_test, threads=(1, 2), num_runs=2)
    # Timing (1 and 2 threads), parity and accuracy each built interpreters; every one matches its backend.
    assert {b for b, _ in made} == {"cpu", "xnnpack"} and len(made) >= 6
    assert all(delegated == (backend == "xnnpack") for backend, delegated in made), made
    assert report.accuracy_backend == "xnnpack" and report.failed_backends == {}

    made.clear()
    report = tfc.evaluate_tflite(digits_tflites["float32"], x=x_test, y=y_test, backends=("cpu",), num_runs=2)
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


# --- latency rounds are interleaved round-robin ------------------------------------------------


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


def test_evaluate_many_times_every_model_backend_and_thread_count_in_the_same_rounds(digits_tflites, digits_data,
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
    models = {"float32": digits_tflites["float32"], "int8": digits_tflites["int8"]}
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
