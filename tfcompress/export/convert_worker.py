"""Child process of ``to_tflite(isolate=True)``: converts one exported SavedModel.

Usage: ``python -m tfcompress.export.convert_worker SAVED_MODEL_DIR JOB_DIR``. Reads ``job.json``
(the converter's fields of a `ConversionConfig.get_config`) and ``samples.npz`` with ``input_names.json``
from JOB_DIR, writes ``model.tflite`` there, or ``error.txt`` and exit code 3 when the converter raises. A
native crash shows as a signal in the parent.
"""

import json
import os
import sys

import numpy as np

from tfcompress.export.converter import (
    ConversionConfig,
    convert_saved_model,
    converter_message,
)


def main(saved_model_dir, job_dir):
    with open(os.path.join(job_dir, "job.json")) as f:
        config = ConversionConfig.from_config(json.load(f))
    samples = None
    samples_path = os.path.join(job_dir, "samples.npz")
    if os.path.exists(samples_path):
        with open(os.path.join(job_dir, "input_names.json")) as f:
            names = json.load(f)
        with np.load(samples_path) as npz:
            inputs = [npz[f"input_{j}"] for j in range(len(names))]
        samples = [{name: a[i: i + 1] for name, a in zip(names, inputs)} for i in range(len(inputs[0]))]
    try:
        data = convert_saved_model(saved_model_dir, config.mode, samples, config.io_type, config.sparse,
                                   config.keep_float)
    except Exception as exc:
        with open(os.path.join(job_dir, "error.txt"), "w") as f:
            f.write(converter_message(exc))
        return 3
    with open(os.path.join(job_dir, "model.tflite"), "wb") as f:
        f.write(data)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
