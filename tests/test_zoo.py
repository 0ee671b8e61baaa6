"""tfc.zoo: the reference models are exactly the architectures they are documented as."""

import keras

import tfcompress as tfc


def test_reference_cnn_is_exactly_the_specified_architecture():
    model = tfc.zoo.reference_cnn()
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds == [
        "InputLayer",
        "Conv2D", "BatchNormalization", "ReLU", "MaxPooling2D",
        "Conv2D", "BatchNormalization", "ReLU", "MaxPooling2D",
        "Conv2D", "BatchNormalization", "ReLU",
        "GlobalAveragePooling2D", "Dense", "Dense",
    ]
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.filters for c in convs] == [32, 64, 128]
    assert all(c.kernel_size == (3, 3) and c.padding == "same" for c in convs)
    assert model.layers[-2].units == 128 and model.layers[-2].activation.__name__ == "relu"
    assert model.layers[-1].units == 10 and model.layers[-1].activation.__name__ == "linear"
    assert model.count_params() == 111_370
    assert tfc.zoo.reference_cnn(width=2).layers[1].filters == 64


def test_mobilenet_style_uses_depthwise_separable_blocks():
    model = tfc.zoo.mobilenet_style()
    assert sum(isinstance(layer, keras.layers.DepthwiseConv2D) for layer in model.layers) == 5
    assert model.output_shape == (None, 10)
