"""Never a silent no-op: when a ratio or MACs target removes nothing, or far less than asked, one
warning line says why and what would prune (``--round-to 1``, a larger target, ``onnxprune analyze``)."""

from __future__ import annotations

from onnxprune.graphops.selection import grid_counts
from onnxprune.workers.options import MacsTarget, PruneOptions, RatioTarget
from onnxprune.workers.report import BeforeAfter, FrozenReport, GroupReport

# Less than this share of what was asked counts as "far less"; a MACs cut over this many times it
# (and 10 points more) as "far more": BlazeFace's one group on the grid of 16 took -57.7% for
# --flops-target 0.3 silently under 2x.
FAR_LESS = 0.5
FAR_MORE = 1.5


def shortfall_notes(
    options: PruneOptions,
    groups: list[GroupReport],
    frozen: list[FrozenReport],
    macs: BeforeAfter,
    round_to: int | None,
    round_to_source: str | None,
    plan_given: bool,
) -> list[str]:
    """One line when a ratio or MACs target removed nothing or less than half of what it asked."""
    target = options.target
    if plan_given or not isinstance(target, (RatioTarget, MacsTarget)):
        return []  # a saved plan asks for nothing; auto, learned and latency targets report their own bounds
    if isinstance(target, RatioTarget):
        if target.ratio <= 0.0:
            return []
        # What the ratio can remove: per group, the ratio of its removable channels, or what a per-kind
        # limit lets go (prune_kinds, max_<kind>_ratio: the user's choice, not a shortfall).
        expected = sum(
            min(target.ratio * (g.channels_before - g.pinned), float("inf") if g.max_removed is None else g.max_removed)
            for g in groups
        )
        removed = sum(g.channels_before - g.channels_after for g in groups)
        asked, got = target.ratio, target.ratio * removed / expected if expected else 0.0
        what = f"--ratio {target.ratio:g} removed {got:.0%} of the removable channels"
    else:
        asked, got = target.fraction, macs.reduction
        what = f"--flops-target {target.fraction:g} removed {got:.1%} of MACs"
    if isinstance(target, MacsTarget) and (round_to or 1) > 1 and got > FAR_MORE * asked and got - asked > 0.1:
        return [
            f"--flops-target {target.fraction:g} removed {got:.1%} of MACs, far more than asked: on the grid of "
            f"{round_to} (--round-to {_flag(round_to, round_to_source)}) the nearest counts below the exact cut "
            "remove that much; --round-to 1 prunes exact counts (they may run no faster)"
        ]
    if got >= FAR_LESS * asked:
        return []
    head = "nothing pruned: " if got == 0.0 else f"{what}, far less than asked: "
    return [head + _why(groups, frozen, round_to, _flag(round_to, round_to_source), options)]


def _flag(round_to: int | None, round_to_source: str | None) -> str:
    return "auto" if (round_to_source or "").startswith("auto") else str(round_to)


def _why(
    groups: list[GroupReport], frozen: list[FrozenReport], round_to: int | None, flag: str, options: PruneOptions
) -> str:
    if not groups:
        return (
            f"the model has no prunable channel group ({len(frozen)} frozen, each with its reason in the report's "
            "'frozen' and in `onnxprune analyze`)"
        )
    pinned = sum(g.pinned for g in groups)
    total = sum(g.channels_before for g in groups)
    if round_to is not None and round_to > 1:
        step = _smallest_step_down(groups, round_to)
        where = (
            "" if step is None else f", where the smallest step down removes {step:.0%} of a group's removable channels"
        )
        return (
            f"channel counts stay on the grid of {round_to} (--round-to {flag}){where}, so a cut this small "
            "rounds back to the whole group; --round-to 1 prunes exact counts (they may run no faster), or ask "
            "for more (a larger --ratio or --flops-target)"
        )
    limited = sorted({g.limited_by for g in groups if g.limited_by})
    if limited:
        return f"the per-kind limits ({'; '.join(limited)}) leave little to remove; see the report's 'kinds'"
    if options.exclude:
        return f"--exclude protects some groups and {pinned} of {total} channels must stay (see `onnxprune analyze`)"
    return f"{pinned} of {total} channels in the prunable groups must stay (pinned; see `onnxprune analyze`)"


def _smallest_step_down(groups: list[GroupReport], round_to: int) -> float | None:
    """The least share of its removable channels any group loses by moving one count down its grid
    (``graphops.selection.grid_counts``), never below its pinned channels (BlazeFace: 96 -> 80 of which
    72 are pinned, 67%)."""
    shares = []
    for group in groups:
        removable = group.channels_before - group.pinned
        lower = [c for c in grid_counts(group.channels_before, round_to) if group.pinned <= c < group.channels_before]
        if removable > 0 and lower:
            shares.append((group.channels_before - max(lower)) / removable)
    return min(shares, default=None)
