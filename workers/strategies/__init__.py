"""Ways of choosing channels, recovering and finishing, one module each, registered where they are
defined (``registry``), and the one function that picks them from a job's options (see ``base`` for
the concepts; docs/ARCHITECTURE.md for how to add one)."""

from __future__ import annotations

from typing import Any

from onnxprune.graphops.errors import ModelRejected
from onnxprune.graphops.plan import PruningPlan
from onnxprune.workers.options import PruneOptions
from onnxprune.workers.strategies import (
    auto,
    finetune,
    finish,
    latency,
    learned,
    ranked,
    reconstruct,
    saved_plan,
    stepwise,
)
from onnxprune.workers.strategies.base import Job, Outcome, Schedule, Selection, Selector, Step
from onnxprune.workers.strategies.needs import Given, Needs, job_needs
from onnxprune.workers.strategies.recovery import NoRecovery, Recovery
from onnxprune.workers.strategies.registry import Kind, registered

# Importing a strategy's module registers it (``registry.register``): adding a module here registers it.
STRATEGY_MODULES = (auto, finetune, finish, latency, learned, ranked, reconstruct, saved_plan, stepwise)

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


def _first_wanted(kind: Kind, options: PruneOptions, given: Given) -> Any:
    """The class of the first registered strategy of ``kind`` (by position) that the job wants, or None."""
    for found in registered(kind):
        cls: Any = found.cls
        if cls.wanted(options, given):
            return cls
    return None


def _wanted_selector(options: PruneOptions, plan: PruningPlan | None) -> Selector | None:
    cls = _first_wanted("selector", options, Given(plan=plan is not None))
    selector: Selector | None = None if cls is None else cls.build(options, plan)
    return selector


def choose_selector(options: PruneOptions, plan: PruningPlan | None = None) -> Selector:
    """How channels are chosen: a saved plan, else the selector registered for the options' target."""
    selector = _wanted_selector(options, plan)
    if selector is None:
        raise ValueError(f"target {options.target.kind!r} has no selector; it is a schedule of its own")
    return selector


def choose_recovery(options: PruneOptions, *, has_data: bool) -> Recovery:
    """What restores the pruned model: every registered recovery the job wants, in their order
    (layer-wise reconstruction with data, by default; then fine-tuning when asked for, or when data
    and a time budget are given), each built on the one that runs after it; no recovery if none is."""
    given = Given(data=has_data)
    chosen: Recovery = NoRecovery()
    for found in reversed(registered("recovery")):
        cls: Any = found.cls
        if cls.wanted(options, given):
            chosen = cls.build(options, given, chosen)
    return chosen


def round_trip_reason(options: PruneOptions, *, has_data: bool, plan_given: bool = False) -> str | None:
    """What in this job runs the graph in PyTorch (``roundtrip``), in the options' words, or None
    (``job_needs(...).torch``: what the chosen strategies declare)."""
    return job_needs(options, has_data=has_data, plan_given=plan_given).torch


def choose_schedule(options: PruneOptions, plan: PruningPlan | None = None, *, has_data: bool = False) -> Schedule:
    """The one place a job's options turn into strategies: the first registered schedule the job
    wants, built with the selector and the recovery the job wants (a schedule of its own, such as the
    learned search, may ignore them)."""
    if plan is not None and options.iterative_steps > 1:
        raise ModelRejected("a saved plan is applied in one step; drop --iterative-steps or --plan-in")
    given = Given(data=has_data, plan=plan is not None)
    cls = _first_wanted("schedule", options, given)
    schedule: Schedule = cls.build(
        options, _wanted_selector(options, plan), choose_recovery(options, has_data=has_data)
    )
    return schedule
