"""One model graph, one model check, one vocabulary: behaviour shared by every verb."""

import os
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest

import tfcompress as tfc
from tfcompress.core import datasets, extras, graph, isolation


def _residual_model():
    inputs = keras.Input((8, 8, 3), name="image")
    x = keras.layers.Conv2D(4, 3, padding="same", name="stem")(inputs)
    inner_in = keras.Input((8, 8, 4))
    inner = keras.Model(inner_in, keras.layers.Conv2D(4, 1, name="inner_conv")(inner_in), name="block")
    y = inner(x)
    x = keras.layers.Add(name="add")([x, y])
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, keras.layers.Dense(2, name="head")(x), name="residual")


def test_iter_layers_walks_nested_models_with_paths():
    paths = [path for path, _ in graph.iter_layers(_residual_model())]
    assert "block/inner_conv" in paths and "stem" in paths and "head" in paths
    assert len(paths) == len(set(paths))


def test_read_graph_finds_producers_consumers_and_outputs():
    nodes, inputs = graph.read_graph(_residual_model())
    assert inputs == ["image"]
    assert sorted(nodes["add"].producers) == ["block", "stem"]
    assert sorted(nodes["stem"].consumers) == ["add", "block"]
    assert nodes["head"].is_output and not nodes["add"].is_output


VERBS = {
    "convert": lambda m: tfc.to_tflite(m),
    "prune": lambda m: tfc.Pruner(m, tfc.ConstantSparsity(0.5, 0)),
    "quantize": lambda m: tfc.quantize_model(m),
    "distill": lambda m: tfc.Distiller(teacher=m, student=m),
    "compress": lambda m: tfc.compress(m, "digits"),
}


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_every_verb_rejects_a_path_with_the_same_fix(verb):
    with pytest.raises(TypeError, match=rf"must be a keras\.Model, got str 'm\.keras'\. To {verb}\w* .*saved model, "
                                        r"load it first: keras\.models\.load_model\(path\)"):
        VERBS[verb]("m.keras")


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_every_verb_rejects_a_keras_tensor_the_same_way(verb):
    with pytest.raises(TypeError, match=r"got a KerasTensor .*keras\.Model\(inputs, outputs\)"):
        VERBS[verb](keras.layers.Dense(2)(keras.Input((3,))))


def test_two_headed_model_converts_and_is_scored_on_the_named_head():
    inputs = keras.Input((8,), name="x")
    hidden = keras.layers.Dense(16, activation="relu")(inputs)
    # The converter orders this file's output tensors as [wide, narrow]: the Keras order is restored by name.
    model = keras.Model(inputs, [keras.layers.Dense(3, name="zz_narrow")(hidden),
                                 keras.layers.Dense(5, name="aa_wide")(hidden)])
    x = np.random.default_rng(0).random((40, 8), dtype=np.float32)
    narrow, wide = (np.asarray(o) for o in model(x))
    flatbuffer = tfc.to_tflite(model)
    from tfcompress.evaluation.litert import make_interpreter, _predict

    interpreter = make_interpreter(bytes(flatbuffer), "cpu", 1)
    np.testing.assert_allclose(_predict(interpreter, [x], 16, head=0), narrow, atol=1e-5)
    np.testing.assert_allclose(_predict(interpreter, [x], 16, head=1), wide, atol=1e-5)
    by_index = tfc.evaluate_tflite(flatbuffer, x=x, y=wide.argmax(1), output=1, num_runs=1)
    assert by_index.accuracy == 1.0 and by_index.accuracy_output == "output_1"
    by_name = tfc.evaluate_tflite(flatbuffer, x=x, y=narrow.argmax(1), output="output_0", num_runs=1)
    assert by_name.accuracy == 1.0 and "output_0" in by_name.to_markdown()
    with pytest.raises(ValueError, match=r"2 outputs \['output_0', 'output_1'\].*pass output="):
        tfc.evaluate_tflite(flatbuffer, x=x, y=narrow.argmax(1), num_runs=1)
    with pytest.raises(ValueError, match=r"output=2: pass an index in 0\.\.1"):
        tfc.evaluate_tflite(flatbuffer, x=x, y=narrow.argmax(1), output=2, num_runs=1)


def test_quantization_report_survives_load_model(trained_digits_model, tmp_path):
    qat = tfc.quantize_model(trained_digits_model, keep_float=["fc1"])
    before = tfc.quantization.quantization_report(qat)
    path = str(tmp_path / "qat.keras")
    qat.save(path)
    after = tfc.quantization.quantization_report(keras.models.load_model(path))
    assert after.quantized == before.quantized and after.folded == before.folded == [("bn1", "conv1")]
    assert ("fc1", "listed in keep_float") in after.float_layers
    with pytest.raises(ValueError, match="no quantized layer"):
        tfc.quantization.quantization_report(trained_digits_model)


def test_old_names_warn_and_still_work():
    with pytest.warns(DeprecationWarning, match="use tfc.QATConfig"):
        old = tfc.QuantizationConfig
    assert old is tfc.QATConfig
    with pytest.warns(DeprecationWarning, match="use tfc.QuantizationAwareTraining"):
        from tfcompress.pipeline.recipe import QuantizeAware  # noqa: F401
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert tfc.callbacks.PruningCallback is tfc.PruningCallback
    with pytest.raises(AttributeError, match="no attribute 'Nonexistent'"):
        tfc.Nonexistent  # noqa: B018


def test_public_api_lists_only_real_names():
    assert all(hasattr(tfc, name) for name in tfc.__all__)
    assert {"PruningCallback", "BackupAndRestore", "TFLiteParityCallback"} <= set(tfc.callbacks.__all__)


def test_import_does_not_load_legacy_keras():
    code = "import sys, tfcompress; print(sorted(m for m in ('tf_keras', 'tensorflow_model_optimization') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stderr[-500:]


def test_missing_extra_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(extras.OPTIONAL, "tfcompress_no_such_module", ("no-such-package", "micro"))
    with pytest.raises(extras.MissingExtraError, match=r"the 'micro' backend needs .*'no-such-package'.*"
                                                       r"pip install 'tfcompress\[micro\]'"):
        extras.require("tfcompress_no_such_module", "the 'micro' backend")


def test_datasets_load_reads_npz_and_names_what_is_missing(tmp_path):
    path = str(tmp_path / "d.npz")
    np.savez(path, x_train=np.zeros((4, 2, 2, 1)), y_train=np.zeros(4), x_test=np.zeros((2, 2, 2, 1)), y_test=np.zeros(2))
    (x, _), (x_test, _) = datasets.load(path)
    assert x.dtype == np.float32 and x_test.shape == (2, 2, 2, 1)
    bad = str(tmp_path / "bad.npz")
    np.savez(bad, x_train=np.zeros(2))
    with pytest.raises(ValueError, match=r"lacks arrays \['y_train', 'x_test', 'y_test'\]"):
        datasets.load(bad)
    with pytest.raises(ValueError, match="Unknown dataset 'cifar'"):
        datasets.load("cifar")


def test_isolation_reports_a_crash_and_a_timeout():
    crashed = isolation.run(["-c", "import os; os.abort()"], timeout=60)
    assert not crashed.ok and crashed.reason == "crashed with SIGABRT"
    failed = isolation.run(["-c", "import sys; sys.exit('bad model')"], timeout=60)
    assert failed.reason == "exited with code 1 (bad model)"
    with pytest.raises(isolation.Timeout):
        isolation.run(["-c", "import time; time.sleep(30)"], timeout=1)


def test_loaded_subclassed_model_converts_from_its_recorded_shape(tmp_path):
    @keras.saving.register_keras_serializable(package="tfcompress_tests")
    class Net(keras.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.conv = keras.layers.Conv2D(2, 3)
            self.flat = keras.layers.Flatten()
            self.dense = keras.layers.Dense(3)

        def call(self, x):
            return self.dense(self.flat(self.conv(x)))

    net = Net(name="net")
    net(np.zeros((2, 9, 9, 1), np.float32))
    path = os.path.join(tmp_path, "net.keras")
    net.save(path)
    loaded = keras.models.load_model(path)
    x = np.random.default_rng(0).random((20, 9, 9, 1), dtype=np.float32)
    flatbuffer = tfc.to_tflite(loaded, mode="int8", representative_data=x)
    assert flatbuffer.info.input_details[0]["shape"][1:] == [9, 9, 1]
