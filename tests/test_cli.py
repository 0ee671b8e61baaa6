"""The command line, run as a user would: in a subprocess, checking exit codes, files and messages."""

import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
import zipfile

import keras
import numpy as np
import pytest

import tfcompress as tfc

ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")


def tfcompress(*args, cwd=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "tfcompress", *args], capture_output=True, text=True,
                          env=ENV, cwd=cwd, timeout=timeout)


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory, trained_digits_model):
    path = tmp_path_factory.mktemp("cli") / "digits.keras"
    trained_digits_model.save(path)
    return path


def test_usage_exit_codes():
    # The command list itself is behaviour tested command by command below (convert, evaluate, demo,
    # prune, quantize, distill all run); here: asking for usage succeeds, giving no command does not.
    result = tfcompress("--help")
    assert result.returncode == 0 and result.stdout.strip()
    result = tfcompress()
    assert result.returncode == 2


def test_unknown_command_exits_2():
    result = tfcompress("shrink")
    assert result.returncode == 2 and "unknown command 'shrink'" in result.stderr


def test_convert_and_evaluate_defaults(saved_model, tmp_path):
    """What happens without --output, --mode, --json, --limit_test, --threads and --backends."""
    import tfcompress as tfc

    model = tmp_path / "digits.keras"
    model.write_bytes(saved_model.read_bytes())
    result = tfcompress("convert", str(model), "--data=digits", "--noisolate", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-1500:]
    written = tmp_path / "digits_int8.tflite"  # MODEL_<mode>.tflite next to the model, mode int8
    assert sorted(os.listdir(tmp_path)) == ["digits.keras", "digits_int8.tflite"]
    info = tfc.inspect_tflite(str(written))
    assert info.float_compute_ops() == [] and info.op_census_by_dtype.get("CONV_2D/int8") == 2
    assert info.input_details[0]["dtype"] == "float32"  # --io_type=float32

    result = tfcompress("evaluate", str(written), "--data=digits", "--runs=2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-1500:]
    assert re.search(r"\(n=449, xnnpack[,)]", result.stdout), result.stdout  # the whole test set, on XNNPACK
    rows = re.findall(r"^\|\s*(cpu|xnnpack)\s*\|\s*(\d+)\s*\|", result.stdout, flags=re.M)
    assert rows == [("cpu", "1"), ("xnnpack", "1")]  # both backends, one thread
    assert sorted(os.listdir(tmp_path)) == ["digits.keras", "digits_int8.tflite"], "no JSON file by default"


def test_prune_defaults(saved_model, tmp_path):
    """What happens without --output, --tflite, --backup_dir, --learning_rate, --epochs, --batch_size, --sparsity."""
    from tfcompress.pipeline.recipe import Prune

    model = tmp_path / "digits.keras"
    model.write_bytes(saved_model.read_bytes())
    result = tfcompress("prune", str(model), "--data=digits", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-1500:]
    # MODEL_pruned.keras next to the model; no .tflite, no comparison table, no backup folder.
    assert sorted(os.listdir(tmp_path)) == ["digits.keras", "digits_pruned.keras"]
    assert not re.search(r"\| result +\|", result.stdout)
    pruned = keras.models.load_model(tmp_path / "digits_pruned.keras")
    kernels = [layer.kernel.numpy() for layer in pruned.layers if hasattr(layer, "kernel")]
    assert sum(int(np.sum(k == 0)) for k in kernels) / sum(k.size for k in kernels) == pytest.approx(0.75, abs=0.01)
    # 2 epochs of ceil(1348 / 128) = 11 batches, from the Prune step's own learning rate.
    assert int(pruned.optimizer.iterations.numpy()) == 2 * 11
    schedule = pruned.optimizer.get_config()["learning_rate"]
    assert schedule["class_name"] == "CosineDecay"
    assert schedule["config"]["initial_learning_rate"] == pytest.approx(Prune().learning_rate)


def test_convert_then_evaluate(saved_model, tmp_path):
    out = tmp_path / "digits_int8.tflite"
    result = tfcompress("convert", str(saved_model), "--mode=int8", "--data=digits", f"--output={out}", "--strict")
    assert result.returncode == 0, result.stderr
    assert out.read_bytes()[4:8] == b"TFL3"

    again = tfcompress("convert", str(saved_model), "--mode=int8", "--data=digits", f"--output={out}")
    assert again.returncode == 1
    last = again.stderr.strip().splitlines()[-1]
    assert "already exists" in last and "--overwrite" in last and "Traceback" not in again.stderr

    report_json = tmp_path / "r.json"
    result = tfcompress("evaluate", str(out), "--data=digits", "--threads=1,2", "--runs=5", f"--json={report_json}")
    assert result.returncode == 0, result.stderr
    assert re.search(r"\| xnnpack +\| 2 +\|", result.stdout)
    report = json.loads(report_json.read_text())
    assert report["accuracy"] > 0.9 and report["accuracy_samples"] == 449

    # Two files on TFLite Micro too: timed together, one table with the arena beside LiteRT.
    dynamic = tmp_path / "digits_dynamic.tflite"
    assert tfcompress("convert", str(saved_model), "--mode=dynamic", f"--output={dynamic}").returncode == 0
    result = tfcompress("evaluate", str(out), str(dynamic), "--data=digits", "--runs=3", "--backends=xnnpack,micro",
                        "--micro_samples=40")
    assert result.returncode == 0, result.stderr
    assert "TFLM arena" in result.stdout and "does not run" in result.stdout and "hybrid" in result.stdout

    # ONNX: written by convert --format=onnx, evaluated on ONNX Runtime in the same table as the .tflite.
    onnx = tmp_path / "digits_int8.onnx"
    result = tfcompress("convert", str(saved_model), "--mode=int8", "--format=onnx", "--data=digits", f"--output={onnx}")
    assert result.returncode == 0, result.stderr
    result = tfcompress("evaluate", str(out), str(onnx), "--data=digits", "--runs=3", "--backends=xnnpack")
    assert result.returncode == 0, result.stderr
    assert re.search(r"\| digits_int8\.onnx .*\| 9\d\.\d\d% ", result.stdout) and "onnxruntime/1t ms" in result.stdout
    result = tfcompress("convert", str(saved_model), "--mode=dynamic", "--format=onnx", f"--output={tmp_path / 'd.onnx'}")
    assert result.returncode == 2 and "--format=onnx takes --mode=float32 or --mode=int8" in result.stderr


def test_npz_data_and_bad_npz(saved_model, tmp_path, digits_data):
    (x, y), (xt, yt) = digits_data
    good = tmp_path / "d.npz"
    np.savez(good, x_train=x, y_train=y, x_test=xt, y_test=yt)
    out = tmp_path / "m.tflite"
    result = tfcompress("convert", str(saved_model), f"--data={good}", f"--output={out}")
    assert result.returncode == 0, result.stderr

    partial = tmp_path / "p.npz"
    np.savez(partial, x_train=x)
    result = tfcompress("convert", str(saved_model), f"--data={partial}", f"--output={tmp_path / 'n.tflite'}")
    assert result.returncode == 2 and "lacks arrays ['y_train', 'x_test', 'y_test']" in result.stderr

    garbage = tmp_path / "g.npz"
    garbage.write_bytes(b"not a zip")
    result = tfcompress("convert", str(saved_model), f"--data={garbage}", f"--output={tmp_path / 'n.tflite'}")
    assert result.returncode == 2 and "not a readable .npz" in result.stderr
    assert not (tmp_path / "n.tflite").exists()


def test_missing_model_and_corrupt_tflite(tmp_path):
    result = tfcompress("convert", str(tmp_path / "nope.keras"))
    assert result.returncode == 2 and "not found" in result.stderr
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"\x00" * 100)
    result = tfcompress("evaluate", str(bad), "--no_data")
    assert result.returncode == 1 and "Not a TFLite model" in result.stderr and "Traceback" not in result.stderr


def test_unsafe_lambda_model_is_refused(tmp_path):
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Lambda(lambda t: t * 2.0)(inputs))
    path = tmp_path / "lambda.keras"
    model.save(path)
    result = tfcompress("convert", str(path), "--mode=float32", f"--output={tmp_path / 'l.tflite'}")
    assert result.returncode == 2 and "--unsafe" in result.stderr
    result = tfcompress("convert", str(path), "--mode=float32", "--unsafe", f"--output={tmp_path / 'l.tflite'}")
    assert result.returncode == 0, result.stderr


def test_demo_quick(tmp_path):
    out = tmp_path / "demo"
    result = tfcompress("demo", "--quick", f"--out={out}", f"--cache_dir={tmp_path / 'cache'}", "--threads=1",
                        timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    files = sorted(os.listdir(out))
    expected = {"float32", "float16", "dynamic", "int8", "prune75-int8", "channels50-int8", "cluster16-int8",
                "prune75-cluster16-int8", "distill-int8", "qat-int8"}
    assert {"report.md", "report.json", "report.png"} | {f"{v}.tflite" for v in expected} <= set(files)
    report = json.loads((out / "report.json").read_text())
    assert set(report["variants"]) == expected
    assert report["keras_accuracy"] > 0.75
    variants = report["variants"]
    assert abs(variants["int8"]["accuracy"] - report["keras_accuracy"]) < 0.03
    assert variants["prune75-int8"]["sparsity"] == pytest.approx(0.75, abs=0.02)
    assert variants["prune75-cluster16-int8"]["sparsity"] > 0.7  # zeros survive clustering into the int8 file
    assert variants["prune75-cluster16-int8"]["gzip_bytes"] < variants["prune75-int8"]["gzip_bytes"]
    assert variants["channels50-int8"]["file_bytes"] < variants["int8"]["file_bytes"] / 2
    assert variants["distill-int8"]["file_bytes"] < variants["int8"]["file_bytes"] / 5
    # Δ vs a dense control fine-tuned for the same epochs: 0 for post-training variants, 1 and 2 epochs otherwise.
    assert set(report["control_accuracy_by_epochs"]) == {"0", "1", "2"}
    assert report["control_accuracy"]["int8"] == report["keras_accuracy"]
    assert report["control_accuracy"]["prune75-cluster16-int8"] == report["control_accuracy_by_epochs"]["2"]
    # TFLite Micro: int8 runs (with its arena), float16 and dynamic-range files are refused with the reason.
    assert variants["int8"]["micro"]["arena_bytes"] > 0 and variants["float16"]["micro"]["error"]
    assert re.search(r"\| prune75-cluster16-int8 +\|", result.stdout) and "Δ vs control" in result.stdout
    # The report names the CPU that timed it, and the MACs that are the same on every CPU.
    machine = tfc.machine.current()
    assert report["machine"]["summary"] == machine.summary() and machine.cpu in (out / "report.md").read_text()
    assert variants["int8"]["macs"] == variants["float32"]["macs"] > 2 * variants["channels50-int8"]["macs"]
    # A second run refuses to overwrite the folder.
    again = tfcompress("demo", "--quick", f"--out={out}", f"--cache_dir={tmp_path / 'cache'}")
    assert again.returncode == 1 and "--overwrite" in again.stderr


def test_prune_quantize_distill_commands(saved_model, tmp_path):
    pruned, pruned_tflite = tmp_path / "p.keras", tmp_path / "p.tflite"
    result = tfcompress("prune", str(saved_model), "--data=digits", "--sparsity=0.8", "--batch_size=32",
                        f"--output={pruned}", f"--tflite={pruned_tflite}")
    assert result.returncode == 0, result.stderr[-2000:]
    model = keras.models.load_model(pruned)  # plain Keras, no custom objects
    kernel = model.get_layer("fc1").kernel.numpy()
    assert 0.7 < np.mean(kernel == 0) < 0.95
    assert re.search(r"\| result +\|", result.stdout)

    qat_tflite = tmp_path / "q.tflite"  # --noisolate: the converter in-process (prune above used a subprocess)
    result = tfcompress("quantize", str(pruned), "--data=digits", "--batch_size=32", f"--output={tmp_path / 'q.keras'}",
                        f"--tflite={qat_tflite}", "--noisolate")
    assert result.returncode == 0, result.stderr[-2000:]
    import tfcompress as tfc

    info = tfc.inspect_tflite(str(qat_tflite))
    assert info.float_compute_ops() == [] and info.sparsity > 0.5  # pruned zeros survive QAT

    result = tfcompress("distill", str(saved_model), "--data=digits")
    assert result.returncode == 2 and "--teacher" in result.stderr


@pytest.mark.parametrize("args, culprit", [
    (["prune", "MODEL", "--bogus=1"], "Unknown command line flag 'bogus'"),
    (["convert", "MODEL", "--mode=int4"], "--mode=int4: value should be one of"),
    (["evaluate", "MODEL", "--runs=many"], "--runs=many"),
], ids=["unknown-flag", "bad-enum", "bad-integer"])
def test_flag_errors_are_one_line_usage_errors(args, culprit, saved_model):
    result = tfcompress(*[str(saved_model) if a == "MODEL" else a for a in args])
    assert result.returncode == 2, result.stderr[-1500:]
    ours = [ln for ln in result.stderr.splitlines() if ln.startswith("tfcompress ")]
    assert len(ours) == 1 and ours[0] == result.stderr.strip().splitlines()[-1]
    assert ours[0].startswith(f"tfcompress {args[0]}: error: ") and culprit in ours[0]
    assert "FATAL" not in result.stderr and "helpshort" not in result.stderr and "Traceback" not in result.stderr


def test_corrupt_model_files_are_named_as_such(saved_model, tmp_path):
    from tfcompress.pipeline.cli import UsageError, load_keras_model

    truncated = tmp_path / "truncated.keras"
    truncated.write_bytes(saved_model.read_bytes()[:2000])
    out = tmp_path / "t.tflite"
    result = tfcompress("convert", str(truncated), f"--output={out}")
    assert result.returncode == 2, result.stderr[-1500:]
    last = result.stderr.strip().splitlines()[-1]
    assert f"{str(truncated)!r}" in last and "not a valid Keras archive" in last and "model.save" in last
    assert "File not found" not in result.stderr and not out.exists()

    with pytest.raises(UsageError, match=r"not a valid HDF5 Keras model"):
        garbage = tmp_path / "garbage.h5"
        garbage.write_bytes(b"this is not HDF5" * 64)
        load_keras_model(str(garbage))
    # A zip whose config.json was damaged passes the zip check and fails in Keras: still one clear error.
    flipped = tmp_path / "flipped.keras"
    data = bytearray(saved_model.read_bytes())
    with zipfile.ZipFile(saved_model) as z:
        info = z.getinfo("config.json")
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start + 10] ^= 0xFF
    flipped.write_bytes(bytes(data))
    with pytest.raises(UsageError, match=r"could not load '.*flipped.keras' as a Keras model \(BadZipFile"):
        load_keras_model(str(flipped))


def test_mnist_offline_names_the_cache_route(saved_model, tmp_path):
    env = {k: v for k, v in ENV.items() if k.lower() != "no_proxy"}
    # Downloads go through a proxy on a closed local port: a network failure at once, offline or not.
    env.update(KERAS_HOME=str(tmp_path / "keras_home"), HTTPS_PROXY="http://127.0.0.1:9",
               https_proxy="http://127.0.0.1:9")
    out = tmp_path / "m.tflite"
    result = subprocess.run([sys.executable, "-m", "tfcompress", "convert", str(saved_model), "--data=mnist",
                             f"--output={out}"], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 1, result.stderr[-1500:]
    last = result.stderr.strip().splitlines()[-1]
    cached = str(tmp_path / "keras_home" / "datasets" / "mnist.npz")
    assert last.startswith("tfcompress convert: error: --data=mnist:") and cached in last
    assert "keras.datasets.mnist.load_data()" in last and "--data=digits" in last
    assert "Traceback" not in result.stderr and not out.exists()


def _conversion_child(parent_pid):
    """The pid of ``python -m tfcompress.export.convert_worker`` started by ``parent_pid``, or None."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent_pid and b"tfcompress.export.convert_worker" in cmdline:
            return int(entry)
    return None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the child in /proc, limits it with prlimit")
def test_training_command_survives_its_converter_being_killed(saved_model, tmp_path):
    """prune --tflite converts in a subprocess by default: the converter dying by a signal is one readable error.

    The conversion child is real: once it appears, its CPU-time limit is lowered to one second with prlimit(2),
    and the kernel kills it with SIGXCPU, as it would a converter running away.
    """
    out, tflite, scratch = tmp_path / "p.keras", tmp_path / "p.tflite", tmp_path / "tmp"
    scratch.mkdir()
    stdout, stderr = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with open(stdout, "w") as so, open(stderr, "w") as se:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tfcompress", "prune", str(saved_model), "--data=digits", "--epochs=1",
             "--batch_size=64", f"--output={out}", f"--tflite={tflite}"],
            stdout=so, stderr=se, env=dict(ENV, TMPDIR=str(scratch)), cwd=tmp_path)
        try:
            child, deadline = None, time.monotonic() + 400
            while child is None and proc.poll() is None and time.monotonic() < deadline:
                child = _conversion_child(proc.pid)
                time.sleep(0.05)
            assert child is not None, "the CLI never started a conversion subprocess"
            resource.prlimit(child, resource.RLIMIT_CORE, (0, 0))
            resource.prlimit(child, resource.RLIMIT_CPU, (1, resource.prlimit(child, resource.RLIMIT_CPU)[1]))
            proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
    err = stderr.read_text()
    assert proc.returncode == 1, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("tfcompress prune: error: The TFLite converter could not convert model '")
    assert "mode='int8'" in last and f"crashed with {signal.SIGXCPU.name}" in last
    assert f"saved in {str(out)!r}; retry only the conversion with `tfcompress convert {out}" in last  # not lost
    assert "Traceback" not in err
    assert not tflite.exists() and keras.models.load_model(out).get_layer("fc1") is not None
    assert os.listdir(scratch) == [], "the export folder must be removed"


def test_convert_with_a_budget_and_a_calibration_method(saved_model, tmp_path):
    out = tmp_path / "budget.tflite"
    result = tfcompress("convert", str(saved_model), "--mode=int8", "--data=digits", f"--output={out}",
                        "--max_accuracy_drop=1.0", "--validation_samples=300", "--calibration=percentile",
                        "--noisolate")
    assert result.returncode == 0, result.stderr
    assert re.search(r"accuracy budget 1\.0 pt met on 300 held-out training samples: [\d.]+% vs float [\d.]+% "
                     r"\(int8, kept float: ", result.stdout), result.stdout
    assert out.read_bytes()[4:8] == b"TFL3"
    too_many = tfcompress("convert", str(saved_model), "--mode=int8", "--data=digits", f"--output={tmp_path / 'x.tflite'}",
                          "--max_accuracy_drop=1.0", "--validation_samples=1300")
    assert too_many.returncode == 2 and "--validation_samples=1300" in too_many.stderr.strip().splitlines()[-1]


def test_every_command_documents_every_flags_default():
    """Each command's --help names every flag's default (or, for unset ones, what happens without it)."""
    from absl import flags

    from tfcompress import cli

    for command, (define, _, _) in cli.COMMANDS.items():
        define()  # in this process: each command's flags in turn, removed again below
        try:
            defined = flags.FLAGS.get_key_flags_for_module(cli.__name__)
            help_text = flags.FLAGS.module_help(cli.__name__)
            assert defined, command
            for flag in defined:
                assert f"--{flag.name}:" in help_text or f"--[no]{flag.name}:" in help_text, (command, flag.name)
                if flag.default is None:
                    assert "(default: none - " in flag.help, f"{command} --{flag.name}: say what happens without it"
        finally:
            for flag in flags.FLAGS.get_key_flags_for_module(cli.__name__):
                delattr(flags.FLAGS, flag.name)


def test_prune_with_clusters_and_low_rank(saved_model, tmp_path):
    out = tmp_path / "c.keras"
    result = tfcompress("prune", str(saved_model), "--data=digits", "--sparsity=0.5", "--clusters=8", "--low_rank=0.9",
                        "--epochs=1", "--batch_size=32", f"--output={out}")
    assert result.returncode == 0, result.stderr[-2000:]
    model = keras.models.load_model(out)  # plain Keras
    assert any(layer.name.endswith("_low_rank") for layer in model.layers)
    kernels = [layer.kernel.numpy() for layer in model.layers if hasattr(layer, "kernel")]
    assert all(len(np.unique(k)) <= 8 + 1 for k in kernels if k.ndim == 2)  # Dense: 8 centroids and the fixed zero
    zeros = sum(int(np.sum(k == 0)) for k in kernels) / sum(k.size for k in kernels)
    assert zeros >= 0.45  # the pruned zeros survive clustering
    result = tfcompress("prune", str(saved_model), "--clusters=1")
    assert result.returncode == 2 and "--clusters" in result.stderr
