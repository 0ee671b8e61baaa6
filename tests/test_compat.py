"""Old module paths and moved names still work for one release, warn with the new path, and are the new objects.

The documented namespaces (``tfc.evaluate``, ``tfc.micro``, ``tfc.files``, ...) do not warn.
"""

import importlib.util
import sys
import types
import warnings

import pytest

import tfcompress as tfc

DOCUMENTED = ("evaluate", "micro", "quantization", "pruning", "clustering", "callbacks", "datasets", "zoo", "machine",
              "reports", "files", "graph", "tflite_file", "representative")


def _forget(monkeypatch, *old_paths):
    """As in a fresh process: the old paths not imported yet (restored after the test)."""
    for old in old_paths:
        monkeypatch.delitem(sys.modules, old, raising=False)
        parent, _, child = old.rpartition(".")
        if isinstance(vars(sys.modules[parent]).get(child), types.ModuleType):
            monkeypatch.delattr(sys.modules[parent], child)


def test_an_old_module_path_warns_and_is_the_new_module(monkeypatch):
    _forget(monkeypatch, "tfcompress.convert", "tfcompress.evaluate", "tfcompress.onnx_export",
            "tfcompress.quantization.sensitivity", "tfcompress.factorize")
    with pytest.warns(DeprecationWarning, match=r"tfcompress\.convert moved to tfcompress\.export\.tflite"):
        import tfcompress.convert as old
    import tfcompress.export.tflite as new

    assert old is new and sys.modules["tfcompress.convert"] is new and old.__spec__.name == "tfcompress.export.tflite"
    assert old.to_tflite is tfc.to_tflite and old.ConversionError is tfc.ConversionError
    monkeypatch.setattr(old, "MIN_AGREEMENT", 0.5)  # one module: patching the old path patches the new one
    assert new.MIN_AGREEMENT == 0.5
    with pytest.warns(DeprecationWarning, match=r"tfcompress\.evaluate moved to tfcompress\.evaluation\.litert"):
        from tfcompress.evaluate import predict
    assert predict is tfc.evaluate.predict
    with pytest.warns(DeprecationWarning, match=r"tfcompress\.onnx_export moved to tfcompress\.export\.onnx"):
        from tfcompress import onnx_export
    with pytest.warns(DeprecationWarning, match=r"onnx\.evaluate_onnx moved to tfcompress\.evaluation\.onnxruntime"):
        assert onnx_export.evaluate_onnx is tfc.evaluate_onnx  # the half that left the module
    with pytest.warns(DeprecationWarning, match=r"quantization\.sensitivity moved to tfcompress\.export\.sensitivity"):
        assert tfc.quantization.sensitivity is sys.modules["tfcompress.export.sensitivity"]
    with pytest.warns(DeprecationWarning, match=r"quantization\.quantization_sensitivity moved to tfcompress\.export"):
        assert tfc.quantization.quantization_sensitivity is tfc.quantization_sensitivity
    with pytest.warns(DeprecationWarning, match=r"tfcompress\.factorize moved to tfcompress\.lowrank\.factorization"):
        old_module = importlib.import_module("tfcompress.factorize")
    assert old_module is sys.modules["tfcompress.lowrank.factorization"]
    assert callable(tfc.factorize)  # the function: importing the old module path does not replace it
    with pytest.warns(DeprecationWarning, match=r"run python -m tfcompress\.export\.convert_worker"):
        code = importlib.util.find_spec("tfcompress._convert_worker").loader.get_code("tfcompress._convert_worker")
    assert code.co_filename.endswith("convert_worker.py")  # what python -m tfcompress._convert_worker runs
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("tfcompress.no_such_module")


def test_documented_namespaces_and_new_paths_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        namespaces = {name: getattr(tfc, name) for name in DOCUMENTED}
        assert namespaces["evaluate"] is sys.modules["tfcompress.evaluation.litert"]
        assert namespaces["representative"] is sys.modules["tfcompress.core.representative"]
        assert tfc.evaluate.predict and tfc.micro.audit and tfc.reports.markdown_table and tfc.files.check_writable
        assert tfc.graph.layers_of and tfc.tflite_file.computes_int8 and tfc.machine.current
        assert tfc.pruning.importance.unit_scores and tfc.pruning.layer_costs and tfc.quantization.calibrate
        assert tfc.clustering.clustering_report and tfc.representative.check_model_outputs
        assert tfc.callbacks.TFLiteParityCallback is tfc.TFLiteParityCallback
        from tfcompress import evaluate, files

        assert evaluate is tfc.evaluate and files is tfc.files
        for new_path in ("tfcompress.export.sensitivity", "tfcompress.pipeline.cli",
                         "tfcompress.evaluation.onnxruntime"):
            importlib.import_module(new_path)


def test_old_names_warn_and_still_work():
    with pytest.warns(DeprecationWarning, match="use tfc.QATConfig"):
        old = tfc.QuantizationConfig
    assert old is tfc.QATConfig
    with pytest.warns(DeprecationWarning, match="use tfc.QuantizationAwareTraining"):
        from tfcompress.pipeline.recipe import QuantizeAware  # noqa: F401
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert tfc.callbacks.PruningCallback is tfc.PruningCallback
    with pytest.raises(AttributeError, match="no attribute 'Nonexistent'"):
        tfc.Nonexistent  # noqa: B018


def test_public_api_lists_only_real_names():
    assert all(hasattr(tfc, name) for name in tfc.__all__)
    assert {"PruningCallback", "BackupAndRestore", "TFLiteParityCallback"} <= set(tfc.callbacks.__all__)
