"""Executes every Colab tutorial in colab/ top to bottom, so they never rot.

Each notebook runs in a fresh kernel with ``TFCOMPRESS_NOTEBOOK_SMALL=1`` (3,000
training images, one epoch) and a temporary working directory, which is where it
writes its outputs; the test then checks that the key files exist.
"""

import glob
import os
import shutil
import site
import subprocess
import sys
import textwrap

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


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[os.path.basename(p) for p in NOTEBOOKS])
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
    errors = [
        out for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])
        if out.get("output_type") == "error"
    ]
    assert not errors


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

    # `python -S` with site-packages on PYTHONPATH: every installed package imports, but .pth files
    # (this checkout's editable install) are not processed, so tfcompress is missing as in a fresh Colab.
    packages = [p for p in site.getsitepackages() + [site.getusersitepackages()] if os.path.isdir(p)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "TFCOMPRESS_PIP"))}
    env.update(PYTHONPATH=os.pathsep.join(packages), PIP_TARGET=str(target), PIP_NO_DEPS="1", PIP_NO_INDEX="1",
               PIP_DISABLE_PIP_VERSION_CHECK="1", TF_CPP_MIN_LOG_LEVEL="3")
    script = textwrap.dedent(f"""
        import importlib.util, sys
        sys.path.insert(0, {str(target)!r})
        assert importlib.util.find_spec("tfcompress") is None, "tfcompress should not be importable yet"
        from IPython.core.interactiveshell import InteractiveShell
        result = InteractiveShell.instance().run_cell({install_cell_source()!r})
        result.raise_error()
        import tfcompress, tfcompress.cli, tfcompress.pruning, tfcompress.quantization
        print("INSTALLED_AT", tfcompress.__file__)
        tfcompress.PolynomialDecay(0.0, 0.5, begin_step=0, end_step=10)
    """)
    run = subprocess.run([sys.executable, "-S", "-c", script], cwd=session, env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    installed_at = next(line.split(" ", 1)[1] for line in run.stdout.splitlines() if line.startswith("INSTALLED_AT"))
    assert installed_at.startswith(str(target)), installed_at

    # An install that fails says what to do instead of leaving the next cell's import to fail.
    failing = textwrap.dedent(f"""
        from IPython.core.interactiveshell import InteractiveShell
        result = InteractiveShell.instance().run_cell({install_cell_source()!r})
        print("ERROR", type(result.error_in_exec).__name__, result.error_in_exec)
    """)
    env["TFCOMPRESS_PIP"] = str(tmp_path / "missing" / "tfcompress-0.0.0-py3-none-any.whl")
    (tmp_path / "fresh").mkdir()
    run = subprocess.run([sys.executable, "-S", "-c", failing], cwd=tmp_path / "fresh", env=env, capture_output=True,
                         text=True, timeout=600)
    error = next(line for line in run.stdout.splitlines() if line.startswith("ERROR"))
    assert "RuntimeError" in error and "tools/run.sh wheel" in error and "TFCOMPRESS_PIP" in error, run.stdout[-2000:]
