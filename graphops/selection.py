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
from onnxprune.graphops.dependency import ChannelGroup, DependencyGraph
from onnxprune.graphops.errors import ModelRejected
from onnxprune.graphops.ops import handler_for
from onnxprune.graphops.ops.base import constant_shapes
from onnxprune.graphops.plan import GroupPlan, PruningPlan

Scores = Mapping[str, np.ndarray]
# A MACs target met on the grid may remove this much more of the original's MACs than asked.
SNAP_SLACK = 0.02


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


def grid_counts(channels: int, round_to: int) -> list[int]:
    """The channel counts a group may keep with step ``round_to``, descending from the whole group.

    Multiples of the step (onnxruntime's NCHWc convolutions run them blocked), and below half a step,
    multiples of a quarter step (``narrow_step``): a conv whose input has fewer channels than the
    block reads it unblocked, in time that scales with the channels, so 8 or 4 of 16 save time while
    12 does not (measured on ResNet-20's 16-wide layers: 16 -> 12 ran no faster, 16 -> 8 at 0.8x of
    the model's time). Never below one quarter step: the producer's outputs are padded to the block,
    so a single channel saves nothing on that side while losing what the channels carried."""
    if round_to <= 1:
        return list(range(channels, 0, -1))
    quarter = narrow_step(round_to)
    wide = range(round_to, channels, round_to)
    narrow = range(quarter, min(channels, round_to // 2 + 1), quarter)
    return sorted({channels, *wide, *narrow}, reverse=True)


def unit_step(round_to: int, unit: int) -> int:
    """The step in units that keeps ``unit`` * count channels a multiple of ``round_to`` (an
    attention head of 32 channels needs no rounding for a step of 8 or 16)."""
    return max(1, round_to // math.gcd(round_to, max(unit, 1)))


def group_step(group: ChannelGroup, round_to: int) -> int:
    """The step in units of ``group``'s counts: its kernel's (``ChannelGroup.round_to``) or the job's."""
    return unit_step(group.round_to or round_to, group.unit)


def round_keep(keep: int, channels: int, round_to: int) -> int:
    """``keep`` rounded up to the nearest count on the group's grid (:func:`grid_counts`)."""
    return min((c for c in grid_counts(channels, round_to) if c >= keep), default=channels)


def narrow_step(round_to: int) -> int:
    """The step of counts below half of ``round_to``: a quarter of it (4 for 16), at least 1."""
    return max(1, round_to // 4)


def choose_kept(
    dep: DependencyGraph, index: int, scores: np.ndarray, n_keep: int, *, round_to: int | None = None
) -> list[int]:
    """The ``n_keep`` best channels of group ``index`` (or a few more where constraints demand).

    With the job's ``round_to`` (the group's step: :func:`group_step`) and ``n_keep`` on that step, each section of the group that a Split or Slice output reads
    (:func:`split_sections`) keeps a multiple of ``step`` too: the convs that read a section run on its
    count, and off the step they lose the blocked kernel (the YOLOv8n's C2f splits at -30% MACs kept 53
    of 128 channels on one side: a 3x3 conv reading 46 channels took 0.59 ms where 48 took 0.49 ms, in
    float and int8 alike; benchmarks/results/qdq_detector.md)."""
    group = dep.groups[index]
    step = 1 if round_to is None else group_step(group, round_to)
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
    elif (on_step := _kept_on_sections(dep, index, scores, removable[: max(0, channels - n_keep)], step)) is not None:
        return on_step
    else:
        removed.update(removable[: max(0, channels - n_keep)])
    for i, classes in dep.nonempty:
        members = set(classes.tolist())
        if i == index and members <= removed:
            removed.discard(max(members, key=lambda c: scores[c]))
    return sorted(set(range(channels)) - removed)


def split_sections(dep: DependencyGraph, index: int) -> list[list[int]]:
    """Group ``index``'s classes cut into the parts that Split or Slice outputs read (classes that every
    such output reads alike share a part); [] when no output reads a part of the group."""
    channels = dep.groups[index].channels
    parts = [set(c.tolist()) for i, c in dep.nonempty if i == index and len(c) < channels]
    if not parts:
        return []
    sections: dict[tuple[bool, ...], list[int]] = {}
    for c in range(channels):
        sections.setdefault(tuple(c in part for part in parts), []).append(c)
    return list(sections.values())


def _kept_on_sections(
    dep: DependencyGraph, index: int, scores: np.ndarray, removed: list[int], step: int
) -> list[int] | None:
    """The group's best channels with every section's count a multiple of ``step``, as many as ``removed``
    leaves: each section keeps at least one step, and the counts nearest to how the channels ``removed``
    leaves fall. None when no such split exists: no sections, the count or a section off the step, fewer
    steps than sections, more pinned channels in a section than its count."""
    group = dep.groups[index]
    sections = split_sections(dep, index)
    n_keep = group.channels - len(removed)
    if step <= 1 or not sections or not removed or n_keep % step:
        return None
    if any(len(section) % step for section in sections) or n_keep // step < len(sections):
        return None
    gone = set(removed)
    wanted = [sum(c not in gone for c in section) / step for section in sections]
    steps = [max(1, math.floor(w)) for w in wanted]
    while sum(steps) > n_keep // step:  # take a step from the section kept furthest beyond its share
        i = min((i for i, n in enumerate(steps) if n > 1), key=lambda i: wanted[i] - steps[i])
        steps[i] -= 1
    while sum(steps) < n_keep // step:  # give a step to the section kept furthest short of its share
        i = max((i for i, n in enumerate(steps) if n * step < len(sections[i])), key=lambda i: wanted[i] - steps[i])
        steps[i] += 1
    kept: list[int] = []
    for section, n in zip(sections, steps):
        pinned = [c for c in section if c in group.pinned]
        if len(pinned) > n * step:
            return None
        free = sorted((c for c in section if c not in group.pinned), key=lambda c: -float(scores[c]))
        kept.extend(pinned + free[: n * step - len(pinned)])
    return sorted(kept)


def _plan(dep: DependencyGraph, keeps: dict[int, list[int]]) -> PruningPlan:
    entries = {}
    for index, keep in keeps.items():
        group = dep.groups[index]
        if len(keep) < group.channels:
            entries[group.id] = GroupPlan(group.id, group.channels, tuple(keep), group.producers)
    plan = PruningPlan(entries)
    plan.check(dep)
    return plan


class CountPlans:
    """Plans from channel counts per group, each group's kept channels chosen once per count
    (``choose_kept``): the MACs searches below try many counts of the same groups."""

    def __init__(self, dep: DependencyGraph, scores: Scores, *, round_to: int = 1) -> None:
        self.dep, self._scores, self._round_to = dep, scores, round_to
        self._kept: dict[tuple[int, int], list[int]] = {}

    def plan(self, counts: Mapping[int, int], *, check: bool = True) -> PruningPlan:
        """``check``: validate against the graph's constraints (the plan returned; not every trial)."""
        if not check:
            entries = {}
            for index, count in counts.items():
                group, keep = self.dep.groups[index], self._keep(index, count)
                if len(keep) < group.channels:
                    entries[group.id] = GroupPlan(group.id, group.channels, tuple(keep), group.producers)
            return PruningPlan(entries)
        return _plan(self.dep, {index: self._keep(index, count) for index, count in counts.items()})

    def _keep(self, index: int, count: int) -> list[int]:
        if (index, count) not in self._kept:
            group = self.dep.groups[index]
            self._kept[index, count] = choose_kept(
                self.dep, index, self._scores[group.id], count, round_to=self._round_to
            )
        return self._kept[index, count]


def _candidates(dep: DependencyGraph, scores: Scores, exclude: Iterable[str]) -> list[int]:
    """Groups a selection may cut: prunable, not protected by name, not left whole by a kind limit."""
    protected = excluded_group_ids(dep, exclude)
    return [
        i
        for i, g in enumerate(dep.groups)
        if g.prunable and g.id not in protected and g.id in scores and g.max_removed != 0
    ]


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
        step = group_step(group, round_to)
        n_keep = round_keep(max(channels - int(ratio * (channels - len(group.pinned))), group.min_keep), channels, step)
        keeps[index] = choose_kept(dep, index, scores[dep.groups[index].id], n_keep, round_to=round_to)
    return _plan(dep, keeps)


class MacsModel:
    """MACs of a plan without running surgery: each Conv/Gemm's MACs scale with the kept fraction
    of its input channels times that of its output channels (ops whose handler says they compute each
    channel apart, ``channels_apart``: depthwise convs and MatMuls of two activations, output only)."""

    def __init__(self, dep: DependencyGraph, node_macs: Mapping[str, int]) -> None:
        self._dep = dep
        self.total = int(sum(node_macs.values()))
        constant_shape = constant_shapes(dep.model)
        self._terms = []
        for node in dep.model.graph.node:
            macs = node_macs.get(node.name, 0)
            if not macs:
                continue
            layout_in = dep.layouts.get(node.input[0])
            layout_out = dep.layouts.get(node.output[0])
            apart = handler_for(node.op_type, node.domain).channels_apart(node, constant_shape)
            atoms_in = None if layout_in is None or apart else layout_in.atoms
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
    all it can. With ``round_to`` > 1 the exact cut is then snapped onto the grid (:func:`snap_to_grid`).
    """
    if not 0.0 < target < 1.0:
        raise ValueError(f"flops target must be in (0, 1), got {target}")
    if node_macs is None:
        if dep.input_shapes is None:
            raise ModelRejected("a MACs target needs concrete input shapes; pass --input-shape")
        node_macs = {node.name: node.macs for node in measure_cost(dep.model, dep.input_shapes).nodes}
    model = MacsModel(dep, node_macs)
    goal = model.total * (1.0 - target)
    candidates = _candidates(dep, scores, exclude)
    ranked: list[tuple[float, int, int]] = []
    for index in candidates:
        group = dep.groups[index]
        normalised = normalised_scores(scores[group.id])
        removable = sorted((float(normalised[c]), index, c) for c in range(group.channels) if c not in group.pinned)
        # Under a kind limit, only the group's least important units it may remove compete.
        ranked.extend(removable if group.max_removed is None else removable[: group.max_removed])
    ranked.sort(key=lambda item: item[0])

    def counts_for(k: int) -> dict[int, int]:
        removed_per_group: dict[int, int] = {}
        for _, index, _ in ranked[:k]:
            removed_per_group[index] = removed_per_group.get(index, 0) + 1
        return {index: max(1, dep.groups[index].channels - count) for index, count in removed_per_group.items()}

    plans = CountPlans(dep, scores, round_to=round_to)
    low, high = 0, len(ranked)
    while low < high:  # smallest k whose exact cut reaches the goal
        middle = (low + high) // 2
        if model.macs(plans.plan(counts_for(middle), check=False)) <= goal:
            high = middle
        else:
            low = middle + 1
    exact = counts_for(low)
    return plans.plan(exact if round_to <= 1 else snap_to_grid(plans, exact, candidates, model, goal, round_to))


def snap_to_grid(
    plans: CountPlans,
    exact: Mapping[int, int],
    candidates: Iterable[int],
    model: MacsModel,
    goal: float,
    round_to: int,
) -> dict[int, int]:
    """The exact cut's counts moved onto the grid (:func:`grid_counts`), as close to them as the goal allows.

    Each group takes the grid count nearest its exact count (by ratio). While MACs are above the goal,
    the group whose next count down strays least further from its exact count moves down; while they
    are below it by more than ``SNAP_SLACK``, groups move back up by the same rule while the goal holds.
    The exact cut's allocation across layers, which keeps accuracy, survives; only its counts change.

    Rounding every group up and deepening the cut until the goal held instead piled the cut onto the
    layers whose counts sat near a step (ResNet-20 at -50% MACs, step 16: 64-wide layers down to 16,
    10 points of accuracy after recovery); pricing the stray per MAC saved emptied the layers with the
    most MACs per channel (ResNet-20's first stage to 4-8 channels, the last stage whole).
    """
    dep = plans.dep
    grids = {i: _grid_above_floor(dep.groups[i], round_to) for i in candidates}
    target = {i: exact.get(i, dep.groups[i].channels) for i in grids}

    def stray(index: int, count: int) -> float:
        return abs(math.log(count / target[index]))

    def macs_of(counts: Mapping[int, int]) -> int:
        return model.macs(plans.plan(counts, check=False))

    def best_move(counts: dict[int, int], macs: int, down: bool) -> tuple[int, int, int] | None:
        """(group, count, MACs) of the move down (or up) that strays least, among those that change MACs."""
        best: tuple[float, int, int, int] | None = None
        for index, grid in grids.items():
            nearer = [c for c in grid if (c < counts[index] if down else c > counts[index])]
            if not nearer:
                continue
            count = nearer[0] if down else nearer[-1]
            trial_macs = macs_of({**counts, index: count})
            change = macs - trial_macs if down else trial_macs - macs
            if change <= 0 or (not down and trial_macs > goal):
                continue
            price = stray(index, count) - stray(index, counts[index])
            if best is None or price < best[0]:
                best = (price, index, count, trial_macs)
        return None if best is None else best[1:]

    def nearest(index: int) -> int:
        return min(grids[index], key=lambda count: (stray(index, count), -count))

    counts = {index: nearest(index) for index in grids}
    macs = macs_of(counts)
    while macs > goal and (move := best_move(counts, macs, down=True)) is not None:
        index, counts[index], macs = move
    while macs < goal - SNAP_SLACK * model.total and (move := best_move(counts, macs, down=False)) is not None:
        index, counts[index], macs = move
    return {i: n for i, n in counts.items() if n < dep.groups[i].channels}


def _grid_above_floor(group: ChannelGroup, round_to: int) -> list[int]:
    """The group's grid counts (:func:`grid_counts`) that keep at least what its kind limit leaves."""
    return [c for c in grid_counts(group.channels, group_step(group, round_to)) if c >= group.min_keep]


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
        step = group_step(group, round_to)
        n_keep = round_keep(max(channels - int(ratio * (channels - len(group.pinned))), group.min_keep), channels, step)
        keeps[index] = choose_kept(dep, index, scores[group.id], n_keep, round_to=round_to)
    return _plan(dep, keeps)
