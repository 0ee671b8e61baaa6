"""Keras 3 → TFLite conversion for every post-training mode, through one tested export path.

This is the machinery of `tfcompress.to_tflite` (`tfcompress.export.tflite`): argument checks, the
SavedModel export, the converter's configuration, calibration choices, the child-process converter,
the strict int8 audit and the agreement check. `convert` is one conversion without an accuracy budget.

Every model kind (Sequential, Functional, subclassed) is exported the same way: a
``keras.export.ExportArchive`` endpoint that calls the model with ``training=False``
(so BatchNormalization and Dropout run in inference mode), written as a SavedModel
and converted with ``tf.lite.TFLiteConverter.from_saved_model``.
"""

import contextlib
import dataclasses
import errno
import os
import re
import shutil
import tempfile
import warnings

import numpy as np

from tfcompress.core import graph, isolation, native_stderr
from tfcompress.core.files import check_writable, make_temp_dir, write_atomic
from tfcompress.evaluation import litert, tflite_file
from tfcompress.evaluation.tflite_file import ConvertedModel
from tfcompress.core import representative
from tfcompress.export import recurrent
from tfcompress.quantization import fake_quant, quantize, registry

MODES = ("float32", "float16", "dynamic", "int8", "int16x8")
IO_TYPES = {
    "float32": ("float32",),
    "float16": ("float32",),
    "dynamic": ("float32",),
    "int8": ("float32", "int8", "uint8"),
    "int16x8": ("float32", "int16"),
}
DEFAULT_MAX_CALIBRATION_SAMPLES = representative.DEFAULT_MAX_CALIBRATION_SAMPLES
DEFAULT_TIMEOUT_S = 600
MIN_AGREEMENT = 0.97
CALIBRATIONS = ("minmax", "percentile", "mse")


class ConversionError(RuntimeError):
    """The TFLite converter could not convert the model; the message names mode and model."""


class QuantizationAuditError(ConversionError):
    """``strict=True`` and the converted model still computes in float where int8 was asked for."""


def exported_model(model):
    """The Keras model ``to_tflite`` exports: ``model`` itself, or a `Distiller`'s student (what ships).

    A mixed-precision model (``mixed_float16`` / ``mixed_bfloat16`` layers) is exported
    as a float32 copy with the same weights: TFLite's builtin kernels have no float16
    or bfloat16 compute (the converter refuses ``tf.Conv2D`` on f16), and its weights
    are float32 variables already.
    """
    import keras

    graph.check_model(model, action="convert")
    student = getattr(model, "student", None)
    if student is not None and getattr(model, "teacher", None) is not None and isinstance(student, keras.Model):
        model = graph.check_model(student, argument="the Distiller's student", action="convert")
    return float32_compute(model)


def _computes_below_float32(layer):
    policy = getattr(layer, "dtype_policy", None)
    return policy is not None and policy.compute_dtype in ("float16", "bfloat16") and policy.variable_dtype == "float32"


def float32_compute(model):
    """``model``, or a float32-compute copy of it (same weights) when any of its layers is mixed precision."""
    import keras

    if not any(_computes_below_float32(layer) for layer in graph.layers_of(model)):
        return model
    if not graph.is_functional(model):
        raise ConversionError(
            f"Model {model.name!r} uses mixed precision and is subclassed, so it cannot be rebuilt in float32 for "
            "TFLite (whose kernels compute in float32, int8 or int16). Build it again under "
            "keras.mixed_precision.set_global_policy('float32'), load the weights (model.load_weights) and convert "
            "that.")

    def in_float32(layer):
        config = layer.get_config()
        if _computes_below_float32(layer):
            config["dtype"] = "float32"
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=in_float32, recursive=True)
    copy.set_weights(model.get_weights())
    return copy


def input_specs(model, samples_hint=None, input_shape=None):
    """The model's inputs as `representative.InputSpec`s.

    Functional and Sequential models know their inputs. A subclassed model's
    inputs come from ``input_shape`` if given, else from the shapes Keras recorded
    on its first call (representative data only fills dimensions recorded as
    ``None``, and must agree with the rest), else from the representative data.

    Raises:
        representative.RepresentativeDataError: a subclassed model's recorded
            input shape and the representative data's shape disagree.
        ValueError: the input shape of a subclassed model cannot be told.
    """
    inputs = None
    with contextlib.suppress(AttributeError, ValueError):
        inputs = model.inputs
    if inputs:
        return representative.functional_input_specs(model)
    if input_shape is not None:
        shapes = input_shape if isinstance(input_shape[0], (list, tuple)) else [input_shape]
        return [
            representative.InputSpec(name=f"input_{i}", shape=(None,) + tuple(s)) for i, s in enumerate(shapes)
        ]
    hint = _hint_array(samples_hint)
    recorded = _recorded_input_specs(model, required=hint is None)
    if recorded is None:
        return [representative.InputSpec(name="input_0", shape=(None,) + hint.shape[1:])]
    if hint is not None and len(recorded) == 1:
        return [_reconcile_with_data(model, recorded[0], hint)]
    return recorded


def _hint_array(samples_hint):
    """The calibration data as a numeric array when it is one (not a dataset or generator), else None."""
    if samples_hint is None or hasattr(samples_hint, "element_spec") or callable(samples_hint):
        return None
    if not isinstance(samples_hint, (np.ndarray, list, tuple)) and not hasattr(samples_hint, "__array__"):
        return None
    try:
        arr = np.asarray(samples_hint)
    except Exception:
        return None
    return arr if arr.dtype.kind in "biuf" and arr.ndim >= 2 else None


def _reconcile_with_data(model, spec, arr):
    """The recorded spec, with ``None`` dimensions filled from the data; a clear error when they disagree."""
    if arr.ndim == spec.rank:
        per_sample = arr.shape[1:]
    elif arr.ndim == spec.rank - 1:
        per_sample = arr.shape
    else:
        return spec  # a rank mismatch: representative.prepare names it
    recorded = spec.shape[1:]
    if all(r is None or r == d for r, d in zip(recorded, per_sample)):
        filled = tuple(d if r is None else r for r, d in zip(recorded, per_sample))
        return representative.InputSpec(name=spec.name, shape=(None,) + filled, dtype=spec.dtype)
    fmt = representative.format_shape
    raise representative.RepresentativeDataError(
        f"representative_data has per-sample shape {fmt(per_sample)}, but subclassed model {model.name!r} was "
        f"built on inputs of per-sample shape {fmt(recorded)} (its first call), so it is converted for that "
        f"shape. Pass calibration data of shape (num_samples,) + {fmt(recorded)}, preprocessed as for training; "
        f"or, if the model is meant to take {fmt(per_sample)} inputs, pass input_shape={fmt(per_sample)}."
    )


def _recorded_input_specs(model, required=True):
    """The input shapes Keras recorded on a subclassed model's first call; None if unknown and not required."""
    # get_build_config() is public: the shapes build() was called with, which Keras also saves in .keras
    # files (so a loaded subclassed model still knows them).
    config = model.get_build_config() or {}
    structure = config.get("input_shape")
    if structure is None and "shapes_dict" in config:
        structure = list(config["shapes_dict"].values())
    shapes = []

    def collect(item):
        if isinstance(item, (list, tuple)) and all(d is None or isinstance(d, int) for d in item):
            shapes.append((None,) + tuple(item[1:]))
        elif isinstance(item, dict):
            for value in item.values():
                collect(value)
        elif isinstance(item, (list, tuple)):
            for value in item:
                collect(value)
        else:
            raise ValueError(f"unrecognised build config {item!r}")

    try:
        if structure is None:
            raise ValueError("it was never called on data")
        collect(structure)
    except ValueError as exc:
        if not required:
            return None
        raise ValueError(
            f"Cannot tell the input shape of subclassed model {model.name!r} ({exc}). Pass "
            "input_shape=(28, 28, 1) (without the batch dimension) or representative_data."
        ) from None
    dtype = str(getattr(model, "input_dtype", None) or "float32")
    return [representative.InputSpec(name=f"input_{i}", shape=shape, dtype=dtype) for i, shape in enumerate(shapes)]


def _has_float_weighted_layers(model):
    """True when a QAT model keeps weighted layers float (its calibration data is then left unused).

    RNN layers have no fake-quant form, so `quantize_model` leaves them float: they do not count, and
    calibration quantizes them as in a post-training int8 file, unless they were kept float on purpose
    (``keep_float`` of `quantize_model`, read from its report).
    """
    report = getattr(model, "quantization_report", None)
    kept = {name for name, reason in (report.float_layers if report is not None else ()) if reason == "listed in keep_float"}
    rnn = recurrent.recurrent_parts(model, exclude=kept)
    return any(registry.is_float_weighted_layer(layer) for layer in graph.layers_of(model) if id(layer) not in rnn)


def is_qat_model(model):
    """True when the model holds tfcompress fake-quant layers (made by `quantize_model`)."""
    return any(type(layer).__module__.startswith("tfcompress.quantization") for layer in graph.layers_of(model))




def _export_saved_model(model, specs, directory, batch_size=None):
    import keras
    import tensorflow as tf

    # batch_size=1 for RNNs (`recurrent`): their TensorLists and zero initial states need a static batch.
    signature = [tf.TensorSpec((batch_size,) + tuple(s.shape[1:]), s.dtype, name=s.name) for s in specs]

    def serve(*args):
        return model(args[0] if len(args) == 1 else list(args), training=False)

    # Not model.export(format="litert"): it runs this same ExportArchive → SavedModel → from_saved_model
    # pipeline, but keeps the converter and the SavedModel to itself (keep_float needs the converter for
    # the QuantizationDebugger; isolate=True converts the SavedModel folder in a child process) and
    # enables SELECT_TF_OPS, whose Flex ops LiteRT's interpreter cannot run.
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", serve, input_signature=signature)
    with quiet_tensorflow_logs():
        archive.write_out(directory, verbose=False)


@contextlib.contextmanager
def quiet_tensorflow_logs():
    """TensorFlow logs each SavedModel write ("Assets written to ...") at INFO; it is our temp folder."""
    import logging

    from absl import logging as absl_logging

    tf_logger = logging.getLogger("tensorflow")
    old_level, old_verbosity = tf_logger.level, absl_logging.get_verbosity()
    tf_logger.setLevel(logging.WARNING)
    absl_logging.set_verbosity(absl_logging.WARNING)
    try:
        yield
    finally:
        tf_logger.setLevel(old_level)
        absl_logging.set_verbosity(old_verbosity)


def converter_message(exc):
    """The converter's reason for a failure in one line: its error lines, without MLIR source locations."""
    text = str(exc)
    lines = [ln.strip() for ln in text.splitlines() if "error:" in ln.lower()]
    picked = []
    for ln in lines:
        ln = re.sub(r"^.*?error:\s*", "", ln, flags=re.IGNORECASE)
        # MLIR prefixes each error with its source location; users need the op and the reason.
        ln = re.sub(r"^loc\(.*\):\s*", "", ln)
        if ln and ln not in picked and not ln.startswith("failed while converting"):
            picked.append(ln)
    if not picked:
        picked = [text.strip().splitlines()[-1] if text.strip() else type(exc).__name__]
    return "; ".join(picked[:3])


def _tf_dtype(name):
    import tensorflow as tf

    return {"float32": tf.float32, "int8": tf.int8, "uint8": tf.uint8, "int16": tf.int16}[name]


def _configure(converter, mode, samples, io_type, sparse):
    import tensorflow as tf

    optimizations = []
    if mode != "float32":
        optimizations.append(tf.lite.Optimize.DEFAULT)
    if sparse:
        optimizations.append(tf.lite.Optimize.EXPERIMENTAL_SPARSITY)
    converter.optimizations = optimizations
    if mode == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if mode == "int8" and samples is None:
        # A QAT model carries its ranges in FakeQuant ops: the converter needs no calibration.
        if io_type != "float32":
            converter.inference_input_type = _tf_dtype(io_type)
            converter.inference_output_type = _tf_dtype(io_type)
        return
    if mode in ("int8", "int16x8"):
        def dataset():
            for sample in samples:
                yield sample
        converter.representative_dataset = dataset
        if mode == "int8":
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        else:
            converter.target_spec.supported_ops = [
                tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
            ]
        if io_type != "float32":
            converter.inference_input_type = _tf_dtype(io_type)
            converter.inference_output_type = _tf_dtype(io_type)


@dataclasses.dataclass(frozen=True)
class ConversionConfig:
    """How one Keras model becomes one ``.tflite``: the options of `tfcompress.to_tflite`, checked once.

    `to_tflite` builds one from its keyword arguments and `convert` takes it; the accuracy budget
    derives its tries from it with ``dataclasses.replace``. The fields mean what the arguments of
    `to_tflite` of the same names mean, with the same defaults. The data (``representative_data``,
    ``verify``, ``validation_data``) is not part of it: a config describes a conversion, not its inputs.

    Args:
        mode: one of `MODES`.
        output_path: where the file is written atomically (a path, held as a str), or None.
        overwrite: allow replacing an existing ``output_path``.
        io_type: the input/output tensor type, one of those ``mode`` allows.
        sparse: store weights with the converter's sparse encoding.
        keep_float: Keras layer names kept float in an ``"int8"`` model: a name, or a sequence of names
            (held as a tuple; an empty one is None).
        strict: for ``"int8"``, raise if any compute op is still float.
        input_shape: input shape without the batch dimension, for subclassed models.
        max_calibration_samples: calibrate on at most this many samples.
        check_float_outputs: fail on NaN/Inf outputs of the float model before calibrating.
        isolate: run the TFLite converter in a child process.
        timeout: with ``isolate``, seconds before the converter is stopped.
        calibration: None, or one of `CALIBRATIONS`.

    Raises:
        ValueError: a mode, io_type, calibration or keep_float that does not fit; the message quotes it.

    Example:
        >>> config = ConversionConfig(mode="int8", io_type="int8", keep_float=["logits"])
        >>> convert(model, x_train[:200], config)
    """

    mode: str = "float32"
    output_path: object = None
    overwrite: bool = False
    io_type: str = "float32"
    sparse: bool = False
    keep_float: object = None
    strict: bool = False
    input_shape: object = None
    max_calibration_samples: int = DEFAULT_MAX_CALIBRATION_SAMPLES
    check_float_outputs: bool = True
    isolate: bool = False
    timeout: float = DEFAULT_TIMEOUT_S
    calibration: object = None

    def __post_init__(self):
        mode, io_type, keep_float = self.mode, self.io_type, self.keep_float
        if mode not in MODES:
            raise ValueError(f"mode={mode!r} is not a conversion mode; choose one of {list(MODES)}.")
        if io_type not in IO_TYPES[mode]:
            raise ValueError(
                f"io_type={io_type!r} is not available for mode={mode!r}; choose one of {list(IO_TYPES[mode])}."
            )
        if keep_float and mode != "int8":
            raise ValueError(f"keep_float is only meaningful with mode='int8' (got mode={mode!r}).")
        if self.calibration is not None and self.calibration not in CALIBRATIONS:
            raise ValueError(f"calibration={self.calibration!r}: choose one of {list(CALIBRATIONS)} (or None for "
                             "the converter's own min-max).")
        if self.calibration is not None and mode != "int8":
            # The calibrated twin always converts to int8: with another mode the file would silently not be
            # the one asked for.
            raise ValueError(f"calibration={self.calibration!r} sets int8 activation ranges; it needs mode='int8' "
                             f"(got mode={mode!r}). Drop calibration= or convert with mode='int8'.")
        # A tuple: the config is frozen, and one spelling (None for "no layer") serves every `if keep_float`.
        try:
            names = (keep_float,) if isinstance(keep_float, str) else tuple(keep_float or ())
        except TypeError:
            raise TypeError(f"keep_float must be a layer name or a list of names, got {keep_float!r}.") from None
        object.__setattr__(self, "keep_float", names or None)
        if self.output_path is not None:
            object.__setattr__(self, "output_path", os.fspath(self.output_path))
        # The switches are only ever tested for truth; plain bools (and a str path) keep `get_config`
        # JSON-serialisable.
        for name in ("overwrite", "sparse", "strict", "check_float_outputs", "isolate"):
            object.__setattr__(self, name, bool(getattr(self, name)))

    def get_config(self):
        """The options as a dict of plain values, JSON-serialisable (the child-process converter reads its job from
        one); `from_config` makes the same config again."""
        config = dataclasses.asdict(self)
        config["keep_float"] = list(self.keep_float) if self.keep_float else None
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def check_request(model, config):
    """The checks every conversion starts with; returns the Keras model to export.

    ``config``'s own options were checked when it was made; these need the model or the file system.
    """
    model = exported_model(model)
    if config.output_path is not None:
        check_writable(config.output_path, config.overwrite)
    if config.keep_float:
        known = graph.layer_names(model)
        unknown = sorted(set(config.keep_float) - known)
        if unknown:
            raise ValueError(
                f"keep_float names unknown layers {unknown}; model {model.name!r} has layers {sorted(known)[:40]}."
            )
    return model


def convert(model, representative_data=None, config=None, verify=None, **options):
    """One conversion: `tfcompress.to_tflite` without an accuracy budget. Arguments, result and errors as there.

    The accuracy budget (`sensitivity.convert_within_budget`) searches over these conversions; it calls
    this function, not the public verb, which calls the budget.

    Args:
        model: the Keras model.
        representative_data: calibration inputs, as for `to_tflite`.
        config: a `ConversionConfig`; None for the defaults.
        verify: inputs on which the file's top-1 agreement with the Keras model is measured, or None.
        **options: `ConversionConfig` fields that replace ``config``'s, e.g. ``mode="int8"``.

    Returns:
        A `ConvertedModel`.

    Example:
        >>> convert(model, x_train[:200], mode="int8", keep_float=["logits"])
    """
    if config is None:
        config = ConversionConfig(**options)
    elif options:
        config = dataclasses.replace(config, **options)
    model = check_request(model, config)
    if config.calibration is not None:
        return _convert_with_calibration(model, representative_data, config, verify)
    mode, keep_float = config.mode, config.keep_float
    needs_calibration = mode in ("int8", "int16x8")
    qat = is_qat_model(model)
    if qat and keep_float:
        raise ValueError(
            f"keep_float={list(keep_float)} cannot apply to QAT model {model.name!r}: its int8 ranges are trained into "
            "it. Pass keep_float to quantize_model instead; the layers it keeps float stay float in the file.")
    # A QAT model's ranges are trained into its FakeQuant ops; calibration only fills the tensors inside
    # composite layers (Average's sum, an unfolded BN's product). It is skipped when the QAT model keeps
    # weighted layers float: the converter would quantize those too, and the file would no longer compute
    # what Keras computes.
    trained_ranges = qat and mode == "int8" and (representative_data is None or _has_float_weighted_layers(model))
    if needs_calibration and representative_data is None and not trained_ranges:
        raise representative.RepresentativeDataError(
            f"representative_data is required for mode={mode!r}: pass ~100-500 typical inputs "
            "(e.g. representative_data=x_train[:200]). For no calibration use mode='dynamic'."
        )
    checked_data = needs_calibration and representative_data is not None
    specs = input_specs(model, representative_data if checked_data else None, config.input_shape)
    rnn_plan = recurrent.plan_export(model, mode, config.sparse)
    samples, notes = None, []
    if trained_ranges:
        notes.append("QAT model: int8 ranges from training, no calibration")
    if checked_data:
        checked = representative.prepare(representative_data, specs, max_samples=config.max_calibration_samples)
        if trained_ranges:
            notes.append("layers kept float: representative_data checked, not used for calibration")
        else:
            samples = checked
            notes.append(f"calibrated on {len(samples)} samples")
        if config.check_float_outputs:
            representative.check_model_outputs(model, checked, specs)
    restore_ranges = None
    if qat and mode == "int8":
        restore_ranges = _calibrate_untrained_ranges(model, checked if checked_data else None, notes)

    workdir = make_temp_dir("tfcompress_export_")
    saved_model_dir = os.path.join(workdir, "saved_model")
    try:
        try:
            if rnn_plan is None:
                _export_saved_model(model, specs, saved_model_dir)
            else:
                notes.append(rnn_plan.note)
                with rnn_plan.applied():
                    _export_saved_model(model, specs, saved_model_dir, batch_size=rnn_plan.batch_size)
        except Exception as exc:
            raise_if_out_of_space(exc, model.name)
            raise ConversionError(
                f"Exporting model {model.name!r} for TFLite failed: {type(exc).__name__}: {converter_message(exc)}. "
                "Check that model(x, training=False) runs on inputs of shape "
                f"{[representative.format_shape(s.shape) for s in specs]}."
            ) from None
        if samples is not None:
            # Keyed by the signature's input names: the converter feeds a list in the .tflite's input order,
            # which is not the Keras order for inputs of different shapes (an image and a vector).
            samples = [dict(zip([spec.name for spec in specs], sample)) for sample in samples]
        if config.isolate:
            data = _convert_in_subprocess(saved_model_dir, samples, config, model.name)
        else:
            try:
                data = convert_saved_model(saved_model_dir, mode, samples, config.io_type, config.sparse, keep_float)
            except Exception as exc:
                raise ConversionError(_failure_message(model.name, mode, converter_message(exc))) from None
        if keep_float:
            notes.append(f"kept float: {list(keep_float)}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if restore_ranges is not None:
            restore_ranges()

    result = ConvertedModel(data, mode=mode, model_name=model.name, notes=notes, input_names=[s.name for s in specs])
    return finish(result, model, config, verify)


def _convert_with_calibration(model, representative_data, config, verify):
    """int8 with activation ranges chosen by ``config.calibration`` on the model's fake-quant twin."""
    calibration = config.calibration
    if is_qat_model(model):
        raise ValueError(f"calibration={calibration!r} does not apply to QAT model {model.name!r}: its ranges were "
                         "trained. Convert it without calibration=, or calibrate it with tfc.quantization.calibrate.")
    if representative_data is None:
        raise representative.RepresentativeDataError(
            f"representative_data is required for calibration={calibration!r}: pass ~100-500 typical inputs.")
    specs = input_specs(model, representative_data, config.input_shape)
    samples = representative.prepare(representative_data, specs, max_samples=config.max_calibration_samples)
    representative.check_model_outputs(model, samples, specs)
    arrays = [np.concatenate([sample[i] for sample in samples]) for i in range(len(specs))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # layers it leaves float stay float in the file too
        twin = quantize.quantize_model(model, keep_float=config.keep_float)
    quantize.calibrate(twin, arrays if len(arrays) > 1 else arrays[0], method=calibration)
    # The twin keeps its float layers itself, and its outputs are checked as before; the audit, the
    # agreement check and the write are of the user's model, below.
    twin_config = dataclasses.replace(config, mode="int8", calibration=None, keep_float=None, strict=False,
                                      output_path=None, overwrite=False, check_float_outputs=True)
    result = convert(twin, representative_data, twin_config)
    result.notes.insert(0, f"calibration={calibration!r}: activation ranges set on the fake-quant twin from "
                           f"{len(samples)} samples")
    return finish(result, model, config, verify)


def finish(result, model, config, verify):
    """The checks every conversion ends with: the strict int8 audit, the agreement check, the atomic write."""
    mode = result.mode
    if config.strict and mode == "int8":
        floats = result.info.float_compute_ops()
        if floats:
            listed = ", ".join(f"{op.type} ({op.output_names[0] if op.output_names else op.index})" for op in floats[:10])
            raise QuantizationAuditError(
                f"strict=True: the int8 model {model.name!r} still has {len(floats)} float compute op(s): "
                f"{listed}. Remove keep_float for them, or pass strict=False to accept float ops."
            )
    if verify is not None:
        _verify_agreement(result, model, verify)
    if config.output_path is not None:
        write_atomic(config.output_path, bytes(result), overwrite=config.overwrite)
    return result


def _verify_agreement(result, model, verify, max_samples=1000):
    """Top-1 agreement of the file with the Keras model on ``verify``; a warning below `MIN_AGREEMENT`."""
    x = verify[0] if isinstance(verify, tuple) and len(verify) == 1 else verify
    x = [a[:max_samples] for a in x] if isinstance(x, list) else np.asarray(x)[:max_samples]
    import keras

    tflite = litert.predict(bytes(result), x)
    keras_out = np.asarray(keras.tree.flatten(model.predict(x, verbose=0, batch_size=256))[0])
    keras_top1 = keras_out.reshape(len(keras_out), -1).argmax(1)
    result.agreement = float(np.mean(tflite.reshape(len(tflite), -1).argmax(1) == keras_top1))
    result.notes.append(f"top-1 agreement with the Keras model: {100 * result.agreement:.1f}% on {len(keras_top1)} samples")
    if result.agreement < MIN_AGREEMENT:
        warnings.warn(
            f"to_tflite: the {result.mode} file of model {model.name!r} agrees with the Keras model on only "
            f"{100 * result.agreement:.1f}% of top-1 predictions ({len(keras_top1)} samples of verify=). Find the "
            "layers that lose it with tfc.quantization_sensitivity(model, representative_data, x, y), then keep "
            "them float (keep_float=[...]) or set max_accuracy_drop= with validation_data=.", UserWarning, stacklevel=3)


def _calibrate_untrained_ranges(model, samples, notes):
    """Calibrates a QAT model's never-trained activation ranges for this conversion; returns an undo function.

    A QAT model converted before any ``fit`` still has the initial [-6, 6] ranges, and its int8 file would
    be far from the float model (7.5% top-1 agreement on MobileNetV2). Trained ranges are never touched,
    and the model is restored afterwards: converting has no side effect.
    """
    untrained = quantize.untrained_ranges(model)
    if not untrained:
        return None
    if samples is None:
        raise representative.RepresentativeDataError(
            f"QAT model {model.name!r} was never trained: {len(untrained)} activation range(s) never saw data "
            f"(e.g. {untrained[:3]}) and are still the initial [-6, 6], so its int8 file would compute something "
            "far from the float model. Pass representative_data=x_train[:200] to calibrate them for this "
            "conversion, train it first (qat.fit(...): a few hundred steps set every range), or calibrate it once "
            "with tfc.quantization.calibrate(qat, x_train[:500]).")
    quantizers = [layer for layer in graph.layers_of(model) if isinstance(layer, fake_quant.ActivationQuantizer)]
    saved = [(q, q.get_weights()) for q in quantizers]
    inputs = [np.concatenate([sample[i] for sample in samples]) for i in range(len(samples[0]))]
    count = quantize.calibrate(model, inputs if len(inputs) > 1 else inputs[0], only_untrained=True)
    notes.append(f"QAT model never trained: {count} activation range(s) calibrated from representative_data for "
                 "this conversion (the model itself is unchanged)")

    def restore():
        for quantizer, weights in saved:
            quantizer.set_weights(weights)

    return restore


def _convert_keeping_float(converter, saved_model_dir, samples, keep_float):
    """Selective quantization: ops produced by the named Keras layers stay float."""
    import tensorflow as tf

    # Float ops are allowed next to int8 ones only for the denylisted layers.
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
    patterns = [re.compile(rf"(^|/){re.escape(name)}(_\d+)?/") for name in keep_float]

    def dataset():
        for sample in samples:
            yield sample

    # Op names are only known after conversion: read them off a float conversion.
    float_converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir, signature_keys=["serve"])
    info = tflite_file.inspect(float_converter.convert())
    # A fused op's output may carry the signature's name, so its weights' names identify the layer too. Only
    # constant inputs count: an op reading a kept layer's *output* is the next layer, which stays int8.
    constants = {w.name for w in info.weights}
    nodes = sorted({
        op.output_names[0] for op in info.operators
        if op.output_names and any(p.search(n) for p in patterns
                                   for n in op.output_names + [i for i in op.input_names if i in constants])
    })
    if not nodes:
        raise ValueError(f"keep_float={keep_float}: no TFLite op comes from these layers; check the names.")
    options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=nodes, fully_quantize=True)
    with warnings.catch_warnings():
        # The debugger runs TF's deprecated tf.lite.Interpreter internally; nothing for the user to act on.
        warnings.simplefilter("ignore", UserWarning)
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=converter, debug_dataset=dataset, debug_options=options
        )
        return debugger.get_nondebug_quantized_model()


def raise_if_out_of_space(exc, model_name):
    text = str(exc)
    for symptom in ("No space left on device", "File too large", "Disk quota exceeded"):
        if symptom in text:
            raise OSError(
                errno.ENOSPC,
                f"Exporting model {model_name!r} needs temporary space in {tempfile.gettempdir()!r} and writing "
                f"there failed ({symptom}). Free disk space or point TMPDIR to a larger folder; no output was written.",
            ) from None


def _failure_message(model_name, mode, reason):
    return (
        f"The TFLite converter could not convert model {model_name!r} to mode={mode!r}: {reason}. "
        "If an op is unsupported in int8, try keep_float=[layer] or mode='dynamic'."
    )


def convert_saved_model(saved_model_dir, mode, samples, io_type="float32", sparse=False, keep_float=None):
    """Runs the TFLite converter on an exported SavedModel (``serve`` endpoint); returns the bytes.

    ``samples``: calibration samples, each ``{signature input name: array}``, or None.
    """
    import tensorflow as tf

    with native_stderr.buffered_filter(native_stderr.CONVERTER_CHATTER), warnings.catch_warnings():
        # Calibrating on samples keyed by input name runs TF's deprecated tf.lite.Interpreter inside the
        # converter, which warns; nothing for the user to act on.
        warnings.filterwarnings("ignore", message=r"(?s).*tf\.lite\.Interpreter is deprecated", category=UserWarning)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir, signature_keys=["serve"])
        _configure(converter, mode, samples, io_type, sparse)
        if keep_float:
            return _convert_keeping_float(converter, saved_model_dir, samples, keep_float)
        return converter.convert()


def _convert_in_subprocess(saved_model_dir, samples, config, model_name):
    """The converter in a child process: a native crash or a hang becomes a ConversionError."""
    import json

    mode, timeout = config.mode, config.timeout
    job = os.path.join(os.path.dirname(saved_model_dir), "job")
    os.makedirs(job)
    with open(os.path.join(job, "job.json"), "w") as f:
        # The child runs only the converter: the options `convert_saved_model` takes are all it reads.
        options = config.get_config()
        json.dump({name: options[name] for name in ("mode", "io_type", "sparse", "keep_float")}, f)
    if samples:
        names = list(samples[0])
        arrays = {f"input_{j}": np.concatenate([s[name] for s in samples]) for j, name in enumerate(names)}
        np.savez(os.path.join(job, "samples.npz"), **arrays)
        with open(os.path.join(job, "input_names.json"), "w") as f:
            json.dump(names, f)
    try:
        outcome = isolation.run(["-m", "tfcompress.export.convert_worker", saved_model_dir, job], timeout)
    except isolation.Timeout:
        raise ConversionError(
            f"Converting model {model_name!r} to mode={mode!r} took longer than {timeout} s and was stopped. "
            "Raise timeout= (CLI: --timeout) for very large models."
        ) from None
    if outcome.ok:
        with open(os.path.join(job, "model.tflite"), "rb") as f:
            return f.read()
    error_file = os.path.join(job, "error.txt")
    if outcome.returncode > 0 and os.path.exists(error_file):
        with open(error_file) as f:
            raise ConversionError(_failure_message(model_name, mode, f.read().strip()))
    raise ConversionError(_failure_message(model_name, mode, f"the converter process {outcome.reason}"))
