"""Choosing channel counts for a latency target: importance per millisecond saved (HALP).

Shen et al. (HALP, NeurIPS 2022) rank channels by importance per unit of latency from a latency
lookup table and solve a knapsack: keep the most importance within a latency budget. Here each
group offers counts on its step grid; a count's cost is the importance of the channels it removes
(the least important first, scores divided by the group mean as in ``select_by_flops``), its gain
the milliseconds the latency model says it saves. The greedy solver repeatedly takes the move
(one group, from its current count to any lower one) with the least importance per millisecond
gained, so plateaus of the staircase (a step that saves nothing) are jumped, not taken.

Importance is counted per channel (:func:`unit_costs`): a unit wider than one channel (an attention
head of head_dim channels) costs its normalised score times its width. Scores are normalised per
group to a mean of one per unit, so without the width one head of 32 channels, which saves about the
time of 64 MLP neurons, would cost what one neuron costs, and the knapsack cut every layer to its
floor of heads first (MiniLM-L3 at --latency-target 0.7: 2 of 12 heads a layer, output cosine 0.40 to
0.43 against 0.68 with heads left whole; benchmarks/results/transformer_widths_summary.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace

import numpy as np

from onnxprune.graphops.dependency import DependencyGraph
from onnxprune.graphops.kinds import KIND_WORDS, GroupKind
from onnxprune.graphops.plan import PruningPlan
from onnxprune.graphops.selection import Scores, _candidates, _plan, choose_kept, group_step, normalised_scores


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
    at the least importance, greedily by importance per millisecond. Groups left whole are omitted.
    A move whose price is not finite removes a channel that must not go (``normalised_scores``: an
    infinite score): never taken, even when it is the only one left; the goal is then missed."""
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
                if not math.isfinite(price):
                    continue
                if best is None or price < best[0]:
                    best = (price, option, there, gain)
        if best is None:
            break  # nothing left saves time
        _, option, there, gain = best
        position[option.group] = there
        saved += gain
    return {o.group: o.counts[position[o.group]] for o in options if position[o.group] > 0}


def unit_costs(normalised: np.ndarray, unit: int) -> np.ndarray:
    """Importance of each unit in one currency for every unit size: its group-normalised score
    (a unit's score is the mean over its channels, ``graphops.scoring``) times its channels."""
    return np.asarray(normalised, dtype=np.float64) * max(unit, 1)


def group_options(
    dep: DependencyGraph,
    scores: Scores,
    saving: Callable[[str, int], float],
    *,
    step: int,
    exclude: Iterable[str] = (),
    min_keep_fraction: float = 0.125,
) -> list[GroupOptions]:
    """Every prunable, not excluded group's counts on its grid (``step`` channels in units of the
    group, ``selection.group_step``: any head count for heads of 16-channel multiples), down to
    ``min_keep_fraction`` of the group, never below its pinned units or its kind limit, with the
    importance (:func:`unit_costs`) and time each removes."""
    result = []
    for index in _candidates(dep, scores, exclude):
        group = dep.groups[index]
        normalised = unit_costs(normalised_scores(scores[group.id]), group.unit)
        removable = np.sort([normalised[c] for c in range(group.channels) if c not in group.pinned])
        floor = max(len(group.pinned), group.min_keep, int(np.ceil(group.channels * min_keep_fraction)))
        counts = [group.channels]
        units = group_step(group, step)
        count = (group.channels - 1) // units * units  # the largest multiple of the step below the group's width
        while count >= floor and count > 0:
            counts.append(count)
            count -= units
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
    keeps = {
        index_of[gid]: choose_kept(dep, index_of[gid], scores[gid], count, round_to=step)
        for gid, count in counts.items()
    }
    return _plan(dep, keeps)


# Kinds a latency target cuts in turn: attention heads only once the other kinds, cut to their floors,
# were measured to miss the target. With heads priced beside MLP neurons (importance per channel), the
# knapsack kept 6 to 16 of MiniLM-L3's 36 heads at --latency-target 0.7 and lost 4 STS points with data
# (0.8 without) against neurons alone at about the same measured latency
# (benchmarks/results/latency_heads.md): a head's score (l1 or taylor) does not say what losing it costs
# against a neuron's, and a table timed on a busy machine under-predicts what the MLP saves (its neuron
# points within the noise), so heads look like the cheaper time.
KIND_TIERS: tuple[frozenset[GroupKind], ...] = (frozenset({"filter", "neuron"}), frozenset({"head"}))


@dataclass(frozen=True)
class Tier:
    """The groups a latency target may cut at one stage: ``dep`` with the kinds of later tiers held
    whole; ``held`` names them ('' in the last tier)."""

    dep: DependencyGraph
    held: str


def latency_tiers(dep: DependencyGraph, exclude: Iterable[str] = ()) -> list[Tier]:
    """The stages of :data:`KIND_TIERS` that have groups a selection may cut (one stage when only one
    kind is free, as under ``--prune-kinds head``); each stage holds the later ones' groups whole."""
    free = {dep.groups[i].kind for i in _candidates(dep, {g.id: np.zeros(0) for g in dep.groups}, exclude)}
    present = [kinds for kinds in KIND_TIERS if kinds & free]
    tiers = []
    for position in range(len(present)):
        later = frozenset().union(*present[position + 1 :])
        held = [
            replace(g, max_removed=0, limited_by="latency_target: " + KIND_WORDS[g.kind] + " last")
            if g.kind in later and g.prunable
            else g
            for g in dep.groups
        ]
        words = " and ".join(KIND_WORDS[k] for k in sorted(later & free))
        tiers.append(Tier(replace(dep, groups=held) if later else dep, words))
    return tiers or [Tier(dep, "")]


def counts_of(plan: PruningPlan) -> Mapping[str, int]:
    """Channels each group of ``plan`` keeps."""
    return {gid: len(entry.keep) for gid, entry in plan.groups.items()}
