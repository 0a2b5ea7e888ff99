"""Options of a pruning job: one typed model shared by the CLI, the REST config and workers."""

from __future__ import annotations

import re
from typing import Annotated, Literal

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
    ratio: float | Literal["auto"] | None = Field(
        None, description="Fraction of channels removed from every prunable group (Li et al.), or 'auto': "
        "per-group ratios from sensitivity curves within max_drop (needs data; docs/SENSITIVITY.md).",
    )
    max_drop: Annotated[float, Field(gt=0.0, lt=1.0)] | None = Field(
        None, description="With ratio 'auto' or criterion 'learned': tolerated drop of accuracy (or fidelity) on "
        "held-out data, as a fraction; default 0.01."
    )
    flops_target: Annotated[float, Field(gt=0.0, lt=1.0)] | None = Field(
        None, description="Fraction of MACs to remove, by global ranking of layer-normalised scores."
    )
    round_to: Annotated[int, Field(ge=1, le=1024)] | Literal["auto"] = Field(
        "auto", description="Keep channel counts multiples of this number; 'auto': where onnxruntime's blocked conv "
        "kernels run faster (the measured latency staircase, else the CPU's vector width: 16 with AVX-512, 8 with "
        "AVX2); 1: exact counts."
    )
    latency_target: Annotated[float, Field(gt=0.0, lt=1.0)] | None = Field(
        None, description="Keep the measured onnxruntime latency at most this times the original's (HALP-style "
        "importance per millisecond from a measured latency table; checked and refined by timing the result)."
    )
    latency_budget_s: Annotated[float, Field(gt=0.0, le=3600.0)] = Field(
        60.0, description="latency_target: seconds the latency table may take to measure (largest groups first; "
        "the rest are estimated from MACs). Tables are cached per model, onnxruntime version, settings and CPU."
    )
    latency_iterations: Annotated[int, Field(ge=1, le=10)] = Field(
        3, description="latency_target: at most this many prune-and-measure passes to meet the target."
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
    # Data-driven pruning (the data file itself comes with the job, never as a path in the config).
    finetune_steps: Annotated[int, Field(ge=0, le=1_000_000)] = Field(
        0, description="Fine-tuning steps after each pruning step (needs data); 0: no fine-tuning."
    )
    iterative_steps: Annotated[int, Field(ge=1, le=1000)] = Field(
        1, description="Reach the target in this many prune-then-fine-tune steps (Molchanov et al.); 1: one-shot."
    )
    lr: Annotated[float, Field(gt=0.0, le=10.0)] = Field(0.01, description="Fine-tuning learning rate (SGD, momentum 0.9, cosine decay).")
    batch_size: Annotated[int, Field(ge=1, le=4096)] = Field(32, description="Batch size for scoring, fine-tuning and evaluation.")
    score_batches: Annotated[int, Field(ge=1, le=10_000)] = Field(
        8, description="Batches of data the data-driven criteria look at."
    )
    learned_episodes: Annotated[int, Field(ge=1, le=10_000)] = Field(
        20, description="Criterion 'learned': agent training episodes per layer (docs/LEARNED.md)."
    )
    learned_samples: Annotated[int, Field(ge=2, le=1000)] = Field(
        8, description="Criterion 'learned': prunings sampled and tried on held-out data per episode."
    )
    flops_regularization: Annotated[float, Field(ge=0.0)] = Field(
        0.0, description="Taylor only: subtract this times each layer's relative MACs per channel (Molchanov et al.)."
    )

    @field_validator("criterion")
    @classmethod
    def _known_criterion(cls, value: str) -> str:
        from graphops.scoring import available_criteria

        if value not in available_criteria():
            known = ", ".join(sorted(available_criteria()))
            raise ValueError(f"unknown criterion {value!r}; choose one of: {known}")
        return value

    def data_requirement(self, *, sensitivity_given: bool = False) -> str | None:
        """Why this job needs a data file, or None when it runs without one (checked before any
        model is read, by the CLI and at upload)."""
        from graphops.scoring import criterion_needs_data

        if criterion_needs_data(self.criterion):
            return f"criterion '{self.criterion}' needs data"
        if self.finetune_steps > 0 or self.iterative_steps > 1:
            return "fine-tuning needs data"
        if self.ratio == "auto" and not sensitivity_given:
            return "ratio 'auto' needs data (or a sensitivity file) to measure each group's drop"
        return None

    @field_validator("ratio", mode="before")
    @classmethod
    def _ratio_in_range(cls, value: object) -> object:
        # Checked here rather than by Field bounds: with the "auto" alternative, pydantic would
        # report the bound per union member ("ratio.constrained-float ... (and 1 more)").
        if value is None or value == "auto":
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError(f"ratio must be a number in [0, 1) or 'auto', got {value!r}")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"ratio must be a number in [0, 1) or 'auto', got {value!r}") from None
        if not 0.0 <= number < 1.0:
            raise ValueError(f"ratio must be in [0, 1), got {number:g}")
        return number

    @field_validator("round_to", mode="before")
    @classmethod
    def _round_to_word_or_step(cls, value: object) -> object:
        # One message for both alternatives (pydantic would name the union members).
        if value == "auto":
            return value
        try:
            number = int(str(value)) if isinstance(value, str) else value
        except ValueError:
            number = None
        if isinstance(number, bool) or not isinstance(number, (int, float)) or number != int(number) \
                or not 1 <= number <= 1024:
            raise ValueError(f"must be 'auto' or a whole number from 1 to 1024, got {value!r}")
        return int(number)

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
        if self.latency_target is not None:
            if (self.ratio is not None or self.flops_target is not None or self.criterion == "learned"
                    or self.max_drop is not None):
                raise ValueError("latency_target chooses every group's count itself; drop ratio, flops_target, "
                                 "max_drop and criterion 'learned'")
            if self.iterative_steps > 1:
                raise ValueError("latency_target prunes in one step; drop iterative_steps")
            return self
        if self.criterion == "learned":
            return self._learned()
        if self.ratio is None and self.flops_target is None:
            self.ratio = 0.5
        if self.max_drop is not None and self.ratio != "auto":
            raise ValueError("max_drop applies only to ratio 'auto' or criterion 'learned'")
        if self.ratio == "auto" and self.max_drop is None:
            self.max_drop = 0.01
        if self.iterative_steps > 1 and self.ratio == "auto":
            raise ValueError("iterative_steps needs a numeric ratio or a flops_target, not ratio 'auto'")
        return self

    def _learned(self) -> "PruneOptions":
        """The learned criterion chooses every layer's count from max_drop: no ratio, no MACs target."""
        if self.ratio is not None or self.flops_target is not None:
            raise ValueError("criterion 'learned' chooses how many filters each layer keeps from max_drop; "
                             "drop ratio and flops_target")
        if self.iterative_steps > 1:
            raise ValueError("criterion 'learned' prunes layer by layer with fine_tuning after each; drop iterative_steps")
        if self.max_drop is None:
            self.max_drop = 0.01
        return self
