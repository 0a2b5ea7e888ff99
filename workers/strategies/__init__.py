"""Ways of choosing channels and of recovering, one module each, and the one function that picks
them from a job's options (see ``base`` for the concepts; docs/ARCHITECTURE.md for how to add one)."""

from __future__ import annotations

from onnxprune.graphops.errors import ModelRejected
from onnxprune.graphops.plan import PruningPlan
from onnxprune.workers.options import AutoTarget, LatencyTarget, LearnedTarget, MacsTarget, PruneOptions, RatioTarget
from onnxprune.workers.strategies.auto import AutoRatios
from onnxprune.workers.strategies.base import Job, Outcome, Schedule, Selection, Selector, Step
from onnxprune.workers.strategies.finetune import FineTune
from onnxprune.workers.strategies.latency import LatencyTargetSelector
from onnxprune.workers.strategies.learned import LearnedSearch
from onnxprune.workers.strategies.needs import Given, Needs, job_needs
from onnxprune.workers.strategies.ranked import RankedByMacs, RankedByRatio
from onnxprune.workers.strategies.reconstruct import Reconstruct
from onnxprune.workers.strategies.recovery import NoRecovery, Recovery
from onnxprune.workers.strategies.saved_plan import SavedPlan
from onnxprune.workers.strategies.stepwise import Stepwise

__all__ = [
    "Given",
    "Job",
    "Needs",
    "Outcome",
    "Schedule",
    "Selection",
    "Selector",
    "Step",
    "choose_schedule",
    "job_needs",
    "round_trip_reason",
]


def choose_selector(options: PruneOptions, plan: PruningPlan | None = None) -> Selector:
    """How channels are chosen: a saved plan, else the options' target."""
    if plan is not None:
        return SavedPlan(plan)
    target = options.target
    if isinstance(target, MacsTarget):
        return RankedByMacs(target.fraction)
    if isinstance(target, AutoTarget):
        return AutoRatios(target.max_drop)
    if isinstance(target, RatioTarget):
        return RankedByRatio(target.ratio)
    if isinstance(target, LatencyTarget):
        return LatencyTargetSelector(target.ratio, step_from_table=options.round_to == "auto")
    raise ValueError(f"target {target.kind!r} has no selector; it is a schedule of its own")


def choose_recovery(options: PruneOptions, *, has_data: bool) -> Recovery:
    """What restores the pruned model: fine-tuning (with BatchNorm re-estimation) when asked for,
    or when data and a time budget are given (the budget then sets the number of steps)."""
    budgeted = options.time_budget is not None and has_data
    then: Recovery = NoRecovery()
    if options.recovery != "reconstruct" and (options.finetune_steps > 0 or options.iterative_steps > 1 or budgeted):
        then = FineTune.from_options(options, budgeted=budgeted)
    if has_data and options.recovery in ("auto", "reconstruct"):  # layer-wise reconstruction first, by default
        return Reconstruct(then, samples=options.reconstruct_samples)
    return then


def round_trip_reason(options: PruneOptions, *, has_data: bool, plan_given: bool = False) -> str | None:
    """What in this job runs the graph in PyTorch (``roundtrip``), in the options' words, or None
    (``job_needs(...).torch``: what the chosen strategies declare)."""
    return job_needs(options, has_data=has_data, plan_given=plan_given).torch


def choose_schedule(options: PruneOptions, plan: PruningPlan | None = None, *, has_data: bool = False) -> Schedule:
    """The one place a job's options turn into strategies."""
    if plan is not None and options.iterative_steps > 1:
        raise ModelRejected("a saved plan is applied in one step; drop --iterative-steps or --plan-in")
    target = options.target
    if isinstance(target, LearnedTarget) and plan is None:
        return LearnedSearch(target.max_drop)
    return Stepwise(
        choose_selector(options, plan), choose_recovery(options, has_data=has_data), steps=options.iterative_steps
    )
