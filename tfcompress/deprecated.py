"""Old public names kept for one release (0.2 removes them); each use warns with the new name."""

import importlib
import warnings

# old name: (module of the new name, new name)
RENAMED = {
    "QuantizationConfig": ("tfcompress.quantization.config", "QATConfig"),
    "QuantizeAware": ("tfcompress.recipe", "QuantizationAwareTraining"),
}


def lookup(module_name, name):
    """The object an old name stands for (with a DeprecationWarning), for a module's ``__getattr__``."""
    if name not in RENAMED:
        raise AttributeError(f"module {module_name!r} has no attribute {name!r}")
    target_module, new_name = RENAMED[name]
    warnings.warn(f"tfcompress: {name} is deprecated and will be removed in 0.2; use tfc.{new_name}, the same "
                  "object under its new name.", DeprecationWarning, stacklevel=3)
    return getattr(importlib.import_module(target_module), new_name)
