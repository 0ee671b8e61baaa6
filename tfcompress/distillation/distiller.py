"""Knowledge distillation: train a small student to imitate a frozen teacher."""

import contextlib
import math
import numbers
import re
import threading

import keras
import numpy as np
import tensorflow as tf

from tfcompress.core import graph, validation

LABELS_KEY = "labels"
TEACHER_LOGITS_KEY = "teacher_logits"

# Marks the in-graph label check so `fit`/`evaluate` can turn its failure into a clear ValueError.
_LABEL_RANGE_MARKER = "tfcompress.Distiller: label out of range"


@keras.saving.register_keras_serializable(package="tfcompress")
class SoftEnsemble(keras.layers.Layer):
    """Logits whose temperature-softened distribution is the mean of its inputs' softened distributions.

    ``softmax(output / T) == mean_i softmax(logits_i / T)``: the output is ``T * log(mean_i softmax(logits_i / T))``,
    so a distillation loss at temperature ``T`` sees the ensemble's averaged soft targets.
    """

    def __init__(self, temperature=2.0, **kwargs):
        super().__init__(**kwargs)
        self.temperature = float(temperature)

    def call(self, logits):
        ops = keras.ops
        probabilities = ops.mean(ops.stack([ops.softmax(z / self.temperature, axis=-1) for z in logits]), axis=0)
        return self.temperature * ops.log(probabilities + 1e-12)

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature}


def _named_wrapper(model, name):
    inputs = keras.Input(batch_shape=model.inputs[0].shape, dtype=model.inputs[0].dtype)
    return keras.Model(inputs, model(inputs), name=name)


def ensemble_teacher(teachers, temperature):
    """One teacher model from several trained ones: their softened distributions, averaged (`SoftEnsemble`).

    Args:
        teachers: trained Functional or Sequential models with the same input and output shapes (logits).
        temperature: the distillation temperature the averaging is done at.

    Returns:
        A Functional ``keras.Model`` that outputs the ensemble's logits at that temperature.
    """
    teachers = list(teachers)
    if not teachers:
        raise ValueError("teacher is an empty list; pass one trained model or several.")
    for i, teacher in enumerate(teachers):
        graph.check_model(teacher, f"teacher[{i}]", action="distill from")
        graph.check_functional(teacher, "a teacher ensemble")
        _check_outputs_logits(teacher, f"teacher[{i}]")
        if i:
            _check_same_shape(teachers[0], teacher, "input", roles=("teacher[0]", f"teacher[{i}]"))
            _check_same_shape(teachers[0], teacher, "output", roles=("teacher[0]", f"teacher[{i}]"))
    if len(teachers) == 1:
        return teachers[0]
    inputs = keras.Input(batch_shape=teachers[0].inputs[0].shape, dtype=teachers[0].inputs[0].dtype, name="image")
    names = [t.name for t in teachers]
    if len(set(names)) < len(names):
        # Keras refuses two layers of one name in a model: teachers built by one function (or one model passed
        # twice) get a uniquely named wrapper each; the teachers themselves are not renamed.
        teachers = [_named_wrapper(t, f"teacher_{i}_{t.name}") for i, t in enumerate(teachers)]
    outputs = SoftEnsemble(temperature, name="soft_ensemble")([t(inputs) for t in teachers])
    return keras.Model(inputs, outputs, name=f"ensemble_of_{len(teachers)}")


@keras.saving.register_keras_serializable(package="tfcompress")
class Distiller(keras.distillation.Distiller):
    """Trains ``student`` on the hard labels and on the softened outputs of a frozen ``teacher``.

    A ``keras.Model`` built on ``keras.distillation.Distiller``: ``compile``, ``fit``,
    ``evaluate`` and ``predict`` work as for any Keras model, ``predict`` returns the
    student's logits, and ``distiller.student`` is the plain Keras model to export.

    The loss on a batch with student logits ``z_s`` and teacher logits ``z_t`` is::

        loss = alpha * hard_loss(labels, z_s)
             + (1 - alpha) * (T**2 * KL(softmax(z_t / T) || softmax(z_s / T))
                              + feature_weight * sum(feature_losses))

    * ``alpha`` weights the **hard-label** loss (``compile(loss=...)``, by default sparse
      categorical cross-entropy on logits); ``1 - alpha`` weights the distillation terms.
      This is the convention of Keras's ``student_loss_weight`` and of the keras.io
      distillation example; note that some papers use the opposite.
    * The soft loss is the KL divergence between the temperature-softened distributions,
      averaged over the batch and multiplied by ``T**2`` (Hinton et al., 2015) so its
      gradients keep the same scale whatever the temperature.
    * Each feature loss compares the teacher's and the student's activations at a pair
      of layers. ``feature_loss="mse"``: mean squared error of the activations
      (FitNets-style hints; the layers need the same output shape).
      ``feature_loss="attention"``: attention transfer (Zagoruyko & Komodakis, 2017):
      each activation map ``(H, W, C)`` becomes ``mean_c(a**2)`` flattened and
      L2-normalised, and the loss is the squared distance of the two maps summed over
      positions, averaged over the batch; only the spatial shapes must match, so a
      narrow student can learn from a wide teacher. Feature distillation cannot use the
      teacher cache. In ``fit`` and ``evaluate`` the student's activations come from the
      same forward pass as its logits (one student pass per step, so Dropout masks and
      BatchNormalization updates are those of that single pass).

    The teacher always runs with ``training=False``: its weights and BatchNormalization
    statistics never change and only the student's weights are trained. As in
    ``keras.distillation.Distiller``, the constructor sets ``teacher.trainable = False``
    **on the model you pass, and leaves it so**: the freeze is what keeps the teacher's
    weights out of the optimizer and out of ``PruningCallback`` (which skips
    non-trainable weights), so it must last as long as the Distiller is trained. To train
    the teacher itself again afterwards, set ``teacher.trainable = True`` (this also
    unfreezes any of its sub-layers you had frozen yourself).

    Both models must output logits (no final softmax) from a single output of the same
    shape. For Functional and Sequential models this is checked when the Distiller is
    built; for subclassed models, whose shapes are unknown until they run, the first
    ``fit``/``evaluate`` step (or ``compute_loss`` call) checks it, at trace time.

    When the inputs are not augmented, the teacher's logits can be computed once with
    :meth:`cache_teacher` and reused every epoch, so a distillation epoch costs about as
    much as a plain student epoch.

    Args:
        teacher: a trained, built ``keras.Model`` that outputs logits, or a list of them
            (an ensemble: their temperature-softened distributions are averaged, see
            `ensemble_teacher`, and teach the one student).
        student: the ``keras.Model`` to train; same input and output shapes as the teacher.
        temperature: softmax temperature ``T > 0`` of the soft loss. Higher values pass
            more of the teacher's "dark knowledge" about wrong classes.
        alpha: weight in [0, 1] of the hard-label loss; ``1 - alpha`` weights distillation.
            ``alpha=0`` trains on the teacher alone (labels are then optional), ``alpha=1``
            is plain supervised training. The defaults (T=2, alpha=0.5) come from a small
            sweep on Fashion-MNIST (reference CNN teacher, `zoo.small_student`, 2 epochs):
            T=2/alpha=0.5 71.9%, T=1/0.5 67.9%, plain training 65.5%, T=4/0.1 38.3%. When
            the student trains to convergence (cosine-decayed rate), no setting beat plain
            training there and lower T / higher alpha lost least: try T=1 or alpha=0.9 and
            compare with a student trained without a teacher (README, Distillation).
        feature_layers: optional dict ``{teacher_layer_name: student_layer_name}`` of
            intermediate layers whose activations the student should match.
        feature_weight: factor ``>= 0`` on each feature loss, relative to the soft loss;
            0 turns feature distillation off. Unlike ``alpha`` it is not a share of a
            whole but a scale between losses in different units (activation distances
            vs. ``T**2`` times a KL divergence), so values above 1 are legitimate: on the
            8x8 digits of the tests the feature losses were 3% to 25% of the soft loss.
        feature_loss: ``"mse"`` or ``"attention"`` (see above).
        name: model name.

    Returns:
        A ``keras.Model``; call ``compile`` then ``fit``.

    Example:

        >>> teacher = model                            # a trained classifier (logits)
        >>> distiller = tfc.Distiller(teacher, tfc.zoo.small_student())
        >>> distiller.compile(optimizer="adam", metrics=["accuracy"])
        >>> distiller.fit(distiller.cache_teacher(x, y, batch_size=64), epochs=2)
        >>> distiller.evaluate(x_test, y_test)
        >>> distiller.student.save("student.keras")  # holds no teacher weights
    """

    def __init__(
        self,
        teacher,
        student,
        temperature=2.0,
        alpha=0.5,
        feature_layers=None,
        feature_weight=1.0,
        feature_loss="mse",
        name="distiller",
        **kwargs,
    ):
        if isinstance(teacher, (list, tuple)):
            if feature_layers:
                raise ValueError("feature_layers needs one teacher's activations; with a list of teachers, "
                                 "distil their logits only (leave feature_layers unset).")
            teacher = ensemble_teacher(teacher, _check_number(temperature, "temperature"))
        # The teacher must be trained, so built; a subclassed student may be built by its first step.
        graph.check_model(teacher, "teacher", action="distill from")
        graph.check_model(student, "student", action="distill into", require_built=False)
        temperature = _check_number(temperature, "temperature")
        if not temperature > 0:
            raise ValueError(
                f"temperature must be > 0, got temperature={temperature!r}. "
                "Typical values are 2 to 8; 1 means no softening."
            )
        alpha = _check_number(alpha, "alpha")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(
                f"alpha must be in [0, 1], got alpha={alpha!r}. It weights the hard-label loss; "
                "1 - alpha weights the distillation loss."
            )
        feature_weight = _check_number(feature_weight, "feature_weight")
        if not feature_weight >= 0:
            raise ValueError(
                f"feature_weight must be >= 0, got feature_weight={feature_weight!r}. It scales "
                "the feature losses against the soft loss; use 0 to turn them off."
            )
        for model, role in ((teacher, "teacher"), (student, "student")):
            _check_outputs_logits(model, role)
        _check_same_shape(teacher, student, "input")
        _check_same_shape(teacher, student, "output")
        if feature_loss not in _FEATURE_LOSSES:
            raise ValueError(
                f"feature_loss must be one of {sorted(_FEATURE_LOSSES)}, got feature_loss={feature_loss!r}."
            )
        feature_layers = dict(feature_layers or {})
        for teacher_layer, student_layer in feature_layers.items():
            _check_feature_pair(teacher, student, teacher_layer, student_layer, feature_loss)

        # A KLDivergence instance, not the "kl_divergence" string: LogitsDistillation applies
        # the softmax and the T**2 factor only to the instance (Keras 3.15 sends the string's
        # plain function raw logits).
        losses = [
            keras.distillation.LogitsDistillation(
                temperature=temperature, loss=keras.losses.KLDivergence()
            )
        ]
        losses += [
            keras.distillation.FeatureDistillation(
                loss=_FEATURE_LOSSES[feature_loss](), teacher_layer_name=t, student_layer_name=s
            )
            for t, s in feature_layers.items()
        ]
        super().__init__(
            teacher=teacher,
            student=student,
            distillation_losses=losses,
            distillation_loss_weights=[1.0] + [feature_weight] * len(feature_layers),
            student_loss_weight=alpha,
            name=name,
            **kwargs,
        )
        self.temperature = temperature
        self.alpha = alpha
        self.feature_layers = feature_layers
        self.feature_weight = feature_weight
        self.feature_loss = feature_loss
        self._teacher_features = _feature_model(teacher, list(feature_layers))
        self._student_features = _feature_model(student, list(feature_layers.values()))
        self._hard_loss = None
        self._compile_args = None
        # Per-thread (tf.distribute traces each replica in its own thread) hand-over of the
        # student's [logits, *activations] from call() to compute_loss() within one step.
        self._student_pass = threading.local()
        # Every weight lives in the teacher and student, so once the student is built the
        # Distiller is too; callbacks that inspect weights in on_train_begin (pruning) need it.
        if student.built:
            self.built = True

    @property
    def logits_distillation(self):
        """The ``keras.distillation.LogitsDistillation`` computing the soft loss."""
        return self.distillation_losses[0]

    def compile(self, optimizer="adam", loss=None, metrics=None, **kwargs):
        """Configures the distiller for training.

        Args:
            optimizer: optimizer for the student's weights (name or instance).
            loss: hard-label loss on the student's logits. Defaults to
                ``keras.losses.SparseCategoricalCrossentropy(from_logits=True)`` (integer
                labels); use ``CategoricalCrossentropy(from_logits=True)`` for one-hot labels.
            metrics: list of metrics computed on the student's logits and the labels.
            **kwargs: passed to ``keras.Model.compile``.
        """
        if loss is None:
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        hard_loss = keras.losses.get(loss) if isinstance(loss, str) else loss
        if not callable(hard_loss):
            raise ValueError(f"loss must be a Keras loss or loss name, got loss={loss!r}.")
        if _expects_probabilities(hard_loss):
            raise ValueError(
                f"loss={loss!r} expects probabilities, but the student outputs logits (the "
                "Distiller needs logits to apply the temperature). Use a loss on logits, e.g. "
                "keras.losses.SparseCategoricalCrossentropy(from_logits=True)."
            )
        if metrics is not None and not isinstance(metrics, (list, tuple)):
            metrics = [metrics]
        self._hard_loss = hard_loss
        # A Keras Loss divides by the replica count under tf.distribute (gradients are summed across
        # replicas); a bare loss function does not, so it is wrapped to scale like the soft loss.
        self._scaled_hard_loss = (hard_loss if isinstance(hard_loss, keras.losses.Loss)
                                  else keras.losses.LossFunctionWrapper(hard_loss))
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)
        self._compile_args = {"optimizer": self.optimizer, "loss": loss, "metrics": metrics}

    def get_compile_config(self):
        if self._compile_args is None:
            return {}
        return keras.saving.serialize_keras_object(self._compile_args)

    def compile_from_config(self, config):
        self.compile(**keras.saving.deserialize_keras_object(config))
        # Creates the optimizer's slots now so the saved ones can be loaded into them.
        self.optimizer.build(self.trainable_variables)

    def cache_teacher(self, x, y=None, batch_size=32, shuffle=True, seed=None):
        """Runs the teacher once over ``x`` and returns a dataset to ``fit`` on for many epochs.

        Only valid when the inputs are not augmented: the cached logits belong to these
        exact images. Each element is ``(images, {"labels": y, "teacher_logits": logits})``;
        ``fit``/``evaluate`` on it give the same losses as on ``(x, y)``, without the
        teacher's forward pass.

        Args:
            x: NumPy array of inputs.
            y: labels for the hard-label loss, or None when ``alpha == 0``.
            batch_size: batch size of the returned dataset (and of the teacher's pass).
            shuffle: reshuffle the samples every epoch.
            seed: shuffling seed, for reproducible runs.

        Returns:
            A batched ``tf.data.Dataset``.
        """
        if self.feature_layers:
            raise ValueError(
                f"cache_teacher caches only the teacher's logits, but feature_layers="
                f"{self.feature_layers!r} needs its intermediate activations at every step. "
                "Pass the uncached data to fit instead."
            )
        if isinstance(x, tf.data.Dataset):
            raise TypeError(
                "cache_teacher takes arrays (x, y), not a tf.data.Dataset: a dataset may "
                "augment or reorder samples, which would mismatch the cached logits."
            )
        x = np.asarray(x)
        if not isinstance(batch_size, numbers.Integral) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got batch_size={batch_size!r}.")
        if y is None:
            if self.alpha > 0:
                raise ValueError(
                    f"y is None but alpha={self.alpha} weights the hard-label loss; pass the "
                    "labels, or build the Distiller with alpha=0 to train on the teacher alone."
                )
            targets = {}
        else:
            y = np.asarray(y)
            try:
                classes = int(self.student.output_shape[-1])
            except (AttributeError, ValueError, TypeError):  # a subclassed student: shapes known at run time
                classes = None
            if classes:
                validation.check_labels(y, int(classes), num_samples=len(x))
            elif len(y) != len(x):
                raise ValueError(f"y has {len(y)} labels but x has {len(x)} samples; pass one label per sample of x.")
            targets = {LABELS_KEY: y}
        targets[TEACHER_LOGITS_KEY] = self.teacher.predict(x, batch_size=batch_size, verbose=0)
        dataset = tf.data.Dataset.from_tensor_slices((x, targets))
        if shuffle:
            dataset = dataset.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
        return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)

    def call(self, inputs, training=None):
        if self._student_features is not None and getattr(self._student_pass, "active", False):
            # Inside train_step/test_step with feature_layers: one pass gives the logits and
            # the activations; compute_loss picks the activations up for these logits.
            outputs = self._student_features(inputs, training=training)
            self._student_pass.outputs = outputs
            return outputs[0]
        return self.student(inputs, training=training)

    def train_step(self, data):
        with self._single_student_pass():
            return super().train_step(data)

    def test_step(self, data):
        with self._single_student_pass():
            return super().test_step(data)

    @contextlib.contextmanager
    def _single_student_pass(self):
        """Lets call() hand the student's activations to compute_loss within one step."""
        state = self._student_pass
        state.active, state.outputs = True, None
        try:
            yield
        finally:
            state.active, state.outputs = False, None

    def _take_student_outputs(self, y_pred):
        """The ``[logits, *activations]`` of the pass that produced ``y_pred``, if call() kept them."""
        outputs = getattr(self._student_pass, "outputs", None)
        if outputs is None or outputs[0] is not y_pred:
            return None
        self._student_pass.outputs = None
        return outputs

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Returns the weighted loss described in the class docstring for one batch.

        ``y`` is the labels, or the targets dict of a :meth:`cache_teacher` dataset.
        """
        if sample_weight is not None:
            raise ValueError(
                "The Distiller does not support sample_weight (the distillation loss has no "
                "per-sample weighting); drop sample_weight / class_weight."
            )
        if self._hard_loss is None:
            raise RuntimeError("Call distiller.compile(...) before computing a loss.")
        labels, cached_logits = _split_targets(y)
        if y_pred is None:
            y_pred = self(x, training=training)
        y_pred = _single_logits(y_pred, self.student, "student")

        # The teacher runs first, so a teacher/student mismatch is reported before the
        # labels are checked against the student's (possibly wrong) number of logits.
        teacher_logits = teacher_outputs = None
        if self.alpha < 1:
            if cached_logits is not None:
                if self.feature_layers:
                    raise ValueError(
                        "This batch carries cached teacher logits, but feature_layers needs the "
                        "teacher's activations; pass uncached data to fit."
                    )
                _check_cached_logits(cached_logits, y_pred)
                teacher_logits = keras.ops.cast(cached_logits, y_pred.dtype)
            else:
                if self.feature_layers:
                    teacher_outputs = self._teacher_features(x, training=False)
                    teacher_logits = teacher_outputs[0]
                else:
                    teacher_logits = _single_logits(self.teacher(x, training=False), self.teacher, "teacher")
                # Static shapes, known when the step is traced: free per step, and it covers
                # subclassed models, whose output shapes __init__ could not see.
                _check_logit_shapes(self.teacher, self.student, teacher_logits, y_pred)
            # The teacher's outputs are targets: no gradient may flow into the teacher.
            teacher_logits = keras.ops.stop_gradient(teacher_logits)

        hard_loss = keras.ops.zeros(())
        if self.alpha > 0:
            if labels is None:
                raise ValueError(
                    f"The batch has no labels but alpha={self.alpha} weights the hard-label "
                    "loss; pass labels, or build the Distiller with alpha=0."
                )
            hard_loss = keras.ops.mean(self._scaled_hard_loss(self._checked_labels(labels, y_pred), y_pred))

        distill_loss = keras.ops.zeros(())
        if self.alpha < 1:
            distill_loss = self.logits_distillation.compute_loss(teacher_logits, y_pred)
            if self.feature_layers:
                student_outputs = self._take_student_outputs(y_pred)
                if student_outputs is None:
                    # y_pred came from outside train_step/test_step (a direct compute_loss
                    # call): a separate pass. The student's training flag matters here: with
                    # training=True in evaluate, its BatchNormalization statistics would drift.
                    student_outputs = self._student_features(x, training=training)
                for (teacher_layer, student_layer), feature_loss, teacher_act, student_act in zip(
                    self.feature_layers.items(), self.distillation_losses[1:], teacher_outputs[1:],
                    student_outputs[1:],
                ):
                    _check_feature_shapes(
                        teacher_layer, student_layer, tuple(teacher_act.shape), tuple(student_act.shape),
                        self.feature_loss, when=" on this batch",
                    )
                    distill_loss = distill_loss + self.feature_weight * feature_loss.compute_loss(
                        keras.ops.stop_gradient(teacher_act), student_act
                    )

        total = self.alpha * hard_loss + (1.0 - self.alpha) * distill_loss
        # Regularizers of the student (the teacher's are constant and would only shift the value).
        for extra in self.student.losses:
            total = total + keras.ops.cast(keras.ops.sum(extra), total.dtype)
        # The losses are scaled by 1 / replicas for the gradients; the logged values are the per-batch means.
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        self.student_loss_tracker.update_state(hard_loss * replicas)
        self.distillation_loss_tracker.update_state(distill_loss * replicas)
        self.total_loss_tracker.update_state(total * replicas)
        return total

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        labels, _ = _split_targets(y)
        if labels is None:
            if self._compile_args and self._compile_args["metrics"]:
                raise ValueError(
                    f"metrics={self._compile_args['metrics']!r} need labels, but this batch has "
                    "none. Compile without metrics to train on unlabeled data, and evaluate the "
                    "student on labeled data afterwards."
                )
            return self.get_metrics_result()
        return super().compute_metrics(x, labels, y_pred, sample_weight)

    def fit(self, *args, **kwargs):
        with _clear_label_errors():
            return super().fit(*args, **kwargs)

    def evaluate(self, *args, **kwargs):
        with _clear_label_errors():
            return super().evaluate(*args, **kwargs)

    def _checked_labels(self, labels, y_pred):
        """Fails clearly (at trace time if possible) when labels do not fit the hard loss."""
        num_classes = y_pred.shape[-1]
        label_shape = tuple(labels.shape)
        sparse = _is_sparse_loss(self._hard_loss)
        if sparse:
            if len(label_shape) == len(y_pred.shape) and label_shape[-1] not in (1, None):
                raise ValueError(
                    f"Labels of shape {label_shape} look one-hot, but the hard-label loss "
                    f"{_loss_name(self._hard_loss)} expects class indices of shape (batch,). "
                    "Pass integer labels (e.g. y.argmax(-1)) or compile with "
                    "loss=keras.losses.CategoricalCrossentropy(from_logits=True)."
                )
            if num_classes is None:
                return labels
            as_int = tf.cast(labels, tf.int64)
            check = tf.debugging.Assert(
                tf.logical_and(tf.reduce_all(as_int >= 0), tf.reduce_all(as_int < num_classes)),
                [_LABEL_RANGE_MARKER, num_classes, tf.reduce_min(as_int), tf.reduce_max(as_int)],
            )
            with tf.control_dependencies([check]):
                return tf.identity(labels)
        if _is_categorical_loss(self._hard_loss) and label_shape[-1:] != (num_classes,):
            raise ValueError(
                f"Labels of shape {label_shape} do not fit the student's {num_classes} logits: "
                f"{_loss_name(self._hard_loss)} expects one-hot labels of shape (batch, "
                f"{num_classes}). Pass one-hot labels or compile with "
                "loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True) for class indices."
            )
        return labels

    def get_config(self):
        return {
            "name": self.name,
            "teacher": keras.saving.serialize_keras_object(self.teacher),
            "student": keras.saving.serialize_keras_object(self.student),
            "temperature": self.temperature,
            "alpha": self.alpha,
            "feature_layers": dict(self.feature_layers),
            "feature_weight": self.feature_weight,
            "feature_loss": self.feature_loss,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["teacher"] = keras.saving.deserialize_keras_object(config["teacher"])
        config["student"] = keras.saving.deserialize_keras_object(config["student"])
        return cls(**config)


def _check_number(value, argument):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{argument} must be a finite number, got {argument}={value!r}.")
    return float(value)


def _single_tensor(tensors, model, role, kind):
    if len(tensors) != 1:
        raise ValueError(
            f"The {role} {model.name!r} has {len(tensors)} {kind}s; the Distiller supports "
            f"single-input, single-output classifiers. Wrap the {role} so it has one of each."
        )
    return tensors[0]


def _check_outputs_logits(model, role):
    if not getattr(model, "outputs", None):
        # Subclassed model: compute_loss checks its output (one tensor, the teacher's shape)
        # when the first step is traced. A final softmax cannot be seen from outside.
        return
    _single_tensor(model.outputs, model, role, "output")
    last = model.layers[-1] if model.layers else None
    activation = getattr(last, "activation", None)
    if isinstance(last, keras.layers.Softmax) or getattr(activation, "__name__", None) == "softmax":
        raise ValueError(
            f"The {role} {model.name!r} ends in a softmax (layer {last.name!r}); the Distiller "
            "needs logits to apply the temperature. Remove the softmax (e.g. Dense(10) with no "
            "activation) and train with from_logits=True."
        )


def _check_same_shape(teacher, student, kind, roles=("teacher", "student")):
    attribute = kind + "s"
    if not getattr(teacher, attribute, None) or not getattr(student, attribute, None):
        return
    teacher_shape = tuple(_single_tensor(getattr(teacher, attribute), teacher, "teacher", kind).shape)
    student_shape = tuple(_single_tensor(getattr(student, attribute), student, "student", kind).shape)
    compatible = len(teacher_shape) == len(student_shape) and all(
        a is None or b is None or a == b for a, b in zip(teacher_shape, student_shape)
    )
    if not compatible:
        hint = (
            "Both must predict the same classes." if kind == "output"
            else "Both must read the same images."
        )
        raise ValueError(
            f"The {roles[0]} {teacher.name!r} {kind} shape {teacher_shape} does not match the {roles[1]} "
            f"{student.name!r} {kind} shape {student_shape}. {hint}"
        )


def _single_logits(outputs, model, role):
    """The one logits tensor a model returned; fails clearly for several outputs."""
    if isinstance(outputs, (list, tuple)) and len(outputs) == 1:
        outputs = outputs[0]
    if isinstance(outputs, (list, tuple, dict)) or not hasattr(outputs, "shape"):
        if isinstance(outputs, (list, tuple, dict)):
            got = keras.tree.map_structure(lambda t: tuple(getattr(t, "shape", ())), outputs)
        else:
            got = outputs
        raise ValueError(
            f"The {role} {model.name!r} returned {type(outputs).__name__} {got!r:.200}; the "
            f"Distiller supports single-output classifiers. Make the {role}'s call() return one "
            "logits tensor of shape (batch, classes)."
        )
    return outputs


def _check_logit_shapes(teacher, student, teacher_logits, student_logits):
    """Raises at trace time when the two models' logits cannot be compared class by class."""
    teacher_shape = tf.TensorShape(teacher_logits.shape)
    student_shape = tf.TensorShape(student_logits.shape)
    if not teacher_shape.is_compatible_with(student_shape):
        raise ValueError(
            f"The teacher {teacher.name!r} output shape {_shape_tuple(teacher_shape)} does not match "
            f"the student {student.name!r} output shape {_shape_tuple(student_shape)}: the soft "
            "loss compares their logits class by class. Give the student the teacher's number of "
            "outputs (the same classes, in the same order)."
        )


def _shape_tuple(shape):
    return "(unknown rank)" if shape.rank is None else tuple(shape.as_list())


def _check_feature_shapes(teacher_layer, student_layer, teacher_shape, student_shape, feature_loss, when=""):
    """Raises when a feature_layers pair cannot be compared by ``feature_loss``."""
    pair = (
        f"feature_layers pairs teacher layer {teacher_layer!r} (output shape {teacher_shape}{when}) "
        f"with student layer {student_layer!r} (output shape {student_shape}{when})"
    )
    teacher_shape, student_shape = tf.TensorShape(teacher_shape), tf.TensorShape(student_shape)
    if feature_loss == "mse" and not teacher_shape.is_compatible_with(student_shape):
        raise ValueError(
            f"{pair}; feature_loss='mse' needs equal shapes. Pick layers of the same shape, or use "
            "feature_loss='attention', which only needs the same spatial size."
        )
    if feature_loss == "attention" and (
        teacher_shape.rank != 4
        or student_shape.rank != 4
        or not teacher_shape[:-1].is_compatible_with(student_shape[:-1])
    ):
        raise ValueError(
            f"{pair}; feature_loss='attention' needs image activations (batch, height, width, "
            "channels) of the same height and width. Pick layers at the same resolution."
        )


def _check_feature_pair(teacher, student, teacher_layer, student_layer, feature_loss):
    shapes = []
    for model, role, layer_name in ((teacher, "teacher", teacher_layer), (student, "student", student_layer)):
        if not getattr(model, "inputs", None):
            raise ValueError(
                f"feature_layers needs Functional or Sequential models, but the {role} "
                f"{model.name!r} is subclassed (no symbolic inputs). Distil logits only."
            )
        names = [layer.name for layer in model.layers]
        if layer_name not in names:
            raise ValueError(
                f"feature_layers names {role} layer {layer_name!r}, which {model.name!r} does not "
                f"have. Its layers are: {names}."
            )
        shapes.append(tuple(model.get_layer(layer_name).output.shape))
    _check_feature_shapes(teacher_layer, student_layer, shapes[0], shapes[1], feature_loss)


class _AttentionTransfer(keras.losses.Loss):
    """Squared distance of L2-normalised spatial attention maps ``mean_c(a**2)``, per sample."""

    def __init__(self, name="attention_transfer"):
        super().__init__(name=name)

    def call(self, y_true, y_pred):
        return keras.ops.sum(keras.ops.square(_attention_map(y_true) - _attention_map(y_pred)), axis=-1)


def _attention_map(activations):
    energy = keras.ops.mean(keras.ops.square(activations), axis=-1)
    flat = keras.ops.reshape(energy, (keras.ops.shape(energy)[0], -1))
    # The epsilon keeps an all-zero map (dead ReLUs) from dividing by zero.
    return flat / (keras.ops.norm(flat, axis=-1, keepdims=True) + 1e-12)


_FEATURE_LOSSES = {"mse": keras.losses.MeanSquaredError, "attention": _AttentionTransfer}


def _feature_model(model, layer_names):
    """Model returning ``[final_output, *activations]`` in one pass, or None without layers."""
    if not layer_names:
        return None
    outputs = [model.outputs[0]] + [model.get_layer(name).output for name in layer_names]
    return keras.Model(model.input, outputs, name=f"{model.name}_features")


def _split_targets(y):
    """Returns ``(labels, cached_teacher_logits)`` from plain labels or a cache_teacher dict."""
    if isinstance(y, dict) and TEACHER_LOGITS_KEY in y:
        unknown = set(y) - {LABELS_KEY, TEACHER_LOGITS_KEY}
        if unknown:
            raise ValueError(
                f"Cached targets have unexpected keys {sorted(unknown)}; build them with "
                "distiller.cache_teacher(x, y)."
            )
        return y.get(LABELS_KEY), y[TEACHER_LOGITS_KEY]
    return y, None


def _check_cached_logits(cached_logits, y_pred):
    if tuple(cached_logits.shape[1:]) != tuple(y_pred.shape[1:]):
        raise ValueError(
            f"Cached teacher logits of shape {tuple(cached_logits.shape)} do not match the "
            f"student's output shape {tuple(y_pred.shape)}. Rebuild the cache with this "
            "distiller's cache_teacher()."
        )


def _loss_name(loss):
    return getattr(loss, "name", None) or getattr(loss, "__name__", None) or type(loss).__name__


def _loss_kind(loss):
    if isinstance(loss, keras.losses.SparseCategoricalCrossentropy):
        return "sparse"
    if isinstance(loss, keras.losses.CategoricalCrossentropy):
        return "categorical"
    name = getattr(loss, "__name__", "")
    if name == "sparse_categorical_crossentropy":
        return "sparse"
    if name == "categorical_crossentropy":
        return "categorical"
    return None


def _is_sparse_loss(loss):
    return _loss_kind(loss) == "sparse"


def _is_categorical_loss(loss):
    return _loss_kind(loss) == "categorical"


def _expects_probabilities(loss):
    """True for cross-entropies configured for probabilities (the Keras default)."""
    kind = _loss_kind(loss)
    if kind is None:
        return False
    if isinstance(loss, keras.losses.Loss):
        return not loss.get_config().get("from_logits", False)
    return True  # The bare functions default to from_logits=False.


@contextlib.contextmanager
def _clear_label_errors():
    """Turns the in-graph label range check's TF error into a ValueError naming the labels."""
    try:
        yield
    except tf.errors.InvalidArgumentError as exc:
        if _LABEL_RANGE_MARKER not in str(exc):
            raise
        values = re.findall(r"-?\d+", str(exc).split(_LABEL_RANGE_MARKER, 1)[1])[:3]
        num_classes, low, high = (values + ["?"] * 3)[:3]
        raise ValueError(
            f"Labels must be class indices in [0, {num_classes}) for a student with {num_classes} "
            f"logits, but a batch held labels from {low} to {high}. Fix the labels, or give the "
            "student (and teacher) as many outputs as there are classes."
        ) from None
