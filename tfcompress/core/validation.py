"""The one validation path for data given to a model: inputs (calibration data, evaluation data) and labels.

`core.representative` (calibration data for the converter and QAT's calibrated start) and `evaluation.litert` (inputs of a
``.tflite`` file) both check user arrays against a model input through these
functions, so a wrong shape, dtype, NaN or label reads the same everywhere and
always names the argument, the input, the sample and the fix.
"""

import numpy as np


def format_shape(shape):
    """``(None, 8, 8, 1)``-style text for a shape with ``None`` (or negative) for unknown dimensions."""
    dims = ["None" if d is None or (isinstance(d, (int, np.integer)) and d < 0) else str(int(d)) for d in shape]
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


def shape_hint(got, expected):
    """A likely cause of a per-sample shape mismatch (channels-first data, a missing channel axis), or ""."""
    fixed = [d for d in expected if d is not None and d >= 0]
    if len(got) == 3 and len(fixed) == 3 and sorted(got) == sorted(fixed) and tuple(got) != tuple(expected):
        return " It looks like channels-first (NCHW) data; the model is channels-last: np.transpose(x, (0, 2, 3, 1))."
    if (len(expected) == len(got) + 1 and expected[-1] == 1
            and all(e is None or e < 0 or e == g for e, g in zip(expected, got))):
        return " The channel axis is missing: add it with x[..., np.newaxis]."
    return ""


def as_numeric_array(value, where, input_name, dtype, error=ValueError):
    """``value`` as a numpy array of numbers; ``error`` naming ``where`` and the input otherwise."""
    try:
        array = np.asarray(value)
    except Exception as exc:  # noqa: BLE001 - np.asarray raises many kinds on ragged or odd objects
        raise error(f"{where} for model input {input_name!r} could not be turned into an array ({exc}). "
                    "Pass a numeric numpy array.") from None
    if array.dtype == object or array.dtype.kind not in "biuf":
        raise error(
            f"{where} for model input {input_name!r} has dtype {array.dtype}, which cannot be cast to {dtype}. "
            "Pass numeric arrays: float data as for the Keras model (e.g. images scaled to float32).")
    return array


def check_batch(array, shape, where, input_name, fix, error=ValueError):
    """Checks an array against a model input of ``shape`` (batch first, ``None``/-1 for free dimensions).

    One sample without its batch dimension gets one. Returns the batched array.

    Args:
        fix: the advice that ends a shape error (what to pass instead).
    """
    shape = tuple(None if d is None or d < 0 else int(d) for d in shape)
    expected = shape[1:]
    if array.ndim == len(shape) - 1 and all(e is None or e == g for e, g in zip(expected, array.shape)):
        array = array[np.newaxis]  # one unbatched sample
    got = tuple(array.shape[1:])
    if array.ndim != len(shape) or any(e is not None and e != g for e, g in zip(expected, got)):
        samples = f" (samples of shape {format_shape(got)})" if array.ndim >= 1 else ""
        raise error(
            f"{where} has shape {tuple(array.shape)}{samples}, but model input {input_name!r} takes samples of shape "
            f"{format_shape(expected)} (input shape {format_shape(shape)}).{shape_hint(got, expected)} {fix}")
    return array


def check_finite(array, where, input_name, consequence, error=ValueError):
    """Raises ``error`` naming the first sample of ``array`` holding NaN or Inf."""
    if array.dtype.kind != "f" or not len(array):
        return
    rows = array.reshape(len(array), -1)
    finite = np.isfinite(rows).all(axis=1)
    if finite.all():
        return
    bad = int(np.argmin(finite))
    what = "NaN" if np.isnan(rows[bad]).any() else "Inf"
    count = int((~finite).sum())
    raise error(
        f"{where}: sample {bad} of model input {input_name!r} contains {what} ({count} sample(s) hold NaN or Inf). "
        f"Remove or repair them; {consequence}.")


def check_labels(y, num_classes, num_samples=None, argument="y"):
    """Integer class indices (or one-hot rows) → an int64 vector, or a ValueError naming the bad label.

    Args:
        y: labels: integers, integral floats, or one-hot rows.
        num_classes: the model's number of outputs; labels must be in ``[0, num_classes)``.
        num_samples: if given, the number of samples the labels must match.
        argument: the name used in messages (``"y"``, ``"data: y_train"``...).
    """
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] > 1:
        y = y.argmax(axis=1)
    y = y.reshape(-1)
    if num_samples is not None and len(y) != num_samples:
        raise ValueError(f"{argument} has {len(y)} labels but x has {num_samples} samples; pass one label per "
                         "sample of x.")
    if y.dtype.kind not in "biuf" or (y.dtype.kind == "f" and not np.all(np.mod(y, 1) == 0)):
        raise ValueError(f"{argument} must hold integer class indices (or one-hot rows), got dtype {y.dtype} with "
                         f"values like {y[:3].tolist()}.")
    y = y.astype(np.int64)
    bad = np.flatnonzero((y < 0) | (y >= num_classes))
    if bad.size:
        raise ValueError(
            f"{argument}[{bad[0]}] = {y[bad[0]]} is not a class index of this model, which has {num_classes} "
            f"outputs (valid: 0..{num_classes - 1}); {bad.size} label(s) are out of range. Check the label encoding.")
    return y
