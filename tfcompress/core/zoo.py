"""Reference models. Benchmarks compare against published and tfmot numbers on these, so keep them fixed."""

import keras
from keras import layers


def reference_cnn(input_shape=(28, 28, 1), num_classes=10, width=1, name="reference_cnn", bn_momentum=0.99):
    """The reference CNN every benchmark uses.

    Input → [Conv2D(32·w, 3, same) → BN → ReLU → MaxPool] → [Conv2D(64·w) → BN → ReLU → MaxPool]
    → [Conv2D(128·w) → BN → ReLU] → GlobalAveragePooling2D → Dense(128·w, relu) → Dense(classes) logits.

    Args:
        input_shape: image shape without the batch dimension.
        num_classes: number of output logits.
        width: channel multiplier (the distillation teacher uses 2).
        name: model name.
        bn_momentum: BatchNormalization momentum. Keras's 0.99 needs ~1,000 training
            steps before the moving statistics match the data; short runs use 0.9.

    Returns:
        An unbuilt-optimizer Functional ``keras.Model`` producing logits.
    """
    if width < 1 or int(width) != width:
        raise ValueError(f"width must be a positive integer, got {width!r}.")
    w = int(width)
    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    for i, filters in enumerate((32 * w, 64 * w, 128 * w), start=1):
        x = layers.Conv2D(filters, 3, padding="same", name=f"conv{i}")(x)
        x = layers.BatchNormalization(momentum=bn_momentum, name=f"bn{i}")(x)
        x = layers.ReLU(name=f"relu{i}")(x)
        if i < 3:
            x = layers.MaxPooling2D(name=f"pool{i}")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dense(128 * w, activation="relu", name="fc1")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


def mobilenet_style(input_shape=(28, 28, 1), num_classes=10, alpha=1.0, name="mobilenet_style"):
    """A small depthwise-separable (MobileNet-v1-style) classifier.

    Stem Conv2D(32, 3, stride 2) → BN → ReLU6, then five blocks of
    DepthwiseConv2D(3) → BN → ReLU6 → Conv2D(1x1) → BN → ReLU6, GAP, Dense logits.
    """
    def c(n):
        return max(8, int(n * alpha))

    inputs = keras.Input(shape=input_shape, name="image")
    x = layers.Conv2D(c(32), 3, strides=2, padding="same", use_bias=False, name="stem")(inputs)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.ReLU(6.0, name="stem_relu")(x)
    for i, (filters, stride) in enumerate(((64, 1), (128, 2), (128, 1), (256, 2), (256, 1)), start=1):
        x = layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False, name=f"dw{i}")(x)
        x = layers.BatchNormalization(name=f"dw{i}_bn")(x)
        x = layers.ReLU(6.0, name=f"dw{i}_relu")(x)
        x = layers.Conv2D(c(filters), 1, use_bias=False, name=f"pw{i}")(x)
        x = layers.BatchNormalization(name=f"pw{i}_bn")(x)
        x = layers.ReLU(6.0, name=f"pw{i}_relu")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


def small_student(input_shape=(28, 28, 1), num_classes=10, name="student", bn_momentum=0.99):
    """The distillation student: Conv2D(16)→BN→ReLU→Pool→Conv2D(32)→BN→ReLU→Pool→GAP→Dense(classes)."""
    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    for i, filters in enumerate((16, 32), start=1):
        x = layers.Conv2D(filters, 3, padding="same", name=f"conv{i}")(x)
        x = layers.BatchNormalization(momentum=bn_momentum, name=f"bn{i}")(x)
        x = layers.ReLU(name=f"relu{i}")(x)
        x = layers.MaxPooling2D(name=f"pool{i}")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


def compile_classifier(model, learning_rate=1e-3):
    """Compiles a logits classifier with Adam and sparse categorical cross-entropy."""
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model
