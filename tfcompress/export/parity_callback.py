"""Converts the model to int8 TFLite during training, logs the Keras-vs-TFLite gap and guards QAT against PTQ."""

import warnings

import keras
import numpy as np
from absl import logging

from tfcompress.evaluation import litert
from tfcompress.evaluation.litert import evaluate_tflite
from tfcompress.export.tflite import to_tflite


class TFLiteParityCallback(keras.callbacks.Callback):
    """Every few epochs, converts the training model to int8 and compares it with Keras and with PTQ.

    A QAT model should compute in Keras what its int8 file computes; this
    callback measures that while training, so a growing gap (a layer the
    converter handles differently, ranges not settled) shows up before export.
    The gap is ``keras_accuracy - tflite_accuracy`` in percentage points.

    Given ``float_model`` (the float model the QAT model was made from), it is
    also the guard that QAT is worth it: the post-training int8 file of that
    model (``to_tflite(float_model, mode="int8", representative_data=...)``,
    converted once) is scored on the same held-out ``x``, and a ``UserWarning``
    naming both figures is raised when the QAT file is worse by more than
    ``tolerance``. The score is the accuracy on ``y`` when labels are given,
    else the relative error ``||file - float|| / ||float||`` of the outputs
    against ``float_model``'s (regression, autoencoders, distillation targets).

    Results go to ``callback.history`` (a list of dicts), to the epoch logs as
    ``tflite_accuracy`` and ``tflite_gap`` (so ``History`` records them when this
    callback precedes it), and to the absl log.

    Args:
        every_n_epochs: convert after every N-th epoch (1 = every epoch).
        x: held-out evaluation inputs (a few hundred to a few thousand samples).
        y: integer labels for ``x`` (or one-hot); may be None when
            ``float_model`` is given.
        representative_data: calibration inputs for the converter (and for the
            PTQ file of ``float_model``); defaults to the first 100 samples of
            ``x``. Pass what post-training int8 would get, e.g. ``x_train[:500]``.
        io_type: input/output type of the converted model, as in `to_tflite`.
        float_model: the float model QAT started from, or None for no PTQ comparison.
        tolerance: how much worse than PTQ the QAT file may score before the
            warning: percentage points of accuracy (with ``y``), or percent of
            PTQ's relative error (without).

    Raises:
        ValueError: bad ``every_n_epochs``, empty or mismatched ``x``/``y``, or
            ``y`` missing without ``float_model``.

    Example:

        >>> cb = tfc.TFLiteParityCallback(every_n_epochs=1, x=x_val[:1000], y=y_val[:1000],
        ...                               representative_data=x[:500], float_model=model)
        >>> qat.fit(x, y, epochs=3, callbacks=[cb])
        >>> cb.history[-1]["gap"], cb.history[-1]["ptq_accuracy"]
        (0.1, 91.0)
    """

    def __init__(self, every_n_epochs, x, y=None, representative_data=None, io_type="float32", float_model=None,
                 tolerance=0.5):
        super().__init__()
        if isinstance(every_n_epochs, bool) or not isinstance(every_n_epochs, int) or every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be an integer >= 1, got {every_n_epochs!r}.")
        x = np.asarray(x)
        if len(x) == 0:
            raise ValueError("x is empty; pass at least a few hundred evaluation samples.")
        if y is None and float_model is None:
            raise ValueError("y is None: pass labels for x, or float_model= to compare outputs with the float model's.")
        if float_model is not None and not isinstance(float_model, keras.Model):
            raise TypeError(f"float_model must be the float keras.Model QAT started from, got {type(float_model).__name__}.")
        if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or tolerance < 0:
            raise ValueError(f"tolerance must be a number >= 0, got {tolerance!r}.")
        labels = None
        if y is not None:
            labels = np.asarray(y)
            if labels.ndim > 1:
                labels = labels.argmax(axis=-1)
            if len(x) != len(labels):
                raise ValueError(f"x has {len(x)} samples but y has {len(labels)}; pass matching arrays.")
            labels = labels.astype(np.int64)
        self.every_n_epochs = every_n_epochs
        self.x = x
        self.labels = labels
        self.representative_data = x[:100] if representative_data is None else representative_data
        self.io_type = io_type
        self.float_model = float_model
        self.tolerance = float(tolerance)
        self.history = []
        self._ptq_score = None

    def _score(self, tflite):
        """Accuracy in % (with labels) or relative output error against the float model (without)."""
        if self.labels is not None:
            report = evaluate_tflite(tflite, x=self.x, y=self.labels, backends=("xnnpack",), num_runs=1, warmup_runs=0)
            return 100.0 * float(report.accuracy)
        reference = np.asarray(self.float_model.predict(self.x, verbose=0, batch_size=256), np.float64)
        outputs = np.asarray(litert.predict(bytes(tflite), self.x), np.float64).reshape(reference.shape)
        return float(np.linalg.norm(outputs - reference) / max(np.linalg.norm(reference), 1e-30))

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every_n_epochs:
            return
        tflite = to_tflite(self.model, mode="int8", representative_data=self.representative_data, io_type=self.io_type)
        record = {"epoch": epoch, "tflite_bytes": len(tflite)}
        score = self._score(tflite)
        if self.labels is not None:
            keras_predictions = self.model.predict(self.x, verbose=0, batch_size=256)
            keras_accuracy = 100.0 * float(np.mean(keras_predictions.argmax(axis=-1) == self.labels))
            record.update(keras_accuracy=keras_accuracy, tflite_accuracy=score, gap=keras_accuracy - score)
            if logs is not None:
                logs["tflite_accuracy"] = score / 100.0
                logs["tflite_gap"] = record["gap"]
            logging.info("epoch %d: Keras accuracy %.2f%%, int8 TFLite accuracy %.2f%%, gap %.2f points",
                         epoch + 1, keras_accuracy, score, record["gap"])
        else:
            record["tflite_relative_error"] = score
        if self.float_model is not None:
            self._compare_with_ptq(epoch, score, record)
        self.history.append(record)

    def _compare_with_ptq(self, epoch, score, record):
        if self._ptq_score is None:
            # The float model does not change during QAT: its PTQ file is converted and scored once.
            ptq = to_tflite(self.float_model, mode="int8", representative_data=self.representative_data,
                            io_type=self.io_type)
            self._ptq_score = self._score(ptq)
        ptq_score = self._ptq_score
        if self.labels is not None:
            record["ptq_accuracy"] = ptq_score
            worse = score < ptq_score - self.tolerance
            figures = f"accuracy {score:.2f}% vs {ptq_score:.2f}% for PTQ"
        else:
            record["ptq_relative_error"] = ptq_score
            worse = score > ptq_score * (1.0 + self.tolerance / 100.0)
            figures = f"relative error against the float model {score:.4f} vs {ptq_score:.4f} for PTQ"
        if worse:
            warnings.warn(
                f"TFLiteParityCallback: after epoch {epoch + 1} the QAT int8 file is worse than post-training int8 of "
                f"float model {self.float_model.name!r}: {figures} ({len(self.x)} held-out samples). Start QAT from "
                "PTQ's ranges (tfc.quantize_model(model, x_train[:500])), lower the learning rate, freeze ranges and "
                "BatchNormalization statistics (tfc.quantization.freeze), or ship the PTQ file.",
                UserWarning, stacklevel=2)
