"""Converts the model to int8 TFLite during training and logs the Keras-vs-TFLite accuracy gap."""

import keras
import numpy as np
from absl import logging

from tfcompress.evaluation.litert import evaluate_tflite
from tfcompress.export.tflite import to_tflite


class TFLiteParityCallback(keras.callbacks.Callback):
    """Every few epochs, converts the training model to int8 and compares accuracies.

    A QAT model should compute in Keras what its int8 file computes; this
    callback measures that while training, so a growing gap (a layer the
    converter handles differently, ranges not settled) shows up before export.
    The gap is ``keras_accuracy - tflite_accuracy`` in percentage points.

    Results go to ``callback.history`` (a list of dicts), to the epoch logs as
    ``tflite_accuracy`` and ``tflite_gap`` (so ``History`` records them when this
    callback precedes it), and to the absl log.

    Args:
        every_n_epochs: convert after every N-th epoch (1 = every epoch).
        x: evaluation inputs (a few hundred to a few thousand samples).
        y: integer labels for ``x`` (or one-hot).
        representative_data: calibration inputs for the converter; defaults
            to the first 100 samples of ``x`` (QAT ranges come from training,
            so a small set is enough).
        io_type: input/output type of the converted model, as in `to_tflite`.

    Example:

        >>> cb = tfc.TFLiteParityCallback(every_n_epochs=1, x=x_val[:1000], y=y_val[:1000])
        >>> qat.fit(x, y, epochs=3, callbacks=[cb])
        >>> cb.history[-1]["gap"]
        0.1
    """

    def __init__(self, every_n_epochs, x, y, representative_data=None, io_type="float32"):
        super().__init__()
        if isinstance(every_n_epochs, bool) or not isinstance(every_n_epochs, int) or every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be an integer >= 1, got {every_n_epochs!r}.")
        x = np.asarray(x)
        labels = np.asarray(y)
        if labels.ndim > 1:
            labels = labels.argmax(axis=-1)
        if len(x) != len(labels):
            raise ValueError(f"x has {len(x)} samples but y has {len(labels)}; pass matching arrays.")
        if len(x) == 0:
            raise ValueError("x is empty; pass at least a few hundred evaluation samples.")
        self.every_n_epochs = every_n_epochs
        self.x = x
        self.labels = labels.astype(np.int64)
        self.representative_data = x[:100] if representative_data is None else representative_data
        self.io_type = io_type
        self.history = []

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every_n_epochs:
            return
        keras_predictions = self.model.predict(self.x, verbose=0, batch_size=256)
        keras_accuracy = 100.0 * float(np.mean(keras_predictions.argmax(axis=-1) == self.labels))
        tflite = to_tflite(self.model, mode="int8", representative_data=self.representative_data, io_type=self.io_type)
        report = evaluate_tflite(tflite, x=self.x, y=self.labels, backends=("xnnpack",), num_runs=1, warmup_runs=0)
        tflite_accuracy = 100.0 * float(report.accuracy)
        record = {
            "epoch": epoch,
            "keras_accuracy": keras_accuracy,
            "tflite_accuracy": tflite_accuracy,
            "gap": keras_accuracy - tflite_accuracy,
            "tflite_bytes": len(tflite),
        }
        self.history.append(record)
        if logs is not None:
            logs["tflite_accuracy"] = tflite_accuracy / 100.0
            logs["tflite_gap"] = record["gap"]
        logging.info(
            "epoch %d: Keras accuracy %.2f%%, int8 TFLite accuracy %.2f%%, gap %.2f points",
            epoch + 1, keras_accuracy, tflite_accuracy, record["gap"],
        )
