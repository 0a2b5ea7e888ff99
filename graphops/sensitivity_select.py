"""Per-group pruning ratios from sensitivity curves (Li et al. 2017, section 4.1 and Figure 2).

Each group was pruned alone at increasing ratios and the metric's drop measured. A group may be
pruned as far as its curve stays within the tolerated drop; a group that already loses more at the
smallest ratio is sensitive and skipped. Curves are plain data here (ratio, drop) so this module
stays free of how they were measured.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

Curve = Sequence[tuple[float, float]]  # (ratio, drop of the metric at that ratio), any order


def tolerated_ratio(curve: Curve, max_drop: float) -> float:
    """The largest ratio reached by walking the curve up from 0 without exceeding ``max_drop``.

    Walking (rather than taking the largest ratio within bounds anywhere) ignores a noisy point
    that dips back under the bound after the curve has already crossed it.
    """
    chosen = 0.0
    for ratio, drop in sorted(curve):
        if drop > max_drop:
            break
        chosen = ratio
    return chosen


def tolerated_ratios(curves: Mapping[str, Curve], max_drop: float) -> dict[str, float]:
    """``tolerated_ratio`` of every group; 0.0 marks a sensitive group that is left whole."""
    if max_drop < 0:
        raise ValueError(f"max_drop must be >= 0, got {max_drop}")
    return {group: tolerated_ratio(curve, max_drop) for group, curve in curves.items()}


def sensitive_groups(curves: Mapping[str, Curve], max_drop: float) -> list[str]:
    """Groups that lose more than ``max_drop`` even at their smallest ratio."""
    return [group for group, ratio in tolerated_ratios(curves, max_drop).items() if ratio == 0.0]


# ``groups_to_spare`` keeps prunable the least sensitive groups whose single-group cuts remove this many
# times the MACs target between them, so the global ranking among them still has room to choose.
SPARE_MARGIN = 1.5


def groups_to_spare(
    drops: Mapping[str, float], savings: Mapping[str, float], target: float, margin: float = SPARE_MARGIN
) -> list[str]:
    """The groups a MACs target should leave whole, judged by Li et al.'s single-group sensitivity.

    ``drops[g]``: the metric's drop with group g alone cut at one ratio; ``savings[g]``: the fraction of
    the model's MACs that cut removes. Groups are taken cheapest first (drop per MAC saved) until their
    savings add up to ``margin`` times ``target``; the rest are spared. A global ranking of
    layer-normalised scores cannot see that one layer's half costs every detection and another's
    nothing (on YOLOv8n the stem's 50% alone: mAP50 0.0, a neck layer's: 0.98). Nothing is spared when
    every group is needed to reach the target.
    """
    if not 0.0 < target < 1.0:
        raise ValueError(f"target must be in (0, 1), got {target}")
    order = sorted(drops, key=lambda g: (max(drops[g], 0.0) / max(savings.get(g, 0.0), 1e-12), g))
    taken = 0.0
    for position, group in enumerate(order):
        if taken >= margin * target:
            return order[position:]
        taken += max(savings.get(group, 0.0), 0.0)
    return []


# A detector's curve: ratio -> (the metric's drop with that group alone cut so far, fraction of MACs it removes).
CostCurve = Mapping[float, tuple[float, float]]


def allocate_ratios(
    curves: Mapping[str, CostCurve], removed: Callable[[Mapping[str, float]], float], target: float
) -> dict[str, float] | None:
    """Per-group ratios that reach a MACs ``target`` at the least summed drop, greedily (Li et al.'s
    sensitivity, read as a cost per MAC): each round takes the one next-deeper probed ratio of one group
    whose extra drop per extra MAC saved is the smallest, until ``removed(ratios)`` (the fraction of the
    model's MACs the ratios remove together) reaches ``target``. A group's cut deepens only through its
    own probed ratios, in order, so an insensitive group can be cut by 75% while a sensitive one stays
    whole: a one-ratio probe can only spare or cut. None when the probed ratios cannot reach ``target``.
    Summing single-group drops assumes they add, as squared errors of independent changes do.
    """
    if not 0.0 < target < 1.0:
        raise ValueError(f"target must be in (0, 1), got {target}")
    chosen = dict.fromkeys(curves, 0.0)
    while removed({g: r for g, r in chosen.items() if r > 0.0}) < target:
        best: tuple[float, str, float] | None = None
        for group, curve in sorted(curves.items()):
            deeper = sorted(r for r in curve if r > chosen[group])
            if not deeper:
                continue
            drop, saving = curve.get(chosen[group], (0.0, 0.0))
            next_drop, next_saving = curve[deeper[0]]
            if next_saving <= saving:
                continue
            cost = max(next_drop - drop, 0.0) / (next_saving - saving)
            if best is None or cost < best[0]:
                best = (cost, group, deeper[0])
        if best is None:
            return None
        chosen[best[1]] = best[2]
    return {g: r for g, r in chosen.items() if r > 0.0}
