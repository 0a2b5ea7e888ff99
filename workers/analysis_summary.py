"""What can be pruned together and what is frozen, as data (``onnxprune analyze`` and the Python API)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from onnxprune.graphops.shares import macs_shares
from onnxprune.workers.analysis import Analysis, analyse_model
from onnxprune.workers.sandbox import RunnerLimits, run_in_child


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
    unit: int = Field(1, description="Channels per unit: head_dim for attention heads ('channels' counts heads).")
    kind: str | None = Field(
        None, description="'filter', 'head' or 'neuron': what prune_kinds and max_<kind>_ratio act on."
    )


class FrozenGroup(BaseModel):
    id: str
    channels: int
    nodes: list[str]
    macs_share: float
    reason: str | None


class ModelAnalysis(BaseModel):
    """The ``onnxprune analyze --json`` document."""

    macs: int
    params: int
    input_shapes: dict[str, list[int]]
    input_shape_notes: list[str]
    nodes: list[NodeCost]
    groups: list[PrunableGroup]
    frozen: list[FrozenGroup]


def summarize(analysis: Analysis) -> ModelAnalysis:
    """The groups, frozen groups and costs of an analysed model, as plain data."""
    dep, cost = analysis.dep, analysis.cost
    shares = macs_shares(dep, analysis.node_macs)  # each layer counted once, in the group it computes

    return ModelAnalysis(
        macs=cost.macs,
        params=cost.params,
        input_shapes=analysis.input_shapes,
        input_shape_notes=list(analysis.input_shape_notes),
        nodes=[NodeCost(name=n.name, op_type=n.op_type, macs=n.macs, params=n.params) for n in cost.nodes],
        groups=[
            PrunableGroup(
                id=g.id,
                channels=g.channels,
                pinned=len(g.pinned),
                producers=list(g.producers),
                nodes=list(g.nodes),
                macs_share=round(shares[g.id], 4),
                notes=list(g.reasons),
                unit=g.unit,
                kind=g.kind,
            )
            for g in dep.prunable
        ],
        frozen=[
            FrozenGroup(
                id=g.id,
                channels=g.channels,
                nodes=list(g.nodes),
                macs_share=round(shares[g.id], 4),
                reason=g.frozen_reason,
            )
            for g in dep.frozen
        ],
    )


def summarize_model(
    path: Path, input_shapes: Mapping[str, Sequence[int]] | None = None, *, limits: RunnerLimits = RunnerLimits()
) -> ModelAnalysis:
    """Load, validate and analyse ``path``, then summarize; in a sandboxed child, since preparing
    the graph folds its constant subgraphs with onnxruntime (the user's graph runs)."""
    shapes = {name: list(shape) for name, shape in input_shapes.items()} if input_shapes else None
    document = run_in_child(_summary_document, (str(path), shapes), limits=limits)
    return ModelAnalysis.model_validate(document)


def _summary_document(path: str, input_shapes: dict[str, list[int]] | None) -> dict[str, Any]:
    return summarize(analyse_model(Path(path), input_shapes)).model_dump(mode="json")
