"""Fused attention ops: a head is head_dim channels of Q, K and V, removed together.

onnxruntime's transformer optimizer writes self-attention as one node (``graphops.ops.attention``
has the decomposed form)::

    x -> Attention(W [in, Q heads | K heads | V heads], b, mask; num_heads) -> [b, s, H * D] -> MatMul Wo
    q, k, v -> MultiHeadAttention(q, k, v, bias; num_heads) -> [b, s, H * D] -> MatMul Wo

``Attention`` projects x itself, so it produces the head channels (its packed weight's columns);
``MultiHeadAttention`` and ONNX's own ``Attention`` (opset 23) take Q, K and V projected by MatMuls
and unite their heads. Either way the output's channels are the heads' V channels, which the output
projection reads; surgery rewrites the head count. Removing a head equals zeroing its rows of the
output projection (the oracle): every other head attends exactly as before.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxprune.graphops.errors import AnalysisBug, UnsupportedPattern
from onnxprune.graphops.layout import Layout, Producer
from onnxprune.graphops.ops.base import (
    CONTRIB_DOMAIN,
    AnalysisContext,
    ConstantShape,
    OpHandler,
    SurgeryContext,
    attribute,
    describe,
    register,
)
from onnxprune.graphops.ops.linear import SGEMM_COLUMNS
from onnxprune.graphops.shapes import Shape


def _given(node: gs.Node, index: int) -> bool:
    return len(node.inputs) > index and node.inputs[index] is not None and bool(node.inputs[index].name)


def _used_output(node: gs.Node, ctx: AnalysisContext, index: int) -> bool:
    if len(node.outputs) <= index or not node.outputs[index].name:
        return False
    return bool(node.outputs[index].outputs) or ctx.is_graph_output(node.outputs[index])


def _decline_extras(
    node: gs.Node,
    ctx: AnalysisContext,
    allowed_attrs: set[str],
    extra_inputs: dict[int, str],
    extra_outputs: dict[int, str],
) -> None:
    """Attributes and optional inputs/outputs that tie the heads to something else (a KV cache, a
    per-head bias, uneven Q/K/V sizes) are declined, named in the reason."""
    unknown = sorted(set(node.attrs) - allowed_attrs)
    if unknown:
        raise UnsupportedPattern(
            f"{describe(node)} has attribute(s) {', '.join(unknown)}, whose heads are not followed"
        )
    for index, what in extra_inputs.items():
        if _given(node, index):
            raise UnsupportedPattern(f"{describe(node)} takes {what}, whose heads are not followed")
    for index, what in extra_outputs.items():
        if _used_output(node, ctx, index):
            raise UnsupportedPattern(f"{describe(node)} returns {what}, whose heads are not followed")


def _kept_heads(node: gs.Node, ctx: SurgeryContext, heads: int) -> int | None:
    """Heads (or key/value groups) kept at the output, whose channels come unit after unit; None when
    none is removed."""
    removed = ctx.removed_mask(node.outputs[0])
    if removed is None:
        return None
    if len(removed) % heads:
        raise AnalysisBug(f"onnxprune bug: {describe(node)} has {len(removed)} channels for {heads} heads")
    per_head = removed.reshape(heads, -1)
    if not (per_head == per_head[:, :1]).all():
        raise AnalysisBug(f"onnxprune bug: {describe(node)} would lose part of a head")
    return int(np.count_nonzero(~per_head[:, 0]))


def _rewrite_head_counts(node: gs.Node, ctx: SurgeryContext, heads_attr: str, kv_attr: str | None = None) -> None:
    """Set the head-count attributes to the kept units: a unit is a head, or under grouped-query
    attention a key/value head with its query heads (``kv_attr`` names the key/value count)."""
    heads = int(node.attrs[heads_attr])
    kv_heads = int(node.attrs[kv_attr]) if kv_attr else heads
    kept = _kept_heads(node, ctx, kv_heads)
    if kept is None:
        return
    node.attrs[heads_attr] = kept * (heads // kv_heads)
    if kv_attr:
        node.attrs[kv_attr] = kept


def _channel_layout(node: gs.Node, ctx: AnalysisContext, tensor: gs.Tensor, width: int) -> Layout | None:
    """The tensor's plain channel layout on its last axis, ``width`` wide, or None when untracked."""
    layout = ctx.layout(tensor)
    if layout is None:
        return None
    rank = ctx.rank(tensor)
    if layout.unit_axis is not None or rank is None or layout.axis != rank - 1 or len(layout) != width:
        raise UnsupportedPattern(f"{describe(node)} reads '{tensor.name}' with channels it cannot follow")
    return layout


def unite_projected_heads(node: gs.Node, ctx: AnalysisContext, heads: int, kv_heads: int) -> Layout:
    """Unite key/value head g of inputs 1 and 2 with the query heads that read it in input 0 (3-D
    [b, s, heads * D], projected by MatMuls): one unit per key/value head (a whole group under
    grouped-query attention). Returns the output's layout ([b, s, heads * D_v], query heads in
    order). Every operand must be tracked: an untracked one would keep its heads while the others
    lose theirs."""
    layouts = []
    for index in (0, 1, 2):
        tensor = node.inputs[index]
        shape = ctx.shape(tensor)
        width = shape[-1] if shape else None
        if not isinstance(width, int) or len(shape or ()) != 3 or width % kv_heads:
            raise UnsupportedPattern(
                f"{describe(node)} input '{tensor.name}' is not [batch, sequence, heads * head_dim]"
            )
        layout = _channel_layout(node, ctx, tensor, width)
        if layout is None:
            raise UnsupportedPattern(
                f"{describe(node)} reads {ctx.untracked_source(tensor)}, whose heads are not tracked"
            )
        layouts.append(layout)
    q_grid, k_grid, v_grid = (lay.atoms.reshape(kv_heads, -1) for lay in layouts)
    if heads % kv_heads or q_grid.shape[1] != k_grid.shape[1] * (heads // kv_heads):
        raise UnsupportedPattern(f"{describe(node)} has query and key heads of different sizes")
    representatives = q_grid[:, 0]
    for grid in (q_grid, k_grid, v_grid):
        ctx.state.unite(np.repeat(representatives, grid.shape[1]), grid.reshape(-1))
    ctx.state.units.append((representatives, q_grid.shape[1]))
    out_width = v_grid.shape[1] * heads  # each query head gives its group's D_v channels
    return Layout(layouts[2].axis, np.repeat(representatives, out_width // kv_heads))


@register(f"{CONTRIB_DOMAIN}.Attention")
class PackedAttention(OpHandler):
    """onnxruntime's ``Attention``: x projected by one packed weight [in, 3 * hidden] whose columns are
    [Q heads | K heads | V heads] (bias likewise), ``num_heads`` heads of hidden / num_heads."""

    role = "linear"
    column_step = SGEMM_COLUMNS  # the packed projection is one MLAS SGEMM
    _ALLOWED = {"num_heads", "mask_filter_value", "scale", "unidirectional"}
    _EXTRA_INPUTS = {4: "a past key/value cache", 5: "a per-head attention bias", 6: "a past sequence length"}

    def propagate(self, node: gs.Node, ctx: AnalysisContext) -> None:
        weight, heads = ctx.const_shape(node.inputs[1]), int(node.attrs.get("num_heads", 0))
        if weight is None or len(weight) != 2 or weight[1] % 3 or heads < 1 or (weight[1] // 3) % heads:
            raise UnsupportedPattern(f"{describe(node)} has no constant packed weight [in, 3 * heads * head_dim]")
        hidden = weight[1] // 3
        atoms = ctx.new_atoms(weight[1], node.name)
        grid = atoms.reshape(3, heads, hidden // heads)  # [Q | K | V] x heads x head_dim
        representatives = grid[0, :, 0]
        ctx.state.unite(np.tile(np.repeat(representatives, hidden // heads), 3), atoms)
        ctx.state.units.append((representatives, hidden // heads))
        for part in range(3):  # Q, K and V: three layers, as in the decomposed form
            columns = (part * hidden, (part + 1) * hidden)
            ctx.state.producers.append(
                Producer(node.name, node.inputs[1].name, 1, atoms[slice(*columns)], part=columns)
            )
        out_rank = ctx.rank(node.outputs[0]) or 3
        ctx.set_layout(node.outputs[0], Layout(out_rank - 1, grid[2].reshape(-1)))
        # Declined now, the heads above freeze with the reason (the analysis names them).
        _decline_extras(node, ctx, self._ALLOWED, self._EXTRA_INPUTS, {1: "the present key/value cache"})
        ctx.slice_const(node, 1, 1, atoms)
        if _given(node, 2):
            if ctx.const_shape(node.inputs[2]) != (weight[1],):
                raise UnsupportedPattern(f"{describe(node)} has a bias that is not a constant [3 * hidden]")
            ctx.slice_const(node, 2, 0, atoms)
        layout = ctx.layout(node.inputs[0])
        if layout is not None:
            rank = ctx.rank(node.inputs[0])
            if layout.unit_axis is None and rank is not None and layout.axis == rank - 1 and len(layout) == weight[0]:
                ctx.slice_const(node, 1, 0, layout.atoms, reduces=True)
            else:
                ctx.state.pin(layout.atoms, f"{describe(node)} reads channels it does not project")

    def apply(self, node: gs.Node, ctx: SurgeryContext) -> None:
        _rewrite_head_counts(node, ctx, "num_heads")

    def macs(self, node: onnx.NodeProto, shape: Callable[[str], tuple[int, ...]]) -> int:
        batch, sequence, features = shape(node.input[0])
        packed = shape(node.input[1])[1]
        return batch * sequence * features * packed + 2 * batch * sequence * sequence * (packed // 3)

    def parameter_inputs(self, node: onnx.NodeProto, constant_shape: ConstantShape) -> tuple[int, ...]:
        return (1, 2)  # the packed weight and bias

    def linear_form(self, node: onnx.NodeProto, constant_shape: ConstantShape) -> str:
        # Its output is attention over the projections, not the projections themselves.
        return "fused attention: its packed Q, K, V projection is not its output"

    def output_shapes(self, node: onnx.NodeProto, shape: Callable[[str], Shape | None]) -> list[Shape | None]:
        data, weight = shape(node.input[0]), shape(node.input[1])
        if data is None or weight is None or len(data) != 3 or not isinstance(weight[-1], int):
            return []
        return [(data[0], data[1], weight[-1] // 3)]


@register(f"{CONTRIB_DOMAIN}.MultiHeadAttention")
class MultiHeadAttention(OpHandler):
    """onnxruntime's ``MultiHeadAttention`` over separate 3-D Q, K, V inputs (bias [Q | K | V])."""

    _ALLOWED = {"num_heads", "mask_filter_value", "scale", "unidirectional"}
    _EXTRA_INPUTS = {5: "a per-head attention bias", 6: "a past key", 7: "a past value", 8: "a past sequence length"}

    def parameter_inputs(self, node: onnx.NodeProto, constant_shape: ConstantShape) -> tuple[int, ...]:
        return (3,)  # the bias [Q | K | V]

    def propagate(self, node: gs.Node, ctx: AnalysisContext) -> None:
        heads = int(node.attrs.get("num_heads", 0))
        if not (_given(node, 1) and _given(node, 2)) or heads < 1:
            raise UnsupportedPattern(f"{describe(node)} takes packed Q/K/V, whose heads are not followed")
        _decline_extras(node, ctx, self._ALLOWED, self._EXTRA_INPUTS, {1: "a present key", 2: "a present value"})
        out = unite_projected_heads(node, ctx, heads, heads)
        if _given(node, 3):
            # Q, K and V are tracked (``unite_projected_heads`` declines otherwise).
            atoms = np.concatenate([lay.atoms for lay in map(ctx.layout, node.inputs[:3]) if lay is not None])
            if ctx.const_shape(node.inputs[3]) != (len(atoms),):
                raise UnsupportedPattern(f"{describe(node)} has a bias that is not a constant [Q | K | V]")
            ctx.slice_const(node, 3, 0, atoms)
        ctx.set_layout(node.outputs[0], out)

    def apply(self, node: gs.Node, ctx: SurgeryContext) -> None:
        _rewrite_head_counts(node, ctx, "num_heads")

    def macs(self, node: onnx.NodeProto, shape: Callable[[str], tuple[int, ...]]) -> int:
        batch, sequence, hidden = shape(node.input[0])
        length, v_hidden = shape(node.input[2])[1], shape(node.input[2])[2]
        return batch * sequence * length * (hidden + v_hidden)

    def output_shapes(self, node: onnx.NodeProto, shape: Callable[[str], Shape | None]) -> list[Shape | None]:
        query = shape(node.input[0])
        value = shape(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if query is None or value is None or len(query) != 3 or len(value) != 3:
            return []
        return [(query[0], query[1], value[2])]


@register("Attention")
class OnnxAttention(OpHandler):
    """ONNX's ``Attention`` (opset 23). On 3-D Q, K, V ([b, s, heads * D], head counts as attributes)
    a unit is one key/value head with every query head that reads it (one head without grouped-query
    attention); on 4-D ones ([b, heads, s, D], split by Reshapes that ``graphops.ops.attention``
    follows) the heads of Q, K and V are united, and the head count lives in those Reshapes."""

    follows_units = True  # the 4-D form reads split heads
    _ALLOWED = {"q_num_heads", "kv_num_heads", "is_causal", "scale", "softcap", "softmax_precision"}
    _EXTRA_INPUTS = {4: "a past key", 5: "a past value", 6: "padded key/value lengths"}

    def propagate(self, node: gs.Node, ctx: AnalysisContext) -> None:
        heads, kv_heads = int(node.attrs.get("q_num_heads", 0)), int(node.attrs.get("kv_num_heads", 0))
        four_d = ctx.rank(node.inputs[0]) == 4
        if not four_d and (heads < 1 or kv_heads < 1):
            raise UnsupportedPattern(f"{describe(node)} has 3-D inputs without q_num_heads and kv_num_heads")
        _decline_extras(
            node,
            ctx,
            self._ALLOWED,
            self._EXTRA_INPUTS,
            {1: "a present key", 2: "a present value", 3: "the QK products"},
        )
        if _given(node, 3):
            mask = ctx.shape(node.inputs[3])
            if mask is None or (len(mask) == 4 and mask[1] != 1) or ctx.layout(node.inputs[3]) is not None:
                raise UnsupportedPattern(f"{describe(node)} has an attention mask per head")
        if four_d:
            ctx.set_layout(node.outputs[0], self._unite_split_heads(node, ctx))
        else:
            ctx.set_layout(node.outputs[0], unite_projected_heads(node, ctx, heads, kv_heads))

    @staticmethod
    def _unite_split_heads(node: gs.Node, ctx: AnalysisContext) -> Layout:
        layouts = [ctx.layout(node.inputs[index]) for index in range(3)]
        if any(lay is None or lay.axis != 1 or lay.unit_axis != 3 for lay in layouts):
            raise UnsupportedPattern(f"{describe(node)} reads Q, K, V whose heads are not all tracked on axis 1")
        q, k, v = (lay for lay in layouts if lay is not None)
        if not len(q) == len(k) == len(v):
            raise UnsupportedPattern(f"{describe(node)} has grouped key/value heads in 4-D inputs")
        ctx.state.unite(q.atoms, k.atoms)
        ctx.state.unite(q.atoms, v.atoms)
        return Layout(1, q.atoms, 3)

    def apply(self, node: gs.Node, ctx: SurgeryContext) -> None:
        if "q_num_heads" in node.attrs:  # 3-D inputs; 4-D ones take the count from their shapes
            _rewrite_head_counts(node, ctx, "q_num_heads", "kv_num_heads")

    def macs(self, node: onnx.NodeProto, shape: Callable[[str], tuple[int, ...]]) -> int:
        query, value = shape(node.input[0]), shape(node.input[2])
        if len(query) == 4:  # [batch, heads, sequence, head_dim]
            batch, heads, sequence, size = query
            return batch * heads * sequence * value[2] * (size + value[3])
        heads = max(attribute(node, "q_num_heads", 1), 1)
        kv_heads = max(attribute(node, "kv_num_heads", heads), 1)
        return query[0] * query[1] * value[1] * (query[2] + value[2] * heads // kv_heads)


@register(f"{CONTRIB_DOMAIN}.GroupQueryAttention")
class GroupQueryAttention(OpHandler):
    """onnxruntime's ``GroupQueryAttention``: ``num_heads`` query heads share ``kv_num_heads`` key/value
    heads, so a unit is one key/value head with the query heads that read it (a whole KV group)."""

    _ALLOWED = {"num_heads", "kv_num_heads", "scale", "softcap", "local_window_size", "smooth_softmax"}
    _EXTRA_INPUTS = {
        3: "a past key",
        4: "a past value",
        7: "rotary cos/sin caches",
        8: "rotary cos/sin caches",
        10: "a per-head attention bias",
        11: "per-head sinks",
    }

    def propagate(self, node: gs.Node, ctx: AnalysisContext) -> None:
        heads, kv_heads = int(node.attrs.get("num_heads", 0)), int(node.attrs.get("kv_num_heads", 0))
        if not (_given(node, 1) and _given(node, 2)) or heads < 1 or kv_heads < 1:
            raise UnsupportedPattern(f"{describe(node)} takes packed Q/K/V, whose heads are not followed")
        _decline_extras(
            node,
            ctx,
            self._ALLOWED,
            self._EXTRA_INPUTS,
            {1: "the present key", 2: "the present value", 3: "the QK products"},
        )
        ctx.set_layout(node.outputs[0], unite_projected_heads(node, ctx, heads, kv_heads))

    def apply(self, node: gs.Node, ctx: SurgeryContext) -> None:
        _rewrite_head_counts(node, ctx, "num_heads", "kv_num_heads")

    def macs(self, node: onnx.NodeProto, shape: Callable[[str], tuple[int, ...]]) -> int:
        heads, kv_heads = max(attribute(node, "num_heads", 1), 1), max(attribute(node, "kv_num_heads", 1), 1)
        batch, sequence, width = shape(node.input[0])
        if len(node.input) > 2 and node.input[2]:
            length, v_width = shape(node.input[2])[1], shape(node.input[2])[2]
        else:  # packed [Q | K | V] in the query input
            size = width // (heads + 2 * kv_heads)
            width, length, v_width = heads * size, sequence, kv_heads * size
        return batch * sequence * length * (width + v_width * heads // kv_heads)

    def output_shapes(self, node: onnx.NodeProto, shape: Callable[[str], Shape | None]) -> list[Shape | None]:
        query = shape(node.input[0])
        heads, kv_heads = attribute(node, "num_heads", 0), attribute(node, "kv_num_heads", 0)
        if query is None or len(query) != 3 or not isinstance(query[2], int) or heads < 1:
            return []
        packed = not (len(node.input) > 1 and node.input[1])
        width = query[2] // (heads + 2 * kv_heads) * heads if packed else query[2]
        return [(query[0], query[1], width)]
