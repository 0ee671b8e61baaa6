"""tfcompress: Keras-3-native pruning, distillation and quantization for TFLite / LiteRT.

Example:
    >>> import tfcompress as tfc
    >>> (x, y), (x_test, y_test) = tfc.datasets.fashion_mnist()
    >>> model = tfc.zoo.reference_cnn()
    >>> b = tfc.to_tflite(model, mode="int8", representative_data=x[:200])
    >>> print(tfc.evaluate_tflite(b, x=x_test, y=y_test).to_markdown())
"""

import os as _os

# TensorFlow's C++ INFO lines drown the progress output users care about.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"

from tfcompress import datasets, zoo  # noqa: E402
from tfcompress.files import OutputExistsError, write_atomic  # noqa: E402
from tfcompress.convert import ConversionError, ConvertedModel, QuantizationAuditError, to_tflite  # noqa: E402
from tfcompress.representative import RepresentativeDataError  # noqa: E402
from tfcompress.tflite_file import InvalidTFLiteFileError, inspect as inspect_tflite  # noqa: E402
from tfcompress.evaluate import EvaluationReport, compare, evaluate_many, evaluate_tflite  # noqa: E402
from tfcompress.backup import BackupAndRestore  # noqa: E402
from tfcompress.distill import Distiller  # noqa: E402
from tfcompress.pruning import (  # noqa: E402
    ConstantSparsity, PolynomialDecay, Pruner, PruningCallback, SparsityReport, sparsity_report,
)
from tfcompress import quantization  # noqa: E402
from tfcompress.quantization import QuantizationConfig, TFLiteParityCallback, quantize_model  # noqa: E402
from tfcompress.recipe import CompressionResult, Convert, Distill, Prune, QuantizeAware, compress  # noqa: E402
