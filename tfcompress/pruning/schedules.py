"""Pruning schedules: when to recompute masks, and at which sparsity.

The formulas and the update semantics are tfmot's, so a schedule tuned for
``tfmot.sparsity.keras`` behaves the same here. Schedules are evaluated in
Python by the pruner between training steps (never inside the traced step),
so they return plain ``(bool, float)`` pairs.
"""

import numbers

import keras
import numpy as np


def _check_step(value, argument, allow_minus_one=False):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{argument} must be an integer number of optimizer steps, got {value!r}.")
    if allow_minus_one and value == -1:
        return int(value)
    if value < 0:
        extra = " (or -1 to prune until training ends)" if allow_minus_one else ""
        raise ValueError(f"{argument} must be >= 0{extra}, got {value!r}.")
    return int(value)


def _check_sparsity(value, argument):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{argument} must be a float in [0, 1), got {value!r}.")
    if not 0.0 <= value < 1.0:
        raise ValueError(
            f"{argument} must be in [0, 1), got {value!r}: it is the fraction of weights set to "
            "zero (1.0 would remove every weight). For 90% sparsity pass 0.9."
        )
    return float(value)


def _check_frequency(value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"frequency must be a positive integer number of steps, got {value!r}.")
    return int(value)


def _check_step_range(begin_step, end_step):
    if end_step != -1 and end_step < begin_step:
        raise ValueError(
            f"end_step={end_step!r} is before begin_step={begin_step!r}; pruning needs "
            "begin_step <= end_step."
        )


class PruningSchedule:
    """Base class of pruning schedules.

    A schedule maps the pruning step (1 for the first optimizer step of pruned
    training, as in tfmot) to ``(should_prune, sparsity)``: whether masks are
    recomputed before that step, and the fraction of weights to zero when they are.

    Subclasses implement ``sparsity(step)``, ``get_config()`` and set
    ``begin_step``, ``end_step`` (-1: no end) and ``frequency``.
    """

    begin_step = 0
    end_step = -1
    frequency = 100

    def should_prune(self, step):
        """True when masks are recomputed before optimizer step ``step``."""
        in_range = step >= self.begin_step and (self.end_step < 0 or step <= self.end_step)
        return in_range and (step - self.begin_step) % self.frequency == 0

    def sparsity(self, step):
        raise NotImplementedError

    def __call__(self, step):
        step = int(step)
        return self.should_prune(step), self.sparsity(step)

    def get_config(self):
        raise NotImplementedError

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self):
        return hash((type(self).__name__, tuple(sorted(self.get_config().items()))))


@keras.saving.register_keras_serializable(package="tfcompress")
class PolynomialDecay(PruningSchedule):
    """Sparsity rising from ``initial_sparsity`` to ``final_sparsity`` along a polynomial.

    ``sparsity(step) = final + (initial - final) * (1 - p) ** power`` with
    ``p = clip((step - begin_step) / (end_step - begin_step), 0, 1)``: fast at
    first, flattening towards the target (Zhu & Gupta, 2017). Masks are
    recomputed every ``frequency`` steps from ``begin_step`` to ``end_step``;
    after ``end_step`` they stay fixed. Same formula and update steps as
    ``tfmot.sparsity.keras.PolynomialDecay``.

    Args:
        initial_sparsity: sparsity at ``begin_step``, in [0, 1).
        final_sparsity: sparsity reached at ``end_step``, in [0, 1).
        begin_step: optimizer step at which pruning starts (>= 0).
        end_step: optimizer step at which ``final_sparsity`` is reached (>= begin_step).
        power: exponent of the polynomial (3 in tfmot and in the paper).
        frequency: recompute masks every this many steps.

    Returns:
        Calling the schedule with a step returns ``(should_prune, sparsity)``.

    Example:
        >>> s = PolynomialDecay(0.0, 0.8, begin_step=0, end_step=1000)
        >>> s(500)
        (True, 0.7)
    """

    def __init__(self, initial_sparsity, final_sparsity, begin_step, end_step, power=3, frequency=100):
        self.initial_sparsity = _check_sparsity(initial_sparsity, "initial_sparsity")
        self.final_sparsity = _check_sparsity(final_sparsity, "final_sparsity")
        self.begin_step = _check_step(begin_step, "begin_step")
        if end_step == -1:
            raise ValueError(
                "end_step=-1 is not allowed for PolynomialDecay: the polynomial needs a step at "
                "which to reach final_sparsity. Use ConstantSparsity to prune without an end."
            )
        self.end_step = _check_step(end_step, "end_step")
        _check_step_range(self.begin_step, self.end_step)
        if isinstance(power, bool) or not isinstance(power, numbers.Real) or power <= 0:
            raise ValueError(f"power must be a positive number, got {power!r}.")
        self.power = power
        self.frequency = _check_frequency(frequency)

    def sparsity(self, step):
        span = self.end_step - self.begin_step
        # tfmot divides by zero here and returns NaN; a one-step ramp means "already there".
        progress = 1.0 if span == 0 else min(1.0, max(0.0, (step - self.begin_step) / span))
        decayed = (self.initial_sparsity - self.final_sparsity) * (1.0 - progress) ** self.power
        return float(decayed + self.final_sparsity)

    def get_config(self):
        return {
            "initial_sparsity": self.initial_sparsity,
            "final_sparsity": self.final_sparsity,
            "begin_step": self.begin_step,
            "end_step": self.end_step,
            "power": self.power,
            "frequency": self.frequency,
        }


@keras.saving.register_keras_serializable(package="tfcompress")
class ConstantSparsity(PruningSchedule):
    """The same sparsity at every mask update.

    Masks are recomputed at ``target_sparsity`` every ``frequency`` steps from
    ``begin_step`` until ``end_step`` (-1: until training ends). Same semantics
    as ``tfmot.sparsity.keras.ConstantSparsity``.

    Args:
        target_sparsity: fraction of weights set to zero, in [0, 1).
        begin_step: optimizer step of the first mask update (>= 0).
        end_step: last step at which masks may change, or -1 for no end.
        frequency: recompute masks every this many steps.

    Returns:
        Calling the schedule with a step returns ``(should_prune, sparsity)``.

    Example:
        >>> ConstantSparsity(0.5, begin_step=0, frequency=10)(20)
        (True, 0.5)
    """

    def __init__(self, target_sparsity, begin_step, end_step=-1, frequency=100):
        self.target_sparsity = _check_sparsity(target_sparsity, "target_sparsity")
        self.begin_step = _check_step(begin_step, "begin_step")
        self.end_step = _check_step(end_step, "end_step", allow_minus_one=True)
        _check_step_range(self.begin_step, self.end_step)
        self.frequency = _check_frequency(frequency)

    def sparsity(self, step):
        return self.target_sparsity

    def get_config(self):
        return {
            "target_sparsity": self.target_sparsity,
            "begin_step": self.begin_step,
            "end_step": self.end_step,
            "frequency": self.frequency,
        }


class _ForeignSchedule(PruningSchedule):
    """Adapts any callable ``step -> (should_prune, sparsity)``, e.g. a custom tfmot schedule."""

    def __init__(self, schedule):
        self.wrapped = schedule

    def __call__(self, step):
        should_prune, sparsity = self.wrapped(np.int64(step))
        return bool(np.asarray(should_prune)), float(np.asarray(sparsity))

    def should_prune(self, step):
        return self(step)[0]

    def sparsity(self, step):
        return self(step)[1]

    def get_config(self):
        return {"wrapped": repr(self.wrapped)}

    def __repr__(self):
        return repr(self.wrapped)


def final_sparsity(schedule):
    """The sparsity a schedule ends at (``final_sparsity`` / ``target_sparsity``, also of tfmot's), or None."""
    for candidate in (schedule, getattr(schedule, "wrapped", None)):
        for name in ("final_sparsity", "target_sparsity"):
            value = getattr(candidate, name, None)
            try:
                return float(np.asarray(value))
            except (TypeError, ValueError):
                continue
    return None


def shortfall(schedule, reached, step, subject, tolerance=0.005):
    """Why pruning fell short of ``schedule``'s final sparsity, or None when it reached it.

    For the warning at the end of training: a schedule whose ``begin_step`` or ``end_step`` lies beyond
    the steps training ran, or whose mask updates (every ``frequency`` steps) all fell outside them,
    leaves the model far less sparse than asked, silently otherwise.

    Args:
        schedule: the pruning schedule.
        reached: the sparsity reached (fraction).
        step: the last training step pruning saw.
        subject: what was pruned, as the message begins (``"pruning of model 'cnn'"``).
        tolerance: a shortfall up to this fraction is not one (rounding of kept counts).

    Returns:
        The message, or None.
    """
    final = final_sparsity(schedule)
    if final is None or reached >= final - tolerance:
        return None
    end = getattr(schedule, "end_step", None)
    begin = getattr(schedule, "begin_step", 0)
    frequency = getattr(schedule, "frequency", None)
    if begin > step:
        why = f"begin_step={begin} lies beyond the {step} steps pruning ran"
        fix = "Make the schedule fit the training run (begin_step below the steps fit runs), or train longer"
    elif end not in (None, -1) and end > step:
        why = f"end_step={end} lies beyond the {step} steps pruning ran"
        fix = ("Make the schedule fit the training run (end_step <= the steps fit runs: steps per epoch x epochs), "
               "or train longer")
    else:
        # Masks change only at begin_step + k * frequency (tfmot's rule): a short run can fall between two.
        why = f"masks are updated every {frequency} steps from begin_step={begin}, and too few updates fell in the run"
        fix = "Set the schedule's frequency= well below the steps fit runs (e.g. frequency=max(1, steps // 10))"
    return f"{subject} ended at {reached:.1%} sparsity, but the schedule asks for {final:.1%} ({why}). {fix}; the " \
           f"model is saved as it is, at {reached:.1%}."


def first_step_reaching(schedule, sparsity, start=0):
    """The first step >= ``start`` at which ``schedule`` asks for at least ``sparsity``, or None.

    Used to continue a schedule on weights that are already sparse. Assumes the
    sparsity is non-decreasing from ``begin_step`` to ``end_step`` (ours and
    tfmot's are), so a bisection finds the step. Steps after ``end_step`` do not
    count: masks no longer change there. Without an end (``end_step=-1``,
    custom callables) the range doubles until it reaches the sparsity, up to
    2**40 steps.
    """
    start = max(int(start), schedule.begin_step)
    end = schedule.end_step if schedule.end_step >= 0 else None
    if end is not None and start > end:
        return None
    if schedule.sparsity(start) >= sparsity:
        return start
    if end is None:
        high = start + 1
        while schedule.sparsity(high) < sparsity:
            if high - start > 2**40:
                return None
            high = start + 2 * (high - start)
    elif schedule.sparsity(end) >= sparsity:
        high = end
    else:
        return None
    low = start  # invariant: sparsity(low) < target <= sparsity(high)
    while high - low > 1:
        middle = (low + high) // 2
        if schedule.sparsity(middle) >= sparsity:
            high = middle
        else:
            low = middle
    return high


_OURS_BY_TFMOT_NAME = {"PolynomialDecay": PolynomialDecay, "ConstantSparsity": ConstantSparsity}


def get(schedule, argument="schedule"):
    """Returns a ``PruningSchedule`` for ours, tfmot's, or any ``step -> (bool, sparsity)`` callable.

    tfmot's built-in schedules are converted to ours from their config (same
    formula, evaluated in Python instead of as TF ops every step).
    """
    if isinstance(schedule, PruningSchedule):
        return schedule
    module = type(schedule).__module__ or ""
    name = type(schedule).__name__
    if module.startswith("tensorflow_model_optimization") and name in _OURS_BY_TFMOT_NAME:
        return _OURS_BY_TFMOT_NAME[name].from_config(schedule.get_config()["config"])
    if isinstance(schedule, (numbers.Real, str)) or not callable(schedule):
        raise TypeError(
            f"{argument} must be a pruning schedule such as "
            f"tfcompress.PolynomialDecay(0.0, 0.75, begin_step=0, end_step=2000), got {schedule!r}. "
            "For a fixed sparsity use tfcompress.ConstantSparsity(0.75, begin_step=0)."
        )
    return _ForeignSchedule(schedule)
