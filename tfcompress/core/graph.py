"""The one model-graph module: what a model is, which layers it holds, and who feeds whom.

Everything in tfcompress that looks inside a Keras model goes through here:

* `check_model`: is this a built Keras 3 model (one check, one set of messages
  for every verb: convert, prune, quantize, distill, compress).
* `iter_layers`: every layer under a model, recursively, with its '/'-path
  (nested models, and layers a custom layer holds as attributes).
* `read_graph`: the producers and consumers of every node of a Functional
  model, read from its public config (no private Keras node objects). A node is
  a layer or an *operation*: Keras 3 records ``keras.ops`` calls and tensor
  operators (``x * 3.0``, ``ops.add(a, b)``, ``x[..., :3]``) as graph nodes that
  are not layers (``model.get_layer`` does not find them).
* `get_operation`: the layer or operation of a graph node, by name.
"""

import dataclasses
import os

import keras
import numpy as np


def check_model(model, argument="model", action="compress", allow_layer=False, require_built=True):
    """Returns ``model`` if it is a (built) Keras 3 model; otherwise raises an error that says what to do.

    Args:
        model: the object to check.
        argument: the argument name used in messages (``"teacher"``, ``"student"``...).
        action: the verb for messages, e.g. ``"convert"``, ``"prune"``, ``"quantize"``.
        allow_layer: accept a plain ``keras.layers.Layer`` too (the pruner works on layers).
        require_built: raise if the model has no weights yet.

    Raises:
        TypeError: a path, a KerasTensor, a tf_keras (Keras 2) object, a layer, or anything else.
        ValueError: the model is not built.
    """
    kind = type(model).__name__
    if isinstance(model, (str, bytes, bytearray, os.PathLike)):
        raise TypeError(
            f"{argument} must be a keras.Model, got {kind} {model!r:.200}. To {action} a saved model, load it "
            "first: keras.models.load_model(path).")
    if isinstance(model, keras.KerasTensor):
        raise TypeError(
            f"{argument} must be a keras.Model, got a KerasTensor {model!r:.200}: that is the output of calling "
            "layers on keras.Input. Build the model first: keras.Model(inputs, outputs), and pass that.")
    if any((c.__module__ or "").split(".")[0] in ("tf_keras", "tensorflow") and "keras" in (c.__module__ or "")
           for c in type(model).__mro__):
        raise TypeError(
            f"{argument} must be a keras.Model (Keras 3), got a legacy tf_keras object ({kind}: {model!r:.200}). "
            "tfcompress works on Keras 3 models: rebuild it with `import keras` (Keras 3) and load its weights.")
    accepted = keras.layers.Layer if allow_layer else keras.Model
    if not isinstance(model, accepted):
        if isinstance(model, keras.layers.Layer):
            raise TypeError(
                f"{argument} must be a keras.Model, got a layer ({kind} {model.name!r}). Wrap it in a model "
                "first: keras.Sequential([keras.Input(shape), layer]).")
        raise TypeError(f"{argument} must be a keras.Model (Keras 3), got {kind}: {model!r:.200}.")
    if require_built and not model.built:
        raise ValueError(
            f"{argument} {model.name!r} is not built, so it has no weights to {action} yet. Build it first: "
            "call it once on a batch (model(x[:1])), call model.build(input_shape), or give it a keras.Input.")
    return model


class SubclassedModelError(TypeError):
    """A verb that rewrites or reads the layer graph was given a subclassed model (its graph is Python code)."""


def check_functional(model, verb, error=SubclassedModelError):
    """Raises ``error`` unless ``model`` is Functional or Sequential, with the one message every verb uses.

    Args:
        verb: what needs the graph, for the message (``"quantize_model"``, ``"channel pruning"``...).
    """
    if not is_functional(model):
        raise error(
            f"{verb} needs the layer graph of model {model.name!r} ({type(model).__name__}), but it is subclassed: "
            "its graph lives in Python code. Build it with the Functional or Sequential API, or apply "
            f"{verb} to the Functional/Sequential sub-models it calls.")
    return model


def is_functional(model):
    """True for Functional and Sequential models: their graph is data, not Python code."""
    if isinstance(model, keras.Sequential) or type(model) is keras.Model:
        return True
    # Keras has no public Functional class; subclasses of keras.Model built with inputs/outputs carry it in
    # their MRO (e.g. Keras applications), subclassed models with a call() do not.
    return hasattr(model, "inputs") and "Functional" in [c.__name__ for c in type(model).__mro__]


def child_layers(layer):
    """Direct sub-layers of ``layer``: a model's layers, and layers held as attributes or in lists."""
    # Private Keras touch point (README, "Private Keras APIs"): Keras 3 has no public way to list the
    # layers held by a plain Layer (Model.layers covers models only, and itself uses this method).
    return list(layer._flatten_layers(include_self=False, recursive=False))


def iter_layers(model):
    """Yields ``(path, layer)`` for every layer under ``model`` (not the model itself), each once.

    ``path`` is the '/'-joined names from the model down to the layer, e.g. ``"backbone/conv1"``.
    """
    seen = {id(model)}
    stack = [(child.name, child) for child in reversed(child_layers(model))]
    while stack:
        path, layer = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        yield path, layer
        stack.extend((f"{path}/{child.name}", child) for child in reversed(child_layers(layer)))


def layers_of(model):
    """Every layer under ``model``, each once (see `iter_layers`)."""
    return [layer for _, layer in iter_layers(model)]


def layer_names(model):
    """The names and paths of every layer under ``model``."""
    return {name for path, layer in iter_layers(model) for name in (path, layer.name)}


def is_operation(node):
    """True for a graph node that is a ``keras.ops`` operation, not a layer (``x * 3.0``, ``ops.mean``...)."""
    return not isinstance(node, keras.layers.Layer)


def operation_kind(node):
    """``"<ops module>.<class>"`` of an operation node, e.g. ``"numpy.Add"``, ``"nn.HardSigmoid"``.

    Keras 3 has no public classes for its operations; the kind is read off the class.
    """
    # Private Keras touch point (README, "Private Keras APIs"): the operation classes live in
    # keras.src.ops.<module>; their module and class names are the only way to tell them apart.
    module = type(node).__module__ or ""
    prefix = "keras.src.ops."
    return (module[len(prefix):] if module.startswith(prefix) else module) + "." + type(node).__name__


def operations_by_name(model):
    """``{name: layer or operation}`` for every node of ``model``'s top-level graph."""
    nodes = getattr(model, "operations", None)
    return {node.name: node for node in (nodes if nodes is not None else model.layers)}


def get_operation(model, name):
    """The layer or operation of ``model``'s graph node ``name`` (what ``model.get_layer`` is for layers).

    Raises:
        ValueError: ``model`` has no layer or operation of that name.
    """
    nodes = operations_by_name(model)
    if name not in nodes:
        raise ValueError(f"Model {model.name!r} has no layer or operation named {name!r}; its graph nodes are "
                         f"{sorted(nodes)}.")
    return nodes[name]


def _decode_constant(value):
    """A constant argument of a serialized call as a Python/NumPy value (None for a structure it is not)."""
    if isinstance(value, dict):
        if value.get("class_name") == "__numpy__":
            return np.asarray(value["config"]["value"], dtype=value["config"]["dtype"])
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return np.asarray(value, dtype="float32")
    return None


@dataclasses.dataclass
class LayerNode:
    """One node (a layer or an operation) of a Functional model.

    Attributes:
        name: the layer or operation name.
        inbound: one list of producer node names per call of the node.
        consumers: names of the nodes that take its output (one entry per use).
        is_output: its output is a model output.
        calls: the serialized arguments (``{"args": ..., "kwargs": ...}``) of each call.
    """

    name: str
    inbound: list = dataclasses.field(default_factory=list)
    consumers: list = dataclasses.field(default_factory=list)
    is_output: bool = False
    calls: list = dataclasses.field(default_factory=list)

    def arguments(self):
        """The positional arguments of the node's single call: ``[("tensor", producer name) or
        ("constant", value) or ("other", serialized)]``; constants are NumPy arrays (a scalar has shape ())."""
        found = []
        for arg in self.calls[0].get("args", []) if self.single_call else []:
            if isinstance(arg, dict) and arg.get("class_name") == "__keras_tensor__":
                found.append(("tensor", arg["config"]["keras_history"][0]))
                continue
            constant = _decode_constant(arg)
            found.append(("constant", constant) if constant is not None else ("other", arg))
        return found

    @property
    def single_call(self):
        return len(self.inbound) == 1

    @property
    def producers(self):
        return self.inbound[0] if self.single_call else []


def _tensor_producers(structure, found):
    """Collects the producer layer names of every Keras tensor in a serialized call."""
    if isinstance(structure, dict):
        if structure.get("class_name") == "__keras_tensor__":
            found.append(structure["config"]["keras_history"][0])
            return found
        for value in structure.values():
            _tensor_producers(value, found)
    elif isinstance(structure, (list, tuple)):
        for value in structure:
            _tensor_producers(value, found)
    return found


def _endpoint_names(entries):
    return [name for name, _, _ in _endpoints(entries)]


def has_nested_models(model):
    return any(isinstance(layer, keras.Model) for layer in model.layers)


def flatten(model, layer_outputs=None):
    """``model`` with its nested Functional/Sequential sub-models inlined: one Functional graph.

    The layers are the same objects (so are their weights): masks set through the flat
    graph act on ``model``, and a model rebuilt from it (e.g. by `shrink`) is flat. A
    model without nested models is returned as it is. ``layer_outputs``, if a dict, gets
    ``{layer name: its output tensor in the flat graph}`` (a shared layer's ``.output``
    is its first call's, inside the nested model).

    Raises:
        ValueError: a nested model is subclassed, or two layers share a name (a flat
            graph needs unique names).
    """
    if not has_nested_models(model):
        return model
    names = {}
    for _, layer in iter_layers(model):
        if isinstance(layer, keras.Model):
            check_functional(layer, "entering nested models", error=ValueError)
            continue
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if layer.name in names and names[layer.name] is not layer:
            raise ValueError(
                f"model {model.name!r}: two of its (nested) layers are named {layer.name!r}; a flat graph needs unique "
                "layer names. Rename one (name= when building the model).")
        names[layer.name] = layer
    inputs = [keras.Input(batch_shape=t.shape, dtype=t.dtype, name=f"{model.name}_input_{i}")
              for i, t in enumerate(model.inputs)]
    layer_outputs = {} if layer_outputs is None else layer_outputs
    outputs = _replay(model, inputs, layer_outputs)
    return keras.Model(inputs if len(inputs) > 1 else inputs[0], outputs if len(outputs) > 1 else outputs[0],
                       name=model.name)


def _replay(model, args, layer_outputs):
    """Calls ``model``'s layers (entering nested models) on ``args``; returns its output tensors."""
    if isinstance(model, keras.Sequential):
        x = args[0]
        for layer in model.layers:
            if isinstance(layer, keras.Model):
                x = _replay(layer, [x], layer_outputs)[0]
            else:
                x = layer_outputs[layer.name] = layer(x)
        return [x]
    config = model.get_config()
    produced = dict(zip(_endpoints(config["input_layers"]), args))
    operations = operations_by_name(model)
    for layer_config in config["layers"]:
        layer = operations[layer_config["name"]]
        if isinstance(layer, keras.layers.InputLayer):
            continue
        for node_index, call in enumerate(layer_config.get("inbound_nodes", [])):
            call_args = _substitute(call["args"], produced)
            if isinstance(layer, keras.Model):
                out = _replay(layer, list(keras.tree.flatten(call_args)), layer_outputs)
            else:
                out = layer_outputs[layer.name] = layer(*call_args, **_substitute(call.get("kwargs", {}), produced))
            for index, tensor in enumerate(keras.tree.flatten(out)):
                produced[(layer_config["name"], node_index, index)] = tensor
    return [produced[e] for e in _endpoints(config["output_layers"])]


def _substitute(structure, produced):
    """A serialized call with every Keras tensor replaced by the replayed tensor it names."""
    if isinstance(structure, dict):
        if structure.get("class_name") == "__keras_tensor__":
            return produced[tuple(structure["config"]["keras_history"])]
        return {k: _substitute(v, produced) for k, v in structure.items()}
    if isinstance(structure, (list, tuple)):
        return type(structure)(_substitute(v, produced) for v in structure)
    return structure


def _endpoints(entries):
    # A single input/output is stored as one [name, node, tensor] triple, several as a list of them.
    if entries and isinstance(entries[0], str):
        entries = [entries]
    return [tuple(e) for e in entries]


def read_graph(model):
    """Returns ``({node name: LayerNode}, [input layer names])`` for a Functional model.

    Nodes are layers and operations (see the module doc; `get_operation` gets either by
    name). ``model.get_config()`` lists each node's inbound calls with the name of every
    producing layer (``keras_history``); that is all the graph needs.

    Raises:
        ValueError: the model's config cannot be read (a layer without a working
            ``get_config``); the message names the layer if Keras does.
    """
    try:
        config = model.get_config()
    except Exception as exc:  # noqa: BLE001 - any layer's get_config may fail in its own way
        raise ValueError(
            f"Could not read the graph of model {model.name!r}: get_config() failed with "
            f"{type(exc).__name__}: {exc}. Give custom layers a get_config() that returns their "
            "constructor arguments.") from exc
    nodes = {}
    for layer_config in config["layers"]:
        node = LayerNode(name=layer_config["name"])
        for call in layer_config.get("inbound_nodes", []):
            node.inbound.append(_tensor_producers(call, []))
            node.calls.append(call)
        nodes[node.name] = node
    for node in nodes.values():
        for call in node.inbound:
            for producer in call:
                nodes[producer].consumers.append(node.name)
    for name in _endpoint_names(config["output_layers"]):
        nodes[name].is_output = True
    return nodes, _endpoint_names(config["input_layers"])
