"""Scale-out: pruning, QAT and distillation under tf.distribute.MultiWorkerMirroredStrategy.

Two worker processes on 127.0.0.1 (TF_CONFIG, free ports, CPU only, one intra-op thread
each) run ``tests/multiworker_worker.py`` as a 2-worker cluster: pruning with
``PruningCallback``, QAT with ``quantize_model``, and distillation of the pruned model
into a narrower student with ``Distiller``, all with ``fit`` under the strategy.
Afterwards the workers rerun the same scenarios from the same seeds and data on the
default strategy (models built outside the strategy scope: one device, no collectives)
as the single-device reference; worker 0 takes pruning and distillation, worker 1 QAT,
so both cores stay busy. (That reference is bitwise identical to the same script run
alone with ``--role single``.) Every run saves weights, masks, ranges and accuracies
to ``.npz`` files, which these tests compare:

* the two workers end bitwise identical (trainable weights, pruning masks, sparsity):
  the all-reduce gives both the same gradient sum, and masks are recomputed from those
  identical weights;
* pruning and distillation match the single-device run up to float rounding (the global
  batch of 64 is the single-device batch, split 32 + 32), masks included;
* QAT activation ranges and folded-BN statistics agree on both workers (they are averaged
  across replicas), and the Distiller logs the same losses as on one device;
* what does not hold is marked ``xfail(strict=True)`` with the reason: a Keras bug that
  breaks every ``fit`` under MultiWorkerMirroredStrategy (the worker patches it).

A worker that dies or hangs fails the run within ``CLUSTER_TIMEOUT`` seconds: the other
is killed and the failure message carries both workers' stderr tails.
"""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import tfcompress

WORKER = Path(__file__).with_name("multiworker_worker.py")
CLUSTER_TIMEOUT = 300.0  # a healthy run takes 17-55 s on 2 cores; a hung collective never ends
STRAGGLER_TIMEOUT = 90.0  # the workers' single-device parts differ by a few seconds
STEPS_PER_EPOCH = 21  # 1,344 training digits in global batches of 64
PRUNE_STEPS = 3 * STEPS_PER_EPOCH
QAT_STEPS = 2 * STEPS_PER_EPOCH
# Single device vs cluster, per weight ||a - b|| / ||b||: float rounding only, measured <= 7e-7
# (pruning and distillation). Measured on one device with the data fed wrongly, the accuracy
# barely moves but this does: both workers reading the same half of each batch 1.07, batch
# boundaries shifted by 32 images 0.82 (swapping the halves of each batch: 6e-7, as expected).
WEIGHT_RTOL = 1e-3
# Test accuracy, single device vs cluster, of 449 test digits. Pruning and distillation: the
# trajectories agree to ~1e-6, so only near-tied logits could flip (measured: 0 of 449 differ);
# 1 point = 4 images. QAT: the folded BatchNorm trains on per-replica batch statistics (32
# images, not 64), so the run is another trajectory, like another seed: measured 0.915 vs 0.920;
# single-device seeds 1-5 give 0.882-0.931. 4 points; a broken QAT scores far lower.
ACCURACY_TOL = 0.01
QAT_ACCURACY_TOL = 0.04


class WorkerFailure(AssertionError):
    """A worker exited with an error or the cluster timed out; the message has their stderr tails."""


class KnownKerasMultiWorkerBug(Exception):
    """Raised by the probe test while Keras's fit still fails the known way under MultiWorkerMirroredStrategy."""


def _free_ports(count):
    """Ports free on 127.0.0.1 now; all sockets are held until every port is picked so they differ."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _env(tf_config=None):
    env = dict(os.environ)
    env.pop("TF_CONFIG", None)
    env["CUDA_VISIBLE_DEVICES"] = ""
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # The workers import the same tfcompress as this test process.
    package_root = str(Path(tfcompress.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    return env


def _tail(path, lines=40):
    try:
        text = Path(path).read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"<no stderr: {exc}>"
    # TensorFlow's start-up INFO lines (oneDNN, CUDA probe) are noise in a failure report.
    kept = [line for line in text if not line.startswith(("I0000 ", "WARNING: All log messages"))]
    return "\n".join(kept[-lines:])


def _run(processes, out_dir, timeout=CLUSTER_TIMEOUT):
    """Starts ``{name: (argv, env)}`` together and waits for all; returns the wall time.

    Raises WorkerFailure as soon as one exits non-zero, at ``timeout``, or when one is still
    running ``STRAGGLER_TIMEOUT`` after another finished, after killing the others: a dead
    worker leaves its peer blocked in a collective for good.
    """
    started, procs, logs, first_done = time.monotonic(), {}, {}, None
    try:
        for name, (argv, env) in processes.items():
            logs[name] = Path(out_dir) / f"{name}.stderr"
            with open(logs[name], "wb") as err, open(Path(out_dir) / f"{name}.stdout", "wb") as out:
                procs[name] = subprocess.Popen(argv, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        while True:
            codes = {name: proc.poll() for name, proc in procs.items()}
            failed = [name for name, code in codes.items() if code not in (None, 0)]
            elapsed = time.monotonic() - started
            if not failed and all(code == 0 for code in codes.values()):
                return elapsed
            if any(code == 0 for code in codes.values()) and first_done is None:
                first_done = elapsed
            straggling = first_done is not None and elapsed - first_done > STRAGGLER_TIMEOUT
            if failed or straggling or elapsed > timeout:
                if failed:
                    reason = ", ".join(f"{name} exited with status {codes[name]}" for name in failed)
                elif straggling:
                    reason = f"still running {STRAGGLER_TIMEOUT:.0f} s after another process finished"
                else:
                    reason = f"timed out after {timeout:.0f} s"
                running = [name for name, code in codes.items() if code is None]
                for name in running:
                    procs[name].kill()
                    procs[name].wait(timeout=30)
                report = "\n".join(
                    f"----- {name} (exit {procs[name].returncode}) stderr tail -----\n{_tail(logs[name])}"
                    for name in procs
                )
                raise WorkerFailure(
                    f"multi-worker run failed after {elapsed:.1f} s: {reason}; killed {running or 'none'}.\n{report}"
                )
            time.sleep(0.2)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)


def _cluster(out_dir, worker_args=((), ())):
    """The two MultiWorkerMirroredStrategy workers as _run specs, on two free 127.0.0.1 ports."""
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    return {
        f"worker{i}": (
            [sys.executable, str(WORKER), "--out", str(out_dir), "--role", "worker", "--index", str(i),
             *worker_args[i]],
            _env({"cluster": cluster, "task": {"type": "worker", "index": i}}),
        )
        for i in range(2)
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Runs the cluster (and the reference) once; ``runs[run][scenario]`` is a dict of arrays.

    ``run`` is ``worker0``, ``worker1`` (under the strategy) or ``reference`` (one device).
    """
    out = tmp_path_factory.mktemp("multiworker")
    references = (("--reference", "prune,distill"), ("--reference", "qat"))
    elapsed = _run(_cluster(out, worker_args=references), out)
    print(f"\nmulti-worker cluster and single-device reference: {elapsed:.1f} s")
    loaded = {
        run: {scenario: dict(np.load(out / f"{run}_{scenario}.npz")) for scenario in ("prune", "qat", "distill")}
        for run in ("worker0", "worker1", "reference")
    }
    for i in (0, 1):
        loaded[f"worker{i}"]["probe"] = {k: str(v) for k, v in np.load(out / f"probe{i}.npz").items()}
    for run, scenarios in loaded.items():
        expected = ("_DefaultDistributionStrategy", 1) if run == "reference" else ("CollectiveAllReduceStrategy", 2)
        for scenario in ("prune", "qat", "distill"):
            result = scenarios[scenario]
            got = (str(result["model_strategy"]), int(result["num_replicas"]))
            assert got == expected, (run, scenario, got)
    return loaded


def _prefixed(result, prefix):
    return {k[len(prefix):]: v for k, v in result.items() if k.startswith(prefix) and not k.endswith("trainable_paths")}


def _assert_identical(a, b, what):
    assert a.keys() == b.keys(), what
    different = [k for k in a if not np.array_equal(a[k], b[k])]
    assert not different, f"{what}: not bitwise identical: {different}"


def _assert_close(a, b, what, rtol=WEIGHT_RTOL):
    """Every array of ``a`` within ``rtol`` of ``b``'s, as ``||a - b|| / ||b||``."""
    assert a.keys() == b.keys(), what
    worst = {k: float(np.linalg.norm(a[k] - b[k]) / max(float(np.linalg.norm(b[k])), 1e-12)) for k in a}
    assert max(worst.values()) <= rtol, f"{what}: relative differences {worst}"


def _workers(runs, scenario):
    return runs["worker0"][scenario], runs["worker1"][scenario], runs["reference"][scenario]


# --- Keras ---------------------------------------------------------------------------------


@pytest.mark.xfail(
    strict=True,
    raises=KnownKerasMultiWorkerBug,
    reason=(
        "Keras 3.15 bug (keras-team/keras#20585, tensorflow/tensorflow#72388; unfixed on keras master): "
        "every model.fit under MultiWorkerMirroredStrategy with 2+ workers fails. "
        "TensorFlowTrainer._maybe_symbolic_build calls strategy.reduce('MEAN', <(x, y) nest of PerReplica>, "
        "axis=None) -> ValueError: Attempt to convert a value (PerReplica:{...}) with an unsupported type; "
        "and, once past that, reduce_per_replica(reduction='auto') calls strategy.reduce('MEAN', v, axis=0) "
        "on the scalar logs -> ValueError: Invalid reduction dimension 0 for input with 0 dimensions. "
        "multiworker_worker.py patches both; when this XPASSes, drop the patch."
    ),
)
def test_plain_keras_fit_works_under_multiworker(runs):
    for i in (0, 1):
        probe = runs[f"worker{i}"]["probe"]
        assert probe["both_patched"] == "", probe  # the worker would have failed otherwise
        unpatched, half = probe["unpatched"], probe["symbolic_build_patched"]
        if unpatched:
            known = (
                "in trainer.py:_maybe_symbolic_build" in unpatched and "PerReplica" in unpatched
                and "in trainer.py:_reduce" in half
                and "Invalid reduction dimension 0 for input with 0 dimensions" in half
            )
            assert known, f"Keras fails under MultiWorkerMirroredStrategy in a new way: {probe}"
            raise KnownKerasMultiWorkerBug(unpatched)


# --- Pruning -------------------------------------------------------------------------------


def test_pruning_identical_on_both_workers(runs):
    w0, w1, _ = _workers(runs, "prune")
    _assert_identical(_prefixed(w0, "initial/"), _prefixed(w1, "initial/"), "initial weights")
    _assert_identical(_prefixed(w0, "final/"), _prefixed(w1, "final/"), "final weights")
    _assert_identical(_prefixed(w0, "mask/"), _prefixed(w1, "mask/"), "masks")
    for w in (w0, w1):
        assert int(w["steps"]) == PRUNE_STEPS
        # After every one of the 63 steps each local replica of each kernel was zero where masked.
        assert len(w["mask_held"]) == PRUNE_STEPS and w["mask_held"].all()
        for path, mask in _prefixed(w, "mask/").items():
            assert np.all(w[f"final/{path}"][mask == 0] == 0), path
        assert abs(float(w["sparsity"]) - 0.75) < 2e-3
    assert float(w0["sparsity"]) == float(w1["sparsity"])
    assert float(w0["accuracy"]) == float(w1["accuracy"])


def test_pruning_matches_single_device(runs):
    w0, _, single = _workers(runs, "prune")
    _assert_identical(_prefixed(w0, "initial/"), _prefixed(single, "initial/"), "initial weights")
    # Same keep counts from the same schedule, so the sparsity is exactly the same.
    assert float(w0["sparsity"]) == float(single["sparsity"])
    masks, reference = _prefixed(w0, "mask/"), _prefixed(single, "mask/")
    assert masks.keys() == reference.keys()
    for path in masks:
        zeros, ref_zeros = masks[path] == 0, reference[path] == 0
        assert zeros.sum() == ref_zeros.sum(), path
        if ref_zeros.any():
            # Masks come from magnitudes that differ by float rounding (~1e-7 relative), so a weight
            # tied at the threshold could swap; measured: identical. Require 99% of zero positions.
            overlap = (zeros & ref_zeros).sum() / ref_zeros.sum()
            assert overlap >= 0.99, f"{path}: only {overlap:.2%} of the pruned positions agree"
    _assert_close(_prefixed(w0, "final/"), _prefixed(single, "final/"), "final weights vs single device")
    np.testing.assert_allclose(w0["loss"], single["loss"], rtol=1e-4)
    assert abs(float(w0["accuracy"]) - float(single["accuracy"])) <= ACCURACY_TOL
    assert float(single["accuracy"]) > 0.8


# --- QAT -----------------------------------------------------------------------------------


def _qat_state(result, trainable):
    paths = set(result["final/trainable_paths"].tolist())
    return {k: v for k, v in _prefixed(result, "final/").items() if (k in paths) == trainable}


def test_qat_weights_identical_on_both_workers(runs):
    w0, w1, single = _workers(runs, "qat")
    _assert_identical(_prefixed(w0, "initial/"), _prefixed(single, "initial/"), "initial QAT weights")
    _assert_identical(_prefixed(w0, "initial/"), _prefixed(w1, "initial/"), "initial QAT weights")
    trainable = _qat_state(w0, trainable=True)
    assert any(k.endswith("bn_gamma") for k in trainable) and any(k.endswith("/kernel") for k in trainable)
    # Kernels, biases and folded-BN gamma/beta: updated from the all-reduced gradients.
    _assert_identical(trainable, _qat_state(w1, trainable=True), "trainable QAT weights")
    # Every quantizer saw every step: the update counters agree (and the ranges, see below).
    updates = {k: v for k, v in _qat_state(w0, trainable=False).items() if k.endswith("num_updates")}
    assert updates and all(float(v) == QAT_STEPS for v in updates.values()), updates
    _assert_identical(updates, {k: w1[f"final/{k}"] for k in updates}, "quantizer update counters")
    ranges = [k for k in _qat_state(w0, trainable=False) if k.endswith(("range_min", "range_max"))]
    assert len(ranges) == 10, ranges  # image, relu1, relu2, fc1 and logits quantizers
    np.testing.assert_array_equal(w0["loss"], w1["loss"])
    # Not comparable weight for weight with the single-device run: the folded BatchNormalization
    # trains on per-replica batch statistics (32 images, not 64), as Keras's own BN does.
    assert abs(float(w0["accuracy"]) - float(single["accuracy"])) <= QAT_ACCURACY_TOL
    assert min(float(w0["accuracy"]), float(single["accuracy"])) > 0.85


def test_qat_activation_ranges_identical_on_both_workers(runs):
    w0, w1, _ = _workers(runs, "qat")
    ranges = {k: v for k, v in _prefixed(w0, "final/").items() if k.endswith(("range_min", "range_max"))}
    _assert_identical(ranges, {k: w1[f"final/{k}"] for k in ranges}, "activation ranges")


# --- Distillation --------------------------------------------------------------------------


def test_distillation_identical_on_both_workers_and_matches_single_device(runs):
    w0, w1, single = _workers(runs, "distill")
    for prefix in ("initial/", "teacher/", "final/"):
        _assert_identical(_prefixed(w0, prefix), _prefixed(w1, prefix), f"{prefix} weights")
    _assert_identical(_prefixed(w0, "initial/"), _prefixed(single, "initial/"), "initial student weights")
    _assert_close(_prefixed(w0, "teacher/"), _prefixed(single, "teacher/"), "teacher vs single device")
    _assert_close(_prefixed(w0, "final/"), _prefixed(single, "final/"), "student vs single device")
    np.testing.assert_allclose(w0["history/loss"], single["history/loss"], rtol=1e-4)
    for key in ("history/student_loss", "history/distillation_loss"):
        assert len(w0[key]) == len(single[key]) == 2 and np.array_equal(w0[key], w1[key]), key
    assert abs(float(w0["accuracy"]) - float(single["accuracy"])) <= ACCURACY_TOL
    assert float(w0["accuracy"]) == float(w1["accuracy"])
    assert float(single["teacher_accuracy"]) > 0.8 and float(single["accuracy"]) > 0.7


def test_distiller_logged_losses_match_single_device(runs):
    w0, _, single = _workers(runs, "distill")
    for key in ("history/student_loss", "history/distillation_loss"):
        np.testing.assert_allclose(w0[key], single[key], rtol=1e-4, err_msg=key)


# --- Failure handling ----------------------------------------------------------------------


def test_dead_worker_fails_fast_and_reports_stderr(tmp_path):
    """Worker 1 exits once its strategy is up; worker 0 would wait for it in a collective forever."""
    started = time.monotonic()
    processes = _cluster(tmp_path, worker_args=((), ("--crash-after-setup",)))
    with pytest.raises(WorkerFailure) as failure:
        _run(processes, tmp_path, timeout=120)
    message = str(failure.value)
    assert "worker1 exited with status 3" in message
    assert "killed ['worker0']" in message  # blocked waiting for worker 1, so the harness ended it
    assert "crashing on purpose" in message  # worker 1's stderr tail
    assert "----- worker0" in message and "strategy CollectiveAllReduceStrategy" in message
    assert time.monotonic() - started < 60
