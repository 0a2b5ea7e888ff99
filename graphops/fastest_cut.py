"""Among cuts that reach a MACs target, the one a latency model predicts fastest.

``select_by_flops`` removes the least important channels until MACs fall by the target: it counts
MACs, not time, and the same MACs removed in different layers save different time (a memory-bound
depthwise layer saves more per MAC, a layer whose time is mostly data movement less). Given a latency
table (``graphops.latency_table``), a MACs target is met by several candidate cuts:

- ``importance``: ``select_by_flops`` with counts on the step, the cut made without a table;
- ``knapsack w`` for each ``w`` in ``WEIGHTS``: a greedy knapsack over each group's counts on the step
  grid that takes, turn by turn, the move with the least importance removed per unit of value, a
  move's value being its share of the MACs goal plus w times its share of the time that goal would
  save if time followed MACs: importance per MAC at w = 0, approaching importance per millisecond
  (HALP) as w grows. No group goes below ``KEEP_BAND`` of the channels the importance cut keeps in it:
  layer-normalised scores rank channels within a layer well but say little about how much a whole
  layer can lose, so the candidates re-allocate at the margin of the importance cut, never empty a layer.

The rule (:func:`choose_fastest`): a candidate is eligible when it removes at most ``TOLERANCE``
(relative) more importance than the least any candidate removes and no more than ``MACS_SLACK`` of
the original's MACs beyond the importance cut (equal MACs, not a deeper cut); the eligible one
predicted fastest is chosen if it beats the importance cut by more than the table's noise, else the
importance cut stays. A flat latency curve therefore changes nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from onnxprune.graphops.dependency import DependencyGraph
from onnxprune.graphops.latency_select import group_options
from onnxprune.graphops.latency_table import LatencyTable
from onnxprune.graphops.plan import PruningPlan
from onnxprune.graphops.selection import (
    MacsModel,
    Scores,
    _plan,
    choose_kept,
    normalised_scores,
    select_by_flops,
)

WEIGHTS = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
# No group keeps fewer than this fraction of what the importance cut keeps in it. At 0.5 the knapsacks
# found cuts with less importance removed that ran faster (yolox_nano at -40% MACs: 1.51x instead of
# 1.32x) by emptying a few layers the importance cut had left whole: ResNet-20 at -30% MACs (taylor,
# the same recovery) then held out 74.4% instead of 77.9%.
KEEP_BAND = 0.75
TOLERANCE = 0.10  # importance removed, relative to the least any candidate removes
MACS_SLACK = 0.02  # of the original's MACs: how much deeper than the importance cut still counts as equal MACs
IMPORTANCE = "importance"


@dataclass(frozen=True)
class CutOptions:
    """One group's choices on the step grid: counts (descending, the first is the whole group) and,
    at each, the importance, MACs and predicted milliseconds removed with this group alone pruned."""

    group: str
    counts: tuple[int, ...]
    importance: tuple[float, ...]
    macs: tuple[float, ...]
    ms: tuple[float, ...]


@dataclass(frozen=True)
class CutCandidate:
    name: str  # IMPORTANCE or "knapsack w"
    weight: float | None
    plan: PruningPlan
    macs: int  # the model's MACs after the cut
    importance: float  # layer-normalised scores of the removed channels, summed
    predicted_ms: float


@dataclass(frozen=True)
class FastestCut:
    chosen: CutCandidate
    candidates: tuple[CutCandidate, ...]  # the importance cut first
    eligible: frozenset[str]
    goal_macs: int


def allocate_for_macs(
    options: Iterable[CutOptions],
    macs_goal: float,
    ms_scale: float,
    weight: float,
    reached: Callable[[Mapping[str, int]], bool] | None = None,
) -> dict[str, int]:
    """Counts per group that remove at least ``macs_goal`` MACs, greedily by importance per value
    (a move's MACs over ``macs_goal`` plus ``weight`` times its ms over ``ms_scale``). MACs of groups
    add up here; ``reached`` (the exact check, where pruning two neighbours removes less than the
    sum) is asked only once the sum reaches the goal. Groups left whole are omitted."""
    options = [o for o in options if len(o.counts) > 1]
    position = {o.group: 0 for o in options}

    def best_move(option: CutOptions) -> tuple[float, int] | None:
        here = position[option.group]
        best = None
        for there in range(here + 1, len(option.counts)):
            value = (option.macs[there] - option.macs[here]) / max(macs_goal, 1e-12)
            value += weight * (option.ms[there] - option.ms[here]) / max(ms_scale, 1e-12)
            if value <= 0.0:
                continue
            price = (option.importance[there] - option.importance[here]) / value
            if not math.isfinite(price):  # removes a channel that must not go (an infinite score)
                continue
            if best is None or price < best[0]:
                best = (price, there)
        return best

    moves = {o.group: best_move(o) for o in options}
    by_group = {o.group: o for o in options}
    removed = 0.0

    def counts() -> dict[str, int]:
        return {g: by_group[g].counts[p] for g, p in position.items() if p > 0}

    while removed < macs_goal or (reached is not None and not reached(counts())):
        offers = [(move[0], group, move[1]) for group, move in moves.items() if move is not None]
        if not offers:
            break  # nothing left to remove
        _, group, there = min(offers)
        option = by_group[group]
        removed += option.macs[there] - option.macs[position[group]]
        position[group] = there
        moves[group] = best_move(option)
    return counts()


def choose_fastest(
    candidates: Sequence[CutCandidate],
    *,
    total_macs: int,
    noise_ms: float,
    tolerance: float = TOLERANCE,
    macs_slack: float = MACS_SLACK,
) -> tuple[CutCandidate, frozenset[str]]:
    """The candidate to keep (the first, the importance cut, unless another eligible one is predicted
    faster by more than ``noise_ms``) and the names of the eligible ones (see the module's rule)."""
    reference = candidates[0]
    least = min(c.importance for c in candidates)
    eligible = [
        c
        for c in candidates
        if c.importance <= least * (1.0 + tolerance) + 1e-12 and c.macs >= reference.macs - macs_slack * total_macs
    ]
    if not eligible:
        return reference, frozenset()
    fastest = min(eligible, key=lambda c: (c.predicted_ms, c.importance))
    chosen = fastest if fastest.predicted_ms < reference.predicted_ms - noise_ms else reference
    return chosen, frozenset(c.name for c in eligible)


def cut_options(
    dep: DependencyGraph,
    scores: Scores,
    table: LatencyTable,
    model: MacsModel,
    floors: Mapping[str, int],
    *,
    step: int,
    exclude: Iterable[str],
) -> list[CutOptions]:
    """Every prunable, not excluded group's counts on the ``step`` grid down to ``floors[group]``, with
    the importance, MACs and predicted time each removes; groups the table lacks save no time in it."""
    index_of = {g.id: i for i, g in enumerate(dep.groups)}
    result = []

    def saving(group: str, keep: int) -> float:
        return table.saving(group, keep) or 0.0

    for option in group_options(dep, scores, saving, step=step, exclude=exclude, min_keep_fraction=0.0):
        index = index_of[option.group]
        keep = [i for i, c in enumerate(option.counts) if c >= floors.get(option.group, 0)]
        macs = [
            float(
                model.total
                - model.macs(_plan(dep, {index: choose_kept(dep, index, scores[option.group], c, round_to=step)}))
            )
            for c in (option.counts[i] for i in keep)
        ]
        result.append(
            CutOptions(
                option.group,
                tuple(option.counts[i] for i in keep),
                tuple(option.cost[i] for i in keep),
                tuple(macs),
                tuple(option.saving[i] for i in keep),
            )
        )
    return result


def band_floors(dep: DependencyGraph, plan: PruningPlan, step: int) -> dict[str, int]:
    """Per group, the fewest channels a candidate may keep: ``KEEP_BAND`` of what ``plan`` keeps, on the step."""
    kept = {gid: len(entry.keep) for gid, entry in plan.groups.items()}
    floors = {}
    for group in dep.groups:
        count = kept.get(group.id, group.channels)
        floors[group.id] = min(count, max(step, -(-int(np.ceil(KEEP_BAND * count)) // step) * step))
    return floors


def importance_removed(dep: DependencyGraph, scores: Scores, plan: PruningPlan) -> float:
    """Layer-normalised scores of the channels ``plan`` removes, summed (what ``select_by_flops`` minimises)."""
    total = 0.0
    for gid, entry in plan.groups.items():
        normalised = normalised_scores(scores[gid])
        removed = np.setdiff1d(np.arange(entry.channels), np.asarray(entry.keep, dtype=np.int64))
        total += float(np.sum(normalised[removed]))
    return total


def cut_key(plan: PruningPlan) -> tuple[tuple[str, tuple[int, ...]], ...]:
    return tuple(sorted((gid, entry.keep) for gid, entry in plan.groups.items()))


def select_fastest_by_flops(
    dep: DependencyGraph,
    scores: Scores,
    target: float,
    table: LatencyTable,
    *,
    node_macs: Mapping[str, int],
    step: int,
    exclude: Iterable[str] = (),
    tolerance: float = TOLERANCE,
) -> FastestCut:
    """The cut that removes ``target`` of the MACs and that ``table`` predicts fastest (module's rule)."""
    exclude = list(exclude)
    model = MacsModel(dep, node_macs)
    goal = model.total * (1.0 - target)
    index_of = {g.id: i for i, g in enumerate(dep.groups)}

    kept_channels: dict[tuple[str, int], list[int]] = {}  # the knapsacks ask for the same counts again and again

    def plan_of(counts: Mapping[str, int]) -> PruningPlan:
        for g, c in counts.items():
            if (g, c) not in kept_channels:
                kept_channels[(g, c)] = choose_kept(dep, index_of[g], scores[g], c, round_to=step)
        return _plan(dep, {index_of[g]: kept_channels[(g, c)] for g, c in counts.items()})

    first = select_by_flops(dep, scores, target, node_macs=node_macs, round_to=step, exclude=exclude)
    plans: list[tuple[str, float | None, PruningPlan]] = [(IMPORTANCE, None, first)]
    options = cut_options(dep, scores, table, model, band_floors(dep, first, step), step=step, exclude=exclude)
    for weight in WEIGHTS:
        counts = allocate_for_macs(
            options, model.total - goal, table.baseline_ms * target, weight, lambda c: model.macs(plan_of(c)) <= goal
        )
        plans.append((f"knapsack {weight:g}", weight, plan_of(counts)))

    candidates: list[CutCandidate] = []
    seen: set[tuple[tuple[str, tuple[int, ...]], ...]] = set()
    for name, mix, plan in plans:
        macs = model.macs(plan)
        if cut_key(plan) in seen or (candidates and macs > goal):
            continue  # the same cut again, or the goal out of reach on the grid
        seen.add(cut_key(plan))
        kept = {gid: len(entry.keep) for gid, entry in plan.groups.items()}
        candidates.append(
            CutCandidate(name, mix, plan, macs, importance_removed(dep, scores, plan), table.predict(kept))
        )
    chosen, eligible = choose_fastest(candidates, total_macs=model.total, noise_ms=table.noise_ms, tolerance=tolerance)
    return FastestCut(chosen, tuple(candidates), eligible, int(round(goal)))
