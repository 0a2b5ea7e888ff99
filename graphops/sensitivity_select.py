"""Per-group pruning ratios from sensitivity curves (Li et al. 2017, section 4.1 and Figure 2).

Each group was pruned alone at increasing ratios and the metric's drop measured. A group may be
pruned as far as its curve stays within the tolerated drop; a group that already loses more at the
smallest ratio is sensitive and skipped. Curves are plain data here (ratio, drop) so this module
stays free of how they were measured.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

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
