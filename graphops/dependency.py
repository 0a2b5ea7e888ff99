"""Channel dependency analysis: which channels of which tensors must be removed together.

Walks the graph once in topological order; each op's handler (``graphops.ops``) says how channels
flow through it. The result is a list of :class:`ChannelGroup` (the unit that is scored and
pruned) and, for every tracked tensor, which channel sits at each position (used by surgery).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxprune.graphops.errors import AnalysisBug, ModelRejected, UnsupportedPattern
from onnxprune.graphops.kinds import GroupKind
from onnxprune.graphops.layout import ConstSlice, Layout, Producer, ShapeEntry, TrackerState
from onnxprune.graphops.ops import AnalysisContext, handler_for
from onnxprune.graphops.ops.base import describe, knows
from onnxprune.graphops.shape_completion import complete_shapes
from onnxprune.graphops.shapes import Shape, resolve_input_shapes, skeleton, with_input_shapes

# Set (to anything but "" or "0") by the test suite: a handler bug re-raises the handler's own
# exception, traceback and all, instead of the one-line AnalysisBug jobs report.
STRICT_ENV = "ONNXPRUNE_STRICT_ANALYSIS"
_MAX_REASONS = 5


@dataclass(frozen=True)
class ChannelGroup:
    """Channels that are removed together, wherever they appear.

    ``pinned`` lists class indices that must stay (they reach an op we do not understand, a graph
    output, ...). A group is prunable when conv filters or linear layers (MLP neurons, attention
    heads) produce it and some channel is free. Each class is ``unit`` channels wide where a
    producer writes it (an attention head: head_dim columns of Q, K and V); ``channels`` counts
    classes, and ``kind`` says what one is (None: no filter or linear layer produces them).

    A job sets the rest (``dataclasses.replace``): ``max_removed``, at most this many classes may go
    (a per-kind limit of the options, ``graphops.kinds``; None: no limit), ``limited_by`` naming it;
    ``round_to``, the channel step of the group's kernel that 'auto' rounding keeps its counts on
    (``graphops.kernel_steps``; None: the job's step).
    """

    id: str
    channels: int
    producers: tuple[str, ...]
    nodes: tuple[str, ...]
    pinned: frozenset[int]
    reasons: tuple[str, ...]
    filter_producers: tuple[str, ...]
    linear_producers: tuple[str, ...] = ()
    unit: int = 1
    kind: GroupKind | None = None
    max_removed: int | None = None
    limited_by: str = ""
    round_to: int | None = None

    @property
    def min_keep(self) -> int:
        """The fewest classes a plan may keep: one, or what the kind limit leaves."""
        return max(1, self.channels - self.max_removed) if self.max_removed is not None else 1

    @property
    def prunable(self) -> bool:
        produced = bool(self.filter_producers or self.linear_producers)
        return produced and self.channels > 1 and len(self.pinned) < self.channels

    @property
    def frozen(self) -> bool:
        return not self.prunable

    @property
    def frozen_reason(self) -> str:
        if self.reasons and len(self.pinned) >= self.channels:
            return "; ".join(self.reasons)
        if not self.filter_producers and not self.linear_producers:
            return "; ".join(self.reasons) or "channels not produced by any filter or linear layer"
        if self.channels <= 1:
            return "a single channel cannot be removed"
        return "; ".join(self.reasons)


@dataclass
class DependencyGraph:
    """The analysed model; ``model`` is the prepared model that plans and surgery refer to."""

    model: onnx.ModelProto
    input_shapes: dict[str, list[int]] | None
    shapes: dict[str, Shape]
    opset: int
    groups: list[ChannelGroup]
    layouts: dict[str, Layout]
    producers: list[Producer]
    slices: list[ConstSlice]
    reductions: list[ConstSlice]
    shape_entries: list[ShapeEntry]
    atom_class: np.ndarray  # atom -> global class index
    class_group: np.ndarray  # global class index -> group index
    group_offset: np.ndarray  # group index -> first global class index
    balanced: list[tuple[int, list[np.ndarray]]] = field(default_factory=list)
    nonempty: list[tuple[int, np.ndarray]] = field(default_factory=list)

    @property
    def prunable(self) -> list[ChannelGroup]:
        return [g for g in self.groups if g.prunable]

    @property
    def frozen(self) -> list[ChannelGroup]:
        return [g for g in self.groups if g.frozen]

    def group(self, group_id: str) -> ChannelGroup:
        for candidate in self.groups:
            if candidate.id == group_id:
                return candidate
        raise KeyError(group_id)

    def group_index(self, group_id: str) -> int:
        return next(i for i, g in enumerate(self.groups) if g.id == group_id)

    def classes_of(self, atoms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(group index, class index within the group) of each atom."""
        global_class = self.atom_class[atoms]
        group = self.class_group[global_class]
        return group, global_class - self.group_offset[group]


def _opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return 1


def _infer(
    model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]] | None
) -> tuple[dict[str, list[int]] | None, dict[str, Shape]]:
    try:
        resolved = resolve_input_shapes(model, input_shapes)
    except ModelRejected:
        if input_shapes:
            raise
        resolved = None
    target = with_input_shapes(model, resolved) if resolved else skeleton(model)
    try:
        return resolved, complete_shapes(target)
    except Exception as exc:  # onnx raises InferenceError and plain RuntimeErrors
        raise ModelRejected(f"shape inference failed: {str(exc).splitlines()[0]}") from exc


def strict_by_default() -> bool:
    return os.environ.get(STRICT_ENV, "") not in ("", "0")


def analyze(
    model: onnx.ModelProto,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    *,
    strict: bool | None = None,
) -> DependencyGraph:
    """Channel groups of a prepared model (see :func:`graphops.prepare.prepare_model`).

    A handler declines a pattern by raising :class:`UnsupportedPattern`: the channels the node
    touches freeze with that reason. Any other exception is a bug and is never turned into a frozen
    group: ``strict`` (the tests) re-raises it as it is; otherwise (jobs) it becomes an
    :class:`AnalysisBug` naming the node, an internal error.
    """
    strict = strict_by_default() if strict is None else strict
    resolved, shapes = _infer(model, input_shapes)
    opset = _opset(model)
    graph = gs.import_onnx(model)
    graph.toposort()
    state = TrackerState()
    ctx = AnalysisContext(state, shapes, opset, frozenset(t.name for t in graph.outputs))
    for node in graph.nodes:
        if not knows(node.op, node.domain) and node.domain not in (None, "", "ai.onnx"):
            ctx.pin_inputs(node, f"consumed by {describe(node)} from custom domain '{node.domain}'")
            continue
        handler = handler_for(node.op, node.domain)
        if not handler.follows_units and any(lay.unit_axis is not None for lay in ctx.input_layouts(node)):
            _freeze_node(node, ctx, f"{describe(node)} reads attention heads, which it cannot follow")
            continue
        try:
            handler.propagate(node, ctx)
        except UnsupportedPattern as declined:
            _freeze_node(node, ctx, str(declined))
        except Exception as exc:
            if strict:
                raise
            raise AnalysisBug(
                f"onnxprune bug: the {node.op} handler failed on {describe(node)} ({type(exc).__name__}: {exc})"
            ) from exc
    for count in state.runtime_counts:
        if count.positions - count.followed:
            state.pin(count.atoms, count.reason)
    for out in graph.outputs:
        layout = state.layouts.get(out.name)
        if layout is not None:
            state.pin(layout.atoms, f"reaches graph output '{out.name}'")
    return _collect(model, resolved, shapes, opset, graph, state)


def _freeze_node(node: gs.Node, ctx: AnalysisContext, reason: str) -> None:
    """Pin what a declining handler touched: its inputs' channels, and any output layout it had set."""
    ctx.pin_inputs(node, reason)
    for out in node.outputs:
        layout = ctx.layout(out)
        if layout is not None:
            ctx.state.pin(layout.atoms, reason)


def _collect(
    model: onnx.ModelProto,
    resolved: dict[str, list[int]] | None,
    shapes: dict[str, Shape],
    opset: int,
    graph: gs.Graph,
    state: TrackerState,
) -> DependencyGraph:
    atom_count = len(state.atoms)
    atom_root = state.atoms.roots()
    space_root = np.array([state.spaces.find(s) for s in state.atom_space], dtype=np.int64)
    # Groups are numbered in order of their first atom, classes within a group likewise: both follow
    # the topological order, so ids and class indices are stable for the same model.
    group_of_space: dict[int, int] = {}
    class_of_root: dict[int, int] = {}
    group_classes: list[list[int]] = []
    atom_class_local = np.zeros(atom_count, dtype=np.int64)
    atom_group = np.zeros(atom_count, dtype=np.int64)
    for atom in range(atom_count):
        group = group_of_space.setdefault(int(space_root[atom]), len(group_of_space))
        if group == len(group_classes):
            group_classes.append([])
        root = int(atom_root[atom])
        if root not in class_of_root:
            class_of_root[root] = len(group_classes[group])
            group_classes[group].append(root)
        atom_group[atom] = group
        atom_class_local[atom] = class_of_root[root]
    sizes = np.array([len(c) for c in group_classes], dtype=np.int64)
    group_offset = (
        np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64) if len(sizes) else np.zeros(0, np.int64)
    )
    atom_class = group_offset[atom_group] + atom_class_local if atom_count else np.zeros(0, np.int64)
    class_group = np.repeat(np.arange(len(sizes)), sizes)

    pinned: list[set[int]] = [set() for _ in sizes]
    reasons: list[list[str]] = [[] for _ in sizes]
    for pin in state.pins:
        for group in np.unique(atom_group[pin.atoms]).tolist():
            members = pin.atoms[atom_group[pin.atoms] == group]
            pinned[group].update(atom_class_local[members].tolist())
            if pin.reason not in reasons[group] and len(reasons[group]) < _MAX_REASONS:
                reasons[group].append(pin.reason)

    balanced = _balanced_blocks(state, atom_group, atom_class_local, pinned, reasons)
    nonempty = []
    for atoms in state.nonempty:
        for group in np.unique(atom_group[atoms]).tolist():
            nonempty.append((group, np.unique(atom_class_local[atoms[atom_group[atoms] == group]])))

    producers_of: list[list[str]] = [[] for _ in sizes]
    by_role: dict[str, list[list[str]]] = {"filter": [[] for _ in sizes], "linear": [[] for _ in sizes]}
    op_type = {node.name: (node.op, node.domain) for node in graph.nodes}
    for producer in state.producers:
        role = handler_for(*op_type.get(producer.node, ("", ""))).role
        for group in np.unique(atom_group[producer.atoms]).tolist():
            if producer.node not in producers_of[group]:
                producers_of[group].append(producer.node)
                if role in by_role:
                    by_role[role][group].append(producer.node)
    unit_of = np.ones(len(sizes), dtype=np.int64)
    headed = np.zeros(len(sizes), dtype=bool)
    for representatives, width in state.units:
        unit_of[np.unique(atom_group[representatives])] = width
        headed[np.unique(atom_group[representatives])] = True
    nodes_of: list[set[str]] = [set() for _ in sizes]
    order: dict[str, int] = {}
    for index, node in enumerate(graph.nodes):
        order[node.name] = index
        for tensor in list(node.inputs) + list(node.outputs):
            layout = state.layouts.get(tensor.name) if tensor is not None else None
            if layout is not None:
                for group in np.unique(atom_group[layout.atoms]).tolist():
                    nodes_of[group].add(node.name)

    first_atom = np.zeros(len(sizes), dtype=np.int64)
    first_atom[atom_group[::-1]] = np.arange(atom_count)[::-1]
    groups = []
    used_ids: set[str] = set()
    for g in range(len(sizes)):
        origin = state.space_origin[state.atom_space[int(first_atom[g])]]
        base = producers_of[g][0] if producers_of[g] else f"{origin}:untracked"
        group_id, suffix = base, 1
        while group_id in used_ids:
            suffix += 1
            group_id = f"{base}#{suffix}"
        used_ids.add(group_id)
        groups.append(
            ChannelGroup(
                id=group_id,
                channels=int(sizes[g]),
                producers=tuple(producers_of[g]),
                nodes=tuple(sorted(nodes_of[g], key=lambda n: order.get(n, 0))),
                pinned=frozenset(pinned[g]),
                reasons=tuple(reasons[g]),
                filter_producers=tuple(by_role["filter"][g]),
                linear_producers=tuple(by_role["linear"][g]),
                unit=int(unit_of[g]),
                kind=_kind(bool(headed[g]), by_role["filter"][g], by_role["linear"][g]),
            )
        )
    return DependencyGraph(
        model=model,
        input_shapes=resolved,
        shapes=shapes,
        opset=opset,
        groups=groups,
        layouts=state.layouts,
        producers=state.producers,
        slices=state.slices,
        reductions=state.reductions,
        shape_entries=state.shape_entries,
        atom_class=atom_class,
        class_group=class_group,
        group_offset=group_offset,
        balanced=balanced,
        nonempty=nonempty,
    )


def _kind(headed: bool, filters: list[str], linears: list[str]) -> GroupKind | None:
    """Heads first (a conv can write them: YOLO11's C2PSA), then filters, then fully connected neurons."""
    if headed:
        return "head"
    if filters:
        return "filter"
    return "neuron" if linears else None


def _balanced_blocks(
    state: TrackerState,
    atom_group: np.ndarray,
    atom_class_local: np.ndarray,
    pinned: list[set[int]],
    reasons: list[list[str]],
) -> list[tuple[int, list[np.ndarray]]]:
    """Grouped-conv blocks as class indices; blocks that do not map cleanly pin their channels.

    Three cases keep equal counts per block: every class spread evenly over the blocks (a channel
    shuffle ties one channel of each block together: any plan stays balanced, nothing to record),
    or each class inside one block, every class the same number of times (the plan keeps equal
    class counts per block). Anything else pins the channels.
    """
    balanced: list[tuple[int, list[np.ndarray]]] = []
    for blocks in state.balanced_blocks:
        members = np.concatenate(blocks)
        groups = np.unique(atom_group[members])
        if len(groups) == 1:
            classes = [atom_class_local[b] for b in blocks]
            known = np.unique(np.concatenate(classes))
            counts = np.stack([np.bincount(np.searchsorted(known, c), minlength=len(known)) for c in classes])
            if (counts == counts[0]).all():
                continue
            present = counts > 0
            if (present.sum(axis=0) == 1).all() and len(np.unique(counts[present])) == 1:
                balanced.append((int(groups[0]), [known[present[k]] for k in range(len(blocks))]))
                continue
        for group in groups.tolist():
            pinned[group].update(atom_class_local[members[atom_group[members] == group]].tolist())
            reasons[group].append("a grouped conv reads these channels in blocks that do not line up")
    return balanced
