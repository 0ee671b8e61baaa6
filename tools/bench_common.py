"""The scaffold every benchmark in tools/ shares: flags, output files, the machine record, logs, timers, tfmot.

A benchmark script imports this module by name: ``tools/`` is on ``sys.path`` when a script in it runs
(it is the script's own folder). What lives here:

* The start: importing this module puts the checkout first on ``sys.path`` (a script run from a
  checkout measures that checkout's tfcompress); `run` replaces ``absl.app.run`` with the start every
  benchmark makes (quiet logs, the tfmot worker's dispatch, output paths checked before any work).
* Flags: `define_output_flags` (``--out`` JSON, ``--output`` markdown, ``--overwrite``),
  `define_data_flags` (``--batch_size``, ``--train_limit``, ``--test_limit``) and `define_tfmot_flags`
  (``--tfmot`` and the internal ``--tfmot_worker``), defined once with the defaults the scripts always
  had; ``--help`` lists them with the script's own flags.
* Output files: `check_outputs` fails before any training if a path cannot be written (an existing
  file is never replaced without ``--overwrite``); `write_outputs` writes them atomically
  (`tfcompress.core.files.write_atomic`), the JSON with the `machine_record`.
* The machine: latency depends on the CPU (int8 can be slower than float32 without integer dot
  products: README, "Which CPU measured it"), so every result names it: `machine_record` in the JSON,
  `timed_on` under the tables.
* `Log` (timestamped progress lines), `step_timer` (seconds per training step, Keras or tf_keras).
* Small measurements the scripts repeat: `fashion_mnist`, `accuracy`, `gzip_bytes`, `macs`,
  `cosine_learning_rate`, `fine_tune_learning_rate`, `mean_pm`, `save_weights` / `load_weights`.
* tfmot (the legacy baseline, tf_keras only): `run_tfmot` runs the script itself with
  ``--tfmot_worker`` in a child process; the worker reads its job with `read_tfmot_job`, builds
  `tfmot_reference_cnn`, compiles with `tfmot_compile`, converts with `tfmot_int8_tflite` and
  returns with `write_tfmot_results`.
* MobileNet inputs (`upscale_to_mobilenet`), BatchNormalization re-estimation
  (`reestimate_batch_norm`) and the outlier-unit model int8 breaks (`with_outlier_unit`).

Imports nothing heavy at module level: a tfmot worker must select tf_keras before TensorFlow loads
(its environment does that), and ``--help`` should not wait for TensorFlow.
"""

import gzip
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np
from absl import app, flags, logging

# A script run from a checkout imports that checkout's tfcompress, not whichever one is installed.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FLAGS = flags.FLAGS
# The flags defined here belong to the script that asks for them (its --help lists them), not to this module.
flags.disclaim_key_flags()

# Flags -------------------------------------------------------------------------------------------


def define_output_flags(out="Also write all results as JSON to this file.",
                        output="Also write the markdown table to this file.", overwrite=False):
    """Defines ``--out`` (JSON), ``--output`` (markdown) and ``--overwrite``.

    Args:
        out: help text of ``--out``, or None for a benchmark without a JSON file.
        output: help text of ``--output``, or None for a benchmark without a markdown file.
        overwrite: the default of ``--overwrite`` (False: an existing file is an error).
    """
    names = []
    if out is not None:
        flags.DEFINE_string("out", None, out)
        names.append("--out")
    if output is not None:
        flags.DEFINE_string("output", None, output)
        names.append("--output")
    flags.DEFINE_bool("overwrite", overwrite, f"Allow replacing {' / '.join(names)}.")


def define_data_flags(batch_size=64, train_limit=None, test_limit=None, batch_help=None, train_help=None,
                      test_help=None):
    """Defines ``--batch_size``, ``--train_limit`` and ``--test_limit``: how much Fashion-MNIST, in what batches.

    Args:
        batch_size: the default batch size of the benchmark's fits.
        train_limit: the default number of training images; None (or 0, where the script reads 0 as all) for all.
        test_limit: likewise for the test images; ``False`` for a benchmark without the flag.
        batch_help: the help text of ``--batch_size`` where not every fit uses it.
        train_help: the help text of ``--train_limit`` where "the first N training images" says too little.
        test_help: likewise for ``--test_limit``.
    """
    flags.DEFINE_integer("batch_size", batch_size, batch_help or "Batch size of every fit.")
    flags.DEFINE_integer("train_limit", train_limit, train_help or "Use only the first N training images.")
    if test_limit is not False:
        flags.DEFINE_integer("test_limit", test_limit, test_help or "Use only the first N test images.")


def define_tfmot_flags(help_text="Also run tfmot under tf_keras in a subprocess."):
    """Defines ``--tfmot`` (run the tfmot baseline too) and the internal ``--tfmot_worker`` (see `run_tfmot`)."""
    flags.DEFINE_bool("tfmot", True, help_text)
    flags.DEFINE_string("tfmot_worker", None, "(internal) run the tfmot side with this JSON job file.")


def _output_flags():
    """``[(argument, path)]`` of the output flags this script defines and was given."""
    return [(f"--{name}", FLAGS[name].value) for name in ("out", "output")
            if name in FLAGS and FLAGS[name].value]


def check_outputs():
    """Fails now, not after an hour of training, if ``--out`` / ``--output`` cannot be written.

    Raises:
        OutputExistsError: a path exists and ``--overwrite`` was not given.
        OSError: a folder is missing or not writable.
    """
    from tfcompress.core import files

    for argument, path in _output_flags():
        files.check_writable(path, FLAGS.overwrite, argument=argument)


def write_outputs(markdown=None, results=None, json_default=float):
    """Writes ``--output`` (the markdown) and ``--out`` (the results as JSON), each atomically.

    Args:
        markdown: the text of ``--output`` (a final newline is added).
        results: a dict for ``--out``; it gets a ``"machine"`` entry (`machine_record`) unless it has one.
        json_default: ``json.dumps``'s ``default`` for values JSON does not know (numpy scalars, ...).
    """
    from tfcompress.core import files

    for argument, path in _output_flags():
        if argument == "--output":
            data = markdown + "\n"
        else:
            data = json.dumps({**results, "machine": results.get("machine") or machine_record()}, indent=2,
                              default=json_default)
        files.write_atomic(path, data, overwrite=FLAGS.overwrite, argument=argument)


def run(main, tfmot_worker=None):
    """``absl.app.run`` for a benchmark: parses the flags, then starts as every benchmark does and calls ``main()``.

    The start: logging at WARNING (absl turns INFO on, and TF's SavedModel export logs every step at INFO);
    in a tfmot child process (``--tfmot_worker``, see `run_tfmot`) the worker runs instead of ``main``;
    otherwise `check_outputs`, so a bad ``--out`` fails before an hour of training.

    Args:
        main: the benchmark, called without arguments.
        tfmot_worker: the script's worker, called with the job file's path (benchmarks with a tfmot side).
    """

    def start(argv):
        del argv  # every benchmark takes flags only
        logging.set_verbosity(logging.WARNING)
        if tfmot_worker is not None and FLAGS.tfmot_worker:
            return tfmot_worker(FLAGS.tfmot_worker)
        check_outputs()
        return main()

    app.run(start)


# The machine -------------------------------------------------------------------------------------


def machine_record():
    """The CPU, its int8-relevant features and the runtime versions, as a dict (`tfc.machine.Machine.to_dict`)."""
    from tfcompress.core import machine

    return machine.current().to_dict()


def timed_on(end="."):
    """The line under a benchmark's tables that names the machine: ``"Timed on: <CPU, features, versions>."``.

    The same words `tfc.compare` puts under its tables. ``end``: what closes it (``""`` to go on in a sentence).
    """
    from tfcompress.core import machine

    return f"Timed on: {machine.current().summary()}{end}"


# Logs and timers ---------------------------------------------------------------------------------


class Log:
    """Progress lines ``[name  123 s] message``, flushed at once (a benchmark runs for minutes to hours).

    Args:
        name: the tag in front of every line.
        elapsed: also show the seconds since this `Log` was made (the benchmark's start).
    """

    def __init__(self, name, elapsed=True):
        self.name = name
        self.elapsed = elapsed
        self.start = time.perf_counter()

    @property
    def seconds(self):
        """Seconds since the benchmark started."""
        return time.perf_counter() - self.start

    def __call__(self, message):
        tag = f"{self.name} {self.seconds:6.0f} s" if self.elapsed else self.name
        print(f"[{tag}] {message}", flush=True)


_STEP_TIMERS = {}


def step_timer(keras_module):
    """A new callback that measures seconds per training step; the fit's first batch (tracing) is excluded.

    Args:
        keras_module: ``keras``, or ``tf_keras`` in a tfmot worker (its callbacks need its own base class).

    Returns:
        A callback with ``seconds``, ``steps`` and ``per_step`` (seconds per step).
    """
    cls = _STEP_TIMERS.get(keras_module.__name__)
    if cls is None:

        class StepTimer(keras_module.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.start, self.steps, self.seconds = None, 0, 0.0

            def on_train_batch_end(self, batch, logs=None):
                # Time from one batch end to the next: the first interval starts after the first batch.
                now = time.perf_counter()
                if self.start is not None:
                    self.seconds += now - self.start
                    self.steps += 1
                self.start = now

            @property
            def per_step(self):
                return self.seconds / max(self.steps, 1)

        cls = _STEP_TIMERS[keras_module.__name__] = StepTimer
    return cls()


# Data and measurements ---------------------------------------------------------------------------


def fashion_mnist(s):
    """``((x, y), (x_test, y_test))``: Fashion-MNIST cut to the settings' ``train_limit`` / ``test_limit``."""
    import tfcompress as tfc

    return tfc.datasets.fashion_mnist(limit_train=s["train_limit"], limit_test=s["test_limit"])


def accuracy(model, x, y, batch_size=512):
    """Top-1 accuracy of a logits (or probabilities) Keras model on ``x``."""
    return float(np.mean(np.argmax(np.asarray(model.predict(x, verbose=0, batch_size=batch_size)), -1) == y))


def gzip_bytes(data):
    """Bytes of ``data`` after gzip -9: what a compressed download or flash image costs."""
    return len(gzip.compress(bytes(data), 9))


def macs(model):
    """Multiply-accumulates of one inference (`tfc.pruning.layer_costs`, nested models included)."""
    from tfcompress.pruning import layer_costs

    return sum(count for _, count in layer_costs(model).values())


def cosine_learning_rate(learning_rate, steps, schedules=None):
    """``learning_rate`` cosine-decayed to 0 over ``steps``, as ``tfc.compress`` fine-tunes.

    Args:
        schedules: ``keras.optimizers.schedules`` (the default) or tf_keras's, so tfmot gets the same schedule.
    """
    if schedules is None:
        import keras

        schedules = keras.optimizers.schedules
    return schedules.CosineDecay(learning_rate, decay_steps=steps)


def fine_tune_learning_rate(schedule, learning_rate, steps, schedules):
    """The fine-tuning learning rate both sides of a benchmark use.

    Args:
        schedule: ``"constant"``, or ``"cosine"``: decayed to 0 over ``steps`` (what ``tfc.compress`` does).
        learning_rate: the (initial) rate.
        steps: training steps of the whole fine-tuning.
        schedules: ``keras.optimizers.schedules`` or tf_keras's, so tfmot gets the same schedule.
    """
    if schedule == "cosine":
        return cosine_learning_rate(learning_rate, steps, schedules)
    return learning_rate


def mean_pm(values, scale=100.0, fmt="{:.2f}"):
    """``"mean ± std"`` over seeds of ``values * scale`` (just the value for one seed)."""
    values = [v * scale for v in values]
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.fmean(values))} ± {statistics.stdev(values):.2f}"


def save_weights(path, weights):
    """Saves a list of arrays to ``path`` (.npz) through a temp file, so a killed run leaves no torn cache."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp.npz"
    np.savez(tmp, *weights)
    os.replace(tmp, path)


def load_weights(path):
    """The list of arrays `save_weights` saved, in order."""
    with np.load(path) as archive:
        return [archive[f"arr_{i}"] for i in range(len(archive.files))]


# Models ------------------------------------------------------------------------------------------


def reestimate_batch_norm(model, x, batch=256):
    """Sets every BatchNormalization's moving statistics to those of one large training batch.

    A few float steps leave them stale; momentum 0 for one pass replaces them.
    """
    import keras

    import tfcompress as tfc

    bns = [layer for layer in tfc.graph.layers_of(model) if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.momentum = 0.0
    model(x[:batch], training=True)
    for bn, momentum in zip(bns, momenta):
        bn.momentum = momentum


def upscale_to_mobilenet(images, size=96):
    """28x28x1 images in [0, 1] -> size x size x 3 in [-1, 1] (``mobilenet_v2.preprocess_input``'s range)."""
    import tensorflow as tf

    out = np.empty((len(images), size, size, 3), np.float32)
    for start in range(0, len(images), 500):
        resized = tf.image.resize(images[start:start + 500], (size, size)).numpy()
        out[start:start + 500] = np.repeat(resized, 3, axis=-1) * 2.0 - 1.0
    return out


def with_outlier_unit(model, scale):
    """The same function, but one ``fc1`` unit's output ``scale`` times larger (the logits' weights for it smaller).

    ReLU is positively homogeneous, so the float model is unchanged; int8 must share one range between that
    unit and the others, which then round to zero: a model that per-tensor int8 breaks.
    """
    import keras

    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    fc1, logits = clone.get_layer("fc1"), clone.get_layer("logits")
    kernel, bias = fc1.get_weights()
    kernel[:, 0] *= scale
    bias[0] *= scale
    fc1.set_weights([kernel, bias])
    kernel, bias = logits.get_weights()
    kernel[0, :] /= scale
    logits.set_weights([kernel, bias])
    return clone


# tfmot (tf_keras, in a child process) ------------------------------------------------------------


def run_tfmot(script, settings, weights, workdir):
    """Runs the tfmot side of a benchmark: ``python script --tfmot_worker=<job>`` under tf_keras.

    tfmot only works with tf_keras, which must be selected (``TF_USE_LEGACY_KERAS=1``) before TensorFlow
    is imported, so it cannot share this process. `tfcompress.core.isolation.run` captures the child's
    stdout; here the worker's result lines should reach the console as they come (a run takes minutes).

    Args:
        script: the benchmark's own path (``__file__``); its ``main`` hands ``--tfmot_worker`` to the worker.
        settings: the benchmark's settings dict (JSON), given to the worker.
        weights: the float model's weights (a list of arrays) the worker starts from.
        workdir: a temporary folder for the job, the weights and the result.

    Returns:
        The dict the worker wrote with `write_tfmot_results`, or ``{}`` (with stderr's end printed) when it failed.
    """
    job = {"settings": settings, "weights": os.path.join(workdir, "tfmot_weights.npz"),
           "out": os.path.join(workdir, "tfmot.json")}
    save_weights(job["weights"], weights)
    job_path = os.path.join(workdir, "tfmot_job.json")
    with open(job_path, "w") as f:
        json.dump(job, f)
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, os.path.abspath(script), f"--tfmot_worker={job_path}"],
                          env=env, stdout=sys.stdout, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        print(f"tfmot run failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}", file=sys.stderr)
        return {}
    with open(job["out"]) as f:
        return json.load(f)


def read_tfmot_job(job_path):
    """In the worker: ``(job, settings, weights)`` of the job `run_tfmot` wrote."""
    with open(job_path) as f:
        job = json.load(f)
    return job, job["settings"], load_weights(job["weights"])


def write_tfmot_results(job, results):
    """In the worker: hands ``results`` (a JSON dict) back to `run_tfmot`."""
    with open(job["out"], "w") as f:
        json.dump(results, f)


def tfmot_reference_cnn(tf_keras, input_shape=(28, 28, 1), num_classes=10):
    """``tfcompress.zoo.reference_cnn`` rebuilt with tf_keras layers (same layers, same order)."""
    layers = tf_keras.layers
    inputs = tf_keras.Input(shape=input_shape, name="image")
    x = inputs
    for i, filters in enumerate((32, 64, 128), start=1):
        x = layers.Conv2D(filters, 3, padding="same", name=f"conv{i}")(x)
        x = layers.BatchNormalization(name=f"bn{i}")(x)
        x = layers.ReLU(name=f"relu{i}")(x)
        if i < 3:
            x = layers.MaxPooling2D(name=f"pool{i}")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dense(128, activation="relu", name="fc1")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return tf_keras.Model(inputs, outputs, name="reference_cnn")


def tfmot_compile(tf_keras, model, learning_rate):
    """``tfc.zoo.compile_classifier`` for a tf_keras model: Adam, sparse cross-entropy on logits, accuracy."""
    model.compile(
        optimizer=tf_keras.optimizers.Adam(learning_rate),
        loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def tfmot_int8_tflite(tf, model, x, samples=200, sparse=False):
    """A tf_keras model as a full-int8 .tflite, converted as tfmot's guides do (float I/O).

    Args:
        tf: the ``tensorflow`` module (imported by the worker after tf_keras is selected).
        x: training images; the first ``samples`` calibrate, one at a time.
        sparse: also ``Optimize.EXPERIMENTAL_SPARSITY`` (sparse-encoded kernels).
    """
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT] + ([tf.lite.Optimize.EXPERIMENTAL_SPARSITY] if sparse else [])
    converter.representative_dataset = lambda: ([x[i: i + 1]] for i in range(samples))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return converter.convert()
