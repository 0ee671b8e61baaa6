"""Low-rank factorization: a Dense or Conv2D layer replaced by two thinner ones (truncated SVD).

    >>> small = tfc.factorize(model, energy=0.9)    # a plain Keras model; fine-tune it with fit
    >>> print(small.factorization_report)

A Dense kernel W (m x n) becomes Dense(r, no bias) then Dense(n) with W ~ A B; a
Conv2D kernel (k x k, c_in -> c_out), seen as a (k*k*c_in) x c_out matrix, becomes a
k x k convolution to r filters followed by a 1x1 convolution to c_out. The rank r
keeps ``energy`` of the kernel's squared singular values (or is given), and a layer
is factorized only where it costs fewer multiply-accumulates. The second layer keeps
the original name, bias and activation, so the rest of the graph is unchanged.
"""

import dataclasses

import keras
import numpy as np

from tfcompress import graph

L = keras.layers


@dataclasses.dataclass
class FactorizationReport:
    """Per layer: ``(name, rank, full rank, MACs before, MACs after, decision)``."""

    rows: list

    def to_markdown(self):
        from tfcompress.reports import markdown_table

        return markdown_table(("layer", "rank", "full rank", "MACs before", "MACs after", "decision"),
                              [(n, r, f, f"{a:,}", f"{b:,}", d) for n, r, f, a, b, d in self.rows])

    def __str__(self):
        return self.to_markdown()


def _matrix(layer):
    kernel = keras.ops.convert_to_numpy(layer.kernel)
    return kernel.reshape(-1, kernel.shape[-1])


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
        return None
    return "not a Dense or Conv2D layer"


def factorize(model, energy=0.9, rank=None, layers=None, verbose=1):
    """Replaces Dense / Conv2D layers by low-rank pairs where that reduces MACs.

    Args:
        model: a Functional or Sequential Keras model (not modified).
        energy: fraction in (0, 1] of each kernel's squared singular values to keep; picks the rank.
        rank: a fixed rank for every layer instead of ``energy``.
        layers: names of the only layers to factorize (default: every Dense and Conv2D).
        verbose: 1 prints the per-layer table.

    Returns:
        A new Functional ``keras.Model`` with ``.factorization_report``. At ``energy`` close to 1 it computes
        what ``model`` computes; fine-tune it with ``fit`` at lower energies.

    Raises:
        ValueError: bad ``energy`` / ``rank`` / ``layers``, a subclassed model.
    """
    graph.check_model(model, action="factorize")
    graph.check_functional(model, "factorize")
    if rank is None and (isinstance(energy, bool) or not isinstance(energy, (int, float)) or not 0 < energy <= 1):
        raise ValueError(f"energy={energy!r} must be in (0, 1]: the share of squared singular values kept.")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise ValueError(f"rank={rank!r} must be a positive integer.")
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
                rows.append((layer.name, "—", "—", 0, 0, f"kept: {reason}"))
            continue
        matrix = _matrix(layer)
        u, s, vt = np.linalg.svd(matrix.astype(np.float64), full_matrices=False)
        full = len(s)
        r = min(_rank_for(s, energy, rank), full)
        positions = _positions(layer)
        before = positions * matrix.size
        after = positions * r * (matrix.shape[0] + matrix.shape[1])
        if r >= full:
            rows.append((layer.name, r, full, before, before, "kept: the rank is the full rank (no-op)"))
            continue
        if after >= before:
            rows.append((layer.name, r, full, before, before, "kept: two layers would cost more MACs"))
            continue
        root = np.sqrt(s[:r])
        plans[layer.name] = (r, (u[:, :r] * root).astype("float32"), (root[:, None] * vt[:r]).astype("float32"))
        rows.append((layer.name, r, full, before, after, "factorized"))
    functional = keras.Model(model.input, model.output, name=model.name) if isinstance(model, keras.Sequential) \
        else model
    built = {}

    def call_function(layer, *args, **kwargs):
        if layer.name not in plans:
            return layer(*args, **kwargs)
        r, first_kernel, second_kernel = plans[layer.name]
        config = layer.get_config()
        if type(layer) is L.Dense:
            first = L.Dense(r, use_bias=False, name=f"{layer.name}_low_rank")
            second_config = dict(config)
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
    if model.compiled:
        result.compile_from_config(model.get_compile_config())
    result.factorization_report = FactorizationReport(rows)
    if verbose:
        print(result.factorization_report.to_markdown())
    return result


def _unshared_copy(model):
    """A copy whose layers are its own (the clone above shares the untouched layers with the input model)."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy
