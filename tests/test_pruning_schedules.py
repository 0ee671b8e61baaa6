"""Pruning schedules: tfmot's formula and update steps, serialization, argument errors, a schedule longer than
training."""

import json
import os
import subprocess
import sys
import textwrap
import warnings

import keras
import numpy as np
import pytest

import tfcompress as tfc

SCHEDULE_CASES = [
    ("PolynomialDecay", dict(initial_sparsity=0.0, final_sparsity=0.8, begin_step=0, end_step=2000)),
    ("PolynomialDecay", dict(initial_sparsity=0.2, final_sparsity=0.9, begin_step=150, end_step=1150,
                             power=2, frequency=37)),
    ("PolynomialDecay", dict(initial_sparsity=0.5, final_sparsity=0.5, begin_step=10, end_step=500, frequency=1)),
    ("ConstantSparsity", dict(target_sparsity=0.75, begin_step=0)),
    ("ConstantSparsity", dict(target_sparsity=0.6, begin_step=300, end_step=900, frequency=50)),
]
STEPS = list(range(0, 2600, 1)) + [5000, 10**6]

# Runs in a subprocess: tfmot only works under tf_keras, which must be selected before TF loads.
TFMOT_SCRIPT = textwrap.dedent("""
    import json, os, sys
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import numpy as np
    import tensorflow_model_optimization as tfmot
    from tfcompress.pruning import schedules
    cases, steps = json.loads(sys.stdin.read())
    out = []
    for name, kwargs in cases:
        theirs = getattr(tfmot.sparsity.keras, name)(**kwargs)
        step_tensor = np.array(steps, np.int64)
        should, sparsity = theirs(step_tensor)
        converted = schedules.get(theirs)  # tfmot objects are accepted wherever ours are
        out.append({
            "should_prune": np.asarray(should).tolist(),
            "sparsity": np.broadcast_to(np.asarray(sparsity), step_tensor.shape).tolist(),
            "converted": [type(converted).__name__, converted.get_config()],
        })
    print("RESULT" + json.dumps(out))
""")


@pytest.fixture(scope="module")
def tfmot_values():
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(
        [sys.executable, "-c", TFMOT_SCRIPT], input=json.dumps([SCHEDULE_CASES, STEPS]),
        capture_output=True, text=True, env=env, timeout=300,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT"):])


@pytest.mark.parametrize("index", range(len(SCHEDULE_CASES)))
def test_schedule_matches_tfmot_over_many_steps(tfmot_values, index):
    name, kwargs = SCHEDULE_CASES[index]
    ours = getattr(tfc, name)(**kwargs)
    theirs = tfmot_values[index]
    ours_should, ours_sparsity = zip(*(ours(s) for s in STEPS))
    assert list(ours_should) == theirs["should_prune"]
    # tfmot computes in float32; ours in float64.
    np.testing.assert_allclose(ours_sparsity, theirs["sparsity"], atol=1e-6)
    assert sum(ours_should) > 1  # the case exercises several mask updates


def test_tfmot_schedule_objects_convert_to_ours(tfmot_values):
    for (name, kwargs), theirs in zip(SCHEDULE_CASES, tfmot_values):
        class_name, config = theirs["converted"]
        assert class_name == name
        assert getattr(tfc, name).from_config(config) == getattr(tfc, name)(**kwargs)


def test_first_update_follows_tfmot_step_convention():
    # Step 1 is the first optimizer step; with begin_step=0 the first update is at step `frequency`.
    schedule = tfc.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=1000, frequency=100)
    due = [s for s in range(1, 1300) if schedule(s)[0]]
    assert due == list(range(100, 1001, 100))
    assert schedule(1000)[1] == pytest.approx(0.8)
    assert schedule(500)[1] == pytest.approx(0.7)


@pytest.mark.parametrize("schedule", [
    tfc.PolynomialDecay(0.1, 0.9, begin_step=5, end_step=50, power=2, frequency=5),
    tfc.ConstantSparsity(0.5, begin_step=0, end_step=-1, frequency=10),
])
def test_schedules_serialize(schedule):
    assert type(schedule).from_config(schedule.get_config()) == schedule
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert restored == schedule
    json.dumps(schedule.get_config())


def test_custom_callable_schedule_is_accepted():
    schedule = tfc.pruning.schedules.get(lambda step: (step % 10 == 0, 0.5))
    assert schedule(20) == (True, 0.5) and schedule(21) == (False, 0.5)


@pytest.mark.parametrize("make, message", [
    (lambda: tfc.PolynomialDecay(0.0, 1.0, 0, 100), "final_sparsity must be in [0, 1)"),
    (lambda: tfc.PolynomialDecay(-0.1, 0.5, 0, 100), "initial_sparsity must be in [0, 1), got -0.1"),
    (lambda: tfc.PolynomialDecay(0.0, 80, 0, 100), "got 80"),
    (lambda: tfc.PolynomialDecay(0.0, 0.5, 100, 10), "end_step=10 is before begin_step=100"),
    (lambda: tfc.PolynomialDecay(0.0, 0.5, 0, -1), "end_step=-1 is not allowed"),
    (lambda: tfc.PolynomialDecay(0.0, 0.5, -5, 10), "begin_step must be >= 0"),
    (lambda: tfc.PolynomialDecay(0.0, 0.5, 0, 10, frequency=0), "frequency must be a positive integer"),
    (lambda: tfc.ConstantSparsity(1.2, 0), "target_sparsity must be in [0, 1), got 1.2"),
    (lambda: tfc.ConstantSparsity(0.5, 10, end_step=5), "end_step=5 is before begin_step=10"),
    (lambda: tfc.ConstantSparsity(0.5, 0, end_step=-3), "(or -1 to prune until training ends), got -3"),
    (lambda: tfc.ConstantSparsity(0.5, 1.5), "begin_step must be an integer"),
    (lambda: tfc.PruningCallback(0.75), "schedule must be a pruning schedule"),
])
def test_bad_schedule_arguments_raise_clear_errors(make, message):
    with pytest.raises((ValueError, TypeError)) as info:
        make()
    assert message in str(info.value)


def _pruned_fit(end_step, epochs=1, frequency=2, kind=tfc.PruningCallback):
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(32, name="d"), keras.layers.Dense(3, name="o")],
                             name="tiny")
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.random.default_rng(0).random((64, 8), dtype=np.float32)
    y = np.arange(64) % 3
    schedule = tfc.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=end_step, frequency=frequency)
    callback = kind(schedule, verbose=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, y, epochs=epochs, batch_size=8, verbose=0, callbacks=[callback])
    return [str(w.message) for w in caught if f"{kind.__name__}:" in str(w.message)]


def test_mask_updates_that_miss_a_short_run_warn_and_name_frequency():
    # 8 steps, masks every 100 from step 0: step 0 came before the first batch, step 100 never comes.
    for kind in (tfc.PruningCallback, tfc.ChannelPruningCallback):
        messages = _pruned_fit(end_step=6, frequency=100, kind=kind)
        assert len(messages) == 1, (kind, messages)
        assert "ended at 0.0%" in messages[0] and "every 100 steps" in messages[0] and "frequency=" in messages[0]
    assert _pruned_fit(end_step=6, frequency=2, kind=tfc.ChannelPruningCallback) == []


def test_a_schedule_longer_than_training_warns_with_the_numbers():
    messages = _pruned_fit(end_step=2000)  # 8 steps of training
    assert len(messages) == 1
    assert "asks for 80.0%" in messages[0] and "end_step=2000 lies beyond the 8 steps" in messages[0]


def test_a_schedule_that_fits_does_not_warn():
    assert _pruned_fit(end_step=6) == []
