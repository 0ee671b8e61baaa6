"""compress(): recipes chain pruning, distillation, QAT and conversion on real models."""

import dataclasses
import io
import os
import sys

import keras
import numpy as np
import pytest

import tfcompress as tfc
from tfcompress.pipeline.recipe import (Convert, Distill, Prune, QuantizationAwareTraining, Step, compress,
                                        fit_verbosity)


def test_prune_qat_int8_chain_keeps_zeros_and_accuracy(trained_digits_model, digits_data):
    before = [w.copy() for w in trained_digits_model.get_weights()]
    result = compress(trained_digits_model, digits_data, [Prune(0.75, epochs=3), QuantizationAwareTraining(epochs=1),
                                                          Convert("int8")], batch_size=32, num_runs=3, verbose=0)
    assert list(result.artifacts) == ["prune75-qat-int8"]
    report = result.reports["prune75-qat-int8"]
    assert report.sparsity == pytest.approx(0.75, abs=0.03)
    assert report.accuracy > result.keras_accuracy - 0.03
    assert report.op_census_by_dtype.get("FULLY_CONNECTED/int8") == 2
    # copy=True: the caller's model is untouched.
    for a, b in zip(before, trained_digits_model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert "prune75-qat-int8" in result.to_markdown()
    assert [m for m, _ in result.log][0].startswith("pruned to 75%")


def test_named_ptq_recipe_produces_every_artifact(trained_digits_model, digits_data):
    result = compress(trained_digits_model, digits_data, "ptq-all", evaluate=False, verbose=0)
    assert list(result.artifacts) == ["float32", "float16", "dynamic", "int8"]
    sizes = [len(result.artifacts[k]) for k in ("float32", "float16", "int8")]
    assert sizes[0] > sizes[1] > sizes[2]


def test_distill_with_pruning_into_a_small_student(trained_digits_model, digits_data):
    keras.utils.set_random_seed(0)
    student = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(8, 3, activation="relu"),
                                keras.layers.Flatten(), keras.layers.Dense(10)], name="student")
    result = compress(student, digits_data, [Distill(trained_digits_model, epochs=6, sparsity=0.5), Convert("int8")],
                      batch_size=32, num_runs=2, verbose=0)
    report = result.reports["distill-prune50-int8"]
    assert report.sparsity == pytest.approx(0.5, abs=0.03)
    assert report.accuracy > 0.8
    assert len(result.artifacts["distill-prune50-int8"]) < 0.5 * len(tfc.to_tflite(trained_digits_model, mode="int8",
                                                                                 representative_data=digits_data[0][0][:32]))


@dataclasses.dataclass(frozen=True)
class OneShotChannels(Step):
    """A step of one's own (the extension point): channel pruning without fine-tuning."""

    ratio: float = 0.5

    def apply(self, model, run):
        return tfc.prune_channels(model, self.ratio, verbose=0), f"removed {self.ratio:.0%} of the channels at once"

    def tag(self):
        return f"oneshot{round(100 * self.ratio)}"

    def describe(self, teacher_name="the teacher"):
        return f"one-shot channels {self.ratio:.0%}"


def test_a_step_of_ones_own_runs_in_the_chain(trained_digits_model, digits_data):
    result = compress(trained_digits_model, digits_data, [OneShotChannels(0.5), Convert("float32")], evaluate=False,
                      verbose=0)
    assert list(result.artifacts) == ["oneshot50-float32"]  # its tag names the artifact
    assert [message for message, _ in result.log] == ["removed 50% of the channels at once",
                                                      "converted oneshot50-float32: "
                                                      f"{len(result.artifacts['oneshot50-float32']) / 1024:.1f} KB"]
    assert result.model.count_params() < trained_digits_model.count_params()
    assert OneShotChannels(0.5).epochs == 0 and Convert("int8").describe() == "→ int8"


class TestBadRecipes:
    def test_unknown_named_recipe(self, trained_digits_model, digits_data):
        with pytest.raises(ValueError, match="recipe='shrink'.*prune-qat-int8"):
            compress(trained_digits_model, digits_data, "shrink")

    def test_pruning_after_qat(self, trained_digits_model, digits_data):
        with pytest.raises(ValueError, match="before QuantizationAwareTraining"):
            compress(trained_digits_model, digits_data, [QuantizationAwareTraining(), Prune(0.5)])

    def test_bad_step_arguments(self):
        with pytest.raises(ValueError, match=r"Prune\(sparsity=1.5\)"):
            Prune(1.5)
        with pytest.raises(ValueError, match=r"Convert\(mode='int4'\)"):
            Convert("int4")
        with pytest.raises(ValueError, match=r"QuantizationAwareTraining\(epochs=0\)"):
            QuantizationAwareTraining(epochs=0)

    def test_not_a_step(self, trained_digits_model, digits_data):
        with pytest.raises(TypeError, match="recipe step 0"):
            compress(trained_digits_model, digits_data, ["prune"])

    def test_mismatched_data(self, trained_digits_model, digits_data):
        (x, y), test = digits_data
        with pytest.raises(ValueError, match="must match"):
            compress(trained_digits_model, ((x, y[:5]), test), "int8")


def test_isolate_and_timeout_reach_the_converter(trained_digits_model, digits_data):
    # One second is far too short for the conversion subprocess to even import TensorFlow.
    with pytest.raises(tfc.ConversionError, match=r"'small_cnn' to mode='float32' took longer than 1 s"):
        compress(trained_digits_model, digits_data, [Convert("float32")], evaluate=False, verbose=0, isolate=True,
                 timeout=1)


def test_fit_verbosity_bars_on_a_terminal_one_line_per_epoch_otherwise(monkeypatch):
    leader, follower = os.openpty()
    try:
        with open(follower, "w", closefd=False) as terminal:
            monkeypatch.setattr(sys, "stdout", terminal)
            assert fit_verbosity() == 1
            monkeypatch.setattr(sys, "stdout", io.StringIO())
            assert fit_verbosity() == 2
            assert fit_verbosity(0) == 0
    finally:
        os.close(leader)
        os.close(follower)
