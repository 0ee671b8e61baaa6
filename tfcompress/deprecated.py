"""Old names and old module paths, kept for one release (0.2 removes them); each use warns with the new one.

* Renamed: ``tfc.QuantizationConfig`` is ``tfc.QATConfig``, ``QuantizeAware`` is ``QuantizationAwareTraining``.
* Moved names: what left a module for another layer, e.g. ``tfc.quantization.quantization_sensitivity``
  (now in `tfcompress.export.sensitivity`; ``tfc.quantization_sensitivity`` as before).
* Moved module paths: ``import tfcompress.convert`` gives `tfcompress.export.tflite`, the very same module
  object (so patching one patches the other), and ``python -m`` runs an old path's new module.

Names are looked up only when used: `install` (called once by ``tfcompress/__init__``) gives each module
that had old names a ``__getattr__`` (PEP 562) and puts a finder for the old paths on ``sys.meta_path``.
The modules themselves carry no compatibility code, and nothing here imports what it names until asked.
The documented namespaces (``tfc.evaluate``, ``tfc.micro``, ``tfc.files``, ...) are attributes of the
package, set by ``tfcompress/__init__``, and do not warn.
"""

import functools
import importlib
import importlib.abc
import importlib.util
import sys
import types
import warnings

# old name: (module of the new name, new name); valid in every module of `_RENAMED_IN`
RENAMED = {
    "QuantizationConfig": ("tfcompress.quantization.config", "QATConfig"),
    "QuantizeAware": ("tfcompress.pipeline.recipe", "QuantizationAwareTraining"),
}
_RENAMED_IN = ("tfcompress", "tfcompress.quantization", "tfcompress.pipeline.recipe")

# module: {name that left it: module that holds it now}
MOVED_NAMES = {
    # quantization/ is QAT only (model -> model); the tools that convert and measure went to export/.
    "tfcompress.quantization": {
        "TFLiteParityCallback": "tfcompress.export.parity_callback",
        "quantization_sensitivity": "tfcompress.export.sensitivity",
        "SensitivityReport": "tfcompress.export.sensitivity",
        "AccuracyBudgetError": "tfcompress.export.sensitivity",
        "convert_within_budget": "tfcompress.export.sensitivity",
    },
    # The pruner left the dependency graph's module (channels -> importance -> channel_pruner, no cycle).
    "tfcompress.pruning.channels": {"prune_channels": "tfcompress.pruning.channel_pruner"},
    # tfcompress.convert is export.tflite (the verb); the machinery went to export.converter.
    "tfcompress.export.tflite": {name: "tfcompress.export.converter" for name in (
        "convert_saved_model", "converter_message", "exported_model", "float32_compute", "input_specs",
        "is_qat_model", "quiet_tensorflow_logs", "raise_if_out_of_space")},
    # tfcompress.onnx_export is export.onnx; its ONNX Runtime half went to evaluation.onnxruntime.
    "tfcompress.export.onnx": {name: "tfcompress.evaluation.onnxruntime" for name in (
        "BACKEND", "InvalidONNXFileError", "evaluate_onnx", "predict_onnx", "read_onnx_bytes")},
}

# old module path: new module path
MOVED_MODULES = {
    **{f"tfcompress.{name}": f"tfcompress.core.{name}" for name in (
        "backup", "datasets", "extras", "files", "graph", "isolation", "machine", "native_stderr", "validation",
        "zoo")},
    "tfcompress.evaluate": "tfcompress.evaluation.litert",
    "tfcompress.micro": "tfcompress.evaluation.micro",
    "tfcompress.profiling": "tfcompress.evaluation.profiling",
    "tfcompress.reports": "tfcompress.evaluation.reports",
    "tfcompress.tflite_file": "tfcompress.evaluation.tflite_file",
    "tfcompress.convert": "tfcompress.export.tflite",
    "tfcompress._convert_worker": "tfcompress.export.convert_worker",
    "tfcompress.firmware": "tfcompress.export.firmware",
    "tfcompress.onnx_export": "tfcompress.export.onnx",
    "tfcompress.representative": "tfcompress.core.representative",
    "tfcompress.export.representative": "tfcompress.core.representative",
    "tfcompress.quantization.parity_callback": "tfcompress.export.parity_callback",
    "tfcompress.quantization.sensitivity": "tfcompress.export.sensitivity",
    "tfcompress.distill": "tfcompress.distillation.distiller",
    "tfcompress.factorize": "tfcompress.lowrank.factorization",
    "tfcompress.auto": "tfcompress.pipeline.auto",
    "tfcompress.cli": "tfcompress.pipeline.cli",
    "tfcompress.demo": "tfcompress.pipeline.demo",
    "tfcompress.recipe": "tfcompress.pipeline.recipe",
}


def _warn(message):
    # Attributed to the user's line, past this module's frames; `warnings` itself skips the import system's
    # frames (importlib._bootstrap), so they are passed over without being counted.
    frame, level = sys._getframe(1), 2
    while frame is not None:
        filename = frame.f_code.co_filename
        if filename == __file__:
            level += 1
        elif not ("importlib" in filename and "_bootstrap" in filename):
            break
        frame = frame.f_back
    warnings.warn(message, DeprecationWarning, stacklevel=level)


def lookup(module_name, name):
    """The object an old name of ``module_name`` stands for (with a DeprecationWarning), for its ``__getattr__``."""
    if module_name in _RENAMED_IN and name in RENAMED:
        target_module, new_name = RENAMED[name]
        _warn(f"tfcompress: {name} is deprecated and will be removed in 0.2; use tfc.{new_name}, the same object "
              "under its new name.")
        return getattr(importlib.import_module(target_module), new_name)
    target_module = MOVED_NAMES.get(module_name, {}).get(name)
    if target_module is not None:
        _warn(f"tfcompress: {module_name}.{name} moved to {target_module}.{name}; the old name will be removed "
              "in 0.2.")
        return getattr(importlib.import_module(target_module), name)
    old_path = f"{module_name}.{name}"
    if old_path in MOVED_MODULES:
        _warn(f"tfcompress: the module {old_path} moved to {MOVED_MODULES[old_path]}; the old path will be removed "
              "in 0.2.")
        return importlib.import_module(MOVED_MODULES[old_path])
    raise AttributeError(f"module {module_name!r} has no attribute {name!r}")


class _OldPathLoader(importlib.abc.Loader):
    """Loads an old module path as its new module: the same object, under its own name and spec."""

    def __init__(self, new_name):
        self.new_name = new_name
        self.new_spec = None

    def create_module(self, spec):
        _warn(f"tfcompress: the module {spec.name} moved to {self.new_name}; the old path will be removed in 0.2.")
        module = importlib.import_module(self.new_name)
        self.new_spec = module.__spec__
        return module

    def exec_module(self, module):
        # The import system gave the module the old path's spec; it keeps its own (reload, pickling, -m).
        module.__spec__ = self.new_spec

    def is_package(self, fullname):
        return False

    def get_code(self, fullname):
        """For ``python -m <old path>``: the new module's code."""
        _warn(f"tfcompress: the module {fullname} moved to {self.new_name}; run python -m {self.new_name}.")
        return importlib.util.find_spec(self.new_name).loader.get_code(self.new_name)


class _OldPathFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        new_name = MOVED_MODULES.get(fullname)
        return None if new_name is None else importlib.util.spec_from_loader(fullname, _OldPathLoader(new_name))


class _Package(types.ModuleType):
    """The type of the ``tfcompress`` module: importing an old path does not replace a public name.

    The import system sets a newly imported submodule as an attribute of its package; for
    ``import tfcompress.factorize`` that would replace ``tfc.factorize``, the function, with the module.
    """

    def __setattr__(self, name, value):
        if (f"{self.__name__}.{name}" in MOVED_MODULES and isinstance(value, types.ModuleType)
                and not isinstance(self.__dict__.get(name, value), types.ModuleType)):
            return
        super().__setattr__(name, value)


def install():
    """Hooks the old names and paths in: a ``__getattr__`` per module that had old names, and the path finder."""
    parents = {old.rpartition(".")[0] for old in MOVED_MODULES}
    for module_name in sorted(set(_RENAMED_IN) | set(MOVED_NAMES) | parents):
        importlib.import_module(module_name).__getattr__ = functools.partial(lookup, module_name)
    sys.modules["tfcompress"].__class__ = _Package
    if not any(isinstance(finder, _OldPathFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _OldPathFinder())
