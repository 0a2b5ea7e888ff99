"""Ops that move, cut or join the channel axis without computing on channel values.

Concat joins layouts (channel offsets), Split and Slice cut them, Transpose moves the axis (NHWC
graphs from tf2onnx), Reshape/Flatten/Squeeze/Unsqueeze map it onto the output (a Flatten into a
Gemm gives each channel a block of features). Where a shape is spelt out in a constant, surgery
rewrites the entry the channels occupy.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.graphops.errors import AnalysisBug, UnsupportedPattern
from onnxprune.graphops.layout import Layout, RuntimeCount, ShapeEntry
from onnxprune.graphops.ops.attention import merge_heads, split_into_heads
from onnxprune.graphops.ops.base import AnalysisContext, OpHandler, SurgeryContext, describe, normalize_axis, register
from onnxprune.graphops.ops.shape_values import trace_shape_element
from onnxprune.graphops.ops.shuffle import propagate_channel_shuffle


def _int_input_or_attr(node: gs.Node, ctx: AnalysisContext | SurgeryContext, index: int, attr: str) -> list[int] | None:
    """An int list given as constant input ``index`` (newer opsets) or attribute ``attr``."""
    if len(node.inputs) > index and node.inputs[index] is not None and node.inputs[index].name:
        values = ctx.const(node.inputs[index])
        return None if values is None else [int(v) for v in np.ravel(values)]
    if attr in node.attrs:
        return [int(v) for v in np.ravel(node.attrs[attr])]
    return []


def map_axis_through_reshape(
    in_shape: tuple[int, ...], out_shape: tuple[int, ...], axis: int, channels: int
) -> tuple[int, np.ndarray] | None:
    """Where the channel axis lands after a reshape, as (output axis, channel index of each position).

    Succeeds when the channel axis survives whole, alone or merged with neighbouring dims into one
    output dim (channel-major, as Flatten does); fails (None) when the channels are split apart.
    """
    in_prefix = [1]
    for dim in in_shape:
        in_prefix.append(in_prefix[-1] * dim)
    out_prefix = [1]
    for dim in out_shape:
        out_prefix.append(out_prefix[-1] * dim)
    for j, dim in enumerate(out_shape):
        start, end = out_prefix[j], out_prefix[j + 1]
        # Output dim j spans flat elements [start, end); it holds the whole channel axis when input
        # dims s..e-1 (with s <= axis < e) span exactly that range.
        firsts = [k for k in range(axis + 1) if in_prefix[k] == start]
        lasts = [k for k in range(axis + 1, len(in_shape) + 1) if in_prefix[k] == end]
        if dim == 0 or not firsts or not lasts:
            continue
        inner = math.prod(in_shape[axis + 1 : lasts[-1]])
        return j, (np.arange(dim) // inner) % channels
    return None


def shape_entry_source(
    ctx: AnalysisContext, node: gs.Node, input_index: int, position: int
) -> tuple[gs.Node, int, int] | None:
    """The constant deciding element ``position`` of a 1-D shape input, as (node, input, position).

    Follows one level of Concat (``x.view(x.size(0), c, 1, 1)`` with a dynamic batch exports as
    Concat(Unsqueeze(Gather(Shape(x))), [c], [1], [1])). None when no constant decides it.
    """
    tensor = node.inputs[input_index]
    values = ctx.const(tensor)
    if values is not None:
        return (node, input_index, position) if position < values.size else None
    producer = tensor.inputs[0] if tensor.inputs else None
    if producer is None or producer.op != "Concat" or len(tensor.outputs) != 1:
        return None
    offset = 0
    for index, piece in enumerate(producer.inputs):
        shape = ctx.static_shape(piece)
        if shape is None or len(shape) != 1:
            return None
        if offset <= position < offset + shape[0]:
            return (producer, index, position - offset) if ctx.const(piece) is not None else None
        offset += shape[0]
    return None


def follow_shape_entry(
    ctx: AnalysisContext, node: gs.Node, input_index: int, position: int, atoms: np.ndarray, *, may_copy: bool = False
) -> bool:
    """Arrange for the shape element at ``position`` to follow ``atoms``' kept count.

    A -1 (inferred) or, where ``may_copy``, a 0 (copied from the input) needs nothing. Returns
    False when no constant decides the element, i.e. it cannot be kept right.
    """
    source = shape_entry_source(ctx, node, input_index, position)
    if source is None:
        return _follows_at_run_time(ctx, node, input_index, position, atoms)
    owner, index, local = source
    values = ctx.const(owner.inputs[index])
    if values is None:  # shape_entry_source only names constants
        raise AnalysisBug(f"onnxprune bug: input {index} of {describe(owner)} is not a constant")
    value = int(np.ravel(values)[local])
    if value == -1 or (value == 0 and may_copy):
        return True
    ctx.state.shape_entries.append(ShapeEntry(owner.name, index, local, atoms))
    return True


def _follows_at_run_time(
    ctx: AnalysisContext, node: gs.Node, input_index: int, position: int, atoms: np.ndarray
) -> bool:
    """The element is a channel count read by ``Shape`` from these very channels (see
    :mod:`graphops.ops.shape_values`): it follows the pruning at run time."""
    if node.op != "Reshape" or input_index != 1:
        return False
    for entry in ctx.state.runtime_counts:
        if entry.reshape == node.name and position in entry.positions and np.array_equal(entry.atoms, atoms):
            entry.followed.add(position)
            return True
    return False


# Slice's starts, ends, axes and steps (each empty when not given).
_SliceParams = tuple[list[int], list[int], list[int], list[int]]


def _tracked_layout(node: gs.Node, ctx: SurgeryContext, tensor: gs.Tensor) -> Layout:
    """The layout analysis gave ``tensor`` when it tracked ``node``'s channels."""
    layout = ctx.layout(tensor)
    if layout is None:
        raise AnalysisBug(f"onnxprune bug: output '{tensor.name}' of {describe(node)} has no channel layout")
    return layout


def _kept_count(node: gs.Node, ctx: SurgeryContext, tensor: gs.Tensor) -> int:
    """How many channels ``tensor`` keeps (all of them when none are removed)."""
    kept = ctx.kept(tensor)
    return len(kept) if kept is not None else len(_tracked_layout(node, ctx, tensor))


@register("Transpose")
class Transpose(OpHandler):
    follows_units = True

    def propagate(self, node: gs.Node, ctx: AnalysisContext) -> None:
        layout = ctx.layout(node.inputs[0])
        if layout is None:
            return
        rank = ctx.rank(node.inputs[0])
        perm = [int(p) for p in node.attrs.get("perm", list(range(rank - 1, -1, -1)) if rank else [])]
        if layout.axis not in perm or (layout.unit_axis is not None and layout.unit_axis not in perm):
            raise UnsupportedPattern(f"{describe(node)} has an unknown permutation")
        unit_axis = None if layout.unit_axis is None else perm.index(layout.unit_axis)
        ctx.set_layout(node.outputs[0], Layout(perm.index(layout.axis), layout.atoms, unit_axis))


@register("Reshape", "Flatten", "Squeeze", "Unsqueeze")
class Reshape(OpHandler):
    follows_units = True  # a Reshape merging heads back into channels (graphops.ops.attention)

    def propagate(self, node: gs.Node, ctx: AnalysisContext) -> None:
        layout = ctx.layout(node.inputs[0])
        if layout is None:
            return
        if layout.unit_axis is not None:
            merge_heads(node, ctx, layout)
            return
        in_shape = ctx.static_shape(node.inputs[0])
        out_shape = ctx.static_shape(node.outputs[0])
        if in_shape is None or out_shape is None:
            raise UnsupportedPattern(f"{describe(node)} reshapes channels with unknown static shapes")
        mapped = map_axis_through_reshape(in_shape, out_shape, layout.axis, len(layout))
        if mapped is None:
            if node.op == "Reshape" and propagate_channel_shuffle(node, ctx, layout):
                return
            if node.op == "Reshape" and split_into_heads(node, ctx, layout):
                return
            raise UnsupportedPattern(f"{describe(node)} splits the channel axis {in_shape} -> {out_shape}")
        out_axis, positions = mapped
        atoms = layout.atoms[positions]
        if node.op == "Reshape" and not follow_shape_entry(ctx, node, 1, out_axis, atoms, may_copy=True):
            raise UnsupportedPattern(f"{describe(node)} takes a run-time shape that fixes the channel count")
        ctx.set_layout(node.outputs[0], Layout(out_axis, atoms))


@register("Concat")
class Concat(OpHandler):
    def propagate(self, node: gs.Node, ctx: AnalysisContext) -> None:
        layouts = [ctx.layout(t) for t in node.inputs]
        if not any(layouts):
            return
        rank = ctx.rank(node.outputs[0]) or ctx.rank(node.inputs[0])
        axis = normalize_axis(int(node.attrs.get("axis", 0)), rank)
        channel_axes = {lay.axis for lay in layouts if lay is not None}
        if channel_axes != {axis}:
            # Joining along another axis: every input must carry the same channels.
            Broadcast_like(node, ctx)
            return
        pieces = []
        for tensor, layout in zip(node.inputs, layouts):
            if layout is not None:
                pieces.append(layout.atoms)
                continue
            shape = ctx.shape(tensor)
            size = shape[axis] if shape is not None else None
            if not isinstance(size, int):
                raise UnsupportedPattern(f"{describe(node)} joins an input of unknown size on the channel axis")
            reason = f"{describe(node)} joins channels of {ctx.untracked_source(tensor)}, which are not tracked"
            pieces.append(ctx.new_pinned_layout(axis, size, node.name, reason).atoms)
        ctx.set_layout(node.outputs[0], Layout(axis, np.concatenate(pieces)))


def Broadcast_like(node: gs.Node, ctx: AnalysisContext) -> None:
    """Inputs joined along a non-channel axis share their channels, like an elementwise op."""
    layouts = [ctx.layout(t) for t in node.inputs]
    reference = next(lay for lay in layouts if lay is not None)
    for layout in layouts:
        if layout is None or layout.axis != reference.axis or len(layout) != len(reference):
            raise UnsupportedPattern(f"{describe(node)} joins tensors whose channels do not line up")
        ctx.state.unite(reference.atoms, layout.atoms)
    ctx.set_layout(node.outputs[0], reference)


@register("Split")
class Split(OpHandler):
    def propagate(self, node: gs.Node, ctx: AnalysisContext) -> None:
        layout = ctx.layout(node.inputs[0])
        if layout is None:
            return
        rank = ctx.rank(node.inputs[0])
        axis = normalize_axis(int(node.attrs.get("axis", 0)), rank)
        if axis != layout.axis:
            for out in node.outputs:
                ctx.set_layout(out, layout)
            return
        sizes = _int_input_or_attr(node, ctx, 1, "split")
        if sizes is None:
            raise UnsupportedPattern(f"{describe(node)} splits channels by run-time sizes")
        if not sizes:
            count = len(node.outputs)
            if len(layout) % count:
                raise UnsupportedPattern(f"{describe(node)} splits {len(layout)} channels unevenly")
            sizes = [len(layout) // count] * count
        offset = 0
        for out, size in zip(node.outputs, sizes):
            atoms = layout.atoms[offset : offset + size]
            ctx.state.nonempty.append(atoms)
            ctx.set_layout(out, Layout(axis, atoms))
            offset += size

    def apply(self, node: gs.Node, ctx: SurgeryContext) -> None:
        in_layout = ctx.layout(node.inputs[0])
        if ctx.kept(node.inputs[0]) is None or in_layout is None:
            return
        if _tracked_layout(node, ctx, node.outputs[0]).axis != in_layout.axis:
            return
        sizes = np.array([_kept_count(node, ctx, out) for out in node.outputs], dtype=np.int64)
        node.attrs.pop("num_outputs", None)
        if ctx.opset >= 13:
            node.attrs.pop("split", None)
            constant = gs.Constant(f"{node.name}__split", sizes)
            if len(node.inputs) > 1 and node.inputs[1] is not None and node.inputs[1].name:
                node.inputs[1] = constant
            else:
                node.inputs[1:] = [constant]
        else:
            node.attrs["split"] = [int(s) for s in sizes]


@register("Slice")
class Slice(OpHandler):
    def propagate(self, node: gs.Node, ctx: AnalysisContext) -> None:
        layout = ctx.layout(node.inputs[0])
        if layout is None:
            return
        params = self._params(node, ctx)
        if params is None:
            raise UnsupportedPattern(f"{describe(node)} slices with run-time parameters")
        rank = ctx.rank(node.inputs[0])
        starts, ends, axes, steps = params
        axes = [normalize_axis(a, rank) for a in (axes or range(len(starts)))]
        if layout.axis not in axes:
            ctx.set_layout(node.outputs[0], layout)
            return
        k = axes.index(layout.axis)
        step = steps[k] if steps else 1
        if step != 1:
            raise UnsupportedPattern(f"{describe(node)} takes every {step}th channel")
        positions = np.arange(len(layout))[slice(*slice(starts[k], ends[k]).indices(len(layout)))]
        atoms = layout.atoms[positions]
        ctx.state.nonempty.append(atoms)
        ctx.set_layout(node.outputs[0], Layout(layout.axis, atoms))

    @staticmethod
    def _params(node: gs.Node, ctx: AnalysisContext | SurgeryContext) -> _SliceParams | None:
        if "starts" in node.attrs:  # opset < 10
            return (list(node.attrs["starts"]), list(node.attrs["ends"]), list(node.attrs.get("axes", [])), [])
        values: list[list[int]] = []
        for index in range(1, 5):
            if len(node.inputs) > index and node.inputs[index] is not None and node.inputs[index].name:
                const = ctx.const(node.inputs[index])
                if const is None:
                    return None
                values.append([int(v) for v in np.ravel(const)])
            else:
                values.append([])
        return values[0], values[1], values[2], values[3]

    def apply(self, node: gs.Node, ctx: SurgeryContext) -> None:
        layout = ctx.layout(node.inputs[0])
        kept_in = ctx.kept(node.inputs[0])
        if layout is None or kept_in is None or _tracked_layout(node, ctx, node.outputs[0]).axis != layout.axis:
            return
        params = self._params(node, ctx)
        if params is None:  # analysis declined run-time parameters, so nothing here was removed
            raise AnalysisBug(f"onnxprune bug: {describe(node)} has run-time parameters at surgery")
        starts, ends, given_axes, _ = params
        rank = ctx.rank(node.inputs[0])
        axes = [normalize_axis(a, rank) for a in (given_axes or range(len(starts)))]
        k = axes.index(layout.axis) if layout.axis in axes else None
        if k is None:
            return
        start = slice(starts[k], ends[k]).indices(len(layout))[0]
        count = _kept_count(node, ctx, node.outputs[0])
        new_start = int(np.count_nonzero(kept_in < start))
        starts[k], ends[k] = new_start, new_start + count
        if "starts" in node.attrs:
            node.attrs["starts"], node.attrs["ends"] = starts, ends
        else:
            ctx.replace_input(node, 1, np.array(starts, dtype=np.int64))
            ctx.replace_input(node, 2, np.array(ends, dtype=np.int64))


@register("Shape")
class Shape(OpHandler):
    """Reading dims other than the channel count is harmless; the count itself only where it lands
    in a Reshape that puts the same channels there (:mod:`graphops.ops.shape_values`)."""

    follows_units = True  # head_dim never changes; the head count is traced like a channel count

    def propagate(self, node: gs.Node, ctx: AnalysisContext) -> None:
        layout = ctx.layout(node.inputs[0])
        if layout is None:
            return
        rank = ctx.rank(node.inputs[0])
        start = normalize_axis(int(node.attrs.get("start", 0)), rank)
        end = normalize_axis(int(node.attrs["end"]), rank) if "end" in node.attrs else rank
        if end is None:
            raise UnsupportedPattern(f"{describe(node)} reads the shape of '{node.inputs[0].name}', of unknown rank")
        if not start <= layout.axis < end:
            return
        for reshape, positions in trace_shape_element(ctx, node, layout.axis - start):
            reason = (
                f"{describe(node)} reads the channel count of '{node.inputs[0].name}' into {describe(reshape)}, "
                "which does not reshape those channels there"
            )
            ctx.state.runtime_counts.append(RuntimeCount(reshape.name, positions, layout.atoms, reason))


REDUCE_OPS = (
    "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
    "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare", "ArgMax", "ArgMin",
)  # fmt: skip


@register(*REDUCE_OPS)
class Reduce(OpHandler):
    def propagate(self, node: gs.Node, ctx: AnalysisContext) -> None:
        layout = ctx.layout(node.inputs[0])
        if layout is None:
            return
        rank = ctx.rank(node.inputs[0])
        given_axes: list[int] | None
        if node.op in ("ArgMax", "ArgMin"):
            given_axes = [int(node.attrs.get("axis", 0))]
        else:
            given_axes = _int_input_or_attr(node, ctx, 1, "axes")
        if (
            given_axes is None
            or (not given_axes and not int(node.attrs.get("noop_with_empty_axes", 0)))
            or rank is None
        ):
            raise UnsupportedPattern(f"{describe(node)} reduces over all axes, the channels included")
        axes = {normalize_axis(a, rank) for a in given_axes}
        if layout.axis in axes:
            raise UnsupportedPattern(f"{describe(node)} reduces over the channel axis")
        keepdims = int(node.attrs.get("keepdims", 1))
        out_axis = layout.axis if keepdims else layout.axis - sum(a < layout.axis for a in axes)
        ctx.set_layout(node.outputs[0], layout.moved(out_axis))
