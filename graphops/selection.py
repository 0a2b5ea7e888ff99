"""From channel scores to a pruning plan, honouring every group's constraints.

``select_by_ratio`` removes the same fraction of every prunable group (Li et al.'s uniform
setting). ``select_by_flops`` ranks channels of all groups together after dividing each group's
scores by their mean (a layer-wise normalisation, as Molchanov et al. advise) and removes the
least important until MACs fall by the target. Both keep pinned channels, at least one channel per group and per Split output, equal
counts across a grouped conv's blocks, and (where asked) channel counts that are multiples of N.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable, Mapping

import numpy as np

from onnxprune.graphops.cost import measure_cost
from onnxprune.graphops.dependency import DependencyGraph
from onnxprune.graphops.errors import ModelRejected
from onnxprune.graphops.plan import GroupPlan, PruningPlan

Scores = Mapping[str, np.ndarray]


def check_exclude_patterns(patterns: Iterable[str], node_names: Iterable[str]) -> None:
    """A name or glob that matches no node is a typo, not a request: say so instead of pruning anyway."""
    names = list(node_names)
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(name, pattern) for name in names):
            raise ModelRejected(
                f"exclude pattern {pattern!r} matches no node of the model (node names: onnxprune analyze --json)"
            )


def excluded_group_ids(dep: DependencyGraph, patterns: Iterable[str]) -> set[str]:
    """Groups whose channels a user protected by naming (or globbing) one of their producers."""
    patterns = list(patterns)
    return {
        g.id
        for g in dep.groups
        if any(fnmatch.fnmatchcase(name, pattern) for name in g.producers for pattern in patterns)
    }


def normalised_scores(raw: np.ndarray) -> np.ndarray:
    """Scores divided by their group's mean magnitude, so that groups compare on one scale; a
    score that is not finite (a channel that must not go) becomes infinitely important."""
    raw = np.asarray(raw, dtype=np.float64)
    finite = raw[np.isfinite(raw)]
    scale = float(np.mean(np.abs(finite))) if finite.size else 0.0
    return np.where(np.isfinite(raw), raw / (scale or 1.0), np.inf)


def round_keep(keep: int, channels: int, round_to: int) -> int:
    """``keep`` rounded up to a multiple of ``round_to``, at least one step, at most ``channels``.

    At least one step, not one channel: a group cut below the step is padded back to it by blocked
    kernels (onnxruntime's NCHWc convolutions), so it saves no time while losing the channels. A group
    narrower than the step is off the grid whatever its count: its consumers read it unblocked, in time
    that scales with its channels, so it is cut in quarter steps (``narrow_step``)."""
    step = narrow_step(round_to) if channels < round_to else round_to
    return min(channels, max(step, math.ceil(keep / step) * step))


def narrow_step(round_to: int) -> int:
    """The step of groups narrower than ``round_to``: a quarter of it (4 for 16), at least 1."""
    return max(1, round_to // 4)


def choose_kept(dep: DependencyGraph, index: int, scores: np.ndarray, n_keep: int) -> list[int]:
    """The ``n_keep`` best channels of group ``index`` (or a few more where constraints demand)."""
    group = dep.groups[index]
    channels = group.channels
    order = np.argsort(scores, kind="stable")  # ascending: least important first
    removable = [int(c) for c in order if int(c) not in group.pinned]
    partitions = {tuple(tuple(block.tolist()) for block in blocks) for i, blocks in dep.balanced if i == index}
    if len(partitions) > 1:
        return list(range(channels))  # two different block structures: keep it whole
    removed: set[int] = set()
    if partitions:
        blocks = [set(block) for block in next(iter(partitions))]
        per_block = max(1, math.ceil(n_keep / len(blocks)))
        per_block = max([per_block] + [len(block & group.pinned) for block in blocks])
        for block in blocks:
            candidates = [c for c in removable if c in block]
            removed.update(candidates[: max(0, len(block) - per_block)])
    else:
        removed.update(removable[: max(0, channels - n_keep)])
    for i, classes in dep.nonempty:
        members = set(classes.tolist())
        if i == index and members <= removed:
            removed.discard(max(members, key=lambda c: scores[c]))
    return sorted(set(range(channels)) - removed)


def _plan(dep: DependencyGraph, keeps: dict[int, list[int]]) -> PruningPlan:
    entries = {}
    for index, keep in keeps.items():
        group = dep.groups[index]
        if len(keep) < group.channels:
            entries[group.id] = GroupPlan(group.id, group.channels, tuple(keep), group.producers)
    plan = PruningPlan(entries)
    plan.check(dep)
    return plan


def _candidates(dep: DependencyGraph, scores: Scores, exclude: Iterable[str]) -> list[int]:
    protected = excluded_group_ids(dep, exclude)
    return [i for i, g in enumerate(dep.groups) if g.prunable and g.id not in protected and g.id in scores]


def select_by_ratio(
    dep: DependencyGraph, scores: Scores, ratio: float, *, round_to: int = 1, exclude: Iterable[str] = ()
) -> PruningPlan:
    """Remove ``ratio`` of the removable (not pinned) channels of every prunable group."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio must be in [0, 1), got {ratio}")
    keeps = {}
    for index in _candidates(dep, scores, exclude):
        group = dep.groups[index]
        channels = group.channels
        n_keep = round_keep(channels - int(ratio * (channels - len(group.pinned))), channels, round_to)
        keeps[index] = choose_kept(dep, index, scores[dep.groups[index].id], n_keep)
    return _plan(dep, keeps)


class MacsModel:
    """MACs of a plan without running surgery: each Conv/Gemm's MACs scale with the kept fraction
    of its input channels times that of its output channels (depthwise convs: output only)."""

    def __init__(self, dep: DependencyGraph, node_macs: Mapping[str, int]) -> None:
        self._dep = dep
        self.total = int(sum(node_macs.values()))
        weights = {init.name: init for init in dep.model.graph.initializer}
        self._terms = []
        for node in dep.model.graph.node:
            macs = node_macs.get(node.name, 0)
            if not macs:
                continue
            layout_in = dep.layouts.get(node.input[0])
            layout_out = dep.layouts.get(node.output[0])
            depthwise = False
            if node.op_type in ("Conv", "ConvTranspose") and len(node.input) > 1 and node.input[1] in weights:
                groups = next((a.i for a in node.attribute if a.name == "group"), 1)
                shape = list(weights[node.input[1]].dims)
                depthwise = groups > 1 and (shape[1] == 1 if node.op_type == "Conv" else shape[0] == groups)
            atoms_in = None if layout_in is None or depthwise else layout_in.atoms
            atoms_out = None if layout_out is None else layout_out.atoms
            self._terms.append((macs, atoms_in, atoms_out))

    def macs(self, plan: PruningPlan) -> int:
        removed = plan.removed_class_mask(self._dep)
        total: float = self.total
        for macs, atoms_in, atoms_out in self._terms:
            fraction = 1.0
            for atoms in (atoms_in, atoms_out):
                if atoms is not None and len(atoms):
                    fraction *= 1.0 - removed[self._dep.atom_class[atoms]].mean()
            total -= macs * (1.0 - fraction)
        return int(round(total))


def select_by_flops(
    dep: DependencyGraph,
    scores: Scores,
    target: float,
    *,
    node_macs: Mapping[str, int] | None = None,
    round_to: int = 1,
    exclude: Iterable[str] = (),
) -> PruningPlan:
    """Remove the globally least important channels until MACs fall by ``target`` (a fraction).

    Scores are divided by their group's mean first, so groups compare on one scale. (Molchanov et
    al. divide by the group's L2 norm instead; that makes a score shrink with the square root of
    the group's width, so weight norms, which are alike within a layer, would empty the widest
    layers first.) If the target cannot be reached (everything left is pinned), the plan removes
    all it can.
    """
    if not 0.0 < target < 1.0:
        raise ValueError(f"flops target must be in (0, 1), got {target}")
    if node_macs is None:
        if dep.input_shapes is None:
            raise ModelRejected("a MACs target needs concrete input shapes; pass --input-shape")
        node_macs = {node.name: node.macs for node in measure_cost(dep.model, dep.input_shapes).nodes}
    model = MacsModel(dep, node_macs)
    candidates = _candidates(dep, scores, exclude)
    ranked: list[tuple[float, int, int]] = []
    for index in candidates:
        group = dep.groups[index]
        normalised = normalised_scores(scores[group.id])
        ranked.extend((float(normalised[c]), index, c) for c in range(group.channels) if c not in group.pinned)
    ranked.sort(key=lambda item: item[0])
    goal = model.total * (1.0 - target)

    def plan_for(k: int) -> PruningPlan:
        removed_per_group: dict[int, int] = {}
        for _, index, _ in ranked[:k]:
            removed_per_group[index] = removed_per_group.get(index, 0) + 1
        keeps = {}
        for index, count in removed_per_group.items():
            channels = dep.groups[index].channels
            n_keep = round_keep(channels - count, channels, round_to)
            keeps[index] = choose_kept(dep, index, scores[dep.groups[index].id], n_keep)
        return _plan(dep, keeps)

    low, high = 0, len(ranked)
    while low < high:  # smallest k whose plan reaches the goal
        middle = (low + high) // 2
        if model.macs(plan_for(middle)) <= goal:
            high = middle
        else:
            low = middle + 1
    return plan_for(low)


def select_by_group_ratios(
    dep: DependencyGraph,
    scores: Scores,
    ratios: Mapping[str, float],
    *,
    round_to: int = 1,
    exclude: Iterable[str] = (),
) -> PruningPlan:
    """Remove ``ratios[group_id]`` of the removable channels of each named group (Li et al.'s
    per-layer setting, e.g. from sensitivity curves); unnamed groups stay whole."""
    keeps = {}
    for index in _candidates(dep, scores, exclude):
        group = dep.groups[index]
        ratio = float(ratios.get(group.id, 0.0))
        if not 0.0 <= ratio < 1.0:
            raise ValueError(f"ratio of group '{group.id}' must be in [0, 1), got {ratio}")
        if ratio == 0.0:
            continue
        channels = group.channels
        n_keep = round_keep(channels - int(ratio * (channels - len(group.pinned))), channels, round_to)
        keeps[index] = choose_kept(dep, index, scores[group.id], n_keep)
    return _plan(dep, keeps)
