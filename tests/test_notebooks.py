"""Executes every Colab tutorial in colab/ top to bottom, so they never rot.

Each notebook runs in a fresh kernel with ``TFCOMPRESS_NOTEBOOK_SMALL=1`` (3,000
training images, one epoch) and a temporary working directory, which is where it
writes its outputs; the test then checks that the key files exist.
"""

import glob
import os

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


def test_every_notebook_is_listed():
    names = [os.path.basename(p) for p in NOTEBOOKS]
    assert names, f"no notebooks found in {COLAB_DIR}"
    assert sorted(names) == sorted(EXPECTED_OUTPUTS), "update EXPECTED_OUTPUTS when adding a notebook"


def test_notebooks_are_stored_without_outputs():
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        assert nb.metadata["kernelspec"]["name"] == "python3", path
        first = nb.cells[0] if nb.cells[0].cell_type == "code" else next(c for c in nb.cells if c.cell_type == "code")
        assert "import tfcompress" in first.source and "%pip install" in first.source, path
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
