"""The pruning plan: which channels of each group are kept. Plain data, saved as JSON.

A plan is tied to the model it was made for: each entry names its group, the group's channel
count and producers, and applying it to a model where those differ is refused.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from onnxprune.graphops.dependency import DependencyGraph
from onnxprune.graphops.errors import PlanError

PLAN_FORMAT = "onnxprune.plan/1"


@dataclass(frozen=True)
class GroupPlan:
    id: str
    channels: int
    keep: tuple[int, ...]
    producers: tuple[str, ...]


@dataclass(frozen=True)
class PruningPlan:
    groups: dict[str, GroupPlan]

    @property
    def keep(self) -> dict[str, list[int]]:
        return {gid: list(entry.keep) for gid, entry in self.groups.items()}

    @property
    def removed_channels(self) -> int:
        return sum(entry.channels - len(entry.keep) for entry in self.groups.values())

    @classmethod
    def from_keep(cls, dep: DependencyGraph, keep: Mapping[str, Sequence[int]]) -> PruningPlan:
        """A plan keeping ``keep[group_id]`` in each named group (others stay whole); validated."""
        entries = {}
        for group_id, indices in keep.items():
            group = dep.group(group_id) if group_id in {g.id for g in dep.groups} else None
            if group is None:
                raise PlanError(f"plan names group '{group_id}', which this model does not have")
            entries[group_id] = GroupPlan(
                group_id, group.channels, tuple(sorted(int(i) for i in indices)), group.producers
            )
        plan = cls(entries)
        plan.check(dep)
        return plan

    def check(self, dep: DependencyGraph) -> None:
        """Raise PlanError unless the plan fits ``dep`` and keeps every constraint."""
        by_id = {g.id: (i, g) for i, g in enumerate(dep.groups)}
        kept_sets: dict[int, set[int]] = {}
        for group_id, entry in self.groups.items():
            if group_id not in by_id:
                raise PlanError(f"plan names group '{group_id}', which this model does not have")
            index, group = by_id[group_id]
            if entry.channels != group.channels:
                raise PlanError(
                    f"plan group '{group_id}' has {entry.channels} channels, the model has {group.channels}"
                )
            keep = set(entry.keep)
            if len(keep) != len(entry.keep) or not keep or min(keep) < 0 or max(keep) >= group.channels:
                raise PlanError(f"plan group '{group_id}' keeps invalid channel indices")
            if len(keep) < group.channels and group.frozen:
                raise PlanError(f"plan prunes group '{group_id}', which is frozen: {group.frozen_reason}")
            if len(keep) < group.min_keep:
                raise PlanError(
                    f"plan removes {group.channels - len(keep)} of the {group.channels} {group.kind} units of group "
                    f"'{group_id}'; {group.limited_by} allows at most {group.max_removed}"
                )
            missing = group.pinned - keep
            if missing:
                raise PlanError(f"plan removes pinned channel {min(missing)} of group '{group_id}'")
            kept_sets[index] = keep
        for index, blocks in dep.balanced:
            if index in kept_sets:
                counts = {len(kept_sets[index].intersection(block.tolist())) for block in blocks}
                if len(counts) != 1:
                    raise PlanError(
                        f"plan keeps unequal channel counts across the conv groups of '{dep.groups[index].id}'"
                    )
        for index, classes in dep.nonempty:
            if index in kept_sets and not kept_sets[index].intersection(classes.tolist()):
                raise PlanError(f"plan empties a Split or Slice output of group '{dep.groups[index].id}'")

    def removed_class_mask(self, dep: DependencyGraph) -> np.ndarray:
        """One flag per global class of ``dep``: True where the plan removes it."""
        removed = np.zeros(len(dep.class_group), dtype=bool)
        for group_id, entry in self.groups.items():
            offset = dep.group_offset[dep.group_index(group_id)]
            flags = np.ones(entry.channels, dtype=bool)
            flags[list(entry.keep)] = False
            removed[offset : offset + entry.channels] = flags
        return removed

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": PLAN_FORMAT,
            "groups": [
                {"id": e.id, "channels": e.channels, "producers": list(e.producers), "keep": list(e.keep)}
                for e in self.groups.values()
            ],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PruningPlan:
        if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT:
            raise PlanError(f"not an onnxprune plan (expected format '{PLAN_FORMAT}')")
        try:
            entries = {
                g["id"]: GroupPlan(
                    str(g["id"]),
                    int(g["channels"]),
                    tuple(int(i) for i in g["keep"]),
                    tuple(str(p) for p in g.get("producers", [])),
                )
                for g in data["groups"]
            }
        except (KeyError, TypeError, ValueError) as exc:
            raise PlanError(f"malformed plan: {exc}") from exc
        return cls(entries)

    @classmethod
    def from_json(cls, text: str) -> PruningPlan:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PlanError(f"plan is not valid JSON: {exc}") from exc
        return cls.from_dict(data)
