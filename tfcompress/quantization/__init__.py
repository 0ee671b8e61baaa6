"""Quantization-aware training (QAT) for Keras 3 models, converting to fully int8 TFLite.

    >>> qat = tfc.quantize_model(model)          # fake-quantized copy, BN folded
    >>> qat.compile(...); qat.fit(x, y, epochs=2)
    >>> b = tfc.to_tflite(qat, mode="int8", representative_data=x[:100])
"""

from tfcompress.quantization.config import QuantizationConfig
from tfcompress.quantization.fake_quant import ActivationQuantizer, fake_quant_weights
from tfcompress.quantization.quantize import FreezeQuantization, QuantizationReport, calibrate, freeze, quantize_model
from tfcompress.quantization.registry import REGISTRY, QuantizeSpec
from tfcompress.quantization.parity_callback import TFLiteParityCallback
