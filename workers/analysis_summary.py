"""What can be pruned together and what is frozen, as data (``onnxprune analyze`` and the Python API)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from pydantic import BaseModel

from workers.analysis import Analysis, analyse_model


class NodeCost(BaseModel):
    name: str
    op_type: str
    macs: int
    params: int


class PrunableGroup(BaseModel):
    id: str
    channels: int
    pinned: int
    producers: list[str]
    nodes: list[str]
    macs_share: float
    notes: list[str]


class FrozenGroup(BaseModel):
    id: str
    channels: int
    nodes: list[str]
    reason: str | None


class ModelAnalysis(BaseModel):
    """The ``onnxprune analyze --json`` document."""

    macs: int
    params: int
    input_shapes: dict[str, list[int]]
    nodes: list[NodeCost]
    groups: list[PrunableGroup]
    frozen: list[FrozenGroup]


def summarize(analysis: Analysis) -> ModelAnalysis:
    """The groups, frozen groups and costs of an analysed model, as plain data."""
    dep, cost = analysis.dep, analysis.cost
    node_macs = analysis.node_macs
    total = max(cost.macs, 1)

    def share(nodes: Sequence[str]) -> float:
        return round(sum(node_macs.get(n, 0) for n in nodes) / total, 4)

    return ModelAnalysis(
        macs=cost.macs, params=cost.params, input_shapes=analysis.input_shapes,
        nodes=[NodeCost(name=n.name, op_type=n.op_type, macs=n.macs, params=n.params) for n in cost.nodes],
        groups=[PrunableGroup(id=g.id, channels=g.channels, pinned=len(g.pinned), producers=list(g.producers),
                              nodes=list(g.nodes), macs_share=share(g.nodes), notes=list(g.reasons))
                for g in dep.prunable],
        frozen=[FrozenGroup(id=g.id, channels=g.channels, nodes=list(g.nodes), reason=g.frozen_reason)
                for g in dep.frozen],
    )


def summarize_model(path: Path, input_shapes: Mapping[str, Sequence[int]] | None = None) -> ModelAnalysis:
    """Load, validate and analyse ``path`` (static: nothing of the user's graph runs), then summarize."""
    return summarize(analyse_model(Path(path), input_shapes))
