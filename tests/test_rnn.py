"""Recurrent layers (LSTM, GRU, SimpleRNN, Bidirectional): conversion in every mode, evaluation, pruning, QAT.

Real data: sklearn digits read as sequences of 16 half-rows of 4 pixels (``digits_sequences``).
"""

import keras
import numpy as np
import pytest
from conftest import keras_accuracy

import tfcompress as tfc
from tfcompress.export import recurrent
from tfcompress.export.recurrent import UnsupportedRecurrentLayerError

L = keras.layers
STEPS, FEATURES = 16, 4


def _as_sequences(x):
    """Digits images (N, 8, 8, 1) as (N, 16, 4): each step is half a row of pixels."""
    return x.reshape(len(x), STEPS, FEATURES)


@pytest.fixture(scope="module")
def digits_sequences(digits_data):
    (x, y), (x_test, y_test) = digits_data
    return (_as_sequences(x), y), (_as_sequences(x_test), y_test)


@pytest.fixture(scope="module")
def trained_rnn(digits_sequences):
    """LSTM(24, return_sequences) -> GRU(24) -> Dense(10), trained on digits sequences (91% test accuracy)."""
    (x, y), _ = digits_sequences
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((STEPS, FEATURES)), L.LSTM(24, return_sequences=True, name="lstm"),
                              L.GRU(24, name="gru"), L.Dense(10, name="logits")], name="digits_rnn")
    tfc.zoo.compile_classifier(model, learning_rate=1e-2)
    model.fit(x, y, epochs=6, batch_size=32, verbose=0)
    return model


@pytest.fixture(scope="module")
def trained_rnn_int8(trained_rnn, digits_sequences):
    """``trained_rnn`` in int8, calibrated on 200 training sequences, its agreement measured on the test split."""
    (x, _), (x_test, _) = digits_sequences
    return tfc.to_tflite(trained_rnn, mode="int8", representative_data=x[:200], verify=x_test)


def _recurrent(kind):
    return {
        "lstm": lambda: L.LSTM(16, name="rnn"),
        "gru": lambda: L.GRU(16, name="rnn"),
        "simple_rnn": lambda: L.SimpleRNN(16, name="rnn"),
        "bidirectional_lstm": lambda: L.Bidirectional(L.LSTM(16, name="lstm"), name="rnn"),
        "bidirectional_gru": lambda: L.Bidirectional(L.GRU(16, name="gru"), name="rnn"),
    }[kind]()


def _untrained(kind, steps=STEPS, seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((steps, FEATURES)), _recurrent(kind), L.Dense(4, name="head")])


def _int8_output_step(model, x):
    """The int8 file's output quantization step: its calibrated output range (zero included) over 255 levels."""
    out = model.predict(x, verbose=0)
    return float(max(out.max(), 0) - min(out.min(), 0)) / 255


@pytest.mark.parametrize("kind", ["lstm", "gru", "simple_rnn", "bidirectional_lstm", "bidirectional_gru"])
def test_every_rnn_kind_converts_to_float32_and_fully_int8(kind):
    model = _untrained(kind)
    x = np.random.default_rng(0).uniform(0, 1, (64, STEPS, FEATURES)).astype("float32")
    reference = model.predict(x[:16], verbose=0)

    f32 = tfc.to_tflite(model)
    assert [list(d["shape"]) for d in f32.info.input_details] == [[1, STEPS, FEATURES]]
    assert "WHILE" not in f32.info.op_census and any("unrolled" in n for n in f32.notes)
    # Unrolled float32 computes what Keras computes, op for op: only float rounding differs.
    np.testing.assert_allclose(tfc.evaluate.predict(bytes(f32), x[:16]), reference, atol=1e-5)

    # strict=True: every compute op of the recurrence is int8 (the converter raises otherwise).
    i8 = tfc.to_tflite(model, mode="int8", representative_data=x, strict=True)
    assert i8.info.op_census.get("FULLY_CONNECTED", 0) >= STEPS
    diff = np.abs(tfc.evaluate.predict(bytes(i8), x[:16]) - reference).max()
    # int8 error: each step's gates see their inputs rounded to 1/255 of the calibrated range, and the
    # recurrence carries that error on through 16 steps; the head adds its own rounding. Measured: at most
    # 3 output steps (scale) on AMD EPYC; 8 leaves room for other CPUs' rounding, and a wrong file (wrong
    # weights, a missing step, reversed time) is off by tens of steps.
    step = _int8_output_step(model, x)
    assert diff <= 8 * step, (kind, diff, step)


def test_trained_rnn_int8_keeps_accuracy_on_digits(trained_rnn, trained_rnn_int8, digits_sequences):
    _, (x_test, y_test) = digits_sequences
    reference = keras_accuracy(trained_rnn, x_test, y_test)
    assert reference > 0.85  # a model that learnt something: agreement below means something

    b = trained_rnn_int8
    report = tfc.evaluate_tflite(b, x=x_test, y=y_test, backends=("cpu", "xnnpack"), num_runs=3, warmup_runs=1)
    # Measured on AMD EPYC (AVX2): Keras 91.3%, int8 91.5%, 99.3% top-1 agreement on the 449 test
    # sequences. The int8 rounding (above) flips a prediction only where two logits are within a few
    # output steps of each other.
    assert b.agreement >= 0.97
    assert abs(report.accuracy - reference) <= 0.02, (report.accuracy, reference)
    assert {lat.backend for lat in report.latency} == {"cpu", "xnnpack"}
    assert report.weight_bytes_by_dtype.get("int8", 0) > report.weight_bytes_by_dtype.get("float32", 0)


def test_dynamic_range_rnn_matches_keras(trained_rnn, digits_sequences):
    _, (x_test, _) = digits_sequences
    b = tfc.to_tflite(trained_rnn, mode="dynamic", verify=x_test)
    # int8 weights, float activations: top-1 changes only on near ties.
    assert b.agreement >= 0.98


def test_long_or_variable_sequences_run_as_while_loops_in_float_and_are_refused_in_int8():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((None, FEATURES)), L.Bidirectional(L.GRU(8), name="bigru"), L.Dense(3)])
    x = np.random.default_rng(0).uniform(0, 1, (6, 30, FEATURES)).astype("float32")
    b = tfc.to_tflite(model)
    assert "WHILE" in b.info.op_census and any("WHILE loops" in n for n in b.notes)
    assert b.info.input_details[0]["shape"][0] == 1
    # evaluate_tflite feeds a batch-1 file one sample at a time.
    np.testing.assert_allclose(tfc.evaluate.predict(bytes(b), x), model.predict(x, verbose=0), atol=1e-5)
    with pytest.raises(UnsupportedRecurrentLayerError, match=r"'bigru/forward_gru.*variable number of time steps"):
        tfc.to_tflite(model, mode="int8", representative_data=x)
    long = keras.Sequential([keras.Input((recurrent.MAX_UNROLL_STEPS + 1, FEATURES)), L.LSTM(4, name="long")])
    with pytest.raises(UnsupportedRecurrentLayerError, match=rf"'long' runs over {recurrent.MAX_UNROLL_STEPS + 1}"):
        tfc.to_tflite(long, mode="int8", representative_data=np.zeros((2, recurrent.MAX_UNROLL_STEPS + 1, FEATURES)))


def test_what_tflite_cannot_hold_is_refused_with_the_layer_and_the_fix():
    stateful = keras.Sequential([keras.Input((8, FEATURES), batch_size=1), L.LSTM(4, stateful=True, name="memory")])
    with pytest.raises(UnsupportedRecurrentLayerError, match=r"'memory'.*stateful=True.*return_state=True"):
        tfc.to_tflite(stateful)
    masked = keras.Sequential([keras.Input((8, FEATURES)), L.Masking(name="pad_mask"), L.LSTM(4, name="lstm")])
    x = np.random.default_rng(0).uniform(0, 1, (8, 8, FEATURES)).astype("float32")
    with pytest.raises(UnsupportedRecurrentLayerError, match=r"pad_mask.*mode='dynamic'"):
        tfc.to_tflite(masked, mode="int8", representative_data=x)
    # In float the masked RNN converts and computes what Keras does (zero-padded steps skipped).
    x[:, 5:] = 0
    np.testing.assert_allclose(tfc.evaluate.predict(bytes(tfc.to_tflite(masked)), x), masked.predict(x, verbose=0),
                               atol=1e-5)
    # The converter's sparse int8 RNN weights give a file computing a constant (measured): refused.
    for mode in ("int8", "dynamic"):
        with pytest.raises(UnsupportedRecurrentLayerError, match=r"sparse=True.*without sparse="):
            tfc.to_tflite(_untrained("lstm"), mode=mode, representative_data=np.zeros((4, STEPS, FEATURES), "float32"),
                          sparse=True)
    # return_state is fine: the states are ordinary outputs of the unrolled graph.
    inputs = keras.Input((8, FEATURES))
    _, h, c = L.LSTM(4, return_state=True)(inputs)
    states = keras.Model(inputs, [h, c])
    out = tfc.evaluate.predict(bytes(tfc.to_tflite(states)), x)
    assert out.shape == (8, 4)
    # Exporting leaves the user's layers as they were.
    assert masked.get_layer("lstm").unroll is False


def test_pruning_callback_prunes_recurrent_kernels_and_the_int8_file_keeps_the_zeros(digits_sequences):
    (x, y), _ = digits_sequences
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((STEPS, FEATURES)), L.Bidirectional(L.LSTM(16), name="bilstm"),
                              L.Dense(10, name="logits")])
    tfc.zoo.compile_classifier(model, learning_rate=1e-2)
    cb = tfc.PruningCallback(tfc.ConstantSparsity(0.75, begin_step=0, frequency=10), scope="layer")
    model.fit(x[:512], y[:512], epochs=1, batch_size=32, verbose=0, callbacks=[cb])
    for layer in (model.get_layer("bilstm").forward_layer, model.get_layer("bilstm").backward_layer):
        for w in (layer.cell.kernel, layer.cell.recurrent_kernel):
            sparsity = float(np.mean(keras.ops.convert_to_numpy(w) == 0))
            assert abs(sparsity - 0.75) < 0.01, (layer.name, w.name, sparsity)

    b = tfc.to_tflite(model, mode="int8", representative_data=x[:100])
    # The LSTM matrices, (64, 4) and (64, 16) in each direction, are shared by the unrolled steps (a few
    # constants, not one per step), and int8's symmetric weight quantization keeps their zeros exactly zero.
    lstm_weights = [w for w in b.info.weights if w.dtype == "int8" and w.shape in ((64, 4), (64, 16))]
    assert 4 <= len(lstm_weights) < STEPS
    assert all(w.zero_fraction >= 0.74 for w in lstm_weights), [(w.shape, w.zero_fraction) for w in lstm_weights]


def test_one_shot_pruning_and_layer_names_reach_rnn_cells():
    model = _untrained("bidirectional_gru")
    entries = {e.path: e for e in tfc.pruning.Pruner(model, tfc.ConstantSparsity(0.5, 0)).entries}
    assert entries["rnn/forward_gru/gru_cell/recurrent_kernel"].pruned
    assert not entries["rnn/forward_gru/gru_cell/bias"].pruned
    # Naming the Bidirectional wrapper (the name users see) selects the cells inside it.
    pruner = tfc.pruning.Pruner(model, tfc.ConstantSparsity(0.5, 0), scope="layer", layers=["rnn"])
    assert {e.path for e in pruner.targets} == {f"rnn/{d}_gru/gru_cell/{w}" for d in ("forward", "backward")
                                                for w in ("kernel", "recurrent_kernel")}
    with pruner:
        pruner.update_masks(0.5)
    kernel = keras.ops.convert_to_numpy(model.get_layer("rnn").forward_layer.cell.recurrent_kernel)
    assert abs(np.mean(kernel == 0) - 0.5) < 0.01
    skipped = tfc.pruning.Pruner(model, tfc.ConstantSparsity(0.5, 0), skip=["rnn"])
    assert {e.path for e in skipped.targets} == {"head/kernel"}


def test_channel_pruning_keeps_layers_feeding_an_rnn_with_the_reason():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((STEPS, FEATURES)), L.Dense(16, activation="relu", name="embed"),
                              L.LSTM(8, name="lstm"), L.Dense(4, name="head")])
    with pytest.raises(tfc.ChannelPruningError, match=r"read by lstm \(LSTM is not analysed\)"):
        tfc.prune_channels(model, 0.5)


def test_qat_keeps_rnn_layers_float_with_the_reason_and_converts():
    model = _untrained("lstm")
    x = np.random.default_rng(0).uniform(0, 1, (32, STEPS, FEATURES)).astype("float32")
    with pytest.warns(UserWarning, match="left 1 layer"):
        qat = tfc.quantize_model(model)
    report = qat.quantization_report
    assert "recurrent layers are not fake-quantized" in report.to_markdown()
    tfc.quantization.calibrate(qat, x)  # the head's ranges, as training would set them
    # Calibration quantizes the RNN post-training (the Dense head keeps its fake-quant ranges): all int8.
    b = tfc.to_tflite(qat, mode="int8", representative_data=x, strict=True)
    out = qat.predict(x, verbose=0)
    # Within 8 output steps, as for post-training int8 above (the head's own rounding is the same in both).
    assert np.abs(tfc.evaluate.predict(bytes(b), x) - out).max() <= 8 * _int8_output_step(qat, x)
    # Kept float on purpose, it stays float: calibration data is then left unused.
    kept = tfc.quantize_model(model, keep_float=["rnn"])
    floats = tfc.to_tflite(kept, mode="int8", representative_data=x).info.float_compute_ops()
    assert {op.type for op in floats} >= {"FULLY_CONNECTED", "TANH"}


def test_int8_rnn_runs_on_tflite_micro(trained_rnn_int8, digits_sequences):
    pytest.importorskip("tflite_micro")
    _, (x_test, y_test) = digits_sequences
    b = trained_rnn_int8
    assert not [f for f in tfc.micro.audit(b) if f.blocking]
    report = tfc.evaluate_tflite(b, x=x_test[:100], y=y_test[:100], backends=("xnnpack", "micro"), num_runs=2)
    # TFLM's int8 reference kernels and XNNPACK's round alike but not identically: top-1 may flip on ties.
    assert report.micro.runs and report.micro.agreement >= 0.97, report.micro.to_markdown()


def test_micro_audit_blocks_variable_length_sequences():
    pytest.importorskip("tflite_micro")
    model = keras.Sequential([keras.Input((None, FEATURES), name="frames"), L.LSTM(4), L.Dense(3)])
    b = tfc.to_tflite(model)  # a WHILE loop over any number of steps: LiteRT resizes it, TFLM cannot
    assert b.info.input_details[0]["shape_signature"] == [1, -1, FEATURES]
    blocking = [f for f in tfc.micro.audit(b) if f.blocking]
    assert [f.rule for f in blocking] == ["variable_shape"] and "keras.Input((49, 10))" in blocking[0].message
    x = np.random.default_rng(0).uniform(0, 1, (4, 12, FEATURES)).astype("float32")
    report = tfc.evaluate_tflite(b, x=x, backends=("xnnpack", "micro"), num_runs=2)
    assert not report.micro.runs and "variable dimension" in report.micro.error
