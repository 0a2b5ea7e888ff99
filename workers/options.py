"""Options of a pruning job: one typed model shared by the CLI, the REST config and workers."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_SHAPE_RE = re.compile(r"^(?P<name>.+):(?P<dims>\d+(x\d+)*)$")


def parse_input_shape(text: str) -> tuple[str, list[int]]:
    """Parse ``NAME:1x3x224x224`` (the CLI and config spelling) into a name and dims."""
    match = _SHAPE_RE.match(text.strip())
    if not match:
        raise ValueError(f"input shape {text!r} is not NAME:DxDx... (e.g. input:1x3x224x224)")
    dims = [int(d) for d in match.group("dims").split("x")]
    if any(d <= 0 for d in dims):
        raise ValueError(f"input shape {text!r} has a non-positive dimension")
    return match.group("name"), dims


class PruneOptions(BaseModel):
    """What to prune and how. Field names are the REST config keys; CLI flags use dashes."""

    model_config = ConfigDict(extra="forbid")

    criterion: str = Field("l1", description="Filter ranking criterion (l1, l2, random, ...).")
    ratio: Annotated[float, Field(ge=0.0, lt=1.0)] | None = Field(
        None, description="Fraction of channels removed from every prunable group (Li et al.)."
    )
    flops_target: Annotated[float, Field(gt=0.0, lt=1.0)] | None = Field(
        None, description="Fraction of MACs to remove, by global ranking of layer-normalised scores."
    )
    round_to: Annotated[int, Field(ge=1, le=1024)] = Field(
        1, description="Keep channel counts multiples of this number."
    )
    exclude: list[str] = Field(
        default_factory=list, description="Node names or globs whose channels are never pruned."
    )
    input_shapes: dict[str, list[int]] = Field(
        default_factory=dict,
        description="Concrete shapes for inputs with symbolic dims, e.g. {\"input\": [1, 3, 224, 224]}.",
    )
    benchmark: bool = Field(True, description="Measure onnxruntime latency before and after.")
    benchmark_runs: Annotated[int, Field(ge=1, le=1000)] = 30
    threads: Annotated[int, Field(ge=1, le=64)] = 1
    seed: int = Field(0, description="Seed of the random criterion and of benchmark inputs.")

    @field_validator("criterion")
    @classmethod
    def _known_criterion(cls, value: str) -> str:
        from graphops.scoring import available_criteria

        if value not in available_criteria():
            known = ", ".join(sorted(available_criteria()))
            raise ValueError(f"unknown criterion {value!r}; choose one of: {known}")
        return value

    @field_validator("input_shapes")
    @classmethod
    def _positive_dims(cls, value: dict[str, list[int]]) -> dict[str, list[int]]:
        for name, dims in value.items():
            if not dims or any(d <= 0 for d in dims):
                raise ValueError(f"input shape for {name!r} must be positive dims, got {dims}")
        return value

    @model_validator(mode="after")
    def _one_target(self) -> "PruneOptions":
        if self.ratio is not None and self.flops_target is not None:
            raise ValueError("give either ratio or flops_target, not both")
        if self.ratio is None and self.flops_target is None:
            self.ratio = 0.5
        return self
