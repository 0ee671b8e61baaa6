"""Structural pruning: which output channels of a model can be removed together, and removing them.

The dependency graph works at the level of single channels, as DepGraph
(Torch-Pruning) does: every output channel of a Conv/Dense-like layer is an
*element*; layers that pass channels through (BatchNormalization, activations,
pooling, padding, DepthwiseConv...) carry their input's elements; element-wise
layers (Add, Multiply, ...) tie the elements of their inputs together (a residual
stream); Concatenate lays its inputs' elements side by side; Flatten repeats them
once per spatial position. The connected elements form *units*: a unit is removed
as a whole (an output filter together with everything that reads or is tied to
it). Units that reach a model output, a model input, or a layer this analysis
cannot reason about (Reshape, Lambda, custom layers, attention...) are kept, and
the plan says why.

Operation nodes (``keras.ops`` calls and tensor operators a Functional graph records,
e.g. ``x * 3.0``, ``ops.add(a, b)``, ``ops.hard_sigmoid(x)``) are nodes like layers:
element-wise ones carry or tie channels as the layer of the same computation does;
a constant operand of shape ``(C,)`` (a LayerScale-like ``x * gamma``) is sliced by
`shrink`; reshapes, transposes, slicing, and reductions over the channels keep the
channels they touch, with the reason in the plan.

Where a removed channel does not compute zero (``x + 3.0``, ``hard_sigmoid(x)``: 0
becomes non-zero) the analysis follows that tensor: multiplied by a removed channel
it is zero again (hard-swish is ``x * hard_sigmoid(x)``), but a layer that reads it
(a Conv, a Dense) or a model output keeps that channel, so `shrink` stays exact.

A zeroed unit (its producers' kernel slice and bias, and the gamma/beta of
BatchNormalization on it, all exactly zero) computes zero; `shrink` removes such
units physically: new layer configs and sliced weights, a plain Keras model.

As in Torch-Pruning: this dependency graph, then `importance` (which units matter least),
then the pruner that zeroes and shrinks (`channel_pruner.prune_channels`, `ChannelPruningCallback`).
"""

import dataclasses

import keras
import numpy as np

from tfcompress.core import graph
from tfcompress.core.tables import markdown_table

L = keras.layers

# Layers whose output channels are new elements: (output-channel axis of the kernel, input-channel axis).
PRODUCERS = {
    L.Conv1D: ("kernel", -1, -2),
    L.Conv2D: ("kernel", -1, -2),
    L.Dense: ("kernel", -1, 0),
    L.Conv2DTranspose: ("kernel", -2, -1),
    L.SeparableConv1D: ("pointwise_kernel", -1, None),
    L.SeparableConv2D: ("pointwise_kernel", -1, None),
}
# Layers whose output channel c is their input channel c (value 0 stays 0).
PASSTHROUGH = (
    L.ReLU, L.LeakyReLU, L.Dropout, L.SpatialDropout1D, L.SpatialDropout2D, L.GaussianNoise, L.Identity,
    L.MaxPooling1D, L.MaxPooling2D, L.AveragePooling1D, L.AveragePooling2D, L.GlobalAveragePooling1D,
    L.GlobalAveragePooling2D, L.GlobalMaxPooling1D, L.GlobalMaxPooling2D, L.ZeroPadding1D, L.ZeroPadding2D,
    L.Cropping1D, L.Cropping2D, L.UpSampling1D, L.UpSampling2D, L.BatchNormalization, L.Activation,
)
ELEMENTWISE = (L.Add, L.Subtract, L.Multiply, L.Average, L.Maximum, L.Minimum)
# Activations with f(0) = 0: a zeroed channel stays zero through them.
ZERO_PRESERVING = {"linear", "relu", "relu6", "leaky_relu", "elu", "selu", "tanh", "swish", "silu", "gelu",
                   "hard_swish", "hard_silu", "mish", "softsign"}

# keras.ops operation nodes, by `graph.operation_kind`.
# Output channel c is f(input channel c) with f(0) = 0: they carry their input's elements (as ReLU does).
OP_ZERO_PRESERVING = {
    "nn.Relu", "nn.Relu6", "nn.LeakyRelu", "nn.Elu", "nn.Selu", "nn.Silu", "nn.Gelu", "nn.HardSilu", "nn.Softsign",
    "nn.Mish", "nn.HardTanh", "numpy.Tanh", "numpy.Negative", "numpy.Abs", "numpy.Absolute", "numpy.Square",
    "numpy.Sign", "numpy.Sin", "numpy.Sinh", "numpy.Arctan", "numpy.Arcsinh", "numpy.Arctanh", "numpy.Expm1",
    "numpy.Log1p", "numpy.Round", "numpy.Floor", "numpy.Ceil", "numpy.Trunc",
}
# Output channel c is f(input channel c) with f(0) != 0: they carry the elements, but a removed channel is non-zero.
OP_CHANNELWISE = {"nn.HardSigmoid", "nn.Sigmoid", "nn.Softplus", "numpy.Exp", "numpy.Cos", "numpy.Cosh"}
# Element-wise binary ops: how a zero operand propagates ("add": zero only if all are; "multiply": if any is;
# "divide": the dividend's, with a non-zero constant divisor only).
OP_ELEMENTWISE = {
    "numpy.Add": "add", "numpy.Subtract": "add", "numpy.Maximum": "add", "numpy.Minimum": "add",
    "numpy.Multiply": "multiply", "numpy.Divide": "divide", "numpy.TrueDivide": "divide",
}
# Reductions that keep the channel axis when they do not reduce over it (ops.mean(x, axis=[1, 2])).
OP_REDUCTIONS = {"numpy.Mean", "numpy.Sum", "numpy.Max", "numpy.Min"}


class ChannelPruningError(ValueError):
    """A model whose channels cannot be analysed or pruned; the message says why and what to do."""


def _activation_name(layer):
    activation = getattr(layer, "activation", None)
    if activation is None:
        return "linear"
    return getattr(activation, "__name__", type(activation).__name__).lower()


@dataclasses.dataclass
class Unit:
    """Channels removed together: ``members`` is ``[(producer layer name, channel)]``."""

    index: int
    members: list
    group: int = -1


@dataclasses.dataclass
class LayerPlan:
    """What the analysis decided for one layer (one row of the plan table)."""

    layer: str
    kind: str
    channels: int
    group: int
    decision: str


class ChannelGraph:
    """The channel dependency graph of a Functional or Sequential model.

    Attributes:
        units: every `Unit` that can be removed.
        groups: ``{group id: [producer names]}``: producers whose channels are tied (a residual stream).
        plan: ``[LayerPlan]``, one per producer, in graph order.
        elements: ``{layer name: [element id per output channel]}``.
    """

    def __init__(self, model, layers=None, skip=None):
        graph.check_model(model, action="prune channels of")
        graph.check_functional(model, "channel pruning", error=ChannelPruningError)
        self._operations = None
        self.source = model  # the model given; `model` is its flat graph (the same layers) when it nests models
        self._flat_outputs = {}
        try:
            self.model = graph.flatten(model, self._flat_outputs)
        except ValueError as exc:
            raise ChannelPruningError(str(exc)) from None
        self._parent = []
        self._fixed_reason = {}
        self._owner = []  # element id -> (producer name, channel) or None
        self.elements = {}
        self.input_elements = {}
        self.reasons = {}  # producer -> why its channels are kept
        self.bn_on = {}  # producer name -> BN layer names over its elements (for gamma/beta masking)
        # node name -> per channel: None if a removed channel is zero there, else the op that makes it non-zero
        self.nonzero = {}
        self.sliced_constants = set()  # operation nodes with a (C,) constant operand that `shrink` slices
        self._nodes = {}
        self._slice_cache = {}  # unit index -> unit_slices(): the weights and units never change
        self._walk(layers, skip)
        self._build_units()

    def layer_output(self, name):
        """The output tensor of layer ``name`` in `model`'s graph (for probes such as the taylor criterion)."""
        if name in self._flat_outputs:
            return self._flat_outputs[name]
        return self.operation(name).output

    def operation(self, name):
        """The layer or operation node ``name`` of `model`'s graph."""
        if self._operations is None:
            self._operations = graph.operations_by_name(self.model)
        return self._operations[name]

    # -- union-find ----------------------------------------------------------------------
    def _new(self, owner, fixed=None):
        self._parent.append(len(self._parent))
        self._owner.append(owner)
        if fixed:
            self._fixed_reason[len(self._parent) - 1] = fixed
        return len(self._parent) - 1

    def _find(self, e):
        while self._parent[e] != e:
            self._parent[e] = self._parent[self._parent[e]]
            e = self._parent[e]
        return e

    def _union(self, a, b):
        ra, rb = self._find(a), self._find(b)
        if ra != rb:
            self._parent[rb] = ra
            if rb in self._fixed_reason and ra not in self._fixed_reason:
                self._fixed_reason[ra] = self._fixed_reason[rb]

    def _fix(self, elements, reason):
        for e in elements:
            root = self._find(e)
            self._fixed_reason.setdefault(root, reason)

    # -- the walk ------------------------------------------------------------------------
    def _order(self):
        """``[(layer, [input layer names])]`` in graph order."""
        model = self.model
        if isinstance(model, keras.Sequential):
            order, previous = [], ["__input__"]
            for layer in model.layers:
                order.append((layer, previous))
                previous = [layer.name]
            return order, ["__input__"], [model.layers[-1].name]
        nodes, inputs = graph.read_graph(model)
        self._nodes = nodes
        order = []
        for layer in model.operations:  # layers and operation nodes (x * 3.0, keras.ops.add...), in graph order
            node = nodes[layer.name]
            if isinstance(layer, L.InputLayer):
                continue
            order.append((layer, node.producers if node.single_call else None))
        outputs = [name for name, node in nodes.items() if node.is_output]
        return order, inputs, outputs

    def _walk(self, layers, skip):
        order, input_names, output_names = self._order()
        model = self.model
        for name in input_names:
            width = int(model.inputs[0].shape[-1]) if name == "__input__" else int(self.operation(name).output.shape[-1])
            self.elements[name] = [self._new(None, "a model input's channels") for _ in range(width)]
            self.nonzero[name] = [None] * width
        named = set(layers) if layers else None
        skipped = set(skip or ())
        known = {layer.name for layer, _ in order}
        for argument, names in (("layers", named or set()), ("skip", skipped)):
            unknown = sorted(names - known)
            if unknown:
                raise ChannelPruningError(f"{argument}={unknown}: model {model.name!r} has no such layer; its layers "
                                          f"are {sorted(known)}.")
        self.order = [layer.name for layer, _ in order]
        for layer, producers in order:
            if producers is None:
                self._opaque(layer, [], "called more than once (a shared layer)")
                continue
            ins = [self.elements[p] for p in producers]
            self.input_elements[layer.name] = ins
            flags = [self.nonzero[p] for p in producers]
            if graph.is_operation(layer):
                self._visit_operation(layer, producers, ins, flags)
            else:
                self._visit(layer, ins, flags, named, skipped)
            self.nonzero.setdefault(layer.name, [None] * len(self.elements[layer.name]))
        for name in output_names:
            self._fix(self.elements[name], "reaches a model output")

    def _opaque(self, layer, ins, why):
        for elements in ins:
            self._fix(elements, f"read by {layer.name} ({why})")
        try:
            width = int(layer.output.shape[-1])
        except (TypeError, ValueError, AttributeError, IndexError):  # several outputs, several calls, a scalar
            width = 0
        self.elements[layer.name] = [self._new(None, f"produced by {layer.name} ({why})") for _ in range(width)]

    def _read(self, layer, elements, flags):
        """``layer`` reads the channels ``elements`` into other channels: a non-zero removed channel must stay."""
        for e, why in zip(elements, flags):
            if why is not None:
                self._fix([e], f"read by {layer.name} after {why} (a removed channel would not be 0 there)")

    def _visit(self, layer, ins, flags, named, skipped):
        kind = type(layer)
        rank = len(layer.output.shape)
        data_format = getattr(layer, "data_format", "channels_last")
        if data_format == "channels_first":
            return self._opaque(layer, ins, "channels_first")
        if kind in PRODUCERS:
            self._producer(layer, ins, flags, named, skipped)
        elif kind is L.DepthwiseConv2D or kind is L.DepthwiseConv1D:
            multiplier = int(layer.depth_multiplier)
            self.elements[layer.name] = [e for e in ins[0] for _ in range(multiplier)]
            self.nonzero[layer.name] = [f for f in flags[0] for _ in range(multiplier)]
            if layer.use_bias:  # its bias on a zeroed channel would make it non-zero again: zeroed with the unit
                for e in ins[0]:
                    if self._owner[e] is not None:
                        self.bn_on.setdefault(self._owner[e][0], set()).add(layer.name)
            if _activation_name(layer) not in ZERO_PRESERVING:
                self._fix(ins[0], f"{layer.name}'s activation does not keep 0 at 0")
        elif kind in PASSTHROUGH or kind is L.Flatten:
            if kind is L.BatchNormalization and layer.axis not in (-1, rank - 1):
                return self._opaque(layer, ins, "BatchNormalization not over the last axis")
            if kind in (L.Activation,) and _activation_name(layer) not in ZERO_PRESERVING:
                return self._opaque(layer, ins, f"activation {_activation_name(layer)!r} maps 0 to non-0")
            if kind is L.Flatten:
                spatial = int(np.prod(layer.input.shape[1:-1])) if len(layer.input.shape) > 2 else 1
                self.elements[layer.name] = list(ins[0]) * spatial
                self.nonzero[layer.name] = list(flags[0]) * spatial
            else:
                self.elements[layer.name] = list(ins[0])
                # BatchNormalization's gamma and beta are zeroed with the unit: its output is 0 there again.
                self.nonzero[layer.name] = [None] * len(ins[0]) if kind is L.BatchNormalization else list(flags[0])
            if kind is L.BatchNormalization:
                for e in ins[0]:
                    owner = self._owner[e]
                    if owner is not None:
                        self.bn_on.setdefault(owner[0], set()).add(layer.name)
        elif kind in ELEMENTWISE:
            widths = {len(e) for e in ins}
            if len(widths) != 1:
                return self._opaque(layer, ins, "inputs of different widths (broadcast)")
            for other in ins[1:]:
                for a, b in zip(ins[0], other):
                    self._union(a, b)
            self.elements[layer.name] = list(ins[0])
            self.nonzero[layer.name] = _combine("multiply" if kind is L.Multiply else "add", flags)
        elif kind is L.Concatenate and layer.axis in (-1, rank - 1):
            self.elements[layer.name] = [e for elements in ins for e in elements]
            self.nonzero[layer.name] = [f for fs in flags for f in fs]
        else:
            self._opaque(layer, ins, f"{kind.__name__} is not analysed")

    def _producer(self, layer, ins, flags, named, skipped):
        reason = None
        if named is not None and layer.name not in named:
            reason = "not named in layers="
        elif layer.name in skipped:
            reason = "named in skip="
        elif _activation_name(layer) not in ZERO_PRESERVING:
            reason = f"its activation {_activation_name(layer)!r} maps 0 to non-0"
        elif getattr(layer, "groups", 1) != 1:
            reason = "grouped convolution"
        if getattr(layer, "groups", 1) != 1:  # its kernel's input axis holds one group's channels: cannot slice
            for elements in ins:
                self._fix(elements, f"read by {layer.name} (grouped convolution)")
        for elements, why in zip(ins, flags):
            self._read(layer, elements, why)
        width = int(layer.output.shape[-1])
        self.elements[layer.name] = [self._new((layer.name, c), reason) for c in range(width)]

    def _visit_operation(self, op, producers, ins, flags):
        """An operation node (see the module doc): element-wise ones carry or tie channels, others keep them."""
        kind = graph.operation_kind(op)
        name = op.name
        try:
            out_shape = op.output.shape
            width, rank = int(out_shape[-1]), len(out_shape)
        except (TypeError, ValueError, AttributeError, IndexError):
            return self._opaque(op, ins, f"operation {kind} is not analysed")
        arguments = self._nodes[name].arguments()
        tensors = [a for a in arguments if a[0] == "tensor"]
        if kind in OP_ZERO_PRESERVING or kind in OP_CHANNELWISE:
            if len(ins) != 1 or len(tensors) != 1 or len(ins[0]) != width:
                return self._opaque(op, ins, f"operation {kind} with other arguments than one tensor")
            self.elements[name] = list(ins[0])
            self.nonzero[name] = list(flags[0]) if kind in OP_ZERO_PRESERVING else [f"{name} ({kind})"] * width
        elif kind in OP_ELEMENTWISE:
            self._elementwise_operation(op, kind, arguments, width)
        elif kind in OP_REDUCTIONS and len(ins) == 1:
            axis = op.get_config().get("axis")
            axes = [axis] if isinstance(axis, int) else list(axis or [])
            in_rank = len(self.operation(producers[0]).output.shape)
            if not axes or any(a % in_rank == in_rank - 1 for a in axes) or len(ins[0]) != width:
                return self._opaque(op, ins, f"operation {kind} reduces over the channel axis")
            self.elements[name] = list(ins[0])
            self.nonzero[name] = list(flags[0])  # the mean/sum/max of zeros is zero
        elif kind == "numpy.Concatenate" and op.get_config().get("axis") in (-1, rank - 1):
            self.elements[name] = [e for elements in ins for e in elements]
            self.nonzero[name] = [f for fs in flags for f in fs]
        else:
            self._opaque(op, ins, f"operation {kind} may move or mix channels (reshape, transpose, slicing, "
                                  "reduction...): not analysed")

    def _elementwise_operation(self, op, kind, arguments, width):
        """``x + y``, ``x * 3.0``, ``x * gamma``...: ties tensor operands of one width; follows constants' zeros."""
        name, rule = op.name, OP_ELEMENTWISE[kind]
        operand_flags, wide, narrow, sliced = [], [], [], False
        for position, (what, value) in enumerate(arguments):
            if what == "tensor":
                elements, flags = self.elements[value], self.nonzero[value]
                if len(elements) == width:
                    wide.append(elements)
                    operand_flags.append(flags)
                elif len(elements) == 1:  # broadcast over the channels: its one channel stays
                    narrow.append(elements)
                    operand_flags.append(flags * width)
                else:
                    return self._opaque(op, self.input_elements[name], "inputs of different widths (broadcast)")
                continue
            if what != "constant":
                return self._opaque(op, self.input_elements[name], f"operation {kind} with a non-tensor argument")
            shape = value.shape
            if value.size == 1:
                per_channel = np.repeat(value.reshape(-1), width)
            elif shape and shape[-1] == width and int(np.prod(shape[:-1])) == 1:
                per_channel, sliced = value.reshape(-1), True
            else:
                return self._opaque(op, self.input_elements[name], f"a constant of shape {shape} over the channels")
            if rule == "divide" and (position == 0 or np.any(per_channel == 0)):
                return self._opaque(op, self.input_elements[name], f"operation {kind} divides by a tensor or by 0")
            operand_flags.append([None if c == 0 else f"{name} ({kind} by a non-zero constant)" for c in per_channel])
        if not wide or (rule == "divide" and arguments[1][0] == "tensor"):
            return self._opaque(op, self.input_elements[name], f"operation {kind} divides by a tensor or has no "
                                                              "channel-wide tensor operand")
        for elements in narrow:
            self._fix(elements, f"broadcast over the channels by {name}")
        for other in wide[1:]:
            for a, b in zip(wide[0], other):
                self._union(a, b)
        self.elements[name] = list(wide[0])
        if rule == "divide":
            self.nonzero[name] = list(operand_flags[0])
        else:
            self.nonzero[name] = _combine(rule, operand_flags)
        if sliced:
            self.sliced_constants.add(name)

    def _build_units(self):
        components = {}
        for e, owner in enumerate(self._owner):
            components.setdefault(self._find(e), []).append(e)
        self.units, self.groups, self.plan = [], {}, []
        fixed_members = {}
        producer_groups = {}
        for root, members in components.items():
            owners = [self._owner[e] for e in members if self._owner[e] is not None]
            if not owners:
                continue
            reason = self._fixed_reason.get(root)
            if reason:
                for name, _ in owners:
                    fixed_members.setdefault(name, reason)
                continue
            unit = Unit(index=len(self.units), members=sorted(set(owners)))
            self.units.append(unit)
        # Producers tied by units form a group (one residual stream, or one plain layer).
        parent = {}

        def find(x):
            while parent.setdefault(x, x) != x:
                x = parent[x]
            return x

        for unit in self.units:
            names = sorted({name for name, _ in unit.members})
            for other in names[1:]:
                parent[find(other)] = find(names[0])
        for unit in self.units:
            root = find(unit.members[0][0])
            group = producer_groups.setdefault(root, len(producer_groups))
            unit.group = group
            self.groups.setdefault(group, set()).update(name for name, _ in unit.members)
        self.groups = {g: sorted(names) for g, names in self.groups.items()}
        group_of = {name: g for g, names in self.groups.items() for name in names}
        for name in self.order:
            layer = self.operation(name)
            if type(layer) not in PRODUCERS:
                continue
            width = int(layer.output.shape[-1])
            if name in group_of:
                self.plan.append(LayerPlan(name, type(layer).__name__, width, group_of[name], "prunable"))
            else:
                why = fixed_members.get(name, "no removable channel")
                self.plan.append(LayerPlan(name, type(layer).__name__, width, -1, f"kept: {why}"))
        self.reasons = fixed_members

    def owner(self, element):
        """``(producer name, channel)`` of an element, or None for a model input's or an opaque layer's."""
        return self._owner[element]

    def plan_table(self):
        rows = [(p.layer, p.kind, p.channels, p.group if p.group >= 0 else "—", p.decision) for p in self.plan]
        return markdown_table(("layer", "kind", "channels", "group", "decision"), rows,
                              title=f"Channel pruning plan for {self.model.name!r}: {len(self.units)} removable units "
                                    f"in {len(self.groups)} group(s)")


def _combine(rule, flags):
    """Per channel, why a removed channel is non-zero after an element-wise op of operands with ``flags``.

    ``"multiply"``: zero if any operand is zero there; otherwise (``"add"``, max, min) only if all are.
    """
    combined = []
    for values in zip(*flags):
        reasons = [v for v in values if v is not None]
        if rule == "multiply":
            combined.append(reasons[0] if len(reasons) == len(values) else None)
        else:
            combined.append(reasons[0] if reasons else None)
    return combined


# -- weights ---------------------------------------------------------------------------------

def _producer_slices(layer):
    """``[(variable, axis)]``: the weights of ``layer`` indexed by its output channels."""
    weight, out_axis, _ = PRODUCERS[type(layer)]
    slices = [(getattr(layer, weight), out_axis)]
    if getattr(layer, "use_bias", False) and getattr(layer, "bias", None) is not None:
        slices.append((layer.bias, 0))
    return slices


def unit_slices(channel_graph, unit):
    """``[(variable, axis, index)]``: every weight entry that must be zero for ``unit`` to compute zero.

    Computed once per unit (the callback asks at every mask update; on MobileNetV2 one pass over every
    unit takes seconds).
    """
    cache = channel_graph._slice_cache
    if unit.index not in cache:
        cache[unit.index] = _unit_slices(channel_graph, unit)
    return cache[unit.index]


def _unit_slices(channel_graph, unit):
    out = []
    for name, channel in unit.members:
        layer = channel_graph.operation(name)
        out += [(v, axis, channel) for v, axis in _producer_slices(layer)]
        for reader_name in channel_graph.bn_on.get(name, ()):
            reader = channel_graph.operation(reader_name)
            if isinstance(reader, L.BatchNormalization):
                positions = channel_graph.input_elements[reader_name][0]
                attrs = ("gamma", "beta")
            else:  # a DepthwiseConv's bias, on its output channels
                positions = channel_graph.elements[reader_name]
                attrs = ("bias",)
            for i, e in enumerate(positions):
                if channel_graph.owner(e) == (name, channel):
                    for attr in attrs:
                        variable = getattr(reader, attr, None)
                        if variable is not None:
                            out.append((variable, 0, i))
    return out


def _zeroed(values, axis, index):
    return not np.any(np.take(values, index, axis=axis))


def zeroed_units(channel_graph):
    """The units whose every weight entry (`unit_slices`) is exactly zero."""
    cache = {}

    def values(variable):
        if id(variable) not in cache:
            cache[id(variable)] = keras.ops.convert_to_numpy(variable)
        return cache[id(variable)]

    return [u for u in channel_graph.units if all(_zeroed(values(v), a, i) for v, a, i in unit_slices(channel_graph, u))]


def zero_units(channel_graph, units):
    """Sets every weight entry of ``units`` to zero (the masked model)."""
    updates = {}
    for unit in units:
        for variable, axis, index in unit_slices(channel_graph, unit):
            updates.setdefault(id(variable), [variable, []])[1].append((axis, index))
    for variable, entries in updates.values():
        values = keras.ops.convert_to_numpy(variable).copy()
        for axis, index in entries:
            view = np.moveaxis(values, axis, 0)
            view[index] = 0
        variable.assign(values)


# -- shrink ----------------------------------------------------------------------------------

def _kept(elements, removed):
    return [i for i, e in enumerate(elements) if e not in removed]


def shrink(model, verbose=1):
    """A new plain Keras model with the zeroed channels of ``model`` physically removed.

    Finds every removable unit whose weights are all zero (after `prune_channels`
    or `ChannelPruningCallback`), and rebuilds the model (same kind: Sequential or
    Functional; a model with nested Functional/Sequential sub-models, e.g. a Keras
    application inside a Sequential, comes back as one flat Functional model) with
    fewer filters / units, sliced kernels, biases,
    BatchNormalization statistics and depthwise kernels. The result computes what
    the masked model computes, and saves and loads with plain
    ``keras.models.load_model``.

    Args:
        model: a Functional or Sequential Keras model.
        verbose: 1 prints one line saying what was removed.

    Returns:
        A new ``keras.Model`` (``model`` is not modified). Without a zeroed channel,
        a copy of ``model`` (and a line saying that nothing was removed).
    """
    channel_graph = ChannelGraph(model)
    model = channel_graph.model  # nested sub-models inlined: the result is one flat Functional model
    units = zeroed_units(channel_graph)
    removed_members = {m for u in units for m in u.members}
    removed = {e for e, owner in enumerate(channel_graph._owner) if owner in removed_members}
    new_widths = {}
    for name in channel_graph.order:
        layer = channel_graph.operation(name)
        if type(layer) in PRODUCERS:
            new_widths[name] = len(_kept(channel_graph.elements[name], removed))

    def clone_function(layer):
        config = layer.get_config()
        if layer.name in new_widths:
            key = "units" if isinstance(layer, L.Dense) else "filters"
            config[key] = new_widths[layer.name]
        return type(layer).from_config(config)

    def call_function(op, *args, **kwargs):
        if op.name in channel_graph.sliced_constants:  # x * gamma: gamma loses the removed channels too
            elements = channel_graph.elements[op.name]
            keep = _kept(elements, removed)
            args = [np.take(np.asarray(a), keep, axis=-1)
                    if not isinstance(a, keras.KerasTensor) and np.ndim(a) and np.shape(a)[-1] == len(elements) else a
                    for a in args]
        return op(*args, **kwargs)

    clone = keras.models.clone_model(model, clone_function=clone_function,
                                     call_function=None if isinstance(model, keras.Sequential) else call_function)
    for layer in model.layers:
        if isinstance(layer, L.InputLayer) or not layer.weights:
            continue
        new = clone.get_layer(layer.name)
        new.set_weights(_sliced_weights(channel_graph, layer, removed))
    if model.compiled:
        clone.compile_from_config(model.get_compile_config())
    if verbose:
        before = sum(int(np.prod(v.shape)) for v in model.weights)
        after = sum(int(np.prod(v.shape)) for v in clone.weights)
        if units:
            print(f"shrink: removed {len(removed_members)} channels ({len(units)} units) from {model.name!r}: "
                  f"{before:,} → {after:,} parameters")
        else:
            print(f"shrink: model {model.name!r} has no zeroed channel; nothing was removed (a copy is returned)")
    return clone


def _sliced_weights(channel_graph, layer, removed):
    """``layer``'s weights, with removed output channels and removed input channels cut out."""
    kind = type(layer)
    ins = channel_graph.input_elements.get(layer.name, [])
    in_keep = _kept(ins[0], removed) if len(ins) == 1 else None
    out_keep = _kept(channel_graph.elements[layer.name], removed)
    result = []
    for variable in layer.weights:
        value = keras.ops.convert_to_numpy(variable)
        name = variable.name
        if kind in PRODUCERS:
            weight, out_axis, in_axis = PRODUCERS[kind]
            if name == weight:
                value = np.take(value, out_keep, axis=out_axis)
                # A grouped conv's input channels are all kept (see `_producer`); its kernel holds one group's.
                if in_axis is not None and in_keep is not None and getattr(layer, "groups", 1) == 1:
                    value = np.take(value, in_keep, axis=in_axis)
                elif in_axis is None and in_keep is not None:  # separable: pointwise rows = in * multiplier
                    multiplier = int(layer.depth_multiplier)
                    rows = [i * multiplier + m for i in in_keep for m in range(multiplier)]
                    value = np.take(value, rows, axis=-2)
            elif name == "bias":
                value = value[out_keep]
            elif name == "depthwise_kernel" and in_keep is not None:
                value = np.take(value, in_keep, axis=-2)
        elif kind in (L.DepthwiseConv1D, L.DepthwiseConv2D):
            if name == "kernel" and in_keep is not None:
                value = np.take(value, in_keep, axis=-2)
            elif name == "bias":
                value = value[out_keep]
        elif kind is L.BatchNormalization and in_keep is not None:
            value = value[in_keep]
        result.append(value)
    return result


def layer_costs(model):
    """``{layer name: (parameters, multiply-accumulates per sample)}`` of a Functional/Sequential model's layers
    (those of nested sub-models included)."""
    costs = {}
    for layer in graph.layers_of(model):
        if isinstance(layer, (L.InputLayer, keras.Model)):
            continue
        params = int(sum(int(np.prod(v.shape)) for v in layer.weights))
        macs = 0
        out_shape = getattr(layer, "output", None)
        spatial = int(np.prod(layer.output.shape[1:-1])) if out_shape is not None and len(layer.output.shape) > 2 else 1
        if isinstance(layer, (L.Conv1D, L.Conv2D, L.Conv2DTranspose, L.Dense)) and not isinstance(
                layer, (L.SeparableConv1D, L.SeparableConv2D, L.DepthwiseConv1D, L.DepthwiseConv2D)):
            kernel = layer.kernel.shape
            positions = int(np.prod(layer.input.shape[1:-1])) if isinstance(layer, L.Conv2DTranspose) else spatial
            macs = positions * int(np.prod(kernel))
        elif isinstance(layer, (L.DepthwiseConv1D, L.DepthwiseConv2D)):
            macs = spatial * int(np.prod(layer.kernel.shape))
        elif isinstance(layer, (L.SeparableConv1D, L.SeparableConv2D)):
            macs = spatial * (int(np.prod(layer.depthwise_kernel.shape)) + int(np.prod(layer.pointwise_kernel.shape)))
        costs[layer.name] = (params, macs)
    return costs


def shrink_report(before, after):
    """A markdown table: per layer, the output width, parameters and MACs before and after `shrink`, and totals."""
    old, new = layer_costs(before), layer_costs(after)
    rows = []
    for name, (params, macs) in old.items():
        if name not in new or (params == 0 and macs == 0):
            continue
        layer_before, layer_after = before.get_layer(name), after.get_layer(name)
        width = f"{layer_before.output.shape[-1]} → {layer_after.output.shape[-1]}"
        rows.append((name, width, f"{params:,} → {new[name][0]:,}", f"{macs:,} → {new[name][1]:,}"))
    total = [sum(c[i] for c in old.values()) for i in (0, 1)], [sum(c[i] for c in new.values()) for i in (0, 1)]
    footer = (f"total: {total[0][0]:,} → {total[1][0]:,} parameters ({total[0][0] / max(total[1][0], 1):.2f}x fewer), "
              f"{total[0][1]:,} → {total[1][1]:,} MACs ({total[0][1] / max(total[1][1], 1):.2f}x fewer)")
    return markdown_table(("layer", "channels", "parameters", "MACs"), rows, footer=footer)
