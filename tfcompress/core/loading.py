"""Loads saved models, Keras 2 (TF 2.x) ``.h5`` files included, into plain Keras 3 models.

Many deployed models are Keras 2 ``.h5`` files. Keras 3 reads most of them, but
refuses a few configuration keys Keras 2 wrote and Keras 3 no longer takes
(``DepthwiseConv2D(groups=1)``, ``BatchNormalization(fused=...)``,
``LSTM(time_major=False)``, ``Embedding(input_length=...)``). Those fixes are
mechanical: the key only restates the default. `load_model` applies them to a
temporary copy of the file and loads that copy with ``keras.models.load_model``,
so the weights are read by Keras itself. Anything else is refused with the
layer and the key named.
"""

import json
import os
import re
import shutil
import tempfile
import warnings

import keras


class ModelLoadError(ValueError):
    """A saved model Keras 3 cannot read and tfcompress cannot fix mechanically; the message names the layer."""


def _always(_value):
    return True


# class name -> {key Keras 3 refuses: is this value the one Keras 3 assumes anyway?}
_MECHANICAL = {
    "DepthwiseConv2D": {"groups": lambda v: v in (None, 1)},  # depthwise convolution has no groups in Keras 3
    "SeparableConv2D": {"groups": lambda v: v in (None, 1)},
    "SeparableConv1D": {"groups": lambda v: v in (None, 1)},
    "BatchNormalization": {
        "fused": _always,  # which TF kernel ran it; the maths is the same
        "renorm": lambda v: not v, "renorm_clipping": lambda v: not v, "renorm_momentum": _always,
        "virtual_batch_size": lambda v: v is None, "adjustment": lambda v: v is None,
    },
    "LSTM": {"time_major": lambda v: not v},
    "GRU": {"time_major": lambda v: not v},
    "SimpleRNN": {"time_major": lambda v: not v},
    "Embedding": {"input_length": _always},  # Keras 3 reads the length from the input's shape
}


def _layer_configs(config):
    """Yields every layer config in a model config, through nested models and wrappers."""
    inner = config.get("config", {}) if isinstance(config, dict) else {}
    for layer in inner.get("layers", []) if isinstance(inner, dict) else []:
        yield layer
        yield from _layer_configs(layer)
    if isinstance(inner, dict) and isinstance(inner.get("layer"), dict):  # Bidirectional, TimeDistributed
        yield inner["layer"]
        yield from _layer_configs(inner["layer"])


def _fix_config(config, path):
    """Drops the mechanical Keras 2 keys in place; returns what it dropped, as messages."""
    fixed = []
    for layer in _layer_configs(config):
        rules = _MECHANICAL.get(layer.get("class_name"), {})
        layer_config = layer.get("config", {})
        for key, is_default in rules.items():
            if key not in layer_config:
                continue
            if not is_default(layer_config[key]):
                raise ModelLoadError(
                    f"{path!r}: layer {layer_config.get('name')!r} ({layer['class_name']}) has {key}="
                    f"{layer_config[key]!r}, which Keras 3 cannot express. Rebuild that layer in Keras 3 and "
                    "copy its weights with layer.set_weights().")
            fixed.append(f"{layer_config.get('name')!r} ({layer['class_name']}): dropped {key}={layer_config[key]!r}")
            del layer_config[key]
    return fixed


def _diagnose(config, error, custom_objects):
    """The first layer Keras 3 cannot build, named, with what to do; None if none is found."""
    text = ""
    while error is not None:  # Keras wraps the layer's own complaint in a deserialization error
        text += f" {error}"
        error = error.__cause__ or error.__context__
    refused = re.search(r"Unrecognized keyword arguments passed to (\w+): \{(.*?)\}", text)
    for layer in _layer_configs(config):
        class_name, layer_config = layer.get("class_name"), layer.get("config", {})
        name = layer_config.get("name")
        if class_name in ("Sequential", "Functional", "Model"):
            continue
        if not ((custom_objects or {}).get(class_name) or getattr(keras.layers, class_name, None)):
            return (f"layer {name!r} is a {class_name!r}, which is not a Keras 3 layer. If it is your own layer, "
                    f"pass custom_objects={{{class_name!r}: YourLayerClass}}.")
        if refused and refused.group(1) == class_name:
            keys = [k for k in re.findall(r"'(\w+)':", refused.group(2)) if k in layer_config]
            if keys:
                return (f"layer {name!r} ({class_name}) has key(s) {keys} that Keras 3's {class_name} does not "
                        "take. Rebuild that layer in Keras 3 and copy its weights with layer.set_weights().")
    return None


def load_model(path, custom_objects=None, compile=True, safe_mode=True):  # noqa: A002 - Keras's own argument name
    """Loads a ``.keras`` or ``.h5`` model into a plain Keras 3 model, Keras 2 ``.h5`` files included.

    First tries ``keras.models.load_model``. If that fails on an ``.h5`` file
    written by Keras 2, drops the configuration keys that only restate what
    Keras 3 assumes (``DepthwiseConv2D(groups=1)``, ``BatchNormalization(fused=)``,
    ``LSTM(time_major=False)``, ``Embedding(input_length=)``...) in a temporary
    copy and loads that, with a warning listing each key dropped. The result
    holds only Keras 3 layers, so every tfcompress verb takes it. ``path`` is
    never modified.

    Args:
        path: a ``.keras`` or ``.h5`` file.
        custom_objects: as in ``keras.models.load_model``, for your own layers.
        compile: restore the training configuration (optimizer, loss) if saved.
        safe_mode: as in ``keras.models.load_model``: refuse Lambda layers'
            Python code unless ``False`` (only for files you trust).

    Returns:
        A ``keras.Model``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ModelLoadError: the file is not a model Keras 3 can read and the fix
            is not mechanical; the message names the layer and the key.

    Example:

        ```python
        model = tfc.load_model("tf2x_model.h5")  # a Keras 2 file: loads with a warning listing the fixes
        b = tfc.to_tflite(model, mode="int8", representative_data=x[:200])
        ```
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"path {path!r} is not a file: give a .keras or .h5 model file.")
    try:
        return keras.models.load_model(path, custom_objects=custom_objects, compile=compile, safe_mode=safe_mode)
    except Exception as first_error:  # noqa: BLE001 - any Keras load failure gets the same treatment below
        if not path.endswith((".h5", ".hdf5")):
            raise  # a .keras archive is Keras 3's own format: Keras's error is the one to see
        error = first_error
    import h5py  # Keras's own dependency for .h5 files

    with h5py.File(path, "r") as f:
        raw = f.attrs.get("model_config")
    if raw is None:
        raise ModelLoadError(f"{path!r} holds no model config (only weights?): build the model in code and call "
                             "model.load_weights(path).") from error
    config = json.loads(raw)
    fixed = _fix_config(config, path)
    if not fixed:
        problem = _diagnose(config, error, custom_objects)
        raise ModelLoadError(f"{path!r}: Keras 3 cannot load it: " + (
            problem or f"{type(error).__name__}: {str(error)[:300]}")) from error
    with tempfile.TemporaryDirectory(prefix="tfc_load_") as folder:
        copy = os.path.join(folder, "model.h5")
        shutil.copyfile(path, copy)
        with h5py.File(copy, "r+") as f:
            f.attrs["model_config"] = json.dumps(config)
        try:
            model = keras.models.load_model(copy, custom_objects=custom_objects, compile=compile, safe_mode=safe_mode)
        except Exception as exc:  # noqa: BLE001
            problem = _diagnose(config, exc, custom_objects)
            raise ModelLoadError(f"{path!r}: Keras 3 cannot load it even after dropping Keras 2 keys ("
                                 + "; ".join(fixed) + "): " + (problem or f"{type(exc).__name__}: {str(exc)[:300]}")
                                 ) from exc
    warnings.warn(f"{path!r} is a Keras 2 file; loaded after dropping keys Keras 3 does not take and that only "
                  "restated its defaults: " + "; ".join(fixed) + ". Save it again with model.save('MODEL.keras').",
                  UserWarning, stacklevel=2)
    return model
