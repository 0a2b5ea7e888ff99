"""What the schedules that prune in steps share (``workers.strategies.stepwise`` and the learned
search): the record of each step, and the plans of all steps composed into one plan on the original
model, so ``--plan-out`` still describes the result.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxprune.graphops.dependency import DependencyGraph
from onnxprune.graphops.errors import GraphOpsError
from onnxprune.graphops.plan import PruningPlan

Verify = Callable[[DependencyGraph, PruningPlan, onnx.ModelProto], None]
Progress = Callable[[str, float], None]
BN_BATCHES = 20


class ScheduleError(GraphOpsError):
    """The composed plan does not reproduce the model the steps built: an onnxprune bug."""


@dataclass
class IterationRecord:
    iteration: int
    macs: int
    removed_channels: int
    after_pruning: object  # roundtrip.training.Metrics, BatchNorm statistics re-estimated
    after_finetune: object | None
    final_loss: float | None
    kept_step: int | None = None  # the fine-tuning step whose weights were kept (best on validation)


@dataclass
class ScheduleResult:
    model: onnx.ModelProto  # the final model, fine-tuned weights written back
    plan: PruningPlan  # all steps composed, on the original model
    pruned_only: onnx.ModelProto  # that plan applied to the original weights: pruning without recovery
    iterations: list[IterationRecord]
    losses: list[float]
    check_inputs: dict[str, np.ndarray]  # validation samples and what the executor gives on them,
    check_outputs: dict[str, np.ndarray]  # for the pipeline's write-back check in onnxruntime
    seconds: dict[str, float] = field(default_factory=dict)


def compose_plans(
    composed: dict[str, list[int]], dep_original: DependencyGraph, dep_now: DependencyGraph, plan: PruningPlan
) -> dict[str, list[int]]:
    """Map a step's kept indices (on the current model) back to the original's channel indices."""
    result = dict(composed)
    original_ids = {g.id for g in dep_original.groups}
    for group_id, keep in plan.keep.items():
        if group_id not in original_ids:
            raise ScheduleError(f"group '{group_id}' of a pruning step is not a group of the original model")
        base = result.get(group_id, list(range(dep_original.group(group_id).channels)))
        if len(base) != dep_now.group(group_id).channels:
            raise ScheduleError(
                f"group '{group_id}' has {dep_now.group(group_id).channels} channels, the composed plan {len(base)}"
            )
        result[group_id] = [base[i] for i in keep]
    return result


def _initializer_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    return {init.name: tuple(init.dims) for init in model.graph.initializer}


def same_structure(a: onnx.ModelProto, b: onnx.ModelProto) -> bool:
    return _initializer_shapes(a) == _initializer_shapes(b) and [n.name for n in a.graph.node] == [
        n.name for n in b.graph.node
    ]
