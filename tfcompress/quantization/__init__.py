"""Quantization-aware training (QAT) for Keras 3 models, converting to fully int8 TFLite.

    >>> qat = tfc.quantize_model(model)          # fake-quantized copy, BN folded
    >>> tfc.zoo.compile_classifier(qat, learning_rate=1e-4)
    >>> qat.fit(x, y, epochs=2, callbacks=[tfc.TFLiteParityCallback(1, x_val, y_val)])
    >>> b = tfc.to_tflite(qat, mode="int8")     # ranges were trained: no calibration

What the QAT model is: a plain Functional ``keras.Model`` whose Conv/Dense layers
are ``Quantized*`` subclasses of the Keras layers (same names, same weights,
plus folded BN statistics) and whose activations pass through
`ActivationQuantizer` layers named ``<layer>_quant``. Both use
``keras.quantizers.fake_quant_with_min_max_vars``, which on the TensorFlow
backend is TF's FakeQuant op; the TFLite converter turns it into int8 kernels
with exactly the trained ranges, so ``to_tflite`` never re-calibrates them. The classes are registered under the ``tfcompress``
package: ``keras.models.load_model("qat.keras")`` works after ``import tfcompress``,
without ``custom_objects``.

What works:

* Sequential and Functional models, including Keras applications
  (MobileNetV2, EfficientNetB0) and nested Sequential/Functional sub-models
  (quantized in place; BN folds only within one sub-model).
* Subclassed models do not: their graph is Python code. Quantize the
  Functional/Sequential models they call, or rebuild them functionally.
* Layers (see ``registry.REGISTRY``): Conv1D/2D, DepthwiseConv1D/2D,
  SeparableConv1D/2D, Conv2DTranspose, Dense (kernels quantized; per-channel
  for 2D convolutions, per-tensor for Dense, 1D convolutions and
  Conv2DTranspose because the converter rejects per-channel ranges through
  their kernel transposes/reshapes), BatchNormalization (folded after those,
  else MUL+ADD), ReLU/ReLU6/LeakyReLU/PReLU/Softmax/Activation, Add,
  Subtract, Multiply, Average, Maximum, Minimum, Concatenate, Rescaling,
  Normalization, pooling, Reshape/Flatten/Permute, Dropout, ZeroPadding,
  Cropping, UpSampling.
* Anything else (custom layers, Lambda, RNNs, Conv3D, ELU, channels_first,
  Keras-quantized layers, and ``keep_float`` names) stays float and is listed
  with the reason in ``qat_model.quantization_report`` (plus a warning). A
  weightless float layer gets an int8 range on its output, so the next op
  reads int8; a float layer with weights (and an activation fused into it)
  gets none, because the converter would quantize it anyway: it runs float
  in the ``.tflite`` too, and so does the op that reads its output (the
  converter has no range to quantize that op's input with).
* Pruned models: exact zeros in kernels are masked, so they survive QAT, BN
  folding and int8 conversion.

This package is QAT only (model → model). What converts and measures lives in `tfcompress.export`:
`tfc.TFLiteParityCallback` (`export.parity_callback`), `tfc.quantization_sensitivity` and the
accuracy budget (`export.sensitivity`); their old names here still work for one release
(`tfcompress.deprecated`).
"""

from tfcompress.quantization.config import QATConfig
from tfcompress.quantization.fake_quant import ActivationQuantizer, fake_quant_weights
from tfcompress.quantization.quantize import (
    FreezeQuantization,
    QuantizationReport,
    calibrate,
    freeze,
    quantization_report,
    quantize_model,
)
from tfcompress.quantization.registry import REGISTRY, QuantizeSpec

__all__ = [
    "QATConfig", "quantize_model", "calibrate", "freeze", "FreezeQuantization", "QuantizationReport",
    "quantization_report", "ActivationQuantizer", "fake_quant_weights", "REGISTRY", "QuantizeSpec",
]
