"""The pruning report: a typed model, serialised the same way by the CLI and the API.

Its keys are a contract (``macs.before``, ``latency_ms.after.p50``, ``groups[]``, ``frozen[]``,
``fidelity``...): later criteria and the service add fields, they never rename these.
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class BeforeAfter(BaseModel):
    before: int
    after: int

    @property
    def reduction(self) -> float:
        return 0.0 if self.before == 0 else 1.0 - self.after / self.before


class LatencyStats(BaseModel):
    p50: float
    p90: float
    mean: float
    runs: int


class Latency(BaseModel):
    before: LatencyStats
    after: LatencyStats | None = None
    threads: int
    warmup: int


class Fidelity(BaseModel):
    """How close the pruned model's outputs are to the original's, on the benchmark inputs."""

    max_abs_diff: float
    cosine_similarity: float
    outputs: dict[str, dict[str, float]] = Field(default_factory=dict)


class GroupReport(BaseModel):
    id: str
    nodes: list[str]
    producers: list[str] = Field(default_factory=list, description="The filters that write these channels.")
    channels_before: int
    channels_after: int
    pinned: int = Field(0, description="Channels that must stay (they reach an op or output we keep intact).")
    pinned_reasons: list[str] = Field(default_factory=list)
    macs_share: float = Field(0.0, description="Share of the model's MACs in the nodes of this group.")


class FrozenReport(BaseModel):
    id: str
    nodes: list[str]
    channels: int
    reason: str


class PruneReport(BaseModel):
    onnxprune_version: str
    model_sha256: str
    output_sha256: str | None = None
    options: dict
    input_shapes: dict[str, list[int]]
    macs: BeforeAfter
    params: BeforeAfter
    latency_ms: Latency | None = None
    fidelity: Fidelity | None = None
    groups: list[GroupReport]
    frozen: list[FrozenReport]
    stage_seconds: dict[str, float] = Field(default_factory=dict)
    warnings: list[str] = Field(default_factory=list)
