"""The firmware C array: compiles with g++ and holds the .tflite's exact bytes, 16-byte aligned."""

import shutil
import subprocess
import sys

import pytest

import tfcompress as tfc

MAIN = r"""
#include <cstdio>
#include <cstdint>
#include "model_data.h"
int main() {
  if (reinterpret_cast<std::uintptr_t>(g_model) % 16 != 0) return 3;
  std::fwrite(g_model, 1, g_model_len, stdout);
  return 0;
}
"""


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
def test_c_array_compiles_and_holds_the_same_bytes(trained_digits_model, digits_data, tmp_path):
    (x, _), _ = digits_data
    model = bytes(tfc.to_tflite(trained_digits_model, mode="int8", representative_data=x[:64]))
    source, header = tfc.export_c_array(model, tmp_path / "model_data.cc")
    assert header.endswith("model_data.h") and "alignas(16) const unsigned char g_model[]" in open(source).read()
    (tmp_path / "main.cc").write_text(MAIN)
    binary = tmp_path / "dump"
    subprocess.run(["g++", "-std=c++17", "-o", str(binary), str(tmp_path / "main.cc"), source], check=True,
                   cwd=tmp_path)
    out = subprocess.run([str(binary)], capture_output=True, check=True)
    assert out.stdout == model
    with pytest.raises(tfc.OutputExistsError):
        tfc.export_c_array(model, tmp_path / "model_data.cc")
    with pytest.raises(ValueError, match="not a C identifier"):
        tfc.export_c_array(model, tmp_path / "other.cc", name="3model")
    with pytest.raises(tfc.InvalidTFLiteFileError):
        tfc.export_c_array(b"not a model at all", tmp_path / "bad.cc")
    assert not (tmp_path / "bad.cc").exists() and not (tmp_path / "bad.h").exists()


def test_cli_export(trained_digits_model, tmp_path):
    path = tmp_path / "m.tflite"
    path.write_bytes(bytes(tfc.to_tflite(trained_digits_model)))
    run = subprocess.run([sys.executable, "-m", "tfcompress", "export", str(path), f"--c_array={tmp_path / 'm.cc'}",
                          "--name=g_digits"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "const unsigned int g_digits_len" in (tmp_path / "m.cc").read_text()
    again = subprocess.run([sys.executable, "-m", "tfcompress", "export", str(path), f"--c_array={tmp_path / 'm.cc'}"],
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 1 and "--overwrite" in again.stderr.strip().splitlines()[-1]
