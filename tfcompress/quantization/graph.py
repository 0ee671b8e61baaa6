"""Who feeds whom in a Functional model, read from its public config.

``model.get_config()`` lists each layer's inbound nodes with the name of every
producing layer (``keras_history``); that is enough to find Conv→BN pairs and
activations that TFLite fuses into the op before them, without Keras's private
node objects.
"""

import dataclasses


@dataclasses.dataclass
class LayerNode:
    """One layer of a Functional model.

    Attributes:
        name: the layer name.
        class_name: its config class name.
        inbound: one list of producer layer names per call of the layer.
        consumers: names of the layers that take its output (one entry per use).
        is_output: its output is a model output.
    """

    name: str
    class_name: str
    inbound: list = dataclasses.field(default_factory=list)
    consumers: list = dataclasses.field(default_factory=list)
    is_output: bool = False

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


def read_graph(model):
    """Returns ``({layer name: LayerNode}, [input layer names])`` for a Functional model.

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
            "constructor arguments."
        ) from exc
    nodes = {}
    for layer_config in config["layers"]:
        name = layer_config["name"]
        node = LayerNode(name=name, class_name=layer_config["class_name"])
        for call in layer_config.get("inbound_nodes", []):
            node.inbound.append(_tensor_producers(call, []))
        nodes[name] = node
    for node in nodes.values():
        for call in node.inbound:
            for producer in call:
                nodes[producer].consumers.append(node.name)
    outputs = config["output_layers"]
    # A single output is stored as one [name, node, tensor] triple, several as a list of them.
    if outputs and isinstance(outputs[0], str):
        outputs = [outputs]
    for name, _, _ in outputs:
        nodes[name].is_output = True
    inputs = config["input_layers"]
    if inputs and isinstance(inputs[0], str):
        inputs = [inputs]
    return nodes, [name for name, _, _ in inputs]
