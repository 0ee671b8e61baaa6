"""The model-coverage matrix: every verb on every model users bring, each cell OK (with its figure) or refused.

Runs post-training int8 (PTQ), QAT int8, magnitude pruning, channel pruning + shrink, clustering,
factorization, ONNX and TFLite Micro on a zoo: keras.applications at small inputs, the MLPerf Tiny
reference architectures rebuilt in Keras, a ViT, a text classifier, LSTM/GRU, a U-Net and a two-input
two-output model. Untrained models (weights=None): the figures are about what the verbs do to the graph,
not about accuracy. Each model runs in its own child process (one TensorFlow import, a time limit).

A cell is:
  OK: <figure>   the verb ran and its result was checked (float ops left in the int8 file, shrink error,
                 sparsity reached, ONNX vs Keras error, TFLite Micro arena);
  refused: ...   tfcompress refused it with an error that says what to do (a tfcompress error class, or a
                 ValueError/TypeError raised by tfcompress's own `raise`);
  CRASH: ...     any other exception: a bug. `--check` exits 1 if any cell is a CRASH, or a QAT file has
                 more float ops than the PTQ file of the same model.

    python tools/coverage.py                       # the whole matrix (about an hour on 2 cores)
    python tools/coverage.py --models=ds_cnn,two_io --verbs=ptq,qat --json=out.json --check
"""

import argparse
import json
import os
import subprocess
import sys
import time
import traceback

VERBS = ("ptq", "qat", "prune", "channels", "cluster", "factorize", "onnx", "micro")


def _apps(name, shape, **kwargs):
    def build():
        import keras
        return getattr(keras.applications, name)(input_shape=shape, weights=None, classes=10, **kwargs)
    return build


def ds_cnn():
    """MLPerf Tiny keyword spotting: DS-CNN (49x10 MFCC input)."""
    import keras
    from keras import layers
    inputs = keras.Input((49, 10, 1))
    x = layers.Conv2D(64, (10, 4), strides=(2, 2), padding="same", use_bias=False)(inputs)
    x = layers.ReLU()(layers.BatchNormalization()(x))
    for _ in range(4):
        x = layers.DepthwiseConv2D(3, padding="same", use_bias=False)(x)
        x = layers.ReLU()(layers.BatchNormalization()(x))
        x = layers.Conv2D(64, 1, use_bias=False)(x)
        x = layers.ReLU()(layers.BatchNormalization()(x))
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(12)(x), name="ds_cnn")


def resnet8():
    """MLPerf Tiny image classification: ResNet-8 (CIFAR-10 input)."""
    import keras
    from keras import layers

    def block(x, filters, stride):
        y = layers.Conv2D(filters, 3, strides=stride, padding="same")(x)
        y = layers.ReLU()(layers.BatchNormalization()(y))
        y = layers.BatchNormalization()(layers.Conv2D(filters, 3, padding="same")(y))
        if stride != 1:
            x = layers.Conv2D(filters, 1, strides=stride)(x)
        return layers.ReLU()(layers.Add()([x, y]))

    inputs = keras.Input((32, 32, 3))
    x = layers.ReLU()(layers.BatchNormalization()(layers.Conv2D(16, 3, padding="same")(inputs)))
    x = block(block(block(x, 16, 1), 32, 2), 64, 2)
    x = layers.AveragePooling2D(8)(x)
    return keras.Model(inputs, layers.Dense(10)(layers.Flatten()(x)), name="resnet8")


def vww_mobilenet():
    """MLPerf Tiny visual wake words: MobileNetV1 alpha 0.25 at 96x96."""
    import keras
    return keras.applications.MobileNet(input_shape=(96, 96, 3), alpha=0.25, weights=None, classes=2)


def autoencoder():
    """MLPerf Tiny anomaly detection: the Dense autoencoder (640 -> 8 -> 640)."""
    import keras
    from keras import layers
    inputs = keras.Input((640,))
    x = inputs
    for units in (128, 128, 128, 128, 8, 128, 128, 128, 128):
        x = layers.ReLU()(layers.BatchNormalization()(layers.Dense(units)(x)))
    return keras.Model(inputs, layers.Dense(640)(x), name="autoencoder")


def vit():
    """A small ViT: patches, 2 blocks of LayerNormalization, MultiHeadAttention, Dense GELU MLP, residual adds."""
    import keras
    from keras import layers
    inputs = keras.Input((28, 28, 1))
    x = layers.Reshape((49, 64))(layers.Conv2D(64, 4, strides=4)(inputs))
    for _ in range(2):
        y = layers.LayerNormalization()(x)
        x = layers.Add()([x, layers.MultiHeadAttention(4, 16)(y, y)])
        y = layers.LayerNormalization()(x)
        y = layers.Dense(64)(layers.Dense(128, activation="gelu")(y))
        x = layers.Add()([x, y])
    x = layers.GlobalAveragePooling1D()(layers.LayerNormalization()(x))
    return keras.Model(inputs, layers.Dense(10)(x), name="vit")


def text_classifier():
    """Token ids -> Embedding -> attention -> pooled Dense (a spam/sentiment classifier)."""
    import keras
    from keras import layers
    inputs = keras.Input((32,), dtype="int32")
    x = layers.Embedding(1000, 32)(inputs)
    x = layers.Add()([x, layers.MultiHeadAttention(2, 16)(x, x)])
    x = layers.GlobalAveragePooling1D()(layers.LayerNormalization()(x))
    return keras.Model(inputs, layers.Dense(2)(x), name="text_classifier")


def lstm_gru():
    import keras
    from keras import layers
    return keras.Sequential([keras.Input((49, 10)), layers.LSTM(32, return_sequences=True), layers.GRU(32),
                             layers.Dense(12)], name="lstm_gru")


def unet():
    import keras
    from keras import layers
    inputs = keras.Input((32, 32, 3))
    d1 = layers.Conv2D(16, 3, padding="same", activation="relu")(inputs)
    d2 = layers.Conv2D(32, 3, padding="same", activation="relu")(layers.MaxPooling2D()(d1))
    b = layers.Conv2D(64, 3, padding="same", activation="relu")(layers.MaxPooling2D()(d2))
    u2 = layers.Conv2D(32, 3, padding="same", activation="relu")(
        layers.Concatenate()([layers.UpSampling2D()(b), d2]))
    u1 = layers.Conv2D(16, 3, padding="same", activation="relu")(
        layers.Concatenate()([layers.UpSampling2D()(u2), d1]))
    return keras.Model(inputs, layers.Conv2D(2, 1)(u1), name="unet")


def two_io():
    """Two inputs (an image and a feature vector), two outputs (a class and a value)."""
    import keras
    from keras import layers
    image, features = keras.Input((16, 16, 3), name="image"), keras.Input((8,), name="features")
    x = layers.GlobalAveragePooling2D()(layers.Conv2D(16, 3, activation="relu")(image))
    x = layers.Concatenate()([x, layers.Dense(16, activation="relu")(features)])
    x = layers.Dense(32, activation="relu")(x)
    return keras.Model([image, features], [layers.Dense(4, name="label")(x), layers.Dense(1, name="value")(x)],
                       name="two_io")


MODELS = {
    "MobileNet": _apps("MobileNet", (32, 32, 3), alpha=0.25),
    "MobileNetV2": _apps("MobileNetV2", (32, 32, 3), alpha=0.35),
    "MobileNetV3Small": _apps("MobileNetV3Small", (32, 32, 3)),
    "MobileNetV3Large": _apps("MobileNetV3Large", (32, 32, 3)),
    "EfficientNetB0": _apps("EfficientNetB0", (32, 32, 3)),
    "EfficientNetV2B0": _apps("EfficientNetV2B0", (32, 32, 3)),
    "ResNet50": _apps("ResNet50", (32, 32, 3)),
    "ResNet50V2": _apps("ResNet50V2", (32, 32, 3)),
    "DenseNet121": _apps("DenseNet121", (32, 32, 3)),
    "ConvNeXtTiny": _apps("ConvNeXtTiny", (32, 32, 3)),
    "NASNetMobile": _apps("NASNetMobile", (32, 32, 3)),
    "Xception": _apps("Xception", (71, 71, 3)),
    "InceptionV3": _apps("InceptionV3", (75, 75, 3)),
    "VGG16": _apps("VGG16", (32, 32, 3)),
    "ds_cnn": ds_cnn, "resnet8": resnet8, "vww_mobilenet": vww_mobilenet, "autoencoder": autoencoder,
    "vit": vit, "text_classifier": text_classifier, "lstm_gru": lstm_gru, "unet": unet, "two_io": two_io,
}


def _inputs(model, n, seed=0):
    """``n`` random samples for each input: token ids for integer inputs, [0, 1) floats otherwise."""
    import numpy as np
    rng = np.random.default_rng(seed)
    xs = []
    for tensor in model.inputs:
        shape = (n, *tensor.shape[1:])
        xs.append(rng.integers(0, 1000, shape).astype("int32") if "int" in str(tensor.dtype)
                  else rng.random(shape, dtype=np.float32))
    return xs[0] if len(xs) == 1 else xs


def _max_error(a, b):
    import numpy as np
    a, b = (a if isinstance(a, (list, tuple)) else [a]), (b if isinstance(b, (list, tuple)) else [b])
    return max(float(np.max(np.abs(np.asarray(p) - np.asarray(q)))) for p, q in zip(a, b))


class Refused(Exception):
    """A verb's result that tfcompress reported as impossible, with the reason (not an exception it raised)."""


class Verbs:
    """One method per verb: returns the cell's figure (a short string) or raises."""

    def __init__(self, model):
        import tfcompress as tfc
        self.tfc, self.model = tfc, model
        self.x = _inputs(model, 16)
        self.y = model.predict(self.x, verbose=0)  # untrained models: their own outputs are the targets
        self.ptq_float_ops = None

    def _fit_copy(self, model, callbacks=(), epochs=1):
        import keras
        model.compile(optimizer=keras.optimizers.Adam(1e-4), loss="mse")
        model.fit(self.x, self.y, epochs=epochs, batch_size=8, verbose=0, callbacks=list(callbacks))
        return model

    def _copy(self):
        import keras
        copy = keras.models.clone_model(self.model)
        copy.set_weights(self.model.get_weights())
        return copy

    def ptq(self):
        self.int8 = self.tfc.to_tflite(self.model, mode="int8", representative_data=self.x)
        self.ptq_float_ops = len(self.tfc.inspect_tflite(self.int8).float_compute_ops())
        return f"{self.ptq_float_ops} float ops", {"float_ops": self.ptq_float_ops}

    def qat(self):
        q = self._fit_copy(self.tfc.quantize_model(self.model))
        b = self.tfc.to_tflite(q, mode="int8", representative_data=self.x)
        n = len(self.tfc.inspect_tflite(b).float_compute_ops())
        return f"{n} float ops" + (f" (PTQ {self.ptq_float_ops})" if self.ptq_float_ops is not None else ""), \
            {"float_ops": n, "ptq_float_ops": self.ptq_float_ops}

    def prune(self):
        import numpy as np
        pruned = self._fit_copy(self._copy(), [self.tfc.PruningCallback(self.tfc.ConstantSparsity(0.5, 0, frequency=1))])
        kernels = [w.numpy() for layer in pruned.layers for w in layer.trainable_weights if len(w.shape) >= 2]
        zeros = sum(int(np.sum(k == 0)) for k in kernels) / max(1, sum(k.size for k in kernels))
        return f"{100 * zeros:.0f}% zeros", {"sparsity": zeros}

    def channels(self):
        pruned = self.tfc.prune_channels(self.model, 0.3, verbose=0)
        error = _max_error(pruned.predict(self.x, verbose=0), self.model.predict(self.x, verbose=0)) \
            if pruned.count_params() == self.model.count_params() else None
        kept = pruned.count_params() / self.model.count_params()
        return f"{100 * (1 - kept):.0f}% params removed", {"params_kept": kept, "unchanged_error": error}

    def cluster(self):
        import numpy as np
        clustered = self.tfc.cluster_weights(self.model, 16)
        distinct = max((len(np.unique(w.numpy())) for layer in clustered.layers for w in layer.trainable_weights
                        if len(w.shape) >= 2), default=0)
        return f"<= {distinct} values per kernel", {"max_distinct": distinct}

    def factorize(self):
        small = self.tfc.factorize(self.model, energy=0.9, verbose=0)
        kept = small.count_params() / self.model.count_params()
        return f"{100 * kept:.0f}% params", {"params_kept": kept}

    def onnx(self):
        import numpy as np
        import onnxruntime as ort
        raw = self.tfc.to_onnx(self.model)
        session = ort.InferenceSession(bytes(raw), providers=["CPUExecutionProvider"])
        xs = self.x if isinstance(self.x, list) else [self.x]
        feed = {i.name: np.asarray(v) for i, v in zip(session.get_inputs(), xs)}
        error = _max_error(session.run(None, feed), self.y if isinstance(self.y, list) else [self.y])
        return f"max abs(ONNX - Keras) {error:.1e}", {"error": error}

    def micro(self):
        if not hasattr(self, "int8"):
            self.ptq()
        xs = self.x[:4] if not isinstance(self.x, list) else [v[:4] for v in self.x]
        report = self.tfc.evaluate_tflite(self.int8, x=xs, backends=("micro",), num_runs=1, micro_samples=4).micro
        if report.error:  # TFLite Micro cannot run it: the report says why (an op it lacks, a float file...)
            raise Refused(report.error)
        return f"arena {report.arena_bytes:,} B", {"arena_bytes": report.arena_bytes}


def _classify(exc):
    """``("refused", message)`` for a tfcompress error that says what to do, ``("CRASH", ...)`` otherwise."""
    message = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
    frames = traceback.extract_tb(exc.__traceback__)
    last = frames[-1] if frames else None
    ours = type(exc).__module__.startswith("tfcompress") or isinstance(exc, Refused)
    raised_by_us = bool(last and f"{os.sep}tfcompress{os.sep}" in last.filename and (last.line or "").startswith("raise")
                        and isinstance(exc, (ValueError, TypeError, NotImplementedError, RuntimeError)))
    return ("refused" if ours or raised_by_us else "CRASH"), message


def run_model(name, verbs):
    """In this process: builds model ``name`` and runs ``verbs``; returns ``{verb: cell}``."""
    import keras
    keras.utils.set_random_seed(0)
    model = MODELS[name]()
    runner = Verbs(model)
    cells = {}
    for verb in verbs:
        start = time.perf_counter()
        try:
            text, figures = getattr(runner, verb)()
            cells[verb] = {"status": "OK", "text": text, **figures}
        except Exception as exc:  # noqa: BLE001 - every failure is a cell of the matrix
            status, message = _classify(exc)
            cells[verb] = {"status": status, "text": message}
            if status == "CRASH":
                cells[verb]["traceback"] = traceback.format_exc(limit=-4)
        cells[verb]["seconds"] = round(time.perf_counter() - start, 1)
    return cells


def _markdown(results, verbs):
    lines = ["| model | " + " | ".join(verbs) + " |", "|---" * (len(verbs) + 1) + "|"]
    for name, cells in results.items():
        row = []
        for verb in verbs:
            cell = cells.get(verb, {"status": "—", "text": ""})
            text = cell["text"].replace("|", "/")
            row.append(f"OK: {text}" if cell["status"] == "OK" else f"{cell['status']}: {text[:120]}")
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def problems(results):
    """Cells that break the matrix's promise: a CRASH, or a QAT file with more float ops than PTQ's."""
    found = []
    for name, cells in results.items():
        for verb, cell in cells.items():
            if cell["status"] == "CRASH":
                found.append(f"{name}/{verb}: {cell['text']}")
        qat = cells.get("qat", {})
        if qat.get("status") == "OK" and qat.get("ptq_float_ops") is not None \
                and qat["float_ops"] > qat["ptq_float_ops"]:
            found.append(f"{name}/qat: {qat['float_ops']} float ops > PTQ's {qat['ptq_float_ops']}")
    return found


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated, from: " + ", ".join(MODELS))
    parser.add_argument("--verbs", default=",".join(VERBS), help="comma-separated, from: " + ", ".join(VERBS))
    parser.add_argument("--json", help="write the cells to this JSON file (with the CPU that timed them)")
    parser.add_argument("--overwrite", action="store_true", help="allow replacing an existing --json file")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per model")
    parser.add_argument("--check", action="store_true", help="exit 1 on a CRASH cell or QAT with more float ops")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    verbs = [v for v in args.verbs.split(",") if v]
    unknown = sorted(set(verbs) - set(VERBS)) + sorted(set(args.models.split(",")) - set(MODELS))
    if unknown:
        parser.error(f"unknown model or verb {unknown}; see --help")
    if args.child:
        print(json.dumps(run_model(args.child, verbs)))
        return 0
    from tfcompress.core import files, machine  # the parent only: it writes the result, the children measure

    if args.json:
        try:
            files.check_writable(args.json, overwrite=args.overwrite, argument="--json")
        except (files.OutputExistsError, OSError) as exc:  # before an hour of work, not after
            parser.error(str(exc))
    results = {}
    for name in args.models.split(","):
        start = time.perf_counter()
        try:
            child = subprocess.run([sys.executable, __file__, f"--child={name}", f"--verbs={','.join(verbs)}"],
                                   capture_output=True, text=True, timeout=args.timeout,
                                   env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
            lines = child.stdout.strip().splitlines()
            results[name] = json.loads(lines[-1]) if child.returncode == 0 and lines else {
                v: {"status": "CRASH", "text": f"child exited {child.returncode}: {child.stderr.strip()[-300:]}"}
                for v in verbs}
        except subprocess.TimeoutExpired:
            results[name] = {v: {"status": "CRASH", "text": f"over {args.timeout:.0f} s"} for v in verbs}
        print(f"{name}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    host = machine.current().summary()
    print(_markdown(results, verbs))
    print(f"\nTimed on: {host}.")
    if args.json:  # atomically: a killed run leaves the old file or none, never half of one
        files.write_atomic(args.json, json.dumps({"machine": host, **results}, indent=2),
                           overwrite=args.overwrite, argument="--json")
    found = problems(results)
    for line in found:
        print("PROBLEM", line, file=sys.stderr)
    return 1 if args.check and found else 0


if __name__ == "__main__":
    sys.exit(main())
