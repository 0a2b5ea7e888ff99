"""Choosing channel counts for a latency target: importance per millisecond saved (HALP).

Shen et al. (HALP, NeurIPS 2022) rank channels by importance per unit of latency from a latency
lookup table and solve a knapsack: keep the most importance within a latency budget. Here each
group offers counts on its step grid; a count's cost is the importance of the channels it removes
(the least important first, scores divided by the group mean as in ``select_by_flops``), its gain
the milliseconds the latency model says it saves. The greedy solver repeatedly takes the move
(one group, from its current count to any lower one) with the least importance per millisecond
gained, so plateaus of the staircase (a step that saves nothing) are jumped, not taken.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from onnxprune.graphops.dependency import DependencyGraph
from onnxprune.graphops.plan import PruningPlan
from onnxprune.graphops.selection import Scores, _candidates, _plan, choose_kept, normalised_scores


@dataclass(frozen=True)
class GroupOptions:
    """One group's choices: counts (descending, the first is the whole group), the importance
    each removes, and the milliseconds each saves."""

    group: str
    counts: tuple[int, ...]
    cost: tuple[float, ...]
    saving: tuple[float, ...]


def allocate(options: Iterable[GroupOptions], goal_ms: float) -> dict[str, int]:
    """Counts per group that save at least ``goal_ms`` in total (or as much as the options allow)
    at the least importance, greedily by importance per millisecond. Groups left whole are omitted."""
    options = [o for o in options if len(o.counts) > 1]
    position = {o.group: 0 for o in options}
    saved = 0.0
    while saved < goal_ms:
        best = None
        for option in options:
            here = position[option.group]
            for there in range(here + 1, len(option.counts)):
                gain = option.saving[there] - option.saving[here]
                if gain <= 0.0:
                    continue
                price = (option.cost[there] - option.cost[here]) / gain
                if best is None or price < best[0]:
                    best = (price, option, there, gain)
        if best is None:
            break  # nothing left saves time
        _, option, there, gain = best
        position[option.group] = there
        saved += gain
    return {o.group: o.counts[position[o.group]] for o in options if position[o.group] > 0}


def group_options(
    dep: DependencyGraph,
    scores: Scores,
    saving: Callable[[str, int], float],
    *,
    step: int,
    exclude: Iterable[str] = (),
    min_keep_fraction: float = 0.125,
) -> list[GroupOptions]:
    """Every prunable, not excluded group's counts on the ``step`` grid (down to ``min_keep_fraction``
    of the group, never below its pinned channels), with the importance and time each removes."""
    result = []
    for index in _candidates(dep, scores, exclude):
        group = dep.groups[index]
        normalised = normalised_scores(scores[group.id])
        removable = np.sort([normalised[c] for c in range(group.channels) if c not in group.pinned])
        floor = max(len(group.pinned), group.min_keep, int(np.ceil(group.channels * min_keep_fraction)))
        counts = [group.channels]
        count = (group.channels - 1) // step * step  # the largest multiple of step below the group's width
        while count >= floor and count > 0:
            counts.append(count)
            count -= step
        if len(counts) < 2:
            continue
        cumulative = np.concatenate([[0.0], np.cumsum(removable)])
        cost = tuple(float(cumulative[min(group.channels - c, len(removable))]) for c in counts)
        result.append(GroupOptions(group.id, tuple(counts), cost, tuple(saving(group.id, c) for c in counts)))
    return result


def select_by_latency(
    dep: DependencyGraph,
    scores: Scores,
    saving: Callable[[str, int], float],
    goal_ms: float,
    *,
    step: int,
    exclude: Iterable[str] = (),
    min_keep_fraction: float = 0.125,
) -> PruningPlan:
    """The plan that saves ``goal_ms`` by the latency model ``saving(group, count)`` at the least importance."""
    options = group_options(dep, scores, saving, step=step, exclude=exclude, min_keep_fraction=min_keep_fraction)
    counts = allocate(options, goal_ms)
    index_of = {g.id: i for i, g in enumerate(dep.groups)}
    keeps = {index_of[gid]: choose_kept(dep, index_of[gid], scores[gid], count) for gid, count in counts.items()}
    return _plan(dep, keeps)


def counts_of(plan: PruningPlan) -> Mapping[str, int]:
    """Channels each group of ``plan`` keeps."""
    return {gid: len(entry.keep) for gid, entry in plan.groups.items()}
