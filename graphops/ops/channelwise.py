"""Per-channel normalisation and spatial ops: channels pass through, per-channel parameters follow.

They all expect channels on axis 1 (ONNX's NCHW convention); a channel layout found elsewhere is
pinned rather than guessed at.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxprune.graphops.errors import UnsupportedPattern
from onnxprune.graphops.layout import Layout
from onnxprune.graphops.ops.base import (
    AnalysisContext,
    ConstantShape,
    OpHandler,
    describe,
    normalize_axis,
    register,
)
from onnxprune.graphops.ops.structure import follow_shape_entry
from onnxprune.graphops.shapes import Shape


def _channels_on_axis_1(node: gs.Node, ctx: AnalysisContext) -> Layout | None:
    layout = ctx.layout(node.inputs[0])
    if layout is not None and layout.axis != 1:
        ctx.pin_inputs(node, f"{describe(node)} expects channels on axis 1, found axis {layout.axis}")
        return None
    return layout


@register("BatchNormalization", "InstanceNormalization")
class PerChannelNorm(OpHandler):
    """scale, bias (and BatchNorm's running mean and variance) are indexed by channel."""

    def propagate(self, node: gs.Node, ctx: AnalysisContext) -> None:
        layout = _channels_on_axis_1(node, ctx)
        if layout is None:
            return
        for index, tensor in enumerate(node.inputs[1:], start=1):
            if ctx.const_shape(tensor) is None:
                raise UnsupportedPattern(f"{describe(node)} has parameter '{tensor.name}' computed at run time")
            ctx.slice_const(node, index, 0, layout.atoms)
        ctx.set_layout(node.outputs[0], layout)

    def parameter_inputs(self, node: onnx.NodeProto, constant_shape: ConstantShape) -> tuple[int, ...]:
        return (1, 2)  # scale, bias

    def statistics_inputs(self, node: onnx.NodeProto) -> tuple[int, ...]:
        return (3, 4) if node.op_type == "BatchNormalization" else ()  # running mean, variance


@register("LayerNormalization", "LpNormalization", "Softmax", "LogSoftmax", "Hardmax")
class AxisNorm(OpHandler):
    """Normalises along some axes: harmless unless the channel axis is among them (head_dim may
    be: it never changes)."""

    follows_units = True

    def propagate(self, node: gs.Node, ctx: AnalysisContext) -> None:
        layout = ctx.layout(node.inputs[0])
        rank = ctx.rank(node.inputs[0])
        if layout is None or rank is None:
            if layout is not None:
                ctx.pin_inputs(node, f"{describe(node)} has an input of unknown rank")
            return
        default = -1 if node.op in ("LayerNormalization", "LpNormalization") else (1 if ctx.opset < 13 else -1)
        axis = normalize_axis(int(node.attrs.get("axis", default)), rank)
        normalised = range(axis, rank) if node.op == "LayerNormalization" or ctx.opset < 13 else (axis,)
        if node.op == "LpNormalization":
            normalised = (axis,)
        if layout.axis in normalised:
            raise UnsupportedPattern(f"{describe(node)} normalises over the channel axis")
        ctx.set_layout(node.outputs[0], layout)

    def output_shapes(self, node: onnx.NodeProto, shape: Callable[[str], Shape | None]) -> list[Shape | None]:
        """onnx infers none for LayerNormalization below opset 17 (onnxruntime runs it there)."""
        return [shape(node.input[0])] if node.input else []

    def parameter_inputs(self, node: onnx.NodeProto, constant_shape: ConstantShape) -> tuple[int, ...]:
        return (1, 2) if node.op_type == "LayerNormalization" else ()  # scale, bias


POOL_OPS = (
    "MaxPool",
    "AveragePool",
    "LpPool",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "GlobalLpPool",
    "MaxRoiPool",
    "Crop",
)  # fmt: skip  (Crop: the experimental op of old converters, it cuts H and W only)


@register(*POOL_OPS)
class Pool(OpHandler):
    def propagate(self, node: gs.Node, ctx: AnalysisContext) -> None:
        layout = _channels_on_axis_1(node, ctx)
        if layout is None:
            return
        if len(node.outputs) > 1 and node.outputs[1].outputs:
            raise UnsupportedPattern(f"{describe(node)} returns flat indices that depend on the channel count")
        ctx.set_layout(node.outputs[0], layout)


@register("Pad")
class Pad(OpHandler):
    def propagate(self, node: gs.Node, ctx: AnalysisContext) -> None:
        layout = ctx.layout(node.inputs[0])
        rank = ctx.rank(node.inputs[0])
        if layout is None:
            return
        pads: list[int] | None
        if "pads" in node.attrs:
            pads = [int(p) for p in node.attrs["pads"]]
        else:
            values = ctx.const(node.inputs[1]) if len(node.inputs) > 1 else None
            pads = None if values is None else [int(p) for p in np.ravel(values)]
        axes_input = ctx.const(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3].name else None
        if pads is None or rank is None:
            raise UnsupportedPattern(f"{describe(node)} pads by run-time amounts")
        axes = list(range(rank)) if axes_input is None else [normalize_axis(int(a), rank) for a in np.ravel(axes_input)]
        half = len(pads) // 2
        for k, axis in enumerate(axes[:half]):
            if axis == layout.axis and (pads[k] or pads[k + half]):
                self._pad_channels(node, ctx, layout, pads[k], pads[k + half])
                return
        ctx.set_layout(node.outputs[0], layout)

    @staticmethod
    def _pad_channels(node: gs.Node, ctx: AnalysisContext, layout: Layout, before: int, after: int) -> None:
        """Padding channels (BlazeFace widens residuals so) appends constant channels, as Concat would."""
        mode = node.attrs.get("mode", "constant")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        if mode != "constant" or before < 0 or after < 0:
            raise UnsupportedPattern(f"{describe(node)} pads the channel axis in '{mode}' mode")
        reason = f"{describe(node)} adds padding channels"
        pieces = [
            ctx.new_pinned_layout(layout.axis, before, node.name, reason).atoms,
            layout.atoms,
            ctx.new_pinned_layout(layout.axis, after, node.name, reason).atoms,
        ]
        ctx.set_layout(node.outputs[0], Layout(layout.axis, np.concatenate(pieces)))


@register("Resize", "Upsample")
class Resize(OpHandler):
    """Scales must leave the channel axis alone; an explicit ``sizes`` entry is rewritten."""

    def propagate(self, node: gs.Node, ctx: AnalysisContext) -> None:
        layout = ctx.layout(node.inputs[0])
        if layout is None:
            return
        scales_index = 1 if node.op == "Upsample" else 2
        scales: list[float] | None
        if "scales" in node.attrs:
            scales = list(node.attrs["scales"])
        elif len(node.inputs) > scales_index and node.inputs[scales_index].name:
            values = ctx.const(node.inputs[scales_index])
            scales = None if values is None else list(np.ravel(values))
        else:
            scales = []
        if scales is None:
            raise UnsupportedPattern(f"{describe(node)} scales by run-time factors")
        if scales and scales[layout.axis] != 1:
            raise UnsupportedPattern(f"{describe(node)} rescales the channel axis")
        if node.op == "Resize" and len(node.inputs) > 3 and node.inputs[3].name:
            if not follow_shape_entry(ctx, node, 3, layout.axis, layout.atoms):
                raise UnsupportedPattern(f"{describe(node)} takes output sizes computed at run time")
        ctx.set_layout(node.outputs[0], layout)
