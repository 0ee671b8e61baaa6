"""How recurrent layers (LSTM, GRU, SimpleRNN, in Bidirectional too) are exported to TFLite.

Keras 3 runs an RNN as a ``tf.while_loop`` over a TensorList whose element shape holds the batch size.
With the batch dynamic (the default export), the TFLite converter refuses it (``'tf.TensorListReserve' op
requires element_shape to be static``), and Keras 3 no longer marks its LSTM for the converter's fused
UNIDIRECTIONAL_SEQUENCE_LSTM kernel. What works, measured on TF 2.21, always with the file's batch fixed
at 1: the RNN's zero initial state is then a constant (with a dynamic batch it is a FILL of the input's
SHAPE, which TFLite Micro refuses: "Non-constant dims tensor is not supported"), and `evaluate_tflite`
feeds such files one sample at a time.

- **Unrolled** (``unroll=True`` set on each RNN layer while it is exported, then restored): each time step
  becomes FULLY_CONNECTED, ADD, MUL, LOGISTIC, TANH (and SPLIT, SUB for GRU) ops, which every mode
  quantizes, int8 and int16x8 included. The file grows with the sequence (about 15 ops per step and layer) and so
  does conversion time (LSTM(32)+GRU(32) in int8: 49 steps ~15 s, 128 steps ~100 s), so sequences up to
  `MAX_UNROLL_STEPS` steps are unrolled.
- **A WHILE loop**, for longer or variable-length sequences: float32, float16 and dynamic only. The int8
  calibration of a WHILE body crashes the converter (a segfault in TF 2.21), so int8 and int16x8 are
  refused for these, with the fix.

What a ``.tflite`` cannot hold is refused before converting: ``stateful=True`` (a TFLite call keeps no
state between invocations) and, in int8, masked sequences (the int8 SELECT_V2 graph they unroll to fails
to prepare in XNNPACK) and, with int8 weights, ``sparse=True`` (the sparse RNN file computes a constant).
"""

import contextlib
import dataclasses

from tfcompress.core import graph

MAX_UNROLL_STEPS = 100
QUANTIZED_MODES = ("int8", "int16x8")


class UnsupportedRecurrentLayerError(ValueError):
    """A recurrent layer is set up in a way a ``.tflite`` cannot reproduce; the message names it and the fix."""


def recurrent_layers(model):
    """``(path, layer)`` for every ``keras.layers.RNN`` under ``model`` (Bidirectional's two halves included)."""
    import keras

    return [(path, layer) for path, layer in graph.iter_layers(model) if isinstance(layer, keras.layers.RNN)]


def recurrent_parts(model, exclude=()):
    """ids of the RNN and Bidirectional layers under ``model`` and of every layer inside them (their cells),
    except those of the layers named in ``exclude``."""
    import keras

    found = set()
    for _, layer in graph.iter_layers(model):
        if isinstance(layer, (keras.layers.RNN, keras.layers.Bidirectional)) and layer.name not in exclude:
            found.add(id(layer))
            found.update(id(inner) for _, inner in graph.iter_layers(layer))
    return found


def time_steps(layer):
    """The sequence length ``layer`` was built for, or None when it is variable (``keras.Input((None, 10))``)."""
    config = layer.get_build_config() or {}
    shape = config.get("input_shape")
    if shape is None and config.get("shapes_dict"):
        shape = next(iter(config["shapes_dict"].values()))
    if not shape or len(shape) < 3:
        return None
    return shape[1] if isinstance(shape[1], int) else None


def _masks_inputs(model):
    import keras

    return [layer.name for layer in graph.layers_of(model)
            if isinstance(layer, keras.layers.Masking)
            or (isinstance(layer, keras.layers.Embedding) and getattr(layer, "mask_zero", False))]


@dataclasses.dataclass
class ExportPlan:
    """How a model with RNN layers is exported: unrolled, or as WHILE loops; with the batch fixed at 1.

    Attributes:
        layers: ``(path, layer)`` of the RNN layers.
        unroll: True to unroll them while exporting.
        batch_size: the signature's batch size.
    """

    layers: list
    unroll: bool
    batch_size: int = 1

    @property
    def note(self):
        names = ", ".join(path for path, _ in self.layers[:4]) + (", ..." if len(self.layers) > 4 else "")
        if self.unroll:
            return f"RNN layers unrolled over their time steps for TFLite, batch size fixed at 1: {names}"
        return (f"RNN layers kept as WHILE loops (sequences longer than {MAX_UNROLL_STEPS} steps or of variable "
                f"length), batch size fixed at 1: {names}")

    @contextlib.contextmanager
    def applied(self):
        """While exporting: the RNN layers unrolled (``layer.unroll = True``), restored afterwards."""
        saved = [(layer, layer.unroll) for _, layer in self.layers]
        try:
            if self.unroll:
                for layer, _ in saved:
                    layer.unroll = True
            yield
        finally:
            for layer, unroll in saved:
                layer.unroll = unroll


def plan_export(model, mode, sparse=False):
    """The `ExportPlan` for ``model`` in ``mode``, or None when it has no RNN layer.

    Args:
        model: the Keras model to export.
        mode: the conversion mode (one of `converter.MODES`).
        sparse: the converter's sparse weight encoding is asked for.

    Returns:
        An `ExportPlan`, or None.

    Raises:
        UnsupportedRecurrentLayerError: a ``stateful=True`` layer; or, in ``"int8"`` / ``"int16x8"``, an
            RNN over more than `MAX_UNROLL_STEPS` or a variable number of steps, masked sequences; with
            int8 weights (also ``"dynamic"``), ``sparse=True``. The message names the layer and what to do.

    Example:
        >>> plan = plan_export(model, "int8")
        >>> with plan.applied():
        ...     export(model)
    """
    layers = recurrent_layers(model)
    if not layers:
        return None
    for path, layer in layers:
        if layer.stateful:
            raise UnsupportedRecurrentLayerError(
                f"Layer {path!r} ({type(layer).__name__}) has stateful=True: a .tflite call keeps no state between "
                "invocations, so the file would silently restart every sequence. Build the model again with "
                "stateful=False (set_weights from this one) and carry the state yourself: return_state=True gives "
                "it as outputs and initial_state= takes it back as inputs.")
    if sparse and mode in QUANTIZED_MODES + ("dynamic",):
        # Measured on TF 2.21: a pruned LSTM converted with sparse=True in int8 or dynamic outputs a constant
        # (its error equals the output's whole range) where the same file without it is within 0.015;
        # float32 and float16 sparse files are right.
        raise UnsupportedRecurrentLayerError(
            f"sparse=True with mode={mode!r}: the converter's sparse int8 encoding of the RNN weights of "
            f"{layers[0][0]!r} gives a file with wrong outputs. Convert without sparse= (the zeros stay in the "
            "file: gzip compresses them), or use mode='float32' or 'float16'.")
    steps = {path: time_steps(layer) for path, layer in layers}
    too_long = {path: n for path, n in steps.items() if n is None or n > MAX_UNROLL_STEPS}
    if not too_long:
        masked = _masks_inputs(model)
        if masked and mode in QUANTIZED_MODES:
            raise UnsupportedRecurrentLayerError(
                f"mode={mode!r}: model {model.name!r} masks its sequences ({', '.join(masked)}) before RNN layers "
                f"({', '.join(steps)}); the quantized masked RNN graph does not run in LiteRT (XNNPACK fails to "
                "prepare it). Convert with mode='dynamic' or 'float32', or pad sequences without a mask.")
        return ExportPlan(layers, unroll=True)
    if mode in QUANTIZED_MODES:
        path, n = next(iter(too_long.items()))
        what = "a variable number of" if n is None else f"{n}"
        raise UnsupportedRecurrentLayerError(
            f"mode={mode!r}: RNN layer {path!r} runs over {what} time steps. Quantized RNNs convert only unrolled, "
            f"over a fixed sequence of at most {MAX_UNROLL_STEPS} steps (a quantized WHILE loop crashes the "
            "converter). Build the model on keras.Input((steps, features)) with a shorter fixed length (e.g. "
            "strided Conv1D or pooling before the RNN), or convert with mode='dynamic' or 'float32'.")
    return ExportPlan(layers, unroll=False)
