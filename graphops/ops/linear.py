"""Gemm and MatMul with a constant weight: fully connected layers.

Their input features may be channels, or channels times spatial positions after a Flatten (each
channel then owns a block of rows). Their output units (weight columns) form a new space: MLP
neurons, or the channels of attention heads (``graphops.ops.attention``); the SE block's
channel-wise gate coming out of a Gemm follows the conv channels it multiplies. A MatMul of two
activations is attention's per-head product (``propagate_per_head_matmul``).
"""

from __future__ import annotations

from collections.abc import Callable

import onnx
import onnx_graphsurgeon as gs

from onnxprune.graphops.errors import UnsupportedPattern
from onnxprune.graphops.layout import Layout, Producer
from onnxprune.graphops.ops.attention import propagate_per_head_matmul
from onnxprune.graphops.ops.base import (
    AnalysisContext,
    ConstantShape,
    OpHandler,
    attribute,
    describe,
    number_attribute,
    prod,
    register,
)
from onnxprune.graphops.ops.linear_form import LinearForm


def _feature_layout(node: gs.Node, ctx: AnalysisContext, tensor: gs.Tensor) -> Layout | None:
    layout = ctx.layout(tensor)
    rank = ctx.rank(tensor)
    if layout is not None and (rank is None or layout.axis != rank - 1):
        ctx.state.pin(layout.atoms, f"{describe(node)} does not sum over the channel axis")
        return None
    return layout


# onnxruntime's MLAS SGEMM packs the weight in panels of 16 columns: an output width of 16k + 1 .. 16k + 16
# runs in the same time (x [128, 384] @ [384, N], 1 thread: +11% at N = 49, 65, 81, 97, flat between;
# benchmarks/results/transformer_widths.md).
SGEMM_COLUMNS = 16


@register("Gemm")
class Gemm(OpHandler):
    role = "linear"
    column_step = SGEMM_COLUMNS

    def propagate(self, node: gs.Node, ctx: AnalysisContext) -> None:
        a, b = node.inputs[0], node.inputs[1]
        weight = ctx.const_shape(b)
        if ctx.layout(b) is not None or weight is None or int(node.attrs.get("transA", 0)):
            raise UnsupportedPattern(f"{describe(node)} is not a layer with a constant weight")
        layout = _feature_layout(node, ctx, a)
        trans_b = int(node.attrs.get("transB", 0))
        k_axis, n_axis = (1, 0) if trans_b else (0, 1)
        if layout is not None:
            if len(layout) != weight[k_axis]:
                ctx.state.pin(layout.atoms, f"{describe(node)} has {weight[k_axis]} inputs, found {len(layout)}")
            else:
                ctx.slice_const(node, 1, k_axis, layout.atoms, reduces=True)
        atoms = ctx.new_atoms(weight[n_axis], node.name)
        ctx.slice_const(node, 1, n_axis, atoms)
        if len(node.inputs) > 2 and node.inputs[2] is not None and node.inputs[2].name:
            bias_shape = ctx.shape(node.inputs[2]) or ()
            if ctx.const_shape(node.inputs[2]) is None:
                ctx.state.pin(atoms, f"{describe(node)} has a bias computed at run time")
            elif len(bias_shape) >= 1 and bias_shape[-1] == len(atoms) and len(atoms) > 1:
                ctx.slice_const(node, 2, len(bias_shape) - 1, atoms)
        ctx.state.producers.append(Producer(node.name, b.name, n_axis, atoms))
        ctx.set_layout(node.outputs[0], Layout(1, atoms))

    def macs(self, node: onnx.NodeProto, shape: Callable[[str], tuple[int, ...]]) -> int:
        b = shape(node.input[1])
        return prod(shape(node.output[0])) * (b[1] if attribute(node, "transB", 0) else b[0])

    def linear_form(self, node: onnx.NodeProto, constant_shape: ConstantShape) -> LinearForm | str:
        weight = constant_shape(node.input[1])
        if weight is None:
            return "Gemm weight is not a constant"
        if (
            attribute(node, "transA", 0)
            or number_attribute(node, "alpha", 1.0) != 1.0
            or number_attribute(node, "beta", 1.0) != 1.0
        ):
            return "Gemm with transA or alpha/beta other than 1"
        return LinearForm(weight, outputs_first=bool(attribute(node, "transB", 0)), bias_input=2)

    def parameter_inputs(self, node: onnx.NodeProto, constant_shape: ConstantShape) -> tuple[int, ...]:
        return (1, 2)


@register("MatMul")
class MatMul(OpHandler):
    role = "linear"
    column_step = SGEMM_COLUMNS
    follows_units = True  # attention's per-head products

    def macs(self, node: onnx.NodeProto, shape: Callable[[str], tuple[int, ...]]) -> int:
        b = shape(node.input[1])
        return prod(shape(node.output[0])) * (b[-2] if len(b) >= 2 else b[0])

    def linear_form(self, node: onnx.NodeProto, constant_shape: ConstantShape) -> LinearForm | str:
        weight = constant_shape(node.input[1])
        if weight is None or constant_shape(node.input[0]) is not None:
            return "MatMul whose weight is not the right-hand constant"
        if len(weight) != 2:
            return "MatMul with a batched weight"
        return LinearForm(weight, outputs_first=False)  # no bias input: exporters add it after

    def channels_apart(self, node: onnx.NodeProto, constant_shape: ConstantShape) -> bool:
        return constant_shape(node.input[1]) is None  # two activations: attention's per-head product

    def parameter_inputs(self, node: onnx.NodeProto, constant_shape: ConstantShape) -> tuple[int, ...]:
        return (0, 1)  # a weight on either side

    def propagate(self, node: gs.Node, ctx: AnalysisContext) -> None:
        a, b = node.inputs[0], node.inputs[1]
        weight = ctx.const_shape(b)
        if weight is None and ctx.const_shape(a) is None:
            propagate_per_head_matmul(node, ctx)
            return
        if ctx.layout(b) is not None or weight is None or len(weight) != 2:
            raise UnsupportedPattern(f"{describe(node)} is not a layer with a constant 2-D weight")
        a_layout = ctx.layout(a)
        if a_layout is not None and a_layout.unit_axis is not None:
            raise UnsupportedPattern(f"{describe(node)} projects attention heads without merging them")
        layout = _feature_layout(node, ctx, a)
        if layout is not None:
            if len(layout) != weight[0]:
                ctx.state.pin(layout.atoms, f"{describe(node)} has {weight[0]} inputs, found {len(layout)}")
            else:
                ctx.slice_const(node, 1, 0, layout.atoms, reduces=True)
        atoms = ctx.new_atoms(weight[1], node.name)
        ctx.slice_const(node, 1, 1, atoms)
        ctx.state.producers.append(Producer(node.name, b.name, 1, atoms))
        out_rank = ctx.rank(node.outputs[0])
        if out_rank is not None:
            ctx.set_layout(node.outputs[0], Layout(out_rank - 1, atoms))
