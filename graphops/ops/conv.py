"""Conv and ConvTranspose: where filters (and so channel groups) are born.

A dense conv creates a new space of output channels and sums over its input channels (so its
weight's input axis follows the input's channels). A depthwise conv maps channel i to channel i,
so it unites input and output channels. A grouped conv keeps equal channel counts per conv
group, which selection honours through balanced blocks.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxprune.graphops.errors import AnalysisBug, UnsupportedPattern
from onnxprune.graphops.layout import Layout, Producer
from onnxprune.graphops.ops.base import (
    AnalysisContext,
    ConstantShape,
    OpHandler,
    SurgeryContext,
    attribute,
    describe,
    prod,
    register,
)
from onnxprune.graphops.ops.linear_form import LinearForm


def _group(node: gs.Node) -> int:
    return int(node.attrs.get("group", 1))


def _depthwise(groups: int, weight: tuple[int, ...]) -> bool:
    """A Conv of weight [C_out, C_in / group, k...] whose every filter reads one input channel."""
    return groups > 1 and weight[1] == 1


def _transpose_depthwise(groups: int, weight: tuple[int, ...]) -> bool:
    """A ConvTranspose of weight [C_in, C_out / group, k...] with one group per input channel, one
    output channel each."""
    return groups > 1 and weight[1] == 1 and weight[0] == groups


def _input_layout(node: gs.Node, ctx: AnalysisContext, channels: int) -> Layout | None:
    """The input's channel layout, pinned and dropped unless it has ``channels`` positions on axis 1."""
    layout = ctx.layout(node.inputs[0])
    if layout is not None and layout.axis != 1:
        ctx.state.pin(layout.atoms, f"{describe(node)} reads channels from axis {layout.axis}, not 1")
        return None
    if layout is not None and len(layout) != channels:
        ctx.state.pin(layout.atoms, f"{describe(node)} expects {channels} input channels, found {len(layout)}")
        return None
    return layout


def _was_depthwise(node: gs.Node, ctx: SurgeryContext, channels: gs.Tensor) -> bool:
    """One group per channel before pruning (``channels``' original count equals ``group``)."""
    layout = ctx.layout(channels)
    groups = _group(node)
    return groups > 1 and layout is not None and len(layout) == groups and ctx.required_const(node, 1).shape[1] == 1


@register("Conv")
class Conv(OpHandler):
    role = "filter"

    def propagate(self, node: gs.Node, ctx: AnalysisContext) -> None:
        weight = ctx.const_shape(node.inputs[1])
        out = node.outputs[0]
        if weight is None or len(weight) < 3:
            ctx.pin_inputs(node, f"{describe(node)} has weights computed at run time")
            out_shape = ctx.static_shape(out)
            if weight is None and out_shape is not None:
                ctx.set_layout(
                    out,
                    ctx.new_pinned_layout(
                        1, out_shape[1], node.name, f"{describe(node)} has weights computed at run time"
                    ),
                )
            return
        groups = _group(node)
        c_out, c_in_per_group = weight[0], weight[1]
        layout = _input_layout(node, ctx, c_in_per_group * groups)
        has_bias = len(node.inputs) > 2 and node.inputs[2] is not None and node.inputs[2].name

        if groups == 1:
            atoms = ctx.new_atoms(c_out, node.name)
            if layout is not None:
                ctx.slice_const(node, 1, 1, layout.atoms, reduces=True)
        elif _depthwise(groups, weight):
            # Depthwise (channel multiplier m = c_out / groups, usually 1): input channel c owns filters
            # c*m .. c*m+m-1, so they are removed with it (whole multiplier blocks; each block is one class).
            source = (
                layout.atoms
                if layout is not None
                else ctx.new_pinned_layout(
                    1, groups, node.name, f"{describe(node)} is depthwise over untracked channels"
                ).atoms
            )
            atoms = np.repeat(source, c_out // groups)
        else:
            atoms = ctx.new_atoms(c_out, node.name)
            per_group_out = c_out // groups
            ctx.state.balanced_blocks.append(
                [atoms[k * per_group_out : (k + 1) * per_group_out] for k in range(groups)]
            )
            if layout is not None:
                ctx.state.balanced_blocks.append(
                    [layout.atoms[k * c_in_per_group : (k + 1) * c_in_per_group] for k in range(groups)]
                )
        ctx.slice_const(node, 1, 0, atoms)
        if has_bias:
            ctx.slice_const(node, 2, 0, atoms)
        ctx.state.producers.append(Producer(node.name, node.inputs[1].name, 0, atoms))
        ctx.set_layout(out, Layout(1, atoms))

    def macs(self, node: onnx.NodeProto, shape: Callable[[str], tuple[int, ...]]) -> int:
        # out: N, C_out, spatial...; weight: C_out, C_in / group, kernel...
        return prod(shape(node.output[0])) * prod(shape(node.input[1])[1:])

    def linear_form(self, node: onnx.NodeProto, constant_shape: ConstantShape) -> LinearForm | str:
        weight = constant_shape(node.input[1]) if len(node.input) > 1 else None
        if weight is None or len(weight) != 4:
            return "not a 2-D convolution with a constant weight"
        groups = attribute(node, "group", 1)
        if groups != 1:
            return f"grouped convolution (group {groups}): it loses inputs only with its outputs"
        return LinearForm(weight, outputs_first=True, kernel_rank=2, bias_input=2)

    def filter_count(self, node: onnx.NodeProto, constant_shape: ConstantShape) -> int | None:
        weight = constant_shape(node.input[1]) if len(node.input) > 1 else None
        return weight[0] if weight else None

    def parameter_inputs(self, node: onnx.NodeProto, constant_shape: ConstantShape) -> tuple[int, ...]:
        return (1, 2)

    def channels_apart(self, node: onnx.NodeProto, constant_shape: ConstantShape) -> bool:
        weight = constant_shape(node.input[1]) if len(node.input) > 1 else None
        return weight is not None and len(weight) > 1 and _depthwise(attribute(node, "group", 1), weight)

    def apply(self, node: gs.Node, ctx: SurgeryContext) -> None:
        groups = _group(node)
        if groups == 1:
            return
        weight = ctx.const(node.inputs[1])
        out_layout = ctx.layout(node.outputs[0])
        if weight is None or out_layout is None:
            return
        if weight.shape[1] == 1:  # depthwise, multiplier m: one group per input channel, m filters each
            node.attrs["group"] = int(weight.shape[0]) // (len(out_layout) // groups)
            return
        self._slice_grouped_inputs(node, ctx)

    @staticmethod
    def _grouped_input_columns(node: gs.Node, ctx: SurgeryContext) -> list[np.ndarray] | None:
        """Per conv group, the kept local input columns (equal counts, by balanced selection)."""
        kept = ctx.kept(node.inputs[0])
        if kept is None:
            return None
        layout = ctx.layout(node.inputs[0])
        if layout is None:  # kept() found removed positions, so the input has a layout
            raise AnalysisBug(f"onnxprune bug: {describe(node)} has removed input channels but no layout")
        groups = _group(node)
        width = len(layout) // groups
        return [kept[(kept >= k * width) & (kept < (k + 1) * width)] - k * width for k in range(groups)]

    def _slice_grouped_inputs(self, node: gs.Node, ctx: SurgeryContext) -> None:
        columns = self._grouped_input_columns(node, ctx)
        if columns is None:
            return
        weight = ctx.required_const(node, 1)
        groups = _group(node)
        per_group_out = weight.shape[0] // groups
        blocks = [weight[k * per_group_out : (k + 1) * per_group_out][:, cols] for k, cols in enumerate(columns)]
        ctx.replace_input(node, 1, np.concatenate(blocks, axis=0))

    def mask(self, node: gs.Node, ctx: SurgeryContext) -> None:
        groups = _group(node)
        removed = ctx.removed_mask(node.inputs[0])
        if groups == 1 or removed is None:
            return
        weight = ctx.required_const(node, 1)
        if weight.shape[1] == 1:
            return
        weight = weight.copy()
        width = weight.shape[1]
        per_group_out = weight.shape[0] // groups
        for k in range(groups):
            cols = np.flatnonzero(removed[k * width : (k + 1) * width])
            weight[k * per_group_out : (k + 1) * per_group_out, cols] = 0
        ctx.replace_input(node, 1, weight)


@register("ConvTranspose")
class ConvTranspose(OpHandler):
    """Weight layout [C_in, C_out / group, k...]: the transpose of Conv's."""

    role = "filter"

    def propagate(self, node: gs.Node, ctx: AnalysisContext) -> None:
        weight = ctx.const_shape(node.inputs[1])
        groups = _group(node)
        out = node.outputs[0]
        if weight is None or len(weight) < 3:
            reason = f"{describe(node)} has weights computed at run time"
            raise UnsupportedPattern(reason)
        c_in, c_out = weight[0], weight[1] * groups
        layout = _input_layout(node, ctx, c_in)
        if groups == 1:
            atoms = ctx.new_atoms(c_out, node.name)
            if layout is not None:
                ctx.slice_const(node, 1, 0, layout.atoms, reduces=True)
            ctx.slice_const(node, 1, 1, atoms)
        elif _transpose_depthwise(groups, weight):
            atoms = (
                layout.atoms
                if layout is not None
                else ctx.new_pinned_layout(
                    1, c_out, node.name, f"{describe(node)} is depthwise over untracked channels"
                ).atoms
            )
            ctx.slice_const(node, 1, 0, atoms)
        elif c_in % groups == 0:
            # Grouped: like a grouped Conv, equal kept counts per conv group on both sides. The
            # weight's input axis (0) is global and sliced as usual; its output axis (1) is local
            # to each conv group and sliced in ``apply``.
            atoms = ctx.new_atoms(c_out, node.name)
            per_in, per_out = c_in // groups, c_out // groups
            ctx.state.balanced_blocks.append([atoms[k * per_out : (k + 1) * per_out] for k in range(groups)])
            if layout is not None:
                ctx.state.balanced_blocks.append([layout.atoms[k * per_in : (k + 1) * per_in] for k in range(groups)])
                ctx.slice_const(node, 1, 0, layout.atoms, reduces=True)
        else:
            raise UnsupportedPattern(f"{describe(node)} has {c_in} input channels for {groups} groups")
        if len(node.inputs) > 2 and node.inputs[2] is not None and node.inputs[2].name:
            ctx.slice_const(node, 2, 0, atoms)
        depthwise = _transpose_depthwise(groups, weight)
        grouped = 1 if depthwise else groups
        ctx.state.producers.append(Producer(node.name, node.inputs[1].name, 0 if depthwise else 1, atoms, grouped))
        ctx.set_layout(out, Layout(1, atoms))

    def macs(self, node: onnx.NodeProto, shape: Callable[[str], tuple[int, ...]]) -> int:
        # data: N, C_in, spatial...; weight: C_in, C_out / group, kernel...
        return prod(shape(node.input[0])) * prod(shape(node.input[1])[1:])

    def linear_form(self, node: onnx.NodeProto, constant_shape: ConstantShape) -> LinearForm | str:
        # Each input pixel spreads over a window of outputs: no im2col of its input gives its rows.
        return "transposed convolution: its outputs are not windows of its input"

    def filter_count(self, node: onnx.NodeProto, constant_shape: ConstantShape) -> int | None:
        weight = constant_shape(node.input[1]) if len(node.input) > 1 else None
        return weight[1] * attribute(node, "group", 1) if weight else None

    def parameter_inputs(self, node: onnx.NodeProto, constant_shape: ConstantShape) -> tuple[int, ...]:
        return (1, 2)

    def channels_apart(self, node: onnx.NodeProto, constant_shape: ConstantShape) -> bool:
        weight = constant_shape(node.input[1]) if len(node.input) > 1 else None
        return weight is not None and len(weight) > 1 and _transpose_depthwise(attribute(node, "group", 1), weight)

    def apply(self, node: gs.Node, ctx: SurgeryContext) -> None:
        if _was_depthwise(node, ctx, node.inputs[0]):
            node.attrs["group"] = int(ctx.required_const(node, 1).shape[0])
        elif _group(node) > 1:
            self._slice_grouped_outputs(node, ctx)

    @staticmethod
    def _slice_grouped_outputs(node: gs.Node, ctx: SurgeryContext) -> None:
        """Per conv group, keep the weight columns of its kept output channels (equal counts)."""
        kept, layout = ctx.kept(node.outputs[0]), ctx.layout(node.outputs[0])
        weight = ctx.const(node.inputs[1])  # its input rows are already sliced
        if kept is None or layout is None or weight is None:
            return
        groups = _group(node)
        width, rows = len(layout) // groups, weight.shape[0] // groups
        blocks = [
            weight[k * rows : (k + 1) * rows][:, kept[(kept >= k * width) & (kept < (k + 1) * width)] - k * width]
            for k in range(groups)
        ]
        ctx.replace_input(node, 1, np.concatenate(blocks, axis=0))
