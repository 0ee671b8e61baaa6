"""Shared by the benchmarks that run tfmot (under tf_keras, in a subprocess) as the baseline.

Imports nothing at module level: the tfmot worker must set TF_USE_LEGACY_KERAS before TensorFlow loads.
"""


def reference_cnn(tf_keras, input_shape=(28, 28, 1), num_classes=10):
    """``tfcompress.zoo.reference_cnn`` rebuilt with tf_keras layers (same layers, same order)."""
    layers = tf_keras.layers
    inputs = tf_keras.Input(shape=input_shape, name="image")
    x = inputs
    for i, filters in enumerate((32, 64, 128), start=1):
        x = layers.Conv2D(filters, 3, padding="same", name=f"conv{i}")(x)
        x = layers.BatchNormalization(name=f"bn{i}")(x)
        x = layers.ReLU(name=f"relu{i}")(x)
        if i < 3:
            x = layers.MaxPooling2D(name=f"pool{i}")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dense(128, activation="relu", name="fc1")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return tf_keras.Model(inputs, outputs, name="reference_cnn")


def fine_tune_learning_rate(schedule, learning_rate, steps, schedules):
    """The fine-tuning learning rate both sides of a benchmark use.

    Args:
        schedule: ``"constant"``, or ``"cosine"``: decayed to 0 over ``steps`` (what ``tfc.compress`` does).
        learning_rate: the (initial) rate.
        steps: training steps of the whole fine-tuning.
        schedules: ``keras.optimizers.schedules`` or tf_keras's, so tfmot gets the same schedule.
    """
    if schedule == "cosine":
        return schedules.CosineDecay(learning_rate, decay_steps=steps)
    return learning_rate
