"""One verb for a whole compression chain: ``compress(model, data, recipe)``.

A recipe is a list of small step objects run in order on (a copy of) the model:

    >>> result = tfc.compress(model, data, [tfc.Prune(0.75), tfc.QuantizationAwareTraining(), tfc.Convert("int8")])
    >>> result.artifacts["int8"]            # the .tflite bytes
    >>> print(result.to_markdown())          # the evaluation of every artifact

or a named recipe: ``"int8"``, ``"float16"``, ``"dynamic"``, ``"prune-int8"``, ``"qat-int8"``,
``"prune-qat-int8"``, ``"ptq-all"`` (float32, float16, dynamic, int8). The demo and the CLI
are thin users of this function.
"""

import dataclasses
import math
import os
import sys
import time

import keras
import numpy as np

from tfcompress import quantization
from tfcompress.clustering import ClusteringCallback, check_arguments, cluster_weights
from tfcompress.core import datasets, graph, validation
from tfcompress.core.backup import BackupAndRestore
from tfcompress.distillation import Distiller
from tfcompress.evaluation.litert import evaluate_many
from tfcompress.evaluation.reports import compare
from tfcompress.export.tflite import DEFAULT_TIMEOUT_S, MODES, to_tflite
from tfcompress.lowrank import factorize
from tfcompress.pruning import ChannelPruningCallback, PolynomialDecay, PruningCallback, shrink
from tfcompress.pruning.importance import check_selection


def fit_verbosity(verbose=1):
    """The ``verbose=`` for Keras ``fit``: 0 when quiet, progress bars (1) on a terminal, else one line per epoch (2).

    Progress bars redraw with carriage returns; in a log file or a pipe one line per epoch reads better.
    """
    if not verbose:
        return 0
    try:
        return 1 if sys.stdout is not None and sys.stdout.isatty() else 2
    except (AttributeError, ValueError):  # a replaced or closed stdout
        return 2


class Step:
    """What a recipe step is: a small frozen dataclass that carries its settings and its own behaviour.

    `compress` calls `apply` for each step in order (after seeding Keras's random generators), appends
    `tag` to the chain (the default name of a later `Convert`'s artifact) and logs the returned message;
    `tfcompress.auto_compress` reports `describe` and budgets `epochs`. A new kind of step subclasses
    this and implements these four; the ones below are the toolkit's.

    Attributes:
        kind: the name of its backup folder, ``step<index>-<kind>`` under ``backup_dir``.
        epochs: the epochs it trains (0 for none).
        min_epochs: the fewest epochs it accepts: 1 where training is the step (pruning, QAT), 0 where
            it changes the model itself and fine-tuning is optional (clustering, factorization).
        ranges: ``{setting: (what it must be, check)}``, checked when the step is made, e.g.
            ``{"sparsity": ("in [0, 1)", lambda v: 0 <= v < 1)}``.
        tag_format, describe_format: `tag` and `describe` as format strings over the settings, where
            ``{name_pct}`` is a fraction setting in percent: ``"prune{sparsity_pct}"``,
            ``"prune {sparsity_pct}%"`` (the epochs are appended to the description).
    """

    kind = None
    epochs = 0
    min_epochs = 0
    ranges = {}
    tag_format = None
    describe_format = None

    def __post_init__(self):
        """Checks ``epochs`` against `min_epochs` and every setting of `ranges`."""
        if self.epochs or self.min_epochs:
            self.check_setting("epochs", isinstance(self.epochs, int) and self.epochs >= 1, "a positive integer")
        for name, (expected, check) in self.ranges.items():
            self.check_setting(name, check(getattr(self, name)), expected)

    def check_setting(self, name, ok, expected):
        """Raises, unless ``ok``, the error of a bad setting: ``Prune(sparsity=1.5): sparsity must be in [0, 1).``

        Args:
            name: the field checked.
            ok: whether its value is acceptable.
            expected: what it must be, as the message ends (``"in [0, 1)"``).

        Raises:
            ValueError: quoting the step, the field and its value.
        """
        if not ok:
            raise ValueError(f"{type(self).__name__}({name}={getattr(self, name)!r}): {name} must be {expected}.")

    def apply(self, model, run):
        """Runs the step on ``model`` with the data and settings of ``run`` (a `RecipeRun`).

        Returns:
            ``(the model after the step, a one-line message for the log)``.
        """
        raise NotImplementedError

    def tag(self):
        """Its part of the default artifact name (``"prune75"``), or None when it adds none."""
        return self.tag_format.format(**self._settings()) if self.tag_format else None

    def describe(self, teacher_name="the teacher"):
        """A few words for reports (``"prune 75% (2 ep)"``); ``teacher_name`` is what a `Distill` step's teacher is
        called there."""
        if self.describe_format is None:
            raise NotImplementedError(f"{type(self).__name__} has no describe_format and no describe()")
        return f"{self.describe_format.format(**self._settings())} ({self.epochs} ep)"

    def _settings(self):
        settings = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        percents = {f"{name}_pct": round(100 * value) for name, value in settings.items()
                    if isinstance(value, (int, float)) and not isinstance(value, bool)}
        return {**settings, **percents}


class RecipeRun:
    """What `Step.apply` gets besides the model: the data, the training settings and the chain so far.

    Every training step fine-tunes with Adam at its own ``learning_rate``, cosine-decayed to zero over
    its epochs, on the model's own loss (logits and sparse labels when it has none).
    """

    def __init__(self, x, y, loss, batch_size, verbose, seed, backup_dir, calibration_samples, isolate, timeout):
        self.x, self.y, self.loss, self.batch_size, self.seed = x, y, loss, batch_size, seed
        self.fit_verbose = fit_verbosity(verbose)
        self.steps_per_epoch = math.ceil(len(x) / batch_size)
        self.backup_dir, self.calibration_samples, self.isolate, self.timeout = (
            backup_dir, calibration_samples, isolate, timeout)
        self.step_index = 0
        self.chain = []  # the tags of the steps done: the default name of a Convert's artifact
        self.artifacts = {}
        self.backups = []

    def ramp(self, sparsity, epochs, fraction):
        """Polynomial ramp to ``sparsity`` over ``fraction`` of a step's training steps."""
        end = max(1, int(epochs * self.steps_per_epoch * fraction))
        return PolynomialDecay(0.0, sparsity, begin_step=0, end_step=end, frequency=max(1, min(100, end // 10)))

    def optimizer(self, step):
        """Adam at ``step.learning_rate``, cosine-decayed to zero over the step's epochs."""
        decay_steps = step.epochs * self.steps_per_epoch
        return keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(step.learning_rate, decay_steps))

    def backup(self, kind):
        """[a BackupAndRestore for the current step], or [] without ``backup_dir``."""
        if self.backup_dir is None:
            return []
        # Kept after each fit: a rerun restores a finished step instead of training it again.
        callback = BackupAndRestore(os.path.join(self.backup_dir, f"step{self.step_index}-{kind}"),
                                    delete_checkpoint=False)
        self.backups.append(callback)
        return [callback]

    def fit(self, model, step, callbacks=()):
        """Compiles ``model`` for ``step`` and fits it on the training data, ``callbacks`` then the backup."""
        model.compile(optimizer=self.optimizer(step), loss=self.loss, metrics=["accuracy"])
        model.fit(self.x, self.y, epochs=step.epochs, batch_size=self.batch_size, verbose=self.fit_verbose,
                  callbacks=list(callbacks) + self.backup(step.kind))


@dataclasses.dataclass(frozen=True)
class Prune(Step):
    """Magnitude-prune while fine-tuning.

    Args:
        sparsity: final fraction of zero weights, in [0, 1).
        epochs: fine-tuning epochs; sparsity ramps (polynomial decay, tfmot's formula)
            over the first ``ramp_fraction`` of the steps and holds for the rest.
        structure: ``"unstructured"``, ``"block"`` or ``"2:4"`` (see `PruningCallback`).
        block_shape: (rows, cols) of the blocks for ``structure="block"``.
        learning_rate: initial Adam learning rate of the fine-tuning (cosine-decayed to
            zero over the step, so the pruned model ends on settled weights).
        ramp_fraction: share of the steps spent ramping sparsity up.
    """

    sparsity: float = 0.75
    epochs: int = 2
    structure: str = "unstructured"
    block_shape: tuple = (4, 1)
    learning_rate: float = 1e-3
    ramp_fraction: float = 2 / 3

    kind = "prune"
    min_epochs = 1
    ranges = {"sparsity": ("in [0, 1)", lambda v: 0.0 <= v < 1.0)}
    tag_format, describe_format = "prune{sparsity_pct}", "prune {sparsity_pct}%"

    def apply(self, model, run):
        schedule = run.ramp(self.sparsity, self.epochs, self.ramp_fraction)
        run.fit(model, self, [PruningCallback(schedule, structure=self.structure, block_shape=self.block_shape,
                                              verbose=0)])
        return model, f"pruned to {100 * self.sparsity:.0f}% over {self.epochs} epoch(s)"


@dataclasses.dataclass(frozen=True)
class PruneChannels(Step):
    """Structural pruning while fine-tuning: whole channels zeroed (`ChannelPruningCallback`), then removed (`shrink`).

    Args:
        ratio: fraction of the removable channels to remove, in [0, 1).
        epochs: fine-tuning epochs; the fraction ramps (polynomial decay) over the first
            ``ramp_fraction`` of the steps and holds for the rest.
        importance: ``"l1"``, ``"l2"``, ``"bn"`` or ``"taylor"`` (taylor ranks on 512 training samples), or a
            function ``layer -> scores`` (see `tfcompress.pruning.importance`).
        round_to: kept widths are multiples of this where possible.
        learning_rate: initial Adam learning rate, cosine-decayed to zero over the step.
        ramp_fraction: share of the steps spent ramping up.
        max_group_ratio: at most this fraction of any one group's channels is removed (None: no cap).
    """

    ratio: float = 0.5
    epochs: int = 2
    importance: str = "l2"
    round_to: int = 1
    learning_rate: float = 1e-3
    ramp_fraction: float = 2 / 3
    max_group_ratio: float = None

    kind = "channels"
    min_epochs = 1
    ranges = {"ratio": ("in [0, 1)", lambda v: 0.0 <= v < 1.0)}
    tag_format, describe_format = "channels{ratio_pct}", "channels {ratio_pct}%"

    def __post_init__(self):
        super().__post_init__()
        try:
            check_selection("global", self.round_to, self.max_group_ratio)
        except ValueError as exc:
            raise ValueError(f"PruneChannels: {exc}") from None

    def apply(self, model, run):
        callback = ChannelPruningCallback(run.ramp(self.ratio, self.epochs, self.ramp_fraction),
                                          importance=self.importance, round_to=self.round_to,
                                          max_group_ratio=self.max_group_ratio,
                                          data=(run.x[:512], run.y[:512]) if self.importance == "taylor" else None,
                                          verbose=0)
        run.fit(model, self, [callback])
        before = model.count_params()
        model = shrink(model, verbose=0)
        return model, (f"removed {100 * callback.sparsity:.0f}% of the removable channels over {self.epochs} "
                       f"epoch(s): {before:,} -> {model.count_params():,} parameters")


@dataclasses.dataclass(frozen=True)
class Cluster(Step):
    """Weight clustering (`cluster_weights`), then fine-tuning with the centroids training (`ClusteringCallback`).

    Args:
        num_clusters: values per kernel (per output channel with ``per_channel``), in [2, 256].
        epochs: fine-tuning epochs (0: one-shot clustering only).
        per_channel: cluster each output channel of convolutions separately.
        learning_rate: initial Adam learning rate, cosine-decayed to zero over the step.
    """

    num_clusters: int = 16
    epochs: int = 1
    per_channel: bool = True
    learning_rate: float = 1e-4

    kind = "cluster"
    tag_format, describe_format = "cluster{num_clusters}", "cluster {num_clusters}"

    def __post_init__(self):
        check_arguments(self.num_clusters, "kmeans++")
        super().__post_init__()

    def apply(self, model, run):
        model = cluster_weights(model, self.num_clusters, per_channel=self.per_channel)
        if self.epochs:
            run.fit(model, self, [ClusteringCallback(self.num_clusters, per_channel=self.per_channel, verbose=0)])
        return model, f"clustered to {self.num_clusters} values per kernel, fine-tuned {self.epochs} epoch(s)"


@dataclasses.dataclass(frozen=True)
class Factorize(Step):
    """Low-rank factorization (`factorize`), then fine-tuning.

    Args:
        energy: share of each kernel's squared singular values kept, in (0, 1].
        epochs: fine-tuning epochs (0: none).
        learning_rate: initial Adam learning rate, cosine-decayed to zero over the step.
    """

    energy: float = 0.9
    epochs: int = 1
    learning_rate: float = 1e-3

    kind = "factorize"
    ranges = {"energy": ("in (0, 1]", lambda v: 0.0 < v <= 1.0)}
    tag_format, describe_format = "lowrank{energy_pct}", "low-rank at energy {energy}"

    def apply(self, model, run):
        before = model.count_params()
        model = factorize(model, energy=self.energy, verbose=0)
        if self.epochs:
            run.fit(model, self)
        return model, f"factorized at energy {self.energy}: {before:,} -> {model.count_params():,} parameters"


@dataclasses.dataclass(frozen=True)
class Distill(Step):
    """Train the current model as a student of ``teacher`` (knowledge distillation).

    Args:
        teacher: a trained Keras model with the same output shape (logits).
        epochs: distillation epochs (teacher logits are computed once and cached).
        sparsity: if set, prune the student to this sparsity while distilling.
        temperature: passed to `Distiller` (None keeps its default).
        alpha: passed to `Distiller` (None keeps its default).
        learning_rate: initial Adam learning rate, cosine-decayed to zero over the step
            (at a constant rate the last weights of a short run swing by points).
    """

    teacher: object
    epochs: int = 3
    sparsity: float = None
    temperature: float = None
    alpha: float = None
    learning_rate: float = 3e-3

    kind = "distill"
    min_epochs = 1

    ranges = {"sparsity": ("in [0, 1)", lambda v: v is None or 0.0 <= v < 1.0)}

    def tag(self):
        return "distill" + (f"-prune{round(100 * self.sparsity)}" if self.sparsity else "")

    def describe(self, teacher_name="the teacher"):
        return f"distil from {teacher_name} ({self.epochs} ep)"

    def apply(self, model, run):
        kwargs = {k: v for k, v in (("temperature", self.temperature), ("alpha", self.alpha)) if v is not None}
        teacher_was_trainable = self.teacher.trainable
        distiller = Distiller(teacher=self.teacher, student=model, **kwargs)
        distiller.compile(optimizer=run.optimizer(self), metrics=["accuracy"])
        callbacks = run.backup(self.kind)
        if self.sparsity:
            callbacks.append(PruningCallback(run.ramp(self.sparsity, self.epochs, 2 / 3), verbose=0))
        try:
            # shuffle=False: cache_teacher's dataset reshuffles itself; Keras would only warn.
            distiller.fit(distiller.cache_teacher(run.x, run.y, batch_size=run.batch_size, seed=run.seed),
                          epochs=self.epochs, verbose=run.fit_verbose, callbacks=callbacks, shuffle=False)
        finally:
            # The Distiller freezes its teacher; the caller's model must come back as it was given.
            self.teacher.trainable = teacher_was_trainable
        return distiller.student, f"distilled for {self.epochs} epoch(s)"


@dataclasses.dataclass(frozen=True)
class QuantizationAwareTraining(Step):
    """Quantization-aware training (QAT): `quantize_model`, then ``fit``; a later ``Convert("int8")`` uses the
    trained ranges. (Post-training quantization is ``Convert(mode)`` alone.) The ranges start calibrated on the
    run's ``calibration_samples`` training inputs, where post-training int8's would be.

    Args:
        epochs: QAT epochs.
        learning_rate: initial Adam learning rate (low: the model is already trained),
            cosine-decayed to zero over the step.
        config: a `QATConfig` or None for the defaults.
    """

    epochs: int = 1
    learning_rate: float = 1e-4
    config: object = None

    kind = "qat"
    min_epochs = 1
    tag_format, describe_format = "qat", "QAT"

    def apply(self, model, run):
        # The calibration samples the int8 conversion would get: the ranges start where PTQ's are.
        calibration = run.x[:run.calibration_samples] if run.calibration_samples else None
        model = quantization.quantize_model(model, calibration, config=self.config)
        run.fit(model, self)
        return model, f"quantization-aware training for {self.epochs} epoch(s)"


@dataclasses.dataclass(frozen=True)
class FineTune(Step):
    """Plain fine-tuning, nothing compressed: the dense control that a compressed variant is compared with.

    A variant fine-tuned for N epochs has had N more epochs of training than its
    input; the same N epochs of ``FineTune`` give the accuracy it would have reached
    without being compressed, so the difference is the cost of the compression.

    Args:
        epochs: fine-tuning epochs.
        learning_rate: initial Adam learning rate, cosine-decayed to zero (as the other steps).
    """

    epochs: int = 2
    learning_rate: float = 1e-3

    kind = "finetune"
    min_epochs = 1
    tag_format, describe_format = "finetune{epochs}", "fine-tune"

    def apply(self, model, run):
        run.fit(model, self)
        return model, f"fine-tuned (dense) for {self.epochs} epoch(s)"


@dataclasses.dataclass(frozen=True)
class Convert(Step):
    """Convert the current model to a .tflite artifact (see `to_tflite`).

    Args:
        mode: conversion mode; ``"int8"`` calibrates on 200 training samples.
        name: artifact name (default: the chain so far, e.g. ``"prune75-qat-int8"``).
        io_type: passed to `to_tflite`.
        sparse: passed to `to_tflite`.
        keep_float: passed to `to_tflite`.
    """

    mode: str = "int8"
    name: str = None
    io_type: str = "float32"
    sparse: bool = False
    keep_float: tuple = None

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"Convert(mode={self.mode!r}): choose one of {list(MODES)}.")

    def apply(self, model, run):
        name = self.name or "-".join(run.chain + [self.mode])
        calibration = run.x[:run.calibration_samples] if self.mode in ("int8", "int16x8") else None
        run.artifacts[name] = to_tflite(model, mode=self.mode, representative_data=calibration, io_type=self.io_type,
                                        sparse=self.sparse, keep_float=list(self.keep_float) if self.keep_float else None,
                                        isolate=run.isolate, timeout=run.timeout)
        return model, f"converted {name}: {len(run.artifacts[name]) / 1024:.1f} KB"

    def describe(self, teacher_name="the teacher"):
        return f"→ {self.mode}"


NAMED_RECIPES = {
    "float32": [Convert("float32")],
    "float16": [Convert("float16")],
    "dynamic": [Convert("dynamic")],
    "int8": [Convert("int8")],
    "int16x8": [Convert("int16x8")],
    "ptq-all": [Convert("float32"), Convert("float16"), Convert("dynamic"), Convert("int8")],
    "prune-int8": [Prune(0.75), Convert("int8")],
    "qat-int8": [QuantizationAwareTraining(), Convert("int8")],
    "prune-qat-int8": [Prune(0.75), QuantizationAwareTraining(), Convert("int8")],
}


@dataclasses.dataclass
class CompressionResult:
    """What `compress` produced.

    Attributes:
        model: the final Keras model (pruned / distilled / QAT as the recipe says).
        artifacts: ``{name: ConvertedModel}`` for every `Convert` step.
        reports: ``{name: EvaluationReport}`` (empty when ``evaluate=False``).
        keras_accuracy: test accuracy of the input model before compression.
        log: ``[(step description, seconds)]``.
    """

    model: object
    artifacts: dict
    reports: dict
    keras_accuracy: float
    log: list

    def to_markdown(self):
        if not self.reports:
            return "(not evaluated)"
        return compare(self.reports, reference_accuracy=self.keras_accuracy)


def _resolve_recipe(recipe, convert_default=True):
    if isinstance(recipe, str):
        if recipe not in NAMED_RECIPES:
            raise ValueError(f"recipe={recipe!r} is not a named recipe; choose one of {sorted(NAMED_RECIPES)} "
                             "or pass a list of steps (Prune, PruneChannels, Cluster, Factorize, Distill, "
                             "QuantizationAwareTraining, Convert).")
        return list(NAMED_RECIPES[recipe])
    if isinstance(recipe, Step):
        recipe = [recipe]
    steps = list(recipe)
    for i, step in enumerate(steps):
        if not isinstance(step, Step):
            raise TypeError(f"recipe step {i} is {step!r}; steps are Prune, PruneChannels, Cluster, Factorize, "
                            "Distill, QuantizationAwareTraining, FineTune or Convert.")
    if not steps:
        raise ValueError("recipe is empty; add at least one step (e.g. Convert('int8')).")
    if convert_default and not any(isinstance(s, Convert) for s in steps):
        steps.append(Convert("int8"))
    quantized_at = next((i for i, s in enumerate(steps) if isinstance(s, QuantizationAwareTraining)), None)
    if quantized_at is not None:
        late = [type(s).__name__ for s in steps[quantized_at + 1:]
                if isinstance(s, (Prune, PruneChannels, Factorize, Distill, FineTune))]
        if late:
            raise ValueError(f"recipe: {late} after QuantizationAwareTraining would train a fake-quantized model outside "
                             "QAT; put pruning and distillation before QuantizationAwareTraining.")
    return steps


def resolve_data(data):
    """``data`` (a dataset name or ``((x, y), (x_test, y_test))``) as checked numpy arrays; shared with `auto`."""
    if isinstance(data, str):
        return datasets.load(data)
    try:
        (x, y), (x_test, y_test) = data
    except (TypeError, ValueError):
        raise ValueError("data must be ((x_train, y_train), (x_test, y_test)) or a dataset name such as "
                         "'fashion_mnist'.") from None
    if len(x) != len(y) or len(x_test) != len(y_test):
        raise ValueError(f"data: x_train has {len(x)} samples and y_train {len(y)}; x_test {len(x_test)} and "
                         f"y_test {len(y_test)}; each pair must match.")
    return (np.asarray(x), np.asarray(y)), (np.asarray(x_test), np.asarray(y_test))


def _copy(model):
    try:
        clone = keras.models.clone_model(model)
    except Exception as exc:
        raise ValueError(
            f"compress could not copy model {model.name!r} ({type(exc).__name__}: {exc}); pass copy=False to "
            "compress it in place.") from None
    clone.set_weights(model.get_weights())
    return clone


def _loss_of(model):
    loss = getattr(model, "loss", None)
    if loss is None:
        # Models from tfcompress.zoo and most classifiers end in logits.
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    return loss


def _check_labels(model, y, argument):
    classes = int(np.prod(model.output_shape[1:])) if len(model.output_shape) > 1 else 1
    validation.check_labels(y, classes, argument=f"data: {argument}")


def top1_accuracy(model, x, y, batch_size=512):
    """Top-1 accuracy of a Keras classifier on ``(x, y)``; shared with `auto`."""
    logits = np.asarray(model.predict(x, batch_size=batch_size, verbose=0))
    return float(np.mean(logits.reshape(len(logits), -1).argmax(1) == np.asarray(y).reshape(-1)))


def compress(model, data, recipe="int8", batch_size=128, copy=True, evaluate=True, threads=(1,),
             num_runs=50, calibration_samples=200, verbose=1, seed=0, convert_default=True, backup_dir=None,
             isolate=False, timeout=DEFAULT_TIMEOUT_S):
    """Runs a compression recipe on a model and evaluates every artifact.

    Args:
        model: a trained, built Keras 3 classifier producing logits (or compiled
            with its own loss, which fine-tuning steps reuse).
        data: ``((x_train, y_train), (x_test, y_test))`` or a dataset name
            (``"fashion_mnist"``, ``"digits"``).
        recipe: a list of steps (`Prune`, `Distill`, `QuantizationAwareTraining`, `Convert`, ...: any
            `Step`) or a named recipe (see ``NAMED_RECIPES``). Without a `Convert` step, an
            int8 conversion ends the chain.
        batch_size: training batch size of fine-tuning steps.
        copy: work on a copy and leave ``model`` untouched.
        evaluate: evaluate every artifact on the test data with `evaluate_tflite`.
        threads: evaluator thread counts.
        num_runs: evaluator timed runs per file.
        calibration_samples: training samples used to calibrate int8 conversions.
        verbose: 0 silent, 1 one line per step, plus Keras progress: bars on a
            terminal, one line per epoch otherwise (`fit_verbosity`).
        seed: random seed of the fine-tuning steps.
        convert_default: append ``Convert("int8")`` when the recipe has no
            `Convert` step (False: return only the trained model).
        backup_dir: if set, every training step backs up its state there at each
            epoch end (`tfcompress.BackupAndRestore`). Rerunning the same call after a
            crash or kill skips the finished steps (their final state is restored)
            and resumes the interrupted one from its last epoch. The backups are
            deleted when the whole chain has finished.
        isolate: run every `Convert` step's TFLite converter in a subprocess (see
            `to_tflite`), so a converter abort or segfault becomes a `ConversionError`
            naming the mode and the model instead of killing the caller. Each
            isolated conversion starts a fresh TensorFlow (about 10 s).
        timeout: with ``isolate``, seconds before one conversion is stopped.

    Returns:
        A `CompressionResult`.

    Example:
        >>> data = ((x, y), (x_test, y_test))          # or a name: "fashion_mnist"
        >>> r = tfc.compress(model, data, [tfc.Prune(0.75, epochs=2), tfc.Convert("int8")])
        >>> print(r.to_markdown())
    """
    graph.check_model(model, action="compress")
    steps = _resolve_recipe(recipe, convert_default)
    (x, y), (x_test, y_test) = resolve_data(data)
    _check_labels(model, y, "y_train")
    _check_labels(model, y_test, "y_test")
    input_accuracy = top1_accuracy(model, x_test, y_test)
    loss = _loss_of(model)
    current = _copy(model) if copy else model
    run = RecipeRun(x, y, loss, batch_size, verbose, seed, backup_dir, calibration_samples, isolate, timeout)
    log, reports = [], {}

    def say(message, start):
        seconds = time.perf_counter() - start
        log.append((message, seconds))
        if verbose:
            print(f"[tfcompress] {message} ({seconds:.1f} s)", flush=True)

    for step_index, step in enumerate(steps):
        start = time.perf_counter()
        keras.utils.set_random_seed(seed)
        run.step_index = step_index
        current, message = step.apply(current, run)
        if step.tag() is not None:
            run.chain.append(step.tag())
        say(message, start)
    artifacts = run.artifacts
    for callback in run.backups:  # the chain is done: nothing is left to resume
        callback.delete_backup()
    if backup_dir is not None and os.path.isdir(backup_dir) and not os.listdir(backup_dir):
        os.rmdir(backup_dir)
    if evaluate and artifacts:
        start = time.perf_counter()
        # All artifacts are timed in the same rounds, so their latency ratios are comparable.
        reports = evaluate_many(artifacts, x=x_test, y=y_test, threads=threads, num_runs=num_runs)
        say("evaluated " + ", ".join(f"{n}: {100 * r.accuracy:.2f}%" for n, r in reports.items()), start)
    return CompressionResult(model=current, artifacts=artifacts, reports=reports, keras_accuracy=input_accuracy,
                             log=log)
