"""Kills, full disks, unwritable folders and repeat runs: nothing is lost, nothing is half-written."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import tfcompress as tfc

ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=os.path.dirname(os.path.dirname(__file__)))


def _python(code, *args, timeout=600, **kwargs):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)], capture_output=True,
                          text=True, env=ENV, timeout=timeout, **kwargs)


MODEL_CODE = """
import keras
def small_cnn():
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(16, 3, padding="same", name="conv1")(inputs)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(32, 3, padding="same", name="conv2")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Flatten()(keras.layers.MaxPooling2D()(x))
    x = keras.layers.Dense(32, activation="relu", name="fc1")(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(x))
"""

DETERMINISM = MODEL_CODE + """
import hashlib, sys
import numpy as np, tfcompress as tfc
data = tfc.datasets.digits()
(x, y), _ = data
keras.utils.set_random_seed(0)
model = tfc.zoo.compile_classifier(small_cnn(), 3e-3)
model.fit(x, y, epochs=2, batch_size=32, verbose=0)
result = tfc.compress(model, data, [tfc.Prune(0.75, epochs=1), tfc.Convert("int8")], batch_size=32,
                      evaluate=False, verbose=0)
masks = b"".join((w.numpy() == 0).tobytes() for w in result.model.weights)
print(hashlib.sha256(masks).hexdigest(), hashlib.sha256(bytes(result.artifacts["prune75-int8"])).hexdigest())
"""


def test_same_seed_and_data_give_identical_masks_and_tflite_bytes():
    runs = [_python(DETERMINISM) for _ in range(2)]
    for r in runs:
        assert r.returncode == 0, r.stderr[-2000:]
    digests = [r.stdout.split()[-2:] for r in runs]
    assert digests[0] == digests[1]


RESUMABLE_PRUNING = MODEL_CODE + """
import json, os, sys, time
import numpy as np, tfcompress as tfc
backup, log_path = sys.argv[1], sys.argv[2]
(x, y), _ = tfc.datasets.digits()
keras.utils.set_random_seed(0)
model = tfc.zoo.compile_classifier(small_cnn(), 3e-3)

class EpochLog(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        kernels = [l.kernel.numpy() for l in self.model.layers if hasattr(l, "kernel")]
        zeros = sum(int((k == 0).sum()) for k in kernels) / sum(k.size for k in kernels)
        with open(log_path, "a") as f:
            f.write(json.dumps({"epoch": epoch, "sparsity": zeros}) + "\\n")
            f.flush()
            os.fsync(f.fileno())

class Pace(keras.callbacks.Callback):  # slow enough that a kill lands mid-epoch
    def on_train_batch_end(self, batch, logs=None):
        time.sleep(0.03)

schedule = tfc.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=200, frequency=10)
model.fit(x, y, epochs=6, batch_size=32, verbose=0, callbacks=[
    tfc.PruningCallback(schedule, verbose=0),
    # A backup every 3 batches: most kills land during or right after a backup write.
    tfc.BackupAndRestore(backup, save_freq=3),
    EpochLog(), Pace()])
print("finished")
"""


def _epoch_sparsity(log_path):
    by_epoch = {}
    with open(log_path) as f:
        for line in f:
            entry = json.loads(line)
            by_epoch[entry["epoch"]] = entry["sparsity"]  # a replayed epoch's last record wins
    return by_epoch


def _python_command(code, *args):
    return [sys.executable, "-c", textwrap.dedent(code), *map(str, args)]


def _log_has(log, lines):
    """A readiness check for `_start_and_kill`: ``log`` holds at least ``lines`` lines."""
    return lambda: log.exists() and len(log.read_text().splitlines()) >= lines


def _start_and_kill(command, ready, delay=0.0):
    """Starts ``command``, waits until ``ready()`` (or the child exits), SIGKILLs it ``delay`` s later."""
    child = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and child.poll() is None and not ready():
        time.sleep(0.05)
    time.sleep(delay)
    child.send_signal(signal.SIGKILL)
    return child.wait()


@pytest.mark.slow  # a soak (several kills and restarts, ~70 s); one kill-and-resume per path runs by default
def test_repeated_sigkills_mid_epoch_then_resume_follow_the_same_schedule(tmp_path):
    reference = _python(RESUMABLE_PRUNING, tmp_path / "ref_backup", tmp_path / "ref.log")
    assert reference.returncode == 0, reference.stderr[-2000:]
    expected = _epoch_sparsity(tmp_path / "ref.log")

    backup, log = tmp_path / "backup", tmp_path / "run.log"
    # Three kills at different moments, each after at least one more epoch, so that every restart
    # resumes from a mid-epoch backup written by the killed process.
    for kills, delay in enumerate((0.45, 0.7, 0.25)):
        code = _start_and_kill(_python_command(RESUMABLE_PRUNING, backup, log), _log_has(log, kills + 1), delay)
        assert code == -signal.SIGKILL, "the kill must land mid-training"
    assert len(_epoch_sparsity(log)) < 6
    resumed = _python(RESUMABLE_PRUNING, backup, log)
    assert resumed.returncode == 0 and "finished" in resumed.stdout, resumed.stderr[-2000:]
    got = _epoch_sparsity(log)
    assert sorted(got) == list(range(6))
    for epoch in range(6):
        assert got[epoch] == pytest.approx(expected[epoch], abs=0.01), (epoch, got, expected)
    assert got[5] == pytest.approx(0.8, abs=0.01)
    assert not backup.exists(), "a completed fit removes its backup"


RESUMABLE_QAT = MODEL_CODE + """
import json, os, sys, time
import numpy as np, tfcompress as tfc
backup, log_path = sys.argv[1], sys.argv[2]
(x, y), (x_test, y_test) = tfc.datasets.digits()
keras.utils.set_random_seed(0)
model = tfc.zoo.compile_classifier(small_cnn(), 3e-3)
model.fit(x, y, epochs=3, batch_size=32, verbose=0)
qat = tfc.quantize_model(model)
qat.compile(keras.optimizers.Adam(1e-4), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"])

class EpochLog(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        with open(log_path, "a") as f:
            f.write(json.dumps({"epoch": epoch}) + "\\n")
            f.flush()
            os.fsync(f.fileno())

class Pace(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        time.sleep(0.03)

qat.fit(x, y, epochs=4, batch_size=32, verbose=0,
        callbacks=[tfc.BackupAndRestore(backup, save_freq=4), EpochLog(), Pace()])
b = tfc.to_tflite(qat, mode="int8", strict=True)
print("accuracy", tfc.evaluate_tflite(b, x=x_test, y=y_test, num_runs=1).accuracy)
"""


def test_sigkill_during_qat_then_resume_finishes_an_int8_model(tmp_path):
    backup, log = tmp_path / "backup", tmp_path / "qat.log"
    assert _start_and_kill(_python_command(RESUMABLE_QAT, backup, log), _log_has(log, 1), 0.6) == -signal.SIGKILL
    assert 1 <= len(log.read_text().splitlines()) < 4, "the kill must land mid-training"
    resumed = _python(RESUMABLE_QAT, backup, log)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    epochs = [json.loads(line)["epoch"] for line in log.read_text().splitlines()]
    assert sorted(set(epochs)) == [0, 1, 2, 3]
    assert epochs[-1] == 3 and len(epochs) <= 5, f"the resumed run must not start over: {epochs}"
    accuracy = float(resumed.stdout.split("accuracy")[-1])
    assert accuracy > 0.9


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
recipe = [tfc.Prune(0.5, epochs=2), tfc.QuantizationAwareTraining(epochs=2), tfc.Convert("int8")]  # as in the test
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
    recipe = [tfc.Prune(0.5, epochs=2), tfc.QuantizationAwareTraining(epochs=2), tfc.Convert("int8")]  # as in CHAIN
    reference = tfc.compress(trained_digits_model, digits_data, recipe, batch_size=32, verbose=0, num_runs=2)
    expected = reference.reports["prune50-qat-int8"]
    got = json.loads(result_path.read_text())
    assert got["sparsity"] == pytest.approx(expected.sparsity, abs=0.002)
    assert got["sparsity"] == pytest.approx(0.5, abs=0.03)
    assert got["accuracy"] == pytest.approx(expected.accuracy, abs=0.02)
    assert got["accuracy"] > reference.keras_accuracy - 0.03


def test_write_atomic(tmp_path):
    path = tmp_path / "out.bin"
    tfc.write_atomic(path, b"one")
    with pytest.raises(tfc.OutputExistsError, match="overwrite=True"):
        tfc.write_atomic(path, b"two")
    assert path.read_bytes() == b"one"
    tfc.write_atomic(path, "three", overwrite=True)
    assert path.read_text() == "three"
    with pytest.raises(IsADirectoryError, match="directory"):
        tfc.write_atomic(tmp_path, b"x")
    assert os.listdir(tmp_path) == ["out.bin"]


def test_write_atomic_gives_normal_permissions(tmp_path):
    path = tmp_path / "perm.bin"
    tfc.write_atomic(path, b"x")
    mask = os.umask(0)
    os.umask(mask)
    assert (os.stat(path).st_mode & 0o777) == (0o666 & ~mask)


EXPORT_LOOP = """
import sys
import numpy as np, tfcompress as tfc
model = tfc.zoo.reference_cnn(width=2)
path = sys.argv[1]
tfc.to_tflite(model, mode="float32", output_path=path, overwrite=True)
print("ready", flush=True)  # from here on, every kill lands inside a later export
while True:
    tfc.to_tflite(model, mode="float32", output_path=path, overwrite=True)
"""


def test_sigkill_during_export_never_leaves_a_half_written_file(tmp_path):
    path = tmp_path / "model.tflite"
    expected = bytes(tfc.to_tflite(tfc.zoo.reference_cnn(width=2), mode="float32"))
    rng = np.random.default_rng(0)
    for _ in range(3):
        child = subprocess.Popen([sys.executable, "-c", EXPORT_LOOP, str(path)], env=ENV,
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert child.stdout.readline().strip() == "ready"
        time.sleep(float(rng.uniform(0.2, 2.0)))
        child.send_signal(signal.SIGKILL)
        child.wait()
        data = path.read_bytes()
        assert len(data) == len(expected) and tfc.inspect_tflite(data).op_census["CONV_2D"] == 3
    # A killed writer can leave only its hidden temp file, never a partial model.tflite.
    assert all(name == "model.tflite" or name.startswith(".model.tflite.") for name in os.listdir(tmp_path))


def test_leftovers_of_killed_processes_are_removed_by_the_next_run(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    hour_ago = time.time() - 2 * tfc.files.STALE_AFTER_SECONDS
    stale = tmp_path / f".model.tflite.{dead.pid}_abc.tmp"
    recent = tmp_path / f".model.tflite.{dead.pid}_def.tmp"  # may belong to a live process elsewhere
    alive = tmp_path / f".model.tflite.{os.getppid()}_ghi.tmp"
    other = tmp_path / f".notes.txt.{dead.pid}_jkl.tmp"
    for leftover in (stale, recent, alive, other):
        leftover.write_bytes(b"half")
    for leftover in (stale, alive, other):
        os.utime(leftover, (hour_ago, hour_ago))
    tfc.write_atomic(tmp_path / "model.tflite", b"complete")
    assert sorted(os.listdir(tmp_path)) == sorted(["model.tflite", recent.name, alive.name, other.name])
    # The export's temp folders in TMPDIR follow the same rule.
    folder = tmp_path / "tmp"
    folder.mkdir()
    export = folder / f"tfcompress_export_{dead.pid}_xyz"
    (export / "saved_model").mkdir(parents=True)
    os.utime(export, (hour_ago, hour_ago))
    assert tfc.files.remove_stale_temps(str(folder), "tfcompress_export_") == [export.name]
    assert os.listdir(folder) == []


def test_full_disk_gives_a_clear_error_and_no_partial_file(tmp_path):
    # RLIMIT_FSIZE makes writes past 64 KB fail like a full disk would, without filling a real one.
    code = """
    import resource, signal, sys
    import tfcompress as tfc
    model = tfc.zoo.reference_cnn()
    data = bytes(tfc.to_tflite(model, mode="float32"))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
    try:
        tfc.write_atomic(sys.argv[1], data)
    except OSError as exc:
        print("WRITE", exc)
    try:  # the temporary SavedModel of the export hits the limit first
        tfc.to_tflite(model, mode="float32", output_path=sys.argv[1])
    except OSError as exc:
        print("EXPORT", exc)
    """
    target = tmp_path / "big.tflite"
    result = _python(code, target)
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines() if line.startswith(("WRITE", "EXPORT")))
    assert set(lines) == {"WRITE", "EXPORT"}, result.stdout + result.stderr[-2000:]
    assert "Could not write output_path=" in lines["WRITE"] and "No partial file" in lines["WRITE"]
    assert "TMPDIR" in lines["EXPORT"] and "no output was written" in lines["EXPORT"]
    assert os.listdir(tmp_path) == []


def test_unwritable_folder_fails_before_any_work():
    import shutil
    import tempfile

    # pytest's tmp_path is private to root; an ordinary user must be able to reach the folder.
    base = tempfile.mkdtemp(prefix="tfcompress_ro_", dir="/tmp")
    try:
        os.chmod(base, 0o755)
        folder = os.path.join(base, "readonly")
        os.mkdir(folder)
        os.chmod(folder, 0o555)
        code = """
        import os, sys
        from tfcompress.core import files  # imported before dropping privileges: root owns the interpreter's files
        if os.getuid() == 0:
            os.setgid(65534); os.setuid(65534)  # root writes anywhere; act as an ordinary user
        try:
            files.write_atomic(sys.argv[1], b"data")
        except PermissionError as exc:
            print("ERROR", exc)
        """
        result = _python(code, os.path.join(folder, "out.bin"))
        assert "ERROR" in result.stdout and "is not writable" in result.stdout, result.stdout + result.stderr[-2000:]
        assert os.listdir(folder) == []
    finally:
        os.chmod(os.path.join(base, "readonly"), 0o755)
        shutil.rmtree(base)


def test_repeated_convert_and_evaluate_leave_no_temp_files(trained_digits_model, digits_data):
    import tempfile

    (x, _), (x_test, y_test) = digits_data
    folder = tempfile.gettempdir()
    before = {n for n in os.listdir(folder) if n.startswith("tfcompress_")}
    for mode in ("float32", "int8", "dynamic"):
        b = tfc.to_tflite(trained_digits_model, mode=mode, representative_data=x[:16] if mode == "int8" else None,
                          isolate=mode == "int8")
        tfc.evaluate_tflite(bytes(b), x=x_test[:32], y=y_test[:32], num_runs=2)  # bytes: verified in a child
    after = {n for n in os.listdir(folder) if n.startswith("tfcompress_")}
    assert after - before == set()


def test_cli_prune_killed_then_rerun_resumes_from_its_backup(tmp_path, trained_digits_model):
    model_path, output, backup = tmp_path / "m.keras", tmp_path / "pruned.keras", tmp_path / "backup"
    trained_digits_model.save(model_path)
    command = [sys.executable, "-m", "tfcompress", "prune", str(model_path), "--data=digits", "--sparsity=0.8",
               "--epochs=6", "--batch_size=8", f"--output={output}", f"--backup_dir={backup}"]
    manifests = lambda: list(backup.glob("*/tfcompress_backup.json"))  # noqa: E731
    past_epoch_2 = lambda: manifests() and json.loads(manifests()[0].read_text())["epoch"] >= 2  # noqa: E731
    assert _start_and_kill(command, past_epoch_2) == -signal.SIGKILL, "the kill must land mid-training"
    assert not output.exists()

    resumed = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "Epoch 1/6" not in resumed.stdout + resumed.stderr and "Epoch 6/6" in resumed.stdout + resumed.stderr
    import keras

    kernel = keras.models.load_model(output).get_layer("fc1").kernel.numpy()
    assert np.mean(kernel == 0) == pytest.approx(0.8, abs=0.05)
    assert not backup.exists(), "a finished command removes its backups"
