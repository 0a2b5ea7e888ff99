"""QuantizeLinear and DequantizeLinear between ops (QDQ activations): channels pass through.

A per-tensor pair is channel-transparent. A per-channel pair along the channel axis indexes its
scale and zero point by channel, so they are sliced with the channels, like a bias. A per-channel
pair along another axis is unaffected. DequantizeLinear of a constant weight carries no channels
itself: the weight's consumer reads through it (``graphops.dequantized``).
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from onnxprune.graphops.ops.base import AnalysisContext, OpHandler, describe, normalize_axis, register


def _given(node: gs.Node, index: int) -> bool:
    return len(node.inputs) > index and node.inputs[index] is not None and bool(node.inputs[index].name)


@register("QuantizeLinear", "DequantizeLinear")
class QuantizeDequantize(OpHandler):
    def propagate(self, node: gs.Node, ctx: AnalysisContext) -> None:
        layout = ctx.layout(node.inputs[0])
        if layout is None:
            return
        scale = ctx.const_shape(node.inputs[1]) if _given(node, 1) else None
        if scale is None or (_given(node, 2) and ctx.const_shape(node.inputs[2]) is None):
            ctx.pin_inputs(node, f"{describe(node)} has scales computed at run time")
            return
        if int(node.attrs.get("block_size", 0)):
            ctx.pin_inputs(node, f"{describe(node)} uses blocked quantization")
            return
        size = 1
        for dim in scale:
            size *= dim
        if size == 1 and len(scale) <= 1:
            ctx.set_layout(node.outputs[0], layout)  # per-tensor: the same scale for every channel
            return
        rank = ctx.rank(node.inputs[0])
        if rank is None or len(scale) != 1:
            ctx.pin_inputs(node, f"{describe(node)} has scales of shape {list(scale)} for an input of rank {rank}")
            return
        axis = normalize_axis(int(node.attrs.get("axis", 1)), rank)
        if axis == layout.axis:
            if scale[0] != len(layout):
                ctx.pin_inputs(node, f"{describe(node)} has {scale[0]} scales for {len(layout)} channels")
                return
            ctx.slice_const(node, 1, 0, layout.atoms)
            if _given(node, 2):
                ctx.slice_const(node, 2, 0, layout.atoms)
        ctx.set_layout(node.outputs[0], layout)
