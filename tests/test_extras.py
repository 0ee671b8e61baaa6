"""Optional dependencies: importing tfcompress loads no legacy Keras, and a missing extra names its pip command."""

import subprocess
import sys

import pytest

from tfcompress.core import extras


def test_import_does_not_load_legacy_keras():
    code = "import sys, tfcompress; print(sorted(m for m in ('tf_keras', 'tensorflow_model_optimization') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stderr[-500:]


def test_missing_extra_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(extras.OPTIONAL, "tfcompress_no_such_module", ("no-such-package", "micro"))
    with pytest.raises(extras.MissingExtraError, match=r"the 'micro' backend needs .*'no-such-package'.*"
                                                       r"pip install 'tfcompress\[micro\]'"):
        extras.require("tfcompress_no_such_module", "the 'micro' backend")
