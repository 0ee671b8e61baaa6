"""tfcompress: Keras-3-native pruning, distillation and quantization for TFLite / LiteRT.

Example:
    >>> import tfcompress as tfc
    >>> (x, y), (x_test, y_test) = tfc.datasets.fashion_mnist()
    >>> model = tfc.zoo.reference_cnn()
    >>> b = tfc.to_tflite(model, mode="int8", representative_data=x[:200])
    >>> print(tfc.evaluate_tflite(b, x=x_test, y=y_test).to_markdown())
"""

import contextlib as _contextlib
import os as _os
import sys as _sys

# TensorFlow's C++ INFO lines drown the progress output users care about.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"

from tfcompress.core import native_stderr as _native_stderr  # noqa: E402

# A few of TensorFlow's import notices print whatever TF_CPP_MIN_LOG_LEVEL says; drop them too,
# unless the user asked for INFO lines (level 0) or TensorFlow was imported before us.
_quiet_import = (
    _native_stderr.streaming_filter(_native_stderr.IMPORT_CHATTER)
    if "tensorflow" not in _sys.modules and _os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2").strip() not in ("", "0")
    else _contextlib.nullcontext()
)
with _quiet_import:
    # The documented namespaces: tfc.datasets, tfc.zoo, tfc.machine, tfc.files, tfc.graph (core), tfc.evaluate,
    # tfc.representative (core), tfc.micro, tfc.reports, tfc.tflite_file (evaluation), and the packages
    # tfc.pruning, tfc.quantization, tfc.clustering, tfc.callbacks.
    from tfcompress.core import datasets, files, graph, machine, representative, zoo  # noqa: E402
    from tfcompress.evaluation import litert as evaluate, micro, reports, tflite_file  # noqa: E402
    # Conversion (post-training quantization is a conversion mode) and the .tflite audit
    from tfcompress.export.tflite import ConversionError, ConvertedModel, QuantizationAuditError, to_tflite  # noqa: E402
    from tfcompress.core.representative import RepresentativeDataError  # noqa: E402
    from tfcompress.evaluation.tflite_file import InvalidTFLiteFileError, inspect as inspect_tflite  # noqa: E402
    # Evaluation and reports
    from tfcompress.evaluation.litert import EvaluationReport, evaluate_many, evaluate_tflite  # noqa: E402
    from tfcompress.evaluation.reports import compare  # noqa: E402
    from tfcompress.export.onnx import ONNXExportError, ONNXModel, to_onnx  # noqa: E402
    from tfcompress.evaluation.onnxruntime import evaluate_onnx  # noqa: E402
    from tfcompress.evaluation.profiling import Delegation, OpProfile, delegation, op_profile, peak_memory  # noqa: E402
    from tfcompress.evaluation.micro import MicroCompatibilityError  # noqa: E402
    from tfcompress.core.extras import MissingExtraError  # noqa: E402
    from tfcompress.core.loading import ModelLoadError, load_model  # noqa: E402
    # Pruning
    from tfcompress import pruning  # noqa: E402
    from tfcompress.pruning import (  # noqa: E402
        ChannelPruningCallback, ChannelPruningError, ConstantSparsity, PolynomialDecay, Pruner, PruningCallback,
        PruningSchedule, SparsityReport, prune_channels, shrink, sparsity_report,
    )
    # Clustering, low-rank factorization
    from tfcompress import clustering  # noqa: E402
    from tfcompress.clustering import ClusteringCallback, cluster_weights  # noqa: E402
    from tfcompress.lowrank import factorize  # noqa: E402
    # Distillation
    from tfcompress.distillation import Distiller  # noqa: E402
    # Quantization-aware training (QAT); per-layer int8 sensitivity and the accuracy budget
    from tfcompress import quantization  # noqa: E402
    from tfcompress.quantization import QATConfig, quantize_model  # noqa: E402
    from tfcompress.export.parity_callback import TFLiteParityCallback  # noqa: E402
    from tfcompress.export.sensitivity import AccuracyBudgetError, quantization_sensitivity  # noqa: E402
    from tfcompress.export.firmware import export_c_array  # noqa: E402
    # Training utilities, files
    from tfcompress.core.backup import BackupAndRestore  # noqa: E402
    from tfcompress.core.files import OutputExistsError, write_atomic  # noqa: E402
    from tfcompress import callbacks  # noqa: E402
    import tensorflow as _tf  # noqa: E402

    # TensorFlow's CUDA probe prints its verdict on the first device query; make that happen here.
    _tf.config.list_physical_devices("GPU")
# Recipes: one verb for a whole chain
from tfcompress.pipeline.recipe import (  # noqa: E402
    Cluster, CompressionResult, Convert, Distill, Factorize, FineTune, Prune, PruneChannels, QuantizationAwareTraining,
    compress,
)
from tfcompress.pipeline.auto import AutoCompressionResult, auto_compress  # noqa: E402

__all__ = [
    # conversion (PTQ = to_tflite's int8 / int16x8 / dynamic / float16 modes), its guardrails
    "to_tflite", "ConvertedModel", "ConversionError", "QuantizationAuditError", "RepresentativeDataError",
    "quantization_sensitivity", "AccuracyBudgetError",
    "inspect_tflite", "InvalidTFLiteFileError",
    # evaluation
    "evaluate_tflite", "evaluate_many", "compare", "EvaluationReport", "export_c_array", "machine",
    "micro", "MicroCompatibilityError", "MissingExtraError",
    "to_onnx", "evaluate_onnx", "ONNXModel", "ONNXExportError",
    "delegation", "op_profile", "peak_memory", "Delegation", "OpProfile",
    # pruning
    "PruningCallback", "Pruner", "PolynomialDecay", "ConstantSparsity", "PruningSchedule", "sparsity_report",
    "SparsityReport", "ChannelPruningCallback", "prune_channels", "shrink", "ChannelPruningError",
    # clustering
    "ClusteringCallback", "cluster_weights", "clustering", "factorize",
    # distillation
    "Distiller",
    # quantization-aware training (QAT)
    "quantize_model", "QATConfig", "TFLiteParityCallback", "quantization",
    # recipes
    "compress", "CompressionResult", "auto_compress", "AutoCompressionResult", "Prune", "PruneChannels", "Cluster", "Factorize", "Distill", "QuantizationAwareTraining", "FineTune", "Convert",
    # callbacks, files, data, models
    "load_model", "ModelLoadError", "callbacks", "BackupAndRestore", "write_atomic", "OutputExistsError", "datasets", "zoo",
    # the other documented namespaces
    "evaluate", "reports", "tflite_file", "representative", "files", "graph", "pruning",
]

# Old names (QuantizationConfig, QuantizeAware, tfc.quantization.quantization_sensitivity, ...) and old module
# paths (tfcompress.convert, tfcompress.evaluate, ...) still work for one release, with a DeprecationWarning.
from tfcompress import deprecated as _deprecated  # noqa: E402

_deprecated.install()
