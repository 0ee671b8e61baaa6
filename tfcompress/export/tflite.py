"""`to_tflite`: a Keras 3 model to a ``.tflite`` in any post-training mode, optionally within an accuracy budget.

    >>> b = tfc.to_tflite(model, mode="int8", representative_data=x_train[:200], output_path="model_int8.tflite")

One conversion is `converter.convert`; with ``max_accuracy_drop`` the verb searches the fewest layers kept
float (`sensitivity.convert_within_budget`), whose conversions go through `converter` too. The names users
of the verb need (its errors, modes and result type) are importable from here.
"""

import dataclasses

from tfcompress.evaluation.tflite_file import ConvertedModel
from tfcompress.export import converter, sensitivity
from tfcompress.export.converter import (
    CALIBRATIONS,
    DEFAULT_MAX_CALIBRATION_SAMPLES,
    DEFAULT_TIMEOUT_S,
    MIN_AGREEMENT,
    MODES,
    ConversionConfig,
    ConversionError,
    QuantizationAuditError,
)

__all__ = ["to_tflite", "ConvertedModel", "ConversionConfig", "ConversionError", "QuantizationAuditError", "MODES", "CALIBRATIONS",
           "DEFAULT_MAX_CALIBRATION_SAMPLES", "DEFAULT_TIMEOUT_S", "MIN_AGREEMENT"]


def to_tflite(model, mode="float32", representative_data=None, output_path=None, overwrite=False, io_type="float32",
              sparse=False, keep_float=None, strict=False, input_shape=None,
              max_calibration_samples=DEFAULT_MAX_CALIBRATION_SAMPLES, check_float_outputs=True, isolate=False,
              timeout=DEFAULT_TIMEOUT_S, calibration=None, max_accuracy_drop=None, validation_data=None, verify=None):
    """Converts a Keras 3 model to a TFLite flatbuffer.

    Args:
        model: a built ``keras.Model`` (Sequential, Functional or subclassed). A
            ``tfcompress.Distiller`` exports its student.
        mode: ``"float32"``; ``"float16"`` (float16 weights); ``"dynamic"`` (int8
            weights, float activations); ``"int8"`` (full integer: int8 weights and
            activations, int8 ops only); ``"int16x8"`` (int16 activations, int8 weights).
        representative_data: calibration inputs, required for ``"int8"`` and
            ``"int16x8"``; optional for a QAT model from `quantize_model` in
            ``"int8"``, whose ranges were trained (given, it only ranges the
            insides of composite layers, and is not used at all when the QAT
            model keeps weighted layers float): a numpy array, a ``tf.data.Dataset`` (``(x, y)``
            elements are fine), a generator (function), or a dict keyed by input
            name for multi-input models. A missing batch dimension is added.
            About 100-500 typical samples are enough.
        output_path: if given, the file is written there atomically.
        overwrite: allow replacing an existing ``output_path``.
        io_type: input/output tensor type: ``"float32"`` (default; the model
            quantizes internally), ``"int8"``/``"uint8"`` for ``"int8"``, ``"int16"``
            for ``"int16x8"``.
        sparse: store weights with the converter's sparse encoding
            (``Optimize.EXPERIMENTAL_SPARSITY``); pays off for pruned models.
        keep_float: Keras layer names whose ops stay in float in an ``"int8"``
            model (selective quantization, e.g. a sensitive first or last layer).
        strict: for ``"int8"``, raise if any compute op is still float.
        input_shape: input shape without the batch dimension, for subclassed
            models whose shape cannot be inferred.
        max_calibration_samples: calibrate on at most this many samples.
        check_float_outputs: before calibrating, run the float model on the
            samples and fail if any produces NaN/Inf.
        isolate: run the TFLite converter in a subprocess, so that a converter
            abort or segfault becomes a `ConversionError` instead of killing the
            caller (the CLI does this by default).
        timeout: with ``isolate``, seconds before the converter is stopped.
        calibration: for ``"int8"``, how activation ranges are chosen from
            ``representative_data``: None (the converter's own min-max),
            ``"minmax"``, ``"percentile"`` (0.1th and 99.9th percentiles: outliers
            clipped) or ``"mse"`` (the clipping with the least int8 error). The
            latter three set the ranges on the model's fake-quant twin
            (`quantize_model` + `quantization.calibrate`) and convert that.
        max_accuracy_drop: for ``"int8"``, the accuracy points the file may lose
            against the Keras model on ``validation_data``: the fewest layers are
            kept float (most sensitive first), then ``int16x8`` is tried; the
            result's ``.budget`` says what was chosen (see
            `sensitivity.convert_within_budget`).
        validation_data: ``(x, y)`` held-out data for ``max_accuracy_drop``.
        verify: inputs (an array, or ``(x,)``) on which the file's top-1
            predictions are compared with the Keras model's; below
            ``MIN_AGREEMENT`` a warning names the agreement and points to
            `tfc.quantization_sensitivity`. The agreement is in ``.agreement``.

    Returns:
        A `ConvertedModel`: the ``.tflite`` bytes, with ``.info`` (op census and
        weight sparsity) and ``.mode``.

    Raises:
        TypeError / ValueError: a bad model or argument; the message says which.
        recurrent.UnsupportedRecurrentLayerError: (a ValueError) an RNN layer the file cannot
            reproduce: ``stateful=True``; in ``"int8"``/``"int16x8"``, a sequence longer than
            ``recurrent.MAX_UNROLL_STEPS`` or of variable length, or masked sequences. Models with
            LSTM, GRU, SimpleRNN or Bidirectional layers are converted with the batch fixed at 1
            (see `tfcompress.export.recurrent`).
        representative.RepresentativeDataError: unusable calibration data.
        ConversionError: the converter failed; names the mode, the model and the
            converter's own reason.
        QuantizationAuditError: ``strict=True`` and float compute ops remain.
        tfcompress.OutputExistsError: ``output_path`` exists and ``overwrite`` is False.

    Example:
        >>> b = to_tflite(model, mode="int8", representative_data=x_train[:200],
        ...               output_path="model_int8.tflite")
        >>> b.info.op_census_by_dtype
    """
    config = converter.ConversionConfig(
        mode=mode, output_path=output_path, overwrite=overwrite, io_type=io_type, sparse=sparse, keep_float=keep_float,
        strict=strict, input_shape=input_shape, max_calibration_samples=max_calibration_samples,
        check_float_outputs=check_float_outputs, isolate=isolate, timeout=timeout, calibration=calibration)
    if max_accuracy_drop is None and validation_data is None:
        return converter.convert(model, representative_data, config, verify=verify)
    model = converter.check_request(model, config)
    if mode != "int8" or max_accuracy_drop is None or validation_data is None or config.keep_float:
        raise ValueError(
            "max_accuracy_drop and validation_data go together, with mode='int8' and without keep_float (the "
            "budget chooses the float layers): e.g. to_tflite(model, mode='int8', representative_data=x_train[:200], "
            "max_accuracy_drop=0.5, validation_data=(x_val, y_val)).")
    # The budget's tries neither audit nor write: the file it chooses is, below.
    tries = dataclasses.replace(config, strict=False, output_path=None, overwrite=False)
    result = sensitivity.convert_within_budget(model, representative_data, validation_data, max_accuracy_drop,
                                               config=tries)
    return converter.finish(result, model, config, verify)
