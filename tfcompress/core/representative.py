"""Validates and normalises calibration ("representative") data before the converter sees it.

The TFLite converter's own errors for bad calibration data are cryptic ("TRANSPOSE
failed to prepare (4 != 3)", "Model resulted in Nan value during calibration") or
absent (silently poor int8 models). Everything is checked here first and each
failure names the input, the sample and the fix.
"""

import collections.abc
import dataclasses
import itertools
import re

import numpy as np

from tfcompress.core import validation

# Post-training int8 calibrates on at most this many samples (`to_tflite`'s ``max_calibration_samples``), and
# so does `quantize_model`'s calibrated start: the same data gives the same ranges.
DEFAULT_MAX_CALIBRATION_SAMPLES = 500


class RepresentativeDataError(ValueError):
    """Calibration data that cannot calibrate this model."""


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """One model input: its name, shape with ``None`` for the batch, and dtype."""

    name: str
    shape: tuple
    dtype: str = "float32"

    @property
    def rank(self):
        return len(self.shape)


ARG = "representative_data"


def input_name(tensor, index):
    """The name an input has in the exported signature (and as a key of calibration dicts)."""
    name = getattr(tensor, "name", None) or f"input_{index}"
    name = re.sub(r"[^A-Za-z0-9_]", "_", name.split(":")[0])
    return name if re.match(r"[A-Za-z]", name) else f"input_{index}"


def functional_input_specs(model):
    """The inputs of a Functional or Sequential model as `InputSpec`s."""
    return [
        InputSpec(name=input_name(t, i), shape=(None,) + tuple(t.shape[1:]), dtype=str(getattr(t.dtype, "name", t.dtype)))
        for i, t in enumerate(model.inputs)
    ]


def stacked(samples):
    """`prepare`'s per-sample list as one array per input (a list), in the specs' order."""
    return [np.concatenate([sample[i] for sample in samples]) for i in range(len(samples[0]))]


def _describe(value):
    if isinstance(value, np.ndarray):
        return f"array of shape {value.shape} and dtype {value.dtype}"
    return type(value).__name__


def _samples_from_array(array, spec, where, fix=None):
    """Checks one input's array and splits it into samples with a batch dimension of 1.

    ``fix`` replaces the generic advice of a shape error.
    """
    where = f"{ARG} ({where})"
    fix = fix or (f"Pass calibration data of shape (num_samples,) + {format_shape(spec.shape[1:])}: resize or "
                  "reshape it, preprocessed as for training.")
    array = validation.check_batch(array, spec.shape, where, spec.name, fix, RepresentativeDataError)
    return [array[i: i + 1] for i in range(array.shape[0])]


format_shape = validation.format_shape


def _split_element(element, specs, where):
    """Maps one yielded element to ``{input name: array}``."""
    names = [s.name for s in specs]
    if isinstance(element, collections.abc.Mapping):
        unknown = sorted(set(element) - set(names))
        missing = [n for n in names if n not in element]
        if unknown or missing:
            raise RepresentativeDataError(
                f"{ARG}: {where} is a dict with keys {sorted(element)}, but the model's inputs are "
                f"{names}." + (f" Unknown: {unknown}." if unknown else "") + (f" Missing: {missing}." if missing else "")
                + " Key the dict by the model's input names."
            )
        return {n: element[n] for n in names}
    if isinstance(element, (list, tuple)):
        if len(specs) == 1:
            # (x, y) pairs from a training dataset, or TFLite's own convention of yielding [x].
            if len(element) in (1, 2) and not _looks_like_stacked_samples(element, specs[0]):
                return {names[0]: element[0]}
            return {names[0]: element}
        if len(element) == len(specs) + 1 and not isinstance(element[0], (np.ndarray, list)):
            element = element[: len(specs)]
        if len(element) == 2 and isinstance(element[0], (list, tuple, collections.abc.Mapping)):
            return _split_element(element[0], specs, where)  # ((x1, x2), y)
        if len(element) != len(specs):
            raise RepresentativeDataError(
                f"{ARG}: {where} holds {len(element)} arrays, but the model has {len(specs)} inputs "
                f"{names}. Pass a dict keyed by input name to avoid order mistakes."
            )
        return dict(zip(names, element))
    if len(specs) > 1:
        raise RepresentativeDataError(
            f"{ARG}: {where} is a single {_describe(element)}, but the model has {len(specs)} inputs "
            f"{names}. Pass a dict keyed by input name (or a list in that order)."
        )
    return {names[0]: element}


def _order_hint(array, spec, specs, element):
    """For arrays given by position to a multi-input model: a shape that fits another input suggests a swap."""
    if len(specs) < 2 or isinstance(element, collections.abc.Mapping):
        return None
    for other in specs:
        if other is not spec and other.rank == array.ndim and all(
                want is None or want == have for want, have in zip(other.shape[1:], array.shape[1:])):
            return (f"It fits input {other.name!r}: the arrays may be in the wrong order (the model's order is "
                    f"{[s.name for s in specs]}); pass a dict keyed by input name.")
    return None


def _looks_like_stacked_samples(element, spec):
    """A list of per-sample arrays (all of the sample shape), rather than an (x, y) pair."""
    try:
        shapes = {np.shape(e) for e in element}
    except Exception:
        return False
    return len(shapes) == 1 and len(next(iter(shapes))) == spec.rank - 1 and len(element) > 2


def _iter_elements(data, specs):
    """Yields (element, description) from any supported container."""
    import tensorflow as tf

    if isinstance(data, tf.data.Dataset):
        for i, element in enumerate(data.as_numpy_iterator()):
            yield element, f"dataset element {i}"
        return
    if isinstance(data, collections.abc.Mapping):
        yield data, "the dict"
        return
    if isinstance(data, np.ndarray) or hasattr(data, "__array__"):
        yield np.asarray(data), "the array"
        return
    if callable(data) and not isinstance(data, (list, tuple)):
        try:
            data = data()
        except TypeError as exc:
            raise RepresentativeDataError(
                f"{ARG}: calling the given function failed ({exc}). Pass a generator function that "
                "takes no arguments, a generator, an array, a dict or a tf.data.Dataset."
            ) from None
    if isinstance(data, (list, tuple)):
        if len(specs) > 1 and all(hasattr(a, "shape") for a in data):
            yield tuple(data), "the list of per-input arrays"
            return
        if len(specs) == 1:
            yield data, "the list"
            return
    if isinstance(data, collections.abc.Iterable):
        for i, element in enumerate(data):
            yield element, f"element {i} of the generator"
        return
    raise RepresentativeDataError(
        f"{ARG} has unsupported type {type(data).__name__}. Pass a numpy array, a tf.data.Dataset, "
        "a generator (or generator function), or a dict of arrays keyed by input name."
    )


def prepare(data, specs, max_samples=None):
    """Validates calibration data and returns it as a list of samples.

    Args:
        data: a numpy array, a ``tf.data.Dataset`` (elements may be ``(x, y)``),
            a generator or generator function, a list of per-input arrays, or a
            dict keyed by input name (multi-input models).
        specs: the model's inputs as a list of `InputSpec`.
        max_samples: stop after this many samples (None: use all).

    Returns:
        A list of samples; each sample is a list with one array per input, in
        ``specs`` order, with a leading batch dimension of 1 and the input's dtype.

    Raises:
        RepresentativeDataError: empty data, wrong structure, rank, shape or
            dtype, or non-finite values; the message names input and sample.
    """
    if data is None:
        raise RepresentativeDataError(f"{ARG} is required for this conversion mode but None was given.")
    per_input = {s.name: [] for s in specs}
    count = 0
    for element, where in _iter_elements(data, specs):
        parts = _split_element(element, specs, where)
        counts = set()
        for spec in specs:
            array = validation.as_numeric_array(parts[spec.name], f"{ARG} ({where})", spec.name, spec.dtype,
                                                RepresentativeDataError)
            samples = _samples_from_array(array, spec, where, fix=_order_hint(array, spec, specs, element))
            per_input[spec.name].extend(samples)
            counts.add(len(samples))
        if len(counts) > 1:
            raise RepresentativeDataError(
                f"{ARG}: {where} has different sample counts per input "
                f"({dict((s.name, len(per_input[s.name])) for s in specs)}); every input needs one entry per sample."
            )
        count = len(per_input[specs[0].name])
        if max_samples is not None and count >= max_samples:
            break
    if count == 0:
        raise RepresentativeDataError(
            f"{ARG} is empty: it produced no samples. Pass a few hundred typical inputs "
            "(e.g. x_train[:200])."
        )
    if max_samples is not None:
        count = min(count, max_samples)
    inputs = []
    for spec in specs:
        original = np.concatenate(per_input[spec.name][:count])
        validation.check_finite(original, ARG, spec.name, "calibration ranges would be meaningless",
                                RepresentativeDataError)
        with np.errstate(over="ignore", invalid="ignore"):
            array = original.astype(spec.dtype, copy=False)
        # Checked after the cast too: float64 values beyond the float32 range only become Inf here.
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise RepresentativeDataError(_overflow_message(original, array, spec))
        inputs.append(array)
    return [[a[i: i + 1] for a in inputs] for i in range(count)]


def _overflow_message(original, array, spec):
    index = int(np.argmin(np.isfinite(array.reshape(len(array), -1)).all(axis=1)))
    limit = float(np.finfo(array.dtype).max)
    peak = float(np.max(np.abs(original[index].astype(np.float64))))
    return (
        f"{ARG}: sample {index} of model input {spec.name!r} holds values up to {peak:.3g}, beyond the "
        f"{array.dtype} range (±{limit:.3g}) of the model input, so they would become Inf. Scale the data "
        "as for training (e.g. divide pixel values by 255) or remove that sample."
    )


def check_model_outputs(model, samples, specs, batch_size=64):
    """Runs the float Keras model on the samples.

    Fails naming the first sample whose output holds NaN/Inf, or the first sample the model
    cannot run at all (its own exception, condensed to one line, instead of a Keras traceback).
    """
    for start in range(0, len(samples), batch_size):
        chunk = samples[start: start + batch_size]
        try:
            inputs = [np.concatenate([s[i] for s in chunk]) for i in range(len(specs))]
            finite = _finite_rows(_call_model(model, inputs), len(chunk))
        except (KeyboardInterrupt, MemoryError):
            raise
        except Exception:
            # Find the culprit: run the samples of this chunk one by one.
            finite = np.ones(len(chunk), dtype=bool)
            for offset, sample in enumerate(chunk):
                try:
                    outputs = _call_model(model, sample)
                except (KeyboardInterrupt, MemoryError):
                    raise
                except Exception as exc:
                    message = _model_failed_message(model, sample, specs, start + offset, exc)
                    raise RepresentativeDataError(message) from None
                finite[offset] = _finite_rows(outputs, 1)[0]
        if not finite.all():
            index = start + int(np.argmin(finite))
            raise RepresentativeDataError(
                f"{ARG}: the float model outputs NaN/Inf on sample {index}. Calibration would fail or "
                "produce a broken int8 model. Check that sample's preprocessing (scale, dtype) and "
                "the model's weights (train with a lower learning rate if they diverged)."
            )


def _call_model(model, inputs):
    return model(inputs[0] if len(inputs) == 1 else list(inputs), training=False)


def _finite_rows(outputs, rows):
    finite = np.ones(rows, dtype=bool)
    for out in (np.asarray(o) for o in _flatten(outputs)):
        if out.dtype.kind == "f":
            finite &= np.isfinite(out.reshape(rows, -1)).all(axis=1)
    return finite


def _one_line(exc):
    """The gist of an exception (Keras wraps layer errors in ANSI codes, headers and argument dumps)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line and not line.startswith(("Exception encountered when calling",
                                                                       "Arguments received by", "•", "Traceback"))]
    gist = " ".join(lines) or type(exc).__name__
    return f"{type(exc).__name__}: {gist[:400]}"


def _model_failed_message(model, sample, specs, index, exc):
    shapes = ", ".join(f"{spec.name!r} {format_shape(a.shape[1:])}" for spec, a in zip(specs, sample))
    return (
        f"{ARG}: model {getattr(model, 'name', type(model).__name__)!r} raised on sample {index} "
        f"(per-sample shape {shapes}): {_one_line(exc)}. The float model must run on its calibration data: "
        "pass data of the shape and preprocessing the model was built and trained for (for a subclassed "
        "model, and an input_shape it accepts), or fix the model's call()."
    )


def _flatten(structure):
    if isinstance(structure, collections.abc.Mapping):
        return list(itertools.chain.from_iterable(_flatten(v) for v in structure.values()))
    if isinstance(structure, (list, tuple)):
        return list(itertools.chain.from_iterable(_flatten(v) for v in structure))
    return [structure]
