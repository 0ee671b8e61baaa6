#!/usr/bin/env bash
# One-step set-up and run: `bash tools/run.sh demo` (the end-to-end demo) or `bash tools/run.sh test`;
# `bash tools/run.sh wheel` builds dist/tfcompress-*.whl.
# Installs what the project needs on a fresh machine (Debian's Fashion-MNIST package, the Python
# package with its test extras) and then runs the command. Safe to repeat: installed pieces are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"

setup() {
  if [ ! -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ]; then
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
    echo "[setup] installing Debian's dataset-fashion-mnist (offline Fashion-MNIST)"
    $SUDO apt-get update -qq || true
    $SUDO apt-get install -y -qq dataset-fashion-mnist \
      || echo "[setup] warning: apt-get failed; Fashion-MNIST will need Keras's download instead" >&2
  fi
  # -I: ignore the current folder, so this checks what is installed, not the source tree.
  if ! "$PYTHON" -I -c "import os, sys, tfcompress, pytest, sklearn, nbclient, pytest_timeout, xdist, tflite_micro, tf2onnx, onnxruntime, litert_quantizer, mkdocs, material, mkdocstrings_handlers.python
sys.exit(os.path.dirname(os.path.dirname(tfcompress.__file__)) != os.getcwd())" 2>/dev/null; then
    echo "[setup] pip install -e .[test]"
    "$PYTHON" -m pip install -q -e ".[test]"
  fi
}

# A wheel of this checkout in dist/, e.g. to upload to a Colab session (see colab/README.md).
wheel() {
  rm -f dist/tfcompress-*.whl
  "$PYTHON" -m pip wheel -q --no-deps --no-build-isolation -w dist .
  ls dist/tfcompress-*.whl
}

command="${1:-}"
[ $# -gt 0 ] && shift
case "$command" in
  demo) setup; exec "$PYTHON" -m tfcompress demo "$@" ;;
  test) setup; exec "$PYTHON" -m pytest -q "$@" ;;
  setup) setup ;;
  wheel) wheel ;;
  *) echo "usage: bash tools/run.sh demo|test|setup|wheel [args...]" >&2; exit 2 ;;
esac
