"""Low-rank factorization: a Dense or Conv2D layer replaced by two thinner ones (truncated SVD).

    >>> small = tfc.factorize(model, energy=0.9)    # a plain Keras model; fine-tune it with fit
    >>> print(small.factorization_report)

A Dense kernel W (m x n) becomes Dense(r, no bias) then Dense(n) with W ~ A B. A
Conv2D kernel W[kh, kw, c_in, c_out] has two forms:

* ``"pointwise"``: W seen as a (kh*kw*c_in) x c_out matrix becomes a kh x kw
  convolution to r filters followed by a 1x1 convolution to c_out;
* ``"separable"`` (Jaderberg et al. 2014, scheme 2): W rearranged as a
  (kh*c_in) x (kw*c_out) matrix becomes a kh x 1 convolution c_in -> r followed by a
  1 x kw convolution r -> c_out. Strides (sh, sw) split as (sh, 1) then (1, sw),
  dilation likewise, and "same" / "valid" padding each pad only their own axis, so
  at full rank the pair computes exactly what the layer computes.

The rank r of each form keeps ``energy`` of that form's squared singular values (or
is given); with ``form="auto"`` a Conv2D takes whichever form costs fewer
multiply-accumulates at its rank, and a layer is factorized only where that costs
fewer MACs than the layer itself. The second layer keeps the original name, bias
and activation, so the rest of the graph is unchanged.
"""

import dataclasses

import keras
import numpy as np

from tfcompress.core import graph
from tfcompress.core.tables import markdown_table

L = keras.layers


@dataclasses.dataclass
class FactorizationReport:
    """Per layer: ``(name, form, rank, full rank, MACs before, MACs after, decision)``.

    ``form`` is ``"dense"``, ``"pointwise"`` (k x k -> 1 x 1), ``"separable"`` (k x 1 -> 1 x k) or ``"—"``
    for a layer left alone; a kept layer's rank / full rank / MACs are those of the cheapest form tried.
    """

    rows: list

    def to_markdown(self):
        return markdown_table(("layer", "form", "rank", "full rank", "MACs before", "MACs after", "decision"),
                              [(n, form, r, f, f"{a:,}", f"{b:,}", d) for n, form, r, f, a, b, d in self.rows])

    def __str__(self):
        return self.to_markdown()


FORMS = ("auto", "pointwise", "separable")


def _kernel(layer):
    return keras.ops.convert_to_numpy(layer.kernel)


def _spatial(shape):
    """Spatial dims of a (batch, H, W, C) shape; None where unknown."""
    return [None if d is None else int(d) for d in shape[1:-1]]


def _positions(layer):
    return int(np.prod(layer.output.shape[1:-1])) if len(layer.output.shape) > 2 else 1


def _rank_for(singular, energy, rank):
    if rank is not None:
        return int(rank)
    cumulative = np.cumsum(singular ** 2) / max(float(np.sum(singular ** 2)), 1e-30)
    return int(np.searchsorted(cumulative, energy - 1e-12) + 1)


def _eligible(layer):
    if type(layer) is L.Dense:
        return None
    if type(layer) is L.Conv2D:
        if layer.groups != 1 or layer.data_format != "channels_last":
            return "grouped or channels_first convolution"
        if None in _spatial(layer.output.shape) or None in _spatial(layer.input.shape):
            return "unknown spatial size (MACs cannot be counted)"
        return None
    return "not a Dense or Conv2D layer"


def _separable_unavailable(layer):
    """Why the k x 1 / 1 x k pair cannot compute this Conv2D exactly at full rank (None when it can)."""
    kh, kw = layer.kernel_size
    if kh == 1 or kw == 1:
        return "a 1-wide kernel has no separable pair"
    if layer.padding not in ("valid", "same"):
        return f"padding {layer.padding!r}"
    return None


def _candidates(layer, form):
    """``[(form, matrix, MACs per rank unit, rebuild)]``: each factorization this layer admits.

    ``rebuild(u_r, v_r)`` turns the factors of ``matrix ~ u_r @ v_r`` into the two kernels.
    """
    kernel = _kernel(layer)
    if type(layer) is L.Dense:
        matrix = kernel.reshape(-1, kernel.shape[-1])
        positions = int(np.prod(layer.input.shape[1:-1])) if len(layer.input.shape) > 2 else 1
        return [("dense", matrix, positions * (matrix.shape[0] + matrix.shape[1]), lambda a, b: (a, b))]
    kh, kw, c_in, c_out = kernel.shape
    (h_out, w_out), (_, w_in) = _spatial(layer.output.shape), _spatial(layer.input.shape)
    out = []
    if form in ("auto", "pointwise"):
        matrix = kernel.reshape(-1, c_out)
        out.append(("pointwise", matrix, h_out * w_out * (kh * kw * c_in + c_out), lambda a, b: (a, b)))
    if form in ("auto", "separable") and _separable_unavailable(layer) is None:
        # M[(i, c), (j, o)] = W[i, j, c, o]; M ~ A B gives first[i, 0, c, k] = A[(i, c), k] and
        # second[0, j, k, o] = B[k, (j, o)]. The first conv runs at (h_out, w_in) positions: it strides rows only.
        matrix = kernel.transpose(0, 2, 1, 3).reshape(kh * c_in, kw * c_out)

        def rebuild(a, b, kh=kh, kw=kw, c_in=c_in, c_out=c_out):
            r = a.shape[1]
            return a.reshape(kh, 1, c_in, r), b.reshape(r, kw, c_out).transpose(1, 0, 2)[None]

        out.append(("separable", matrix, h_out * w_in * kh * c_in + h_out * w_out * kw * c_out, rebuild))
    return out


def _plan(layer, form, energy, rank):
    """``(row, plan or None)`` for one eligible layer: the cheapest exact-at-full-rank form at its rank."""
    before = _positions(layer) * int(np.prod(layer.kernel.shape))
    candidates = _candidates(layer, form)
    if not candidates:
        reason = _separable_unavailable(layer)
        return (layer.name, "—", "—", "—", before, before, f"kept: no separable form ({reason})"), None
    best, tried = None, []
    for name, matrix, per_rank, rebuild in candidates:
        u, s, vt = np.linalg.svd(matrix.astype(np.float64), full_matrices=False)
        full = len(s)
        r = min(_rank_for(s, energy, rank), full)
        tried.append((name, r, full, per_rank * r))
        if r >= full or per_rank * r >= before:
            continue
        if best is None or per_rank * r < best[3]:
            root = np.sqrt(s[:r])
            best = (name, r, full, per_rank * r, rebuild((u[:, :r] * root).astype("float32"),
                                                         (root[:, None] * vt[:r]).astype("float32")))
    if best is None:
        name, r, full, after = min(tried, key=lambda t: t[3])
        why = ("the rank is the full rank (no-op)" if all(t[1] >= t[2] for t in tried)
               else "two layers would cost more MACs")
        return (layer.name, "—", r, full, before, before, f"kept: {why}"), None
    name, r, full, after, kernels = best
    return (layer.name, name, r, full, before, after, "factorized"), (name, r) + kernels


def factorize(model, energy=0.9, rank=None, layers=None, form="auto", verbose=1):
    """Replaces Dense / Conv2D layers by low-rank pairs where that reduces MACs.

    Args:
        model: a built Functional or Sequential Keras model (not modified).
        energy: fraction in (0, 1] of each kernel's squared singular values to keep; picks the rank.
        rank: a fixed rank for every layer instead of ``energy``.
        layers: names of the only layers to factorize (default: every Dense and Conv2D).
        form: how a Conv2D is split: ``"pointwise"`` (k x k to r filters, then 1 x 1), ``"separable"``
            (k x 1 to r filters, then 1 x k; layers with a 1-wide kernel are kept) or ``"auto"`` (default:
            whichever costs fewer MACs at its own energy-chosen rank). Dense layers are split the one way.
        verbose: 1 prints the per-layer table.

    Returns:
        A new model of the same kind (a ``keras.Sequential`` for a Sequential ``model``, else a Functional
        ``keras.Model``) with ``.factorization_report``. At ``energy`` close to 1 it computes what ``model``
        computes; fine-tune it with ``fit`` at lower energies.

    Raises:
        ValueError: bad ``energy`` / ``rank`` / ``layers`` / ``form``, a subclassed model, a model that is
            not built (a Sequential needs its input shape: a ``keras.Input``, ``build`` or one call).

    Example:
        >>> mlp = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(),
        ...                         keras.layers.Dense(300, "relu"), keras.layers.Dense(10)])
        >>> small = tfc.factorize(mlp, energy=0.9, verbose=0)  # a Sequential too
        >>> small.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        >>> small.fit(x_train, y_train, epochs=2, verbose=0)   # fine-tune to recover the accuracy
    """
    graph.check_model(model, action="factorize")
    graph.check_functional(model, "factorize")
    if rank is None and (isinstance(energy, bool) or not isinstance(energy, (int, float)) or not 0 < energy <= 1):
        raise ValueError(f"energy={energy!r} must be in (0, 1]: the share of squared singular values kept.")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise ValueError(f"rank={rank!r} must be a positive integer.")
    if not isinstance(form, str) or form not in FORMS:
        raise ValueError(f"form={form!r}: choose one of {list(FORMS)} ('pointwise': k x k then 1 x 1, "
                         "'separable': k x 1 then 1 x k, 'auto': the one with fewer MACs).")
    names = {layer.name for layer in model.layers}
    if layers is not None:
        unknown = sorted(set(layers) - names)
        if unknown:
            raise ValueError(f"layers={unknown}: model {model.name!r} has no such layer; its layers are {sorted(names)}.")
    plans, rows = {}, []
    for layer in model.layers:
        if layers is not None and layer.name not in layers:
            continue
        reason = _eligible(layer)
        if reason is not None:
            if layers is not None:
                rows.append((layer.name, "—", "—", "—", 0, 0, f"kept: {reason}"))
            continue
        row, plan = _plan(layer, form, energy, rank)
        rows.append(row)
        if plan is not None:
            plans[layer.name] = plan
    functional = _as_functional(model)
    built = {}

    def call_function(layer, *args, **kwargs):
        if layer.name not in plans:
            return layer(*args, **kwargs)
        kind, r, first_kernel, second_kernel = plans[layer.name]
        config = layer.get_config()
        if type(layer) is L.Dense:
            first = L.Dense(r, use_bias=False, name=f"{layer.name}_low_rank")
            second_config = dict(config)
        elif kind == "separable":
            (sh, sw), (dh, dw) = layer.strides, layer.dilation_rate
            first = L.Conv2D(r, (layer.kernel_size[0], 1), strides=(sh, 1), padding=layer.padding,
                             dilation_rate=(dh, 1), use_bias=False, name=f"{layer.name}_low_rank")
            second_config = dict(config, kernel_size=(1, layer.kernel_size[1]), strides=(1, sw),
                                 dilation_rate=(1, dw))
        else:
            first = L.Conv2D(r, layer.kernel_size, strides=layer.strides, padding=layer.padding,
                             dilation_rate=layer.dilation_rate, use_bias=False, name=f"{layer.name}_low_rank")
            second_config = dict(config, kernel_size=(1, 1), strides=(1, 1), padding="valid", dilation_rate=(1, 1))
        second = type(layer).from_config(second_config)
        outputs = second(first(*args, **kwargs))
        built[layer.name] = (first, second, first_kernel, second_kernel)
        return outputs

    clone = keras.models.clone_model(functional, clone_function=lambda layer: layer, call_function=call_function)
    # Weights: untouched layers are shared with the clone above; copy them into fresh layers' slots.
    result = keras.Model(clone.input, clone.output, name=model.name)
    for name, (first, second, first_kernel, second_kernel) in built.items():
        layer = model.get_layer(name)
        first.kernel.assign(first_kernel.reshape(first.kernel.shape))
        second.kernel.assign(second_kernel.reshape(second.kernel.shape))
        if layer.use_bias:
            second.bias.assign(layer.bias)
    result = _unshared_copy(result)
    if isinstance(model, keras.Sequential):
        result = _as_sequential(result, model)
    if model.compiled:
        result.compile_from_config(model.get_compile_config())
    result.factorization_report = FactorizationReport(rows)
    if verbose:
        print(result.factorization_report.to_markdown())
    return result


def _as_functional(model):
    """``model``'s graph as a Functional model, for `keras.models.clone_model`'s ``call_function``.

    A Sequential model keeps its graph in a Functional model of its own once it knows its input shape (a
    ``keras.Input``, ``build`` or a first call); ``model.input`` raises even then, ``model.inputs`` does not.
    """
    if not isinstance(model, keras.Sequential):
        return model
    try:
        inputs, outputs = model.inputs, model.outputs
    except AttributeError:
        raise ValueError(
            f"model {model.name!r} (Sequential) has weights but no input shape, so its layers' shapes are "
            "unknown: give it a keras.Input(shape) as its first layer, or call model.build(input_shape) once, "
            "then factorize it.") from None
    return keras.Model(inputs, outputs, name=model.name)


def _as_sequential(functional, model):
    """The factorized chain as a Sequential model, as ``model`` was: a Sequential in, a Sequential out."""
    source = model.inputs[0]
    layers = [layer for layer in functional.layers if not isinstance(layer, L.InputLayer)]
    return keras.Sequential([keras.Input(batch_shape=source.shape, dtype=source.dtype)] + layers, name=model.name)


def _unshared_copy(model):
    """A copy whose layers are its own (the clone above shares the untouched layers with the input model)."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy
