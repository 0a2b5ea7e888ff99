"""What a recovery strategy gets and gives back for one pruning step."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import onnx

from onnxprune.graphops.dependency import DependencyGraph
from onnxprune.graphops.plan import PruningPlan
from onnxprune.workers.options import PruneOptions
from onnxprune.workers.strategies.base import Job, Step
from onnxprune.workers.strategies.needs import NOTHING, Given, Needs
from onnxprune.workers.strategies.registry import register


@dataclass
class Recovered:
    """A step's model after recovery. ``check_inputs``/``check_outputs``: what the recovered weights
    compute in the PyTorch executor, for the write-back check in onnxruntime (None: weights untouched)."""

    model: onnx.ModelProto
    record: Any = None  # roundtrip.schedule.IterationRecord
    losses: list[float] = field(default_factory=list)
    check_inputs: dict[str, np.ndarray] | None = None
    check_outputs: dict[str, np.ndarray] | None = None
    reconstructed: list[str] | None = None  # layers refit by layer-wise reconstruction (None: it did not run)
    reconstruction_skipped: dict[str, str] = field(default_factory=dict)
    reconstruction_not_kept: dict[str, str] = field(default_factory=dict)  # refit, but it did not help: why
    reconstruction_samples: int = 0  # calibration samples the refits were fit and judged on
    reconstruction_ridges: dict[str, float] = field(default_factory=dict)  # refit -> ridge strength it chose
    reconstruction_left_by_deadline: list[str] = field(default_factory=list)  # not refit: the deadline came
    reconstruction_seconds: float = 0.0
    finetune_seconds: float = 0.0  # wall time of the fine-tuning loop
    finetune_cpu_seconds: float = 0.0  # CPU time the job got meanwhile (all its threads)


class Recovery(Protocol):
    """Brings a pruned model (already verified by the oracle) back towards the original.

    A recovery class registers itself (``registry.register("recovery", name, ...)``) and says when a
    job wants it and how it is built from the job's options: ``wanted(options, given) -> bool`` and
    ``build(options, given, then) -> Recovery``, ``then`` being the recovery that runs after it (the
    registered recoveries a job wants run in registration order; ``workers.strategies.choose_recovery``)."""

    def needs(self, options: PruneOptions, given: Given) -> Needs:
        """What recovering needs besides the model (data, PyTorch): see ``strategies.needs``."""
        ...

    def recover(
        self, job: Job, dep: DependencyGraph, plan: PruningPlan, pruned: onnx.ModelProto, step: Step
    ) -> Recovered: ...


@register("recovery", "none", position=100)
class NoRecovery:
    """The pruned model as surgery left it: what is left when a job wants no other recovery."""

    @classmethod
    def wanted(cls, options: PruneOptions, given: Given) -> bool:
        return False  # never asked for by itself: the end of every chain of recoveries

    @classmethod
    def build(cls, options: PruneOptions, given: Given, then: Recovery) -> NoRecovery:
        return cls()

    def needs(self, options: PruneOptions, given: Given) -> Needs:
        return NOTHING

    def recover(
        self, job: Job, dep: DependencyGraph, plan: PruningPlan, pruned: onnx.ModelProto, step: Step
    ) -> Recovered:
        return Recovered(pruned)
