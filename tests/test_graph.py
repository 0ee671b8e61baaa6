"""core/graph.py: the one layer walker and the Functional graph read from the model."""

import keras

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
