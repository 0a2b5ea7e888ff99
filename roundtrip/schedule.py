"""Prune with data: one-shot prune then fine-tune (Li et al.), or iterative small steps each
followed by a short fine-tune (Molchanov et al.), until the ratio or MACs target.

Each step analyses the current model, scores it, selects a step, applies the plan, hands the
surgery to ``verify`` (the pipeline's oracle: pruned vs masked, before any training), re-estimates
BatchNorm statistics, fine-tunes through the executor and writes the weights back. The plans of all
steps compose into one plan on the original model, so ``--plan-out`` still describes the result.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx

from graphops.cost import measure_cost
from graphops.dependency import DependencyGraph, analyze
from graphops.errors import GraphOpsError
from graphops.plan import PruningPlan
from graphops.scoring import score_groups
from graphops.selection import select_by_flops, select_by_ratio
from graphops.surgery import apply_plan
from roundtrip.context import DataContext

Verify = Callable[[DependencyGraph, PruningPlan, onnx.ModelProto], None]
Progress = Callable[[str, float], None]
BN_BATCHES = 20


class ScheduleError(GraphOpsError):
    """The composed plan does not reproduce the model the steps built: an onnxprune bug."""


@dataclass(frozen=True)
class Step:
    """How much one step removes: a per-group ratio or a MACs fraction of the current model."""

    ratio: float | None = None
    flops_target: float | None = None


@dataclass
class Settings:
    criterion: str
    ratio: float | None
    flops_target: float | None
    round_to: int = 1
    exclude: tuple[str, ...] = ()
    seed: int = 0
    iterative_steps: int = 1
    finetune_steps: int = 0
    lr: float = 0.01
    batch_size: int = 32
    flops_regularization: float = 0.0
    reconstruct: bool = False  # layer-wise reconstruction after each pruning step (roundtrip.reconstruction)
    reconstruct_samples: int = 256
    deadline: float | None = None  # time.perf_counter() by which recovery must end (--time-budget)
    budget_started: float | None = None  # when the job started, for progress against the budget
    time_budget: float | None = None
    augment: bool = False
    optimizer: str = "sgd"
    warmup: float = 0.0
    select_best: bool = False  # best-checkpoint selection on the held-out split


@dataclass
class IterationRecord:
    iteration: int
    macs: int
    removed_channels: int
    after_pruning: object  # roundtrip.training.Metrics, BatchNorm statistics re-estimated
    after_finetune: object | None
    final_loss: float | None
    reconstructed: object | None = None  # roundtrip.reconstruction.ReconstructionResult (its model dropped)


@dataclass
class ScheduleResult:
    model: onnx.ModelProto  # the final model, fine-tuned weights written back
    plan: PruningPlan  # all steps composed, on the original model
    pruned_only: onnx.ModelProto  # that plan applied to the original weights: pruning without recovery
    iterations: list[IterationRecord]
    losses: list[float]
    check_inputs: dict[str, np.ndarray]  # held-out samples and what the executor gives on them,
    check_outputs: dict[str, np.ndarray]  # for the pipeline's write-back check in onnxruntime
    seconds: dict[str, float] = field(default_factory=dict)


def step_targets(settings: Settings) -> list[Step]:
    """Cumulative targets reached after each of ``iterative_steps`` steps (fractions of the original)."""
    k = max(1, settings.iterative_steps)
    if settings.flops_target is not None:
        return [Step(flops_target=settings.flops_target * (i + 1) / k) for i in range(k)]
    return [Step(ratio=(settings.ratio or 0.0) * (i + 1) / k) for i in range(k)]


def _select(dep: DependencyGraph, scores, goal: Step, done: Step, settings: Settings, macs_original: int,
            macs_now: int) -> PruningPlan:
    """The plan that takes the current model from ``done`` to ``goal`` (empty when nothing is left)."""
    if goal.flops_target is not None:
        fraction = 1.0 - (1.0 - goal.flops_target) * macs_original / max(macs_now, 1)
        if fraction <= 1e-9:
            return PruningPlan({})
        return select_by_flops(dep, scores, min(fraction, 0.999), round_to=settings.round_to, exclude=settings.exclude)
    ratio = 1.0 - (1.0 - (goal.ratio or 0.0)) / (1.0 - (done.ratio or 0.0))
    if ratio <= 1e-9:
        return PruningPlan({})
    return select_by_ratio(dep, scores, min(ratio, 0.999), round_to=settings.round_to, exclude=settings.exclude)


def compose_plans(composed: dict[str, list[int]], dep_original: DependencyGraph, dep_now: DependencyGraph,
                  plan: PruningPlan) -> dict[str, list[int]]:
    """Map a step's kept indices (on the current model) back to the original's channel indices."""
    result = dict(composed)
    original_ids = {g.id for g in dep_original.groups}
    for group_id, keep in plan.keep.items():
        if group_id not in original_ids:
            raise ScheduleError(f"group '{group_id}' of a pruning step is not a group of the original model")
        base = result.get(group_id, list(range(dep_original.group(group_id).channels)))
        if len(base) != dep_now.group(group_id).channels:
            raise ScheduleError(f"group '{group_id}' has {dep_now.group(group_id).channels} channels, "
                                f"the composed plan {len(base)}")
        result[group_id] = [base[i] for i in keep]
    return result


def same_structure(a: onnx.ModelProto, b: onnx.ModelProto) -> bool:
    shapes = lambda m: {init.name: tuple(init.dims) for init in m.graph.initializer}  # noqa: E731
    return shapes(a) == shapes(b) and [n.name for n in a.graph.node] == [n.name for n in b.graph.node]


def recover(
    dep: DependencyGraph,
    first_plan: PruningPlan,
    first_pruned: onnx.ModelProto,
    settings: Settings,
    context: DataContext,
    *,
    verify: Verify,
    progress: Progress | None = None,
) -> ScheduleResult:
    """Fine-tune the first step's pruned model (already verified by the caller), then run the
    remaining iterative steps, each verified and fine-tuned; see the module docstring."""
    from roundtrip.executor import OnnxModule
    from roundtrip.reconstruction import reconstruct
    from roundtrip.training import evaluate, finetune, outputs_on, plan_steps, recalibrate_batchnorm
    from roundtrip.writeback import write_back

    report = progress or (lambda label, fraction: None)
    seconds: dict[str, float] = {}

    def timed(stage: str, started: float) -> None:
        seconds[stage] = round(seconds.get(stage, 0.0) + time.perf_counter() - started, 4)

    objective, batch_size = context.objective, context.batch_size
    macs_original = measure_cost(dep.model, dep.input_shapes).macs
    targets = step_targets(settings)
    total = len(targets)
    composed = compose_plans({}, dep, dep, first_plan)
    iterations: list[IterationRecord] = []
    losses: list[float] = []
    current_dep, step_plan, pruned = dep, first_plan, first_pruned
    for index in range(total):
        label = f"step {index + 1}/{total}: " if total > 1 else ""
        low, high = index / total, (index + 1) / total
        if index > 0:
            report(f"{label}score", low)
            started = time.perf_counter()
            current_dep = analyze(current, dep.input_shapes)
            scores = score_groups(current_dep, settings.criterion, seed=settings.seed + index, data=context,
                                  flops_regularization=settings.flops_regularization)
            timed("score", started)
            started = time.perf_counter()
            macs_now = measure_cost(current_dep.model, current_dep.input_shapes).macs
            step_plan = _select(current_dep, scores, targets[index], targets[index - 1], settings, macs_original, macs_now)
            timed("select", started)
            started = time.perf_counter()
            pruned = apply_plan(current_dep, step_plan)
            timed("apply", started)
            started = time.perf_counter()
            verify(current_dep, step_plan, pruned)
            timed("verify", started)
            composed = compose_plans(composed, dep, current_dep, step_plan)
        reconstructed = None
        if settings.reconstruct:
            # Targets are the ORIGINAL model's layer outputs, whatever step this is: the plan so far, composed.
            started = time.perf_counter()
            report(f"{label}reconstruct", low + 0.1 * (high - low))
            so_far = PruningPlan.from_keep(dep, {gid: keep for gid, keep in composed.items()
                                                 if len(keep) < dep.group(gid).channels})
            reconstructed = reconstruct(dep, so_far, pruned, context.train, samples=settings.reconstruct_samples,
                                        seed=settings.seed + index, teacher=objective.teacher)
            pruned = reconstructed.model
            reconstructed.model = None
            timed("reconstruct", started)
        started = time.perf_counter()
        student = OnnxModule(pruned)
        # Reconstruction refits layers to the original's pre-normalisation outputs, for which the stored
        # BatchNorm statistics are right; without it they are stale and are re-estimated.
        recalibrated = (not settings.reconstruct
                        and recalibrate_batchnorm(student, context.train, batch_size, BN_BATCHES, settings.seed + index))
        after_pruning = evaluate(student, objective, context.holdout, batch_size)
        timed("evaluate", started)
        after_finetune, final_loss = None, None
        steps = settings.finetune_steps
        if steps == 0 and settings.deadline is not None:
            left = (settings.deadline - time.perf_counter()) / (total - index)
            steps = plan_steps(student, objective, context.train, batch_size, left, augment=settings.augment,
                               evaluation_samples=len(context.holdout) if settings.select_best else 0)
            seconds["planned_steps"] = seconds.get("planned_steps", 0) + steps
        if steps > 0:
            started = time.perf_counter()
            start = low + 0.2 * (high - low)

            def step_progress(step: int, steps: int, loss: float, start=start, high=high, label=label) -> None:
                if step == steps or step % max(1, steps // 20) == 0:
                    budget = ""
                    if settings.time_budget is not None and settings.budget_started is not None:
                        budget = f", {time.perf_counter() - settings.budget_started:.0f}/{settings.time_budget:.0f} s"
                    report(f"{label}finetune {step}/{steps}, loss {loss:.4g}{budget}", start + (high - start) * step / steps)

            step_losses = finetune(student, objective, context.train, steps=steps, lr=settings.lr,
                                   batch_size=batch_size, seed=settings.seed + index, progress=step_progress,
                                   optimizer=settings.optimizer, warmup=settings.warmup, augment=settings.augment,
                                   select_on=context.holdout if settings.select_best else None)
            if recalibrated:
                recalibrate_batchnorm(student, context.train, batch_size, BN_BATCHES, settings.seed + index)
            losses += step_losses
            final_loss = step_losses[-1]
            timed("finetune", started)
            started = time.perf_counter()
            after_finetune = evaluate(student, objective, context.holdout, batch_size)
            timed("evaluate", started)
        current = write_back(pruned, student)
        iterations.append(IterationRecord(index + 1, measure_cost(current, dep.input_shapes).macs,
                                          step_plan.removed_channels, after_pruning, after_finetune, final_loss,
                                          reconstructed))
    final_plan = PruningPlan.from_keep(dep, {gid: keep for gid, keep in composed.items()
                                             if len(keep) < dep.group(gid).channels})
    pruned_only = apply_plan(dep, final_plan)
    if not same_structure(pruned_only, current):
        raise ScheduleError("the composed plan does not reproduce the structure the pruning steps built")
    check_inputs = next(context.holdout.batches(min(len(context.holdout), student.static_batch or 4))).inputs
    check_outputs = outputs_on(student, check_inputs)
    return ScheduleResult(model=current, plan=final_plan, pruned_only=pruned_only, iterations=iterations,
                          losses=losses, check_inputs=check_inputs, check_outputs=check_outputs, seconds=seconds)
