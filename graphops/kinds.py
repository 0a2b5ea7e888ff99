"""Per-kind control: which kinds of unit a job may remove (conv filters, attention heads, MLP neurons)
and at most what fraction of each group of a kind.

Torch-Pruning spells it ``prune_num_heads`` / ``head_pruning_ratio`` beside a global ratio, NNCF by
the op types it prunes; here a limit becomes a property of each group (``ChannelGroup.max_removed``),
so every way of choosing (ratio, MACs or latency target, sensitivity, learned, a saved plan) meets it
where it asks a group how few it may keep, and ``PruningPlan.check`` refuses a plan past it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal, get_args

from onnxprune.graphops.errors import ModelRejected

if TYPE_CHECKING:
    from onnxprune.graphops.dependency import DependencyGraph

# What a group's units are (``ChannelGroup.kind``): conv filters, attention heads (head_dim channels of
# Q, K and V each, or a whole key/value group), or neurons of a fully connected layer (an MLP's width).
GroupKind = Literal["filter", "head", "neuron"]
KINDS: tuple[GroupKind, ...] = get_args(GroupKind)
KIND_WORDS: dict[GroupKind, str] = {"filter": "conv filters", "head": "attention heads", "neuron": "MLP neurons"}


@dataclass(frozen=True)
class KindLimits:
    """``prune``: the kinds a job may remove; ``max_ratio``: per kind, the largest fraction of each
    group's removable units it may remove."""

    prune: frozenset[GroupKind] = frozenset(KINDS)
    max_ratio: Mapping[GroupKind, float] = field(default_factory=dict)

    @property
    def limits_anything(self) -> bool:
        return self.prune != frozenset(KINDS) or bool(self.max_ratio)

    def describe(self, kind: GroupKind) -> str:
        """The limit on ``kind`` in the options' words ('' when none)."""
        if kind not in self.prune:
            return f"prune_kinds {', '.join(k for k in KINDS if k in self.prune)}"
        if kind in self.max_ratio:
            return f"max_{kind}_ratio {self.max_ratio[kind]:g}"
        return ""


def prunable_kinds(dep: DependencyGraph) -> dict[GroupKind, int]:
    """Prunable groups of each kind the model has."""
    counts: dict[GroupKind, int] = {}
    for group in dep.prunable:
        if group.kind is not None:
            counts[group.kind] = counts.get(group.kind, 0) + 1
    return counts


def _in_words(counts: Mapping[GroupKind, int]) -> str:
    return ", ".join(f"{n} group(s) of {KIND_WORDS[k]}" for k, n in counts.items()) or "nothing prunable"


def check_kinds_present(dep: DependencyGraph, limits: KindLimits) -> None:
    """Refuse limits that name what the model lacks: a ``max_<kind>_ratio`` for a kind it has no
    prunable group of, or ``prune_kinds`` none of whose kinds it has (a kind listed beside others
    that the model lacks is fine: 'leave heads alone' holds for a CNN too)."""
    present = prunable_kinds(dep)
    for kind in limits.max_ratio:
        if kind not in present:
            raise ModelRejected(
                f"max_{kind}_ratio: the model has no prunable {KIND_WORDS[kind]} (it has {_in_words(present)}); "
                f"drop the option"
            )
    if limits.prune != frozenset(KINDS) and not limits.prune & present.keys():
        asked = " or ".join(KIND_WORDS[k] for k in KINDS if k in limits.prune)
        raise ModelRejected(
            f"prune_kinds: the model has no prunable {asked} (it has {_in_words(present)}); "
            f"name a kind it has, or drop the option"
        )


def limit_groups(
    dep: DependencyGraph, limits: KindLimits, *, original: DependencyGraph | None = None, by: str | None = None
) -> DependencyGraph:
    """``dep`` whose groups carry ``limits`` (``max_removed``). ``original``: the model ``dep`` was
    pruned from (an iterative step's), whose group sizes the fractions apply to: a group keeps at
    least what the limit leaves of the original group, whatever earlier steps removed. ``by``: what the
    report names as the limit (``limited_by``) when the limits are not the user's options."""
    if not limits.limits_anything:
        return dep
    before = {g.id: g for g in (original or dep).groups}
    groups = []
    for group in dep.groups:
        kind = group.kind
        if kind is None or group.frozen:
            groups.append(group)
            continue
        source = before.get(group.id, group)
        removable = source.channels - len(source.pinned)
        if kind not in limits.prune:
            allowed = 0
        elif kind in limits.max_ratio:
            allowed = math.floor(limits.max_ratio[kind] * removable + 1e-9)
        else:
            groups.append(group)
            continue
        left = source.channels - allowed  # what the original group must keep
        groups.append(replace(group, max_removed=max(0, group.channels - left), limited_by=by or limits.describe(kind)))
    return replace(dep, groups=groups)


def most_removable(dep: DependencyGraph, node_macs: Mapping[str, int]) -> float:
    """The largest fraction of MACs a plan can remove from ``dep`` within its groups' limits: every
    group a selection may cut (``selection._candidates``) down to the fewest units it may keep."""
    import numpy as np

    from onnxprune.graphops.selection import MacsModel, _candidates, _plan, choose_kept

    scores = {g.id: np.zeros(g.channels) for g in dep.groups}
    keeps = {
        i: choose_kept(dep, i, scores[dep.groups[i].id], dep.groups[i].min_keep) for i in _candidates(dep, scores, ())
    }
    model = MacsModel(dep, node_macs)
    return 1.0 - model.macs(_plan(dep, keeps)) / max(model.total, 1)


def check_macs_reachable(dep: DependencyGraph, limits: KindLimits, node_macs: Mapping[str, int], target: float) -> None:
    """A MACs target the kind limits put out of reach contradicts them: refuse it, saying how far they reach."""
    most = most_removable(dep, node_macs)
    if target > most:
        said = " and ".join(dict.fromkeys(filter(None, (limits.describe(k) for k in KINDS))))
        raise ModelRejected(
            f"flops_target {target:g} cannot be met under {said}: the units they let go remove at most "
            f"{most:.1%} of the MACs; lower the target or allow more"
        )
