"""Channel shuffle: Reshape (split channels into d1 x d2) -> Transpose (swap the two) -> Reshape back.

ShuffleNet v1/v2 (and fast detectors) interleave conv groups so: input channel ``a * d2 + b`` lands
at output position ``b * d1 + a``. It is a fixed permutation of channels, so the layout follows it.
For the pruned model to compute the same permutation, every one of the ``d1`` sub-blocks must keep
the same ``b`` positions: channels ``(a, b)`` for all ``a`` are one class, removed together (equal
counts per group), and both Reshapes' shape constants follow the kept counts.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.graphops.errors import UnsupportedPattern
from onnxprune.graphops.layout import Layout
from onnxprune.graphops.ops.base import AnalysisContext, describe


def _only_consumer(ctx: AnalysisContext, tensor: gs.Tensor, op: str) -> gs.Node | None:
    consumers = tensor.outputs
    if len(consumers) != 1 or consumers[0].op != op or ctx.is_graph_output(tensor):
        return None
    return consumers[0] if consumers[0].inputs and consumers[0].inputs[0] is tensor else None


def match_channel_shuffle(
    node: gs.Node, ctx: AnalysisContext, layout: Layout
) -> tuple[int, int, gs.Node, gs.Node] | None:
    """(d1, d2, transpose, reshape back) when ``node`` opens a channel shuffle, else None."""
    axis = layout.axis
    in_shape, mid_shape = ctx.static_shape(node.inputs[0]), ctx.static_shape(node.outputs[0])
    if in_shape is None or mid_shape is None or len(mid_shape) != len(in_shape) + 1:
        return None
    d1, d2 = mid_shape[axis], mid_shape[axis + 1] if axis + 1 < len(mid_shape) else 0
    if (
        mid_shape[:axis] != in_shape[:axis]
        or mid_shape[axis + 2 :] != in_shape[axis + 1 :]
        or d1 * d2 != in_shape[axis]
        or d1 < 2
        or d2 < 1
    ):
        return None
    transpose = _only_consumer(ctx, node.outputs[0], "Transpose")
    if transpose is None:
        return None
    swap = list(range(len(mid_shape)))
    swap[axis], swap[axis + 1] = axis + 1, axis
    if [int(p) for p in transpose.attrs.get("perm", [])] != swap:
        return None
    back = _only_consumer(ctx, transpose.outputs[0], "Reshape")
    if back is None or ctx.static_shape(back.outputs[0]) != in_shape:
        return None
    return d1, d2, transpose, back


def propagate_channel_shuffle(node: gs.Node, ctx: AnalysisContext, layout: Layout) -> bool:
    """Follow a channel shuffle opened by Reshape ``node``; False when ``node`` opens none.

    The layout is set on the closing Reshape's output; the 5-D tensors in between carry none (the
    Transpose and closing Reshape then see untracked inputs and do nothing).
    """
    from onnxprune.graphops.ops.structure import follow_shape_entry, shape_entry_source  # structure imports us

    matched = match_channel_shuffle(node, ctx, layout)
    if matched is None:
        return False
    d1, d2, _transpose, back = matched
    axis = layout.axis
    atoms = layout.atoms.reshape(d1, d2)  # [a, b]: input channel a * d2 + b
    for a in range(1, d1):
        ctx.state.unite(atoms[0], atoms[a])
    groups_entry = shape_entry_source(ctx, node, 1, axis)
    groups_value = None if groups_entry is None else ctx.const(groups_entry[0].inputs[groups_entry[1]])
    if groups_entry is None or groups_value is None or int(np.ravel(groups_value)[groups_entry[2]]) not in (d1, -1):
        raise UnsupportedPattern(f"{describe(node)} splits channels into groups by a run-time count")
    if not follow_shape_entry(ctx, node, 1, axis + 1, atoms[0]):
        raise UnsupportedPattern(f"{describe(node)} takes a run-time channel count per group")
    shuffled = atoms.T.reshape(-1)  # output position b * d1 + a holds input channel (a, b)
    if not follow_shape_entry(ctx, back, 1, axis, shuffled):
        raise UnsupportedPattern(f"{describe(back)} takes a run-time shape that fixes the channel count")
    ctx.set_layout(back.outputs[0], Layout(axis, shuffled))
    return True
