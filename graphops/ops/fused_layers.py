"""onnxruntime's fused normalisation and activation ops around attention (its transformer optimizer
writes them).

SkipLayerNormalization (residual Add + LayerNorm) and EmbedLayerNormalization (embeddings + LayerNorm)
normalise over the hidden size: they sit on the residual stream, which stays whole, and never touch
the heads or MLP neurons inside a block. BiasGelu / FastGelu / Gelu / QuickGelu act on each MLP
neuron alone; their bias follows the neurons.
"""

from __future__ import annotations

from collections.abc import Callable

import onnx
import onnx_graphsurgeon as gs

from onnxprune.graphops.errors import UnsupportedPattern
from onnxprune.graphops.ops.base import (
    CONTRIB_DOMAIN,
    AnalysisContext,
    ConstantShape,
    OpHandler,
    describe,
    register,
)
from onnxprune.graphops.shapes import Shape


def _same_as_input(node: onnx.NodeProto, shape: Callable[[str], Shape | None]) -> Shape | None:
    return shape(node.input[0]) if node.input else None


@register(f"{CONTRIB_DOMAIN}.SkipLayerNormalization", f"{CONTRIB_DOMAIN}.SkipSimplifiedLayerNormalization")
class SkipLayerNormalization(OpHandler):
    """LayerNorm(input + skip + bias) over the hidden size: what reaches it is the residual stream."""

    def propagate(self, node: gs.Node, ctx: AnalysisContext) -> None:
        ctx.pin_inputs(node, f"{describe(node)} normalises over the hidden size (the residual stream stays whole)")

    def output_shapes(self, node: onnx.NodeProto, shape: Callable[[str], Shape | None]) -> list[Shape | None]:
        data = _same_as_input(node, shape)
        stats = None if data is None else (*data[:-1], 1)
        return [data, stats, stats, data]

    def parameter_inputs(self, node: onnx.NodeProto, constant_shape: ConstantShape) -> tuple[int, ...]:
        # gamma, beta, bias; the simplified form has no beta
        return (2, 3, 4) if node.op_type == "SkipLayerNormalization" else (2, 3)


@register(f"{CONTRIB_DOMAIN}.EmbedLayerNormalization")
class EmbedLayerNormalization(OpHandler):
    """Token ids in, the normalised embedding sum out: the residual stream starts here (untracked)."""

    def propagate(self, node: gs.Node, ctx: AnalysisContext) -> None:
        ctx.pin_inputs(node, f"{describe(node)} embeds token ids (the residual stream stays whole)")

    def output_shapes(self, node: onnx.NodeProto, shape: Callable[[str], Shape | None]) -> list[Shape | None]:
        ids, words = shape(node.input[0]), shape(node.input[2]) if len(node.input) > 2 else None
        if ids is None or words is None or len(ids) != 2 or len(words) != 2:
            return []
        hidden = (ids[0], ids[1], words[1])
        return [hidden, (ids[0],), hidden]

    def parameter_inputs(self, node: onnx.NodeProto, constant_shape: ConstantShape) -> tuple[int, ...]:
        return (5, 6)  # gamma, beta; the embedding tables stay constant, as a raw export's Gathers do


@register(
    f"{CONTRIB_DOMAIN}.BiasGelu",
    f"{CONTRIB_DOMAIN}.FastGelu",
    f"{CONTRIB_DOMAIN}.Gelu",
    f"{CONTRIB_DOMAIN}.QuickGelu",
)
class BiasGelu(OpHandler):
    """GELU of (x + bias) channel by channel; the bias [channels] is sliced with them."""

    def propagate(self, node: gs.Node, ctx: AnalysisContext) -> None:
        layout = ctx.layout(node.inputs[0])
        if layout is None:
            return
        rank = ctx.rank(node.inputs[0])
        if layout.unit_axis is not None or rank is None or layout.axis != rank - 1:
            raise UnsupportedPattern(f"{describe(node)} adds its bias along another axis than the channels'")
        if len(node.inputs) > 1 and node.inputs[1] is not None and node.inputs[1].name:
            if ctx.const_shape(node.inputs[1]) != (len(layout),):
                raise UnsupportedPattern(f"{describe(node)} has a bias that is not a constant [channels]")
            ctx.slice_const(node, 1, 0, layout.atoms)
        ctx.set_layout(node.outputs[0], layout)

    def output_shapes(self, node: onnx.NodeProto, shape: Callable[[str], Shape | None]) -> list[Shape | None]:
        return [_same_as_input(node, shape)]

    def parameter_inputs(self, node: onnx.NodeProto, constant_shape: ConstantShape) -> tuple[int, ...]:
        return (1,)  # the bias (Gelu and QuickGelu take none)
