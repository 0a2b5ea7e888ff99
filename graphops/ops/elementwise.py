"""Ops that act on each channel independently: activations, and broadcasting arithmetic.

Two channel tensors combined position by position (a residual Add, the SE Mul, Swish's
``x * sigmoid(x)``) must keep the same channels, so their classes are united. A constant operand
that varies along the channel axis (a bias, a PRelu slope) is sliced with the channels.
"""

from __future__ import annotations

import math

import onnx
import onnx_graphsurgeon as gs

from onnxprune.graphops.errors import UnsupportedPattern
from onnxprune.graphops.layout import Layout
from onnxprune.graphops.ops.base import AnalysisContext, ConstantShape, OpHandler, describe, register

UNARY_OPS = (
    "Relu",
    "LeakyRelu",
    "Elu",
    "Selu",
    "Celu",
    "ThresholdedRelu",
    "Sigmoid",
    "HardSigmoid",
    "HardSwish",
    "Tanh",
    "Softplus",
    "Softsign",
    "Gelu",
    "Mish",
    "Erf",
    "Abs",
    "Neg",
    "Exp",
    "Log",
    "Sqrt",
    "Reciprocal",
    "Floor",
    "Ceil",
    "Round",
    "Sign",
    "Sin",
    "Cos",
    "Identity",
    "Cast",
    "Clip",
    "Dropout",
    "Not",
    "IsNaN",
    "IsInf",
    "Affine",
    "ScaledTanh",
    "ParametricSoftplus",
)  # fmt: skip  (Affine, ScaledTanh, ParametricSoftplus: old converters' experimental ops, scalar attributes)

BROADCAST_OPS = (
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "PRelu", "Where",
    "Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "And", "Or", "Xor", "Mod",
)  # fmt: skip


@register(*UNARY_OPS)
class Unary(OpHandler):
    """Output channel i is a function of input channel i only (extra inputs are scalars)."""

    follows_units = True

    def propagate(self, node: gs.Node, ctx: AnalysisContext) -> None:
        layout = ctx.layout(node.inputs[0]) if node.inputs else None
        if layout is None:
            return
        for extra in node.inputs[1:]:
            if extra is not None and extra.name and (ctx.static_shape(extra) or ()) not in ((), (1,)):
                raise UnsupportedPattern(f"{describe(node)} has a non-scalar parameter '{extra.name}'")
        for out in node.outputs:
            ctx.set_layout(out, layout)


@register(*BROADCAST_OPS)
class Broadcast(OpHandler):
    """Numpy-style broadcasting between channel tensors and constants.

    On attention heads (``Layout.unit_axis``) the same holds for the head axis; head_dim never
    changes, so what varies along it is harmless."""

    follows_units = True

    def propagate(self, node: gs.Node, ctx: AnalysisContext) -> None:
        inputs = [t for t in node.inputs if t is not None and t.name]
        out = node.outputs[0]
        tracked: list[tuple[int, Layout]] = []
        for i, t in enumerate(inputs):
            lay = ctx.layout(t)
            if lay is not None:
                tracked.append((i, lay))
        if not tracked:
            return
        ranks: list[int] = []
        for t in inputs:
            rank = ctx.rank(t)
            if rank is None:
                raise UnsupportedPattern(f"{describe(node)} has an input of unknown rank")
            ranks.append(rank)
        out_rank = max(ranks)
        aligned = {lay.axis + out_rank - ranks[i] for i, lay in tracked}
        if len(aligned) != 1:
            raise UnsupportedPattern(f"{describe(node)} combines channels that lie on different axes")
        axis = aligned.pop()
        unit_axes = {None if lay.unit_axis is None else lay.unit_axis + out_rank - ranks[i] for i, lay in tracked}
        if len(unit_axes) != 1:
            raise UnsupportedPattern(f"{describe(node)} combines heads with plain channels")
        unit_axis = unit_axes.pop()
        reference = max((lay for _, lay in tracked), key=len)
        channels = len(reference)
        for _, lay in tracked:
            if len(lay) == channels:
                ctx.state.unite(reference.atoms, lay.atoms)
            elif len(lay) != 1:
                raise UnsupportedPattern(f"{describe(node)} broadcasts {len(lay)} channels against {channels}")
        for index, tensor in enumerate(node.inputs):
            if tensor is None or not tensor.name or ctx.layout(tensor) is not None:
                continue
            shape = ctx.shape(tensor)
            if shape is None:
                raise UnsupportedPattern(f"{describe(node)} input '{tensor.name}' has an unknown shape")
            local_axis = axis - (out_rank - len(shape))
            if local_axis < 0 or shape[local_axis] == 1:
                continue
            if ctx.const_shape(tensor) is not None and shape[local_axis] == channels:
                ctx.slice_const(node, index, local_axis, reference.atoms)
                continue
            ctx.pin_inputs(
                node,
                f"{describe(node)} combines channels with {ctx.untracked_source(tensor)}, whose channels are not tracked",
            )
            return
        out_shape = ctx.shape(out)
        if (
            out_shape is not None
            and len(out_shape) == out_rank
            and out_shape[axis] not in (channels, None)
            and not isinstance(out_shape[axis], str)
        ):
            return  # a single channel broadcast to many: nothing downstream follows it
        ctx.set_layout(out, Layout(axis, reference.atoms, unit_axis))

    def parameter_inputs(self, node: onnx.NodeProto, constant_shape: ConstantShape) -> tuple[int, ...]:
        if node.op_type == "PRelu":
            return (1,)  # the slope
        if node.op_type not in ("Add", "Sub", "Mul"):
            return ()
        # A per-channel constant is a weight (a bias added after a transposed conv); a scalar (x * 0.5,
        # x / 6 in a hard swish) is arithmetic and stays constant.
        shapes = [constant_shape(name) for name in node.input[:2]]
        return tuple(index for index, shape in enumerate(shapes) if shape is not None and math.prod(shape) > 1)
