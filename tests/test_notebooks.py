"""Executes every Colab tutorial in colab/ top to bottom, so they never rot.

Each notebook runs in a fresh kernel with ``TFCOMPRESS_NOTEBOOK_SMALL=1`` (3,000
training images, one epoch) and a temporary working directory, which is where it
writes its outputs; the test then checks that the key files exist.
"""

import glob
import json
import os
import shutil
import site
import subprocess
import sys
import types

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

COLAB_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "colab")
NOTEBOOKS = sorted(glob.glob(os.path.join(COLAB_DIR, "*.ipynb")))

# Files (relative to the notebook's working directory) each tutorial must produce.
EXPECTED_OUTPUTS = {
    "01_pruning.ipynb": [
        "tfcompress_out/pruned.keras",
        "tfcompress_out/dense_int8.tflite",
        "tfcompress_out/pruned_int8.tflite",
        "tfcompress_out/pruned_int8_sparse.tflite",
    ],
    "02_distillation.ipynb": [
        "tfcompress_out/student.keras",
        "tfcompress_out/student_int8.tflite",
        "tfcompress_out/teacher_int8.tflite",
    ],
    "03_quantization.ipynb": [
        "tfcompress_out/model_float16.tflite",
        "tfcompress_out/model_dynamic.tflite",
        "tfcompress_out/model_int8.tflite",
        "tfcompress_out/model_int16x8.tflite",
        "tfcompress_out/qat_int8.tflite",
        "tfcompress_out/prune75_qat_int8.tflite",
    ],
    "04_evaluate_and_deploy.ipynb": [
        "tfcompress_out/model_float32.tflite",
        "tfcompress_out/model_int8.tflite",
        "tfcompress_out/model_int8_io.tflite",
        "tfcompress_out/model_data.cc",
    ],
}


# Folders a tutorial uses while it runs and must have removed when it ends.
EXPECTED_REMOVED = {
    "01_pruning.ipynb": ["tfcompress_out/pruning_backup"],  # BackupAndRestore deletes it once fit completes
}

REPO_ROOT = os.path.dirname(COLAB_DIR)


def install_cell_source():
    """The first code cell of the first notebook: the install cell all of them share."""
    nb = nbformat.read(NOTEBOOKS[0], as_version=4)
    return next(cell for cell in nb.cells if cell.cell_type == "code").source


def test_every_notebook_is_listed():
    names = [os.path.basename(p) for p in NOTEBOOKS]
    assert names, f"no notebooks found in {COLAB_DIR}"
    assert sorted(names) == sorted(EXPECTED_OUTPUTS), "update EXPECTED_OUTPUTS when adding a notebook"


def test_notebooks_are_stored_without_outputs():
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        assert nb.metadata["kernelspec"]["name"] == "python3", path
        first = nb.cells[0] if nb.cells[0].cell_type == "code" else next(c for c in nb.cells if c.cell_type == "code")
        assert first.source == install_cell_source(), f"{path}: every notebook starts with the same install cell"
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, f"{path}: clear the outputs"


# The quantization and distillation tutorials train and convert for 1-2 minutes each on 2 cores; the same
# APIs run in the guides' examples (tests/test_docs.py), so they run with `python -m pytest -m slow`.
_SLOW_NOTEBOOKS = ("02_distillation.ipynb", "03_quantization.ipynb")


@pytest.mark.parametrize("path", [pytest.param(p, marks=pytest.mark.slow) if os.path.basename(p) in _SLOW_NOTEBOOKS
                                  else p for p in NOTEBOOKS], ids=[os.path.basename(p) for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch):
    # The kernel inherits this process's environment.
    monkeypatch.setenv("TFCOMPRESS_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError naming the failing cell

    for relative in EXPECTED_OUTPUTS[os.path.basename(path)]:
        target = tmp_path / relative
        assert target.exists(), f"{os.path.basename(path)} did not write {relative}"
        assert target.stat().st_size > 0, f"{relative} is empty"
    for relative in EXPECTED_REMOVED.get(os.path.basename(path), []):
        assert not (tmp_path / relative).exists(), f"{os.path.basename(path)} left {relative} behind"
    errors = [
        out for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])
        if out.get("output_type") == "error"
    ]
    assert not errors


def _isolated_env(**extra):
    """An environment in which `python -S` imports every installed package except this checkout's tfcompress.

    `python -S` with site-packages on PYTHONPATH: every installed package imports, but .pth files (this
    checkout's editable install) are not processed, so tfcompress is missing as in a fresh Colab runtime.
    """
    packages = [p for p in site.getsitepackages() + [site.getusersitepackages()] if os.path.isdir(p)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "TFCOMPRESS_PIP"))}
    env.update(PYTHONPATH=os.pathsep.join(packages), PIP_DISABLE_PIP_VERSION_CHECK="1", TF_CPP_MIN_LOG_LEVEL="3")
    env.update(extra)
    return env


# Runs the install cell in IPython where tfcompress is not importable and prints what it did as JSON.
# FAKE_PIP replaces the %pip magic with a recorder (nothing is installed, so the cell then reports a failed
# install); COLAB_DRIVE simulates a Colab runtime whose Google Drive, once drive.mount("/content/drive") is
# called, shows the contents of that folder at /content/drive.
_INSTALL_PROBE = """
import glob, importlib.util, json, sys, types
sys.path.insert(0, TARGET)
assert importlib.util.find_spec("tfcompress") is None, "tfcompress should not be importable yet"
from IPython.core.interactiveshell import InteractiveShell

calls = {"pip": [], "mount": []}
shell = InteractiveShell.instance()
if FAKE_PIP:
    shell.register_magic_function(lambda line: calls["pip"].append(line), "line", "pip")
if COLAB_DRIVE is not None:
    colab, drive = types.ModuleType("google.colab"), types.ModuleType("google.colab.drive")
    drive.mount = lambda mountpoint, **kwargs: calls["mount"].append(mountpoint)
    colab.drive = drive
    sys.modules.update({"google.colab": colab, "google.colab.drive": drive})
    real_glob = glob.glob

    def drive_glob(pattern, *args, **kwargs):
        if pattern.startswith("/content/drive/"):
            if "/content/drive" not in calls["mount"]:
                return []
            pattern = COLAB_DRIVE + pattern[len("/content/drive"):]
        return real_glob(pattern, *args, **kwargs)

    glob.glob = drive_glob
result = shell.run_cell(CELL)
error = result.error_in_exec
print("RESULT", json.dumps({"pip": calls["pip"], "mount": calls["mount"],
                            "error": type(error).__name__ if error else None, "message": str(error or "")}))
if not FAKE_PIP:  # a real install: this session imports the package right away, as the next cell will
    import tfcompress, tfcompress.pipeline.cli, tfcompress.pruning, tfcompress.quantization
    tfcompress.PolynomialDecay(0.0, 0.5, begin_step=0, end_step=10)
    print("INSTALLED_AT", tfcompress.__file__)
"""


def _run_install_cell(cwd, env, target="", fake_pip=True, colab_drive=None):
    prelude = (f"TARGET = {str(target)!r}\nFAKE_PIP = {fake_pip!r}\nCOLAB_DRIVE = {colab_drive!r}\n"
               f"CELL = {install_cell_source()!r}\n")
    run = subprocess.run([sys.executable, "-S", "-c", prelude + _INSTALL_PROBE], cwd=cwd, env=env,
                         capture_output=True, text=True, timeout=600)
    lines = run.stdout.splitlines()
    result = next((line for line in lines if line.startswith("RESULT ")), None)
    assert result is not None, run.stdout[-2000:] + run.stderr[-3000:]
    outcome = json.loads(result.split(" ", 1)[1])
    outcome["installed_at"] = next((line.split(" ", 1)[1] for line in lines if line.startswith("INSTALLED_AT")), None)
    outcome["output"] = run.stdout[-2000:] + run.stderr[-3000:]
    return outcome


def _fake_wheel(folder, version, mtime):
    path = folder / f"tfcompress-{version}-py3-none-any.whl"
    path.write_bytes(b"not really a wheel")
    os.utime(path, (mtime, mtime))
    return path


def _assert_names_both_routes(message):
    assert "bash tools/run.sh wheel" in message and "upload" in message, message
    assert "TFCOMPRESS_PIP" in message, message


def test_install_cell_installs_an_uploaded_wheel(tmp_path):
    """The install cell, run by IPython where tfcompress is not importable, installs it from a wheel beside the notebook.

    This is the Colab route without a network: ``bash tools/run.sh wheel``, upload the wheel, run the
    notebook. pip installs into a target folder (no dependencies, no index), so this environment is untouched.
    """
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"),
         REPO_ROOT], capture_output=True, text=True, timeout=300,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = glob.glob(str(tmp_path / "dist" / "tfcompress-*.whl"))
    session = tmp_path / "content"  # Colab's working folder, where uploads land
    session.mkdir()
    shutil.copy(wheel, session)
    target = tmp_path / "site"
    target.mkdir()  # on sys.path from the start, as site-packages is in Colab
    env = _isolated_env(PIP_TARGET=str(target), PIP_NO_DEPS="1", PIP_NO_INDEX="1")

    outcome = _run_install_cell(session, env, target=target, fake_pip=False)
    assert outcome["error"] is None, outcome["output"]
    assert outcome["installed_at"] and outcome["installed_at"].startswith(str(target)), outcome["output"]

    # An install that fails says what to do instead of leaving the next cell's import to fail.
    (tmp_path / "fresh").mkdir()
    env["TFCOMPRESS_PIP"] = str(tmp_path / "missing" / "tfcompress-0.0.0-py3-none-any.whl")
    outcome = _run_install_cell(tmp_path / "fresh", env, fake_pip=False)
    assert outcome["error"] == "RuntimeError", outcome["output"]
    assert "failed" in outcome["message"] and env["TFCOMPRESS_PIP"] in outcome["message"], outcome["message"]
    _assert_names_both_routes(outcome["message"])


def test_install_cell_without_a_wheel_says_how_to_get_one(tmp_path):
    """No TFCOMPRESS_PIP and no wheel: one error naming both routes, and pip is never asked to guess a source."""
    outcome = _run_install_cell(tmp_path, _isolated_env())
    assert outcome["error"] == "RuntimeError", outcome["output"]
    assert outcome["pip"] == [] and outcome["mount"] == [], outcome  # not on Colab: Drive is left alone
    _assert_names_both_routes(outcome["message"])
    assert "not installed" in outcome["message"], outcome["message"]


def test_install_cell_prefers_tfcompress_pip_then_the_newest_uploaded_wheel(tmp_path):
    _fake_wheel(tmp_path, "0.1.0", mtime=1_000_000)
    newest = _fake_wheel(tmp_path, "0.0.9", mtime=2_000_000)  # uploaded last, though it sorts first by name

    outcome = _run_install_cell(tmp_path, _isolated_env(TFCOMPRESS_PIP="/somewhere/tfcompress-src"))
    assert outcome["pip"] == ['install -q "/somewhere/tfcompress-src"'], outcome

    outcome = _run_install_cell(tmp_path, _isolated_env())
    assert outcome["pip"] == [f'install -q "{newest.name}"'], outcome
    # The recording pip installed nothing: the cell reports that instead of letting the next import fail.
    assert outcome["error"] == "RuntimeError" and newest.name in outcome["message"], outcome


def test_install_cell_on_colab_installs_a_wheel_from_drive(tmp_path):
    """In Colab, with nothing uploaded to the session, the cell mounts Drive and installs the wheel kept there."""
    session, drive = tmp_path / "content", tmp_path / "drive"
    session.mkdir()
    (drive / "MyDrive" / "tfcompress").mkdir(parents=True)

    outcome = _run_install_cell(session, _isolated_env(), colab_drive=str(drive))
    assert outcome["mount"] == ["/content/drive"], outcome
    assert outcome["pip"] == [] and outcome["error"] == "RuntimeError", outcome
    _assert_names_both_routes(outcome["message"])
    assert "My Drive/tfcompress/" in outcome["message"], outcome["message"]

    wheel = _fake_wheel(drive / "MyDrive" / "tfcompress", "0.1.0", mtime=1_000_000)
    outcome = _run_install_cell(session, _isolated_env(), colab_drive=str(drive))
    assert outcome["mount"] == ["/content/drive"], outcome
    assert outcome["pip"] == [f'install -q "{wheel}"'], outcome

    # A wheel uploaded to the session wins, and Drive is not mounted for nothing.
    local = _fake_wheel(session, "0.1.0", mtime=1_000_000)
    outcome = _run_install_cell(session, _isolated_env(), colab_drive=str(drive))
    assert outcome["mount"] == [] and outcome["pip"] == [f'install -q "{local.name}"'], outcome


def _backup_location_cells():
    """(notebook, source) of the cell choosing the backup folder, for every notebook that backs up training."""
    found = []
    for path in NOTEBOOKS:
        code = [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
        if any("BackupAndRestore" in src or "backup_dir" in src for src in code):
            choosers = [src for src in code if "BACKUP_DIR =" in src]
            assert len(choosers) == 1, f"{os.path.basename(path)}: one cell should set BACKUP_DIR"
            assert all("BackupAndRestore(BACKUP_DIR" in src or "backup_dir=BACKUP_DIR" in src
                       for src in code if "BackupAndRestore(" in src or "backup_dir=" in src), path
            found.append((os.path.basename(path), choosers[0]))
    return found


def test_backups_go_to_drive_on_colab_and_to_a_local_folder_elsewhere(monkeypatch):
    cells = _backup_location_cells()
    assert [name for name, _ in cells] == ["01_pruning.ipynb"]
    for name, source in cells:
        local = {"os": os, "OUT": "tfcompress_out", "SMALL": False}
        exec(source, local)
        assert not local["BACKUP_DIR"].startswith("/content"), (name, local["BACKUP_DIR"])
        assert local["BACKUP_DIR"].startswith("tfcompress_out" + os.sep), (name, local["BACKUP_DIR"])

        mounts = []
        colab, drive = types.ModuleType("google.colab"), types.ModuleType("google.colab.drive")
        drive.mount = lambda mountpoint, **kwargs: mounts.append(mountpoint)
        colab.drive = drive
        with monkeypatch.context() as m:
            m.setitem(sys.modules, "google.colab", colab)
            m.setitem(sys.modules, "google.colab.drive", drive)
            on_colab = {"os": os, "OUT": "tfcompress_out", "SMALL": False}
            exec(source, on_colab)
        assert mounts == ["/content/drive"], name
        assert on_colab["BACKUP_DIR"].startswith("/content/drive/MyDrive/tfcompress_backups/"), on_colab["BACKUP_DIR"]
