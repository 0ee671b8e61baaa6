"""core/graph.py: the one layer walker and the Functional graph read from the model."""

import keras
import numpy as np
import pytest
from conftest import operation_node_model

from tfcompress.core import graph


def _residual_model():
    inputs = keras.Input((8, 8, 3), name="image")
    x = keras.layers.Conv2D(4, 3, padding="same", name="stem")(inputs)
    inner_in = keras.Input((8, 8, 4))
    inner = keras.Model(inner_in, keras.layers.Conv2D(4, 1, name="inner_conv")(inner_in), name="block")
    y = inner(x)
    x = keras.layers.Add(name="add")([x, y])
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, keras.layers.Dense(2, name="head")(x), name="residual")


def test_iter_layers_walks_nested_models_with_paths():
    paths = [path for path, _ in graph.iter_layers(_residual_model())]
    assert "block/inner_conv" in paths and "stem" in paths and "head" in paths
    assert len(paths) == len(set(paths))


def test_read_graph_finds_producers_consumers_and_outputs():
    nodes, inputs = graph.read_graph(_residual_model())
    assert inputs == ["image"]
    assert sorted(nodes["add"].producers) == ["block", "stem"]
    assert sorted(nodes["stem"].consumers) == ["add", "block"]
    assert nodes["head"].is_output and not nodes["add"].is_output


def test_operation_nodes_are_graph_nodes_reached_by_name():
    model = operation_node_model()
    nodes, _ = graph.read_graph(model)
    operations = [op for op in model.operations if graph.is_operation(op)]
    kinds = {graph.operation_kind(op) for op in operations}
    assert {"numpy.Add", "numpy.Multiply", "nn.Relu6", "numpy.TrueDivide", "nn.HardSigmoid", "numpy.Mean"} <= kinds
    for op in operations:
        assert graph.get_operation(model, op.name) is op and op.name in nodes
        with pytest.raises(ValueError):  # why every verb goes through get_operation
            model.get_layer(op.name)
    mean = next(op for op in operations if graph.operation_kind(op) == "numpy.Mean")
    assert nodes[mean.name].consumers == ["head"] and nodes["head"].producers == [mean.name]
    scale = next(op for op in operations if graph.operation_kind(op) == "numpy.Multiply"
                 and any(kind == "constant" and value.shape == (16,) for kind, value in nodes[op.name].arguments()))
    (tensor, producer), (constant, value) = nodes[scale.name].arguments()
    assert tensor == "tensor" and graph.operation_kind(graph.get_operation(model, producer)) == "nn.Relu"
    assert constant == "constant" and value.dtype == np.float32
    with pytest.raises(ValueError, match="no layer or operation named 'nope'"):
        graph.get_operation(model, "nope")
