"""Evaluator depth on real LiteRT: XNNPACK delegation, per-op-type time profile, interpreter peak memory."""

import numpy as np
import pytest

import tfcompress as tfc
from tfcompress.evaluation import profiling


def _cnn(channels, size):
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(channels, 3, activation="relu")(inputs)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(2 * channels, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(10, activation="softmax")(x)
    return keras.Model(inputs, outputs)


@pytest.fixture(scope="module")
def cnn():
    """Float CNN that XNNPACK takes whole: CONV_2D, MAX_POOL_2D, CONV_2D, MEAN, FULLY_CONNECTED, SOFTMAX."""
    return bytes(tfc.to_tflite(_cnn(8, 32), mode="float32"))


@pytest.fixture(scope="module")
def big_cnn():
    return bytes(tfc.to_tflite(_cnn(64, 128), mode="float32"))


@pytest.fixture(scope="module")
def cumsum_model():
    """FULLY_CONNECTED, CUMSUM, FULLY_CONNECTED: XNNPACK has no CUMSUM, so the graph splits around it."""
    import keras
    import tensorflow as tf

    inputs = keras.Input((16,))
    x = keras.layers.Dense(16)(inputs)
    x = keras.layers.Lambda(lambda t: tf.math.cumsum(t, axis=-1))(x)
    outputs = keras.layers.Dense(4)(x)
    return bytes(tfc.to_tflite(keras.Model(inputs, outputs), mode="float32"))


def test_float_cnn_is_taken_whole_by_xnnpack(cnn):
    d = profiling.delegation(cnn)
    assert (d.total_nodes, d.xnnpack_nodes, d.partitions) == (6, 6, 1)
    assert d.default_kernel_ops == [] and d.fully_delegated
    md = d.to_markdown()
    assert "XNNPACK delegation" in md and "Ops on the default kernels" not in md


def test_op_xnnpack_refuses_is_listed_on_default_kernels(cumsum_model, tmp_path):
    path = tmp_path / "cumsum.tflite"
    path.write_bytes(cumsum_model)
    d = profiling.delegation(str(path))
    assert (d.total_nodes, d.xnnpack_nodes, d.partitions) == (3, 2, 2)
    assert [(op.index, op.type, op.dtype) for op in d.default_kernel_ops] == [(1, "CUMSUM", "float32")]
    assert d.default_kernel_census == {"CUMSUM/float32": 1} and not d.fully_delegated
    assert "CUMSUM" in d.to_markdown()
    assert d.to_dict()["default_kernel_ops"][0]["type"] == "CUMSUM"


def test_cpu_op_profile_has_tflite_op_types_summing_to_100_percent(cnn):
    prof = profiling.op_profile(cnn, backend="cpu", num_runs=20, warmup_runs=2)
    by_type = {r.op_type: r for r in prof.rows}
    assert set(by_type) == {"CONV_2D", "MAX_POOL_2D", "MEAN", "FULLY_CONNECTED", "SOFTMAX"}
    assert by_type["CONV_2D"].count == 2 and by_type["CONV_2D"].kernel == "default"
    assert sum(r.percent for r in prof.rows) == pytest.approx(100.0, abs=0.01)
    assert prof.rows[0].op_type == "CONV_2D"  # slowest first; the convolutions dominate this CNN
    assert by_type["CONV_2D"].total_ms == pytest.approx(20 * by_type["CONV_2D"].avg_ms)
    assert prof.invoke_ms > 0 and prof.runs == 20 and len(prof) == 5
    assert "CONV_2D" in prof.to_markdown()


def test_xnnpack_op_profile_names_xnnpack_operators_and_the_refused_op(cnn, cumsum_model):
    prof = profiling.op_profile(cnn, backend="xnnpack", num_runs=20)
    conv = [r for r in prof.rows if r.op_type.startswith("Convolution")]
    assert conv and conv[0].kernel == "XNNPACK" and conv[0].count == 2
    assert all(r.kernel == "XNNPACK" for r in prof.rows)
    assert sum(r.percent for r in prof.rows) == pytest.approx(100.0, abs=0.01)

    mixed = profiling.op_profile(cumsum_model, backend="xnnpack", num_runs=5)
    kernels = {r.op_type: r.kernel for r in mixed.rows}
    assert kernels["CUMSUM"] == "default"  # the same op delegation() reports as left behind
    assert any(k == "XNNPACK" and t.startswith("Fully Connected") for t, k in kernels.items())


@pytest.mark.parametrize("backend", ["xnnpack", "cpu"])
def test_peak_memory_grows_with_the_model(cnn, big_cnn, backend):
    small = profiling.peak_memory(cnn, backend=backend)
    big = profiling.peak_memory(big_cnn, backend=backend)
    assert isinstance(small, int) and small > 0
    # 128x128x64 float activations alone are 4 MB; the small CNN's are 32 KB.
    assert big > small + 4 * 2**20


@pytest.mark.parametrize("call, message", [
    (lambda m: profiling.op_profile(m, backend="gpu"), "backend: unknown backend 'gpu'"),
    (lambda m: profiling.peak_memory(m, backend=None), "backend: unknown backend None"),
    (lambda m: profiling.delegation(m, threads=0), "threads must be a positive integer"),
    (lambda m: profiling.op_profile(m, threads=1.5), "threads must be a positive integer"),
    (lambda m: profiling.op_profile(m, num_runs=0), "num_runs must be a positive integer"),
    (lambda m: profiling.op_profile(m, warmup_runs=-1), "warmup_runs must be a non-negative integer"),
    (lambda m: profiling.peak_memory(m, num_runs=True), "num_runs must be a positive integer"),
    (lambda m: profiling.peak_memory(m, timeout=0), "timeout must be a positive number"),
])
def test_bad_arguments_name_the_argument(cnn, call, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        call(cnn)


def test_bad_models():
    with pytest.raises(tfc.InvalidTFLiteFileError, match="TFL3"):
        profiling.delegation(b"not a model at all")
    with pytest.raises(tfc.InvalidTFLiteFileError):
        profiling.op_profile(b"\x00" * 64)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        profiling.peak_memory("/nonexistent/model.tflite")
    with pytest.raises(TypeError, match="tflite must be the model's bytes or a path"):
        profiling.delegation(np.zeros(3))


def test_the_evaluator_reports_delegation_always_and_profiles_on_request(cumsum_model, cnn):
    r = tfc.evaluate_tflite(cumsum_model, num_runs=3)
    assert r.delegation.total_nodes == 3 and r.delegation.xnnpack_nodes == 2 and not r.op_profiles
    assert any("XNNPACK took 2 of 3 nodes" in n and "CUMSUM" in n for n in r.notes)
    full = tfc.evaluate_tflite(cnn, num_runs=3, profile=True)
    assert full.delegation.fully_delegated and not any("XNNPACK took" in n for n in full.notes)
    assert set(full.op_profiles) == {"cpu", "xnnpack"} and set(full.peak_memory_bytes) == {"cpu", "xnnpack"}
    markdown = full.to_markdown()
    assert "Op profile (cpu" in markdown and "CONV_2D" in markdown and "peak memory" in markdown
    assert full.to_dict()["op_profiles"]["cpu"]["rows"]
