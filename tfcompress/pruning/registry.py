"""Which weights of a model are pruned, found by walking its layers recursively.

Default targets are the matrix-multiply weights that dominate size and that
TFLite can store sparsely: kernels of Dense, EinsumDense, Conv1D/2D/3D and
their transposes, the pointwise kernel of SeparableConv1D/2D, Embedding
tables, and both kernels (input ``kernel`` and ``recurrent_kernel``) of the
LSTM, GRU and SimpleRNN cells, Bidirectional's two directions included (the
cell owns them: naming the RNN layer or its Bidirectional wrapper in
``layers=`` or ``skip=`` covers its cell). Depthwise kernels are pruned only when named in ``layers=``: they are
tiny and every zero removes a whole spatial tap of a channel. A custom layer
opts in by defining ``get_prunable_weights()`` (the same hook tfmot uses),
returning the variables to prune.
"""

import dataclasses

import keras
from keras import layers as klayers

from tfcompress.core import graph

# (layer classes, weight name or names). Checked in order; first match wins.
RNN_CELLS = (klayers.LSTMCell, klayers.GRUCell, klayers.SimpleRNNCell)
DEFAULT_RULES = (
    ((klayers.Dense, klayers.EinsumDense), "kernel"),
    (
        (klayers.Conv1D, klayers.Conv2D, klayers.Conv3D,
         klayers.Conv1DTranspose, klayers.Conv2DTranspose, klayers.Conv3DTranspose),
        "kernel",
    ),
    ((klayers.SeparableConv1D, klayers.SeparableConv2D), "pointwise_kernel"),
    ((klayers.Embedding,), "embeddings"),
    # Both matrices of a recurrent cell are matrix multiplies each step; in the .tflite they are
    # FULLY_CONNECTED weights (unrolled RNNs), where the zeros are kept.
    (RNN_CELLS, ("kernel", "recurrent_kernel")),
)
ON_REQUEST_RULES = (((klayers.DepthwiseConv1D, klayers.DepthwiseConv2D), "kernel"),)


@dataclasses.dataclass
class WeightEntry:
    """One weight of the model, and whether the pruner targets it.

    Attributes:
        layer_path: '/'-joined layer names from the model down to the owning layer.
        layer: the owning layer.
        variable: the ``keras.Variable``.
        pruned: True when the pruner masks this weight.
        reason: why it is pruned or skipped, for the table.
        candidate: True for weights a user could ask to prune (kernels, embeddings).
    """

    layer_path: str
    layer: keras.layers.Layer
    variable: object
    pruned: bool
    reason: str
    candidate: bool = False

    @property
    def path(self):
        return f"{self.layer_path}/{self.variable.name}"

    @property
    def shape(self):
        return tuple(self.variable.shape)


def _own_variables(layer):
    """Variables created by ``layer`` itself, not by its sub-layers."""
    below = {id(v) for child in graph.child_layers(layer) for v in child.weights}
    return [v for v in layer.weights if id(v) not in below]


def _rule_weight(layer, rules):
    """The names of the weights ``rules`` target in ``layer`` (a tuple), or None."""
    for classes, weight_names in rules:
        if isinstance(layer, classes):
            return (weight_names,) if isinstance(weight_names, str) else weight_names
    return None


def _matches(names, layer_path, layer):
    if layer.name in names or layer_path in names:
        return True
    if isinstance(layer, RNN_CELLS):
        # Users name the LSTM (or its Bidirectional), not the cell that owns the weights: any enclosing
        # layer's name or path counts.
        parts = layer_path.split("/")[:-1]
        return any(part in names or "/".join(parts[: i + 1]) in names for i, part in enumerate(parts))
    return False


def find_weights(model, layers=None, skip=None):
    """Lists every weight of ``model`` with the pruner's decision and reason.

    Args:
        model: a built Keras model or layer.
        layers: optional names (or '/'-paths) of the only layers to prune; naming
            a DepthwiseConv layer here opts its kernel in.
        skip: optional names (or '/'-paths) of layers never to prune.

    Returns:
        A list of ``WeightEntry``, in model order, each weight once.

    Raises:
        ValueError: a name in ``layers`` or ``skip`` matches no layer; the
            message lists the model's layer names.
    """
    graph.check_model(model, action="prune", allow_layer=True)
    layers = _as_names(layers, "layers")
    skip = _as_names(skip, "skip")
    all_layers = list(graph.iter_layers(model))
    known = {name for path, layer in all_layers for name in (path, layer.name)}
    for argument, names in (("layers", layers), ("skip", skip)):
        unknown = sorted(set(names or ()) - known)
        if unknown:
            available = ", ".join(sorted({layer.name for _, layer in all_layers})) or "(none)"
            raise ValueError(
                f"{argument}={unknown!r}: no layer of model {model.name!r} has that name. "
                f"Its layers are: {available}. Nested layers can also be named by path, "
                "e.g. 'outer/inner'."
            )

    entries, seen_vars = [], set()

    def add(layer_path, layer, variable, pruned, reason, candidate=False):
        if id(variable) in seen_vars:  # shared layers and tied weights appear once
            return
        seen_vars.add(id(variable))
        entries.append(WeightEntry(layer_path, layer, variable, pruned, reason, candidate))

    for layer_path, layer in all_layers:
        own = _own_variables(layer)
        if not own:
            continue
        named = layers is not None and _matches(layers, layer_path, layer)
        skipped = skip is not None and _matches(skip, layer_path, layer)
        custom = getattr(layer, "get_prunable_weights", None)
        if callable(custom):
            targets = {id(v) for v in custom()}
            rule_reason = f"{type(layer).__name__}.get_prunable_weights()"
        else:
            names = _rule_weight(layer, DEFAULT_RULES)
            on_request = names is None and _rule_weight(layer, ON_REQUEST_RULES)
            if on_request and named:
                names = on_request
            targets = {id(v) for v in own if v.trainable and v.name in names} if names else set()
            rule_reason = None  # named after the weight, below
        for variable in own:
            is_target = id(variable) in targets
            candidate = is_target or (
                variable.name in (_rule_weight(layer, ON_REQUEST_RULES) or ()) and variable.trainable
            )
            if is_target and skipped:
                add(layer_path, layer, variable, False, "skipped: named in skip=", candidate)
            elif is_target and layers is not None and not named:
                add(layer_path, layer, variable, False, "skipped: not named in layers=", candidate)
            elif is_target:
                add(layer_path, layer, variable, True,
                    f"pruned: {rule_reason or f'{type(layer).__name__}.{variable.name}'}", candidate)
            elif candidate:
                add(layer_path, layer, variable, False,
                    "skipped: depthwise kernel (name the layer in layers= to prune it)", candidate)
            else:
                add(layer_path, layer, variable, False, _skip_reason(layer, variable))
    return entries


def _skip_reason(layer, variable):
    if not variable.trainable:
        return "skipped: not trainable"
    if variable.name in ("bias", "gamma", "beta") or len(variable.shape) <= 1:
        return "skipped: bias/scale vector (tiny, accuracy-critical)"
    if type(layer).__module__.startswith("keras."):
        return f"skipped: {type(layer).__name__}.{variable.name} is not a pruning target"
    return (
        f"skipped: no pruning rule for {type(layer).__name__}.{variable.name} "
        "(define get_prunable_weights() on the layer to prune it)"
    )


def _as_names(names, argument):
    if names is None:
        return None
    if isinstance(names, str):
        names = [names]
    try:
        names = list(names)
    except TypeError:
        raise TypeError(f"{argument} must be a list of layer names, got {names!r}.") from None
    for name in names:
        if not isinstance(name, str):
            raise TypeError(
                f"{argument} must hold layer names (str), got {name!r} of type "
                f"{type(name).__name__}. Pass layer.name rather than the layer."
            )
    return set(names)
