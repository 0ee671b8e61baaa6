"""Optional dependencies: one import helper and one message when a part's package is missing.

    >>> runtime = extras.require("tflite_micro", "the 'micro' evaluator backend")
"""

import importlib

# import name: (pip package, tfcompress extra)
OPTIONAL = {
    "tflite_micro": ("tflite-micro", "micro"),
    "tf2onnx": ("tf2onnx", "onnx"),
    "onnx": ("onnx", "onnx"),
    "onnxruntime": ("onnxruntime", "onnx"),
    "litert_quantizer": ("litert-quantizer", "quantizer"),
    "tensorflow_model_optimization": ("tensorflow-model-optimization", "tfmot"),
    "tf_keras": ("tf-keras", "tfmot"),
}


class MissingExtraError(ImportError):
    """An optional package that a feature needs is not installed; the message says what to install."""


def require(module, feature):
    """Imports an optional package, or raises `MissingExtraError` naming the feature and the pip command.

    Args:
        module: the import name, a key of `OPTIONAL` (e.g. ``"tflite_micro"``).
        feature: what needs it, for the message (e.g. ``"the 'micro' evaluator backend"``).
    """
    package, extra = OPTIONAL[module]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"{feature} needs the optional package {package!r}, which is not installed ({exc}). Install it with "
            f"`pip install 'tfcompress[{extra}]'` (or `pip install {package}`).") from None
