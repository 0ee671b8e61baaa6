"""The `>>>` examples in the docstrings the API reference (docs/reference/*.md) renders: they run.

Its own file, apart from tests/test_docs.py, so that pytest-xdist's two workers share the documentation's
examples (each file runs on one worker).
"""

import json
import os
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent

# The API reference (docs/reference/*.md) renders the docstrings of these objects, examples included.
REFERENCED = sorted({name for page in (ROOT / "docs" / "reference").glob("*.md")
                     for name in re.findall(r"^::: (\S+)$", page.read_text(), re.M)})

# Runs the `>>>` examples of the docstrings of the objects named in argv, each in a fresh namespace: the
# defining module's names, `tfc`'s public names, and the names the examples assume a reader has: a trained
# `model`, its data, `b` (its int8 file), `qat` (its compiled QAT model), a `dataset` and a `train_step`.
DOCSTRING_RUNNER = r"""
import doctest, importlib, inspect, json, sys, traceback
import keras, numpy as np, tensorflow as tf
import tfcompress as tfc

(x, y), (x_test, y_test) = tfc.datasets.fashion_mnist(limit_train=1000, limit_test=300)
x_train, y_train, x_val, y_val = x, y, x_test, y_test
trained = tfc.zoo.compile_classifier(tfc.zoo.reference_cnn())
trained.fit(x, y, epochs=1, batch_size=128, verbose=0)
int8 = tfc.to_tflite(trained, mode="int8", representative_data=x[:100], output_path="model.tflite")

def namespace(module, source):
    model = keras.models.clone_model(trained)
    model.set_weights(trained.get_weights())
    tfc.zoo.compile_classifier(model)
    ns = {**vars(module), **{n: getattr(tfc, n) for n in tfc.__all__}, "tfc": tfc, "keras": keras, "np": np,
          "tf": tf, "model": model, "b": int8, "x": x, "y": y, "x_test": x_test, "y_test": y_test,
          "x_train": x_train, "y_train": y_train, "x_val": x_val, "y_val": y_val}
    if "qat" in source:
        ns["qat"] = tfc.zoo.compile_classifier(tfc.quantize_model(model), learning_rate=1e-4)
    ns["dataset"] = tf.data.Dataset.from_tensor_slices((x, y)).batch(128)

    def train_step(xb, yb):
        with tf.GradientTape() as tape:
            loss = model.compute_loss(x=xb, y=yb, y_pred=model(xb, training=True))
        model.optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)

    ns["train_step"] = train_step
    return ns

parser, failures, ran = doctest.DocTestParser(), [], 0
for name in json.loads(sys.argv[1]):
    obj, module_name = tfc, "tfcompress"
    for part in name.split(".")[1:]:
        obj = getattr(obj, part)
    members = [(name, obj)]
    if inspect.isclass(obj):
        members += [(f"{name}.{k}", v) for k, v in vars(obj).items()
                    if not k.startswith("_") and (inspect.isfunction(v) or isinstance(v, property))]
    for where, member in members:
        source = "".join(e.source for e in parser.get_examples(inspect.getdoc(member) or ""))
        if not source:
            continue
        module = sys.modules[getattr(member, "__module__", None) or obj.__module__]
        print(f"--- {where}", flush=True)
        ran += 1
        try:
            exec(compile(source, f"<docstring of {where}>", "exec"), namespace(module, source))
        except Exception:
            failures.append(f"{where}:\n{source}\n{traceback.format_exc(limit=-3)}")
print(f"ran {ran} docstring examples", flush=True)
sys.exit("\n\n".join(failures) if failures else 0)
"""


def test_docstring_examples_of_the_api_reference_run(tmp_path):
    """The `>>>` examples the API reference shows run, against a small trained model and its data."""
    assert len(REFERENCED) > 50, REFERENCED
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", MPLBACKEND="Agg",
               TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run([sys.executable, "-c", DOCSTRING_RUNNER, json.dumps(REFERENCED)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-8000:]}"
    ran = int(re.search(r"ran (\d+) docstring examples", done.stdout).group(1))
    assert ran >= 20, done.stdout
