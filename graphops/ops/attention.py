"""Attention heads: channels split into [heads, head_dim], attended per head, merged back.

Decomposed self-attention as BERT and ViT exports write it::

    x -> MatMul Wq (+bq) -> Reshape [b, s, H, D] -> Transpose -> MatMul(Q, K^T) -> scale, mask -> Softmax
    x -> MatMul Wk (+bk) -> Reshape [b, s, H, D] -> Transpose ----^                                  |
    x -> MatMul Wv (+bv) -> Reshape [b, s, H, D] -> Transpose -------------------------> MatMul(P, V) <-+
      -> Transpose [b, s, H, D] -> Reshape [b, s, H * D] -> MatMul Wo

A head is a unit of D channels. The splitting Reshape unites each head's D channels into one class,
and on the per-head tensors one atom stands for each head (``Layout.unit_axis`` holds its D
channels); the MatMuls between two activations unite the heads of their operands (Q with K, the
attention weights with V); the merging Reshape spreads each head back over its D channels, which
the output projection reads. The head count in the Reshapes' targets follows the kept heads (a
constant, or a piece of a Concat'd shape); D never changes, so a target may spell it out.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.graphops.errors import UnsupportedPattern
from onnxprune.graphops.layout import Layout
from onnxprune.graphops.ops.base import AnalysisContext, describe


def _target_value(ctx: AnalysisContext, node: gs.Node, position: int) -> int | None:
    """The constant at ``position`` of a Reshape's target, or None when it is computed at run time."""
    from onnxprune.graphops.ops.structure import shape_entry_source  # structure imports us

    source = shape_entry_source(ctx, node, 1, position)
    values = None if source is None else ctx.const(source[0].inputs[source[1]])
    return None if values is None or source is None else int(np.ravel(values)[source[2]])


def split_into_heads(node: gs.Node, ctx: AnalysisContext, layout: Layout) -> bool:
    """Follow Reshape ``node`` splitting the channel axis into [heads, head_dim]; False when its
    shapes split the channels some other way (raises UnsupportedPattern for a run-time head count)."""
    from onnxprune.graphops.ops.structure import follow_shape_entry  # structure imports us

    in_shape, out_shape = ctx.static_shape(node.inputs[0]), ctx.static_shape(node.outputs[0])
    axis = layout.axis
    if layout.unit_axis is not None or in_shape is None or out_shape is None or len(out_shape) != len(in_shape) + 1:
        return False
    heads, width = out_shape[axis], out_shape[axis + 1]
    if (
        out_shape[:axis] != in_shape[:axis]
        or out_shape[axis + 2 :] != in_shape[axis + 1 :]
        or heads * width != in_shape[axis]
        or heads < 2
    ):
        return False
    heads_value, width_value = _target_value(ctx, node, axis), _target_value(ctx, node, axis + 1)
    if heads_value not in (heads, -1) or width_value not in (width, -1):
        raise UnsupportedPattern(f"{describe(node)} splits channels into heads by a run-time count")
    grid = layout.atoms.reshape(heads, width)
    representatives = grid[:, 0]
    ctx.state.unite(np.repeat(representatives, width - 1), grid[:, 1:].reshape(-1))
    if not follow_shape_entry(ctx, node, 1, axis, representatives):
        raise UnsupportedPattern(f"{describe(node)} splits channels into heads by a run-time count")
    ctx.state.units.append((representatives, width))
    ctx.set_layout(node.outputs[0], Layout(axis, representatives, axis + 1))
    return True


def merge_heads(node: gs.Node, ctx: AnalysisContext, layout: Layout) -> None:
    """Follow Reshape ``node`` merging [heads, head_dim] back into one channel axis."""
    from onnxprune.graphops.ops.structure import follow_shape_entry  # structure imports us

    in_shape, out_shape = ctx.static_shape(node.inputs[0]), ctx.static_shape(node.outputs[0])
    axis, unit_axis = layout.axis, layout.unit_axis
    if (
        node.op != "Reshape"
        or unit_axis != axis + 1
        or in_shape is None
        or out_shape is None
        or len(out_shape) != len(in_shape) - 1
        or out_shape[:axis] != in_shape[:axis]
        or out_shape[axis] != in_shape[axis] * in_shape[unit_axis]
        or out_shape[axis + 1 :] != in_shape[axis + 2 :]
    ):
        raise UnsupportedPattern(f"{describe(node)} reshapes attention heads {in_shape} -> {out_shape}")
    atoms = np.repeat(layout.atoms, in_shape[unit_axis])
    if not follow_shape_entry(ctx, node, 1, axis, atoms):
        raise UnsupportedPattern(f"{describe(node)} merges heads by a run-time width")
    ctx.set_layout(node.outputs[0], Layout(axis, atoms))


def propagate_per_head_matmul(node: gs.Node, ctx: AnalysisContext) -> None:
    """A MatMul of two activations (Q K^T, or the attention weights times V) computes each head
    apart when the heads lie on a batch axis: the heads of both operands are united, and head_dim
    either is summed over (in both operands) or carried to the output."""
    a, b = node.inputs[0], node.inputs[1]
    la, lb = ctx.layout(a), ctx.layout(b)
    if la is None and lb is None:
        return
    rank_a, rank_b = ctx.rank(a), ctx.rank(b)
    if rank_a is None or rank_a != rank_b or rank_a < 3:
        raise UnsupportedPattern(f"{describe(node)} multiplies tracked channels by another activation")
    rank = rank_a
    for layout in (la, lb):
        if layout is not None and layout.axis >= rank - 2:
            raise UnsupportedPattern(f"{describe(node)} sums over the channels of two activations")
    summed_a = la is not None and la.unit_axis == rank - 1
    summed_b = lb is not None and lb.unit_axis == rank - 2
    if summed_a != summed_b:
        raise UnsupportedPattern(f"{describe(node)} sums head channels of one operand against another axis")
    if la is not None and lb is not None:
        if la.axis != lb.axis or len(la) != len(lb):
            raise UnsupportedPattern(f"{describe(node)} multiplies heads that do not line up")
        ctx.state.unite(la.atoms, lb.atoms)
    else:
        tracked, other = (la, b) if la is not None else (lb, a)
        if tracked is None:  # both None returned above
            return
        shape = ctx.static_shape(other)
        if shape is None or shape[tracked.axis] != 1:
            raise UnsupportedPattern(
                f"{describe(node)} multiplies heads by '{other.name}', whose heads are not tracked"
            )
    reference = la if la is not None else lb
    if reference is None:
        return
    rows = la is not None and la.unit_axis == rank - 2
    columns = lb is not None and lb.unit_axis == rank - 1
    if rows and columns:
        raise UnsupportedPattern(f"{describe(node)} gives head channels on two axes")
    unit_axis = rank - 2 if rows else (rank - 1 if columns else None)
    ctx.set_layout(node.outputs[0], Layout(reference.axis, reference.atoms, unit_axis))
