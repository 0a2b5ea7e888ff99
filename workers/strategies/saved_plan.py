"""Selector: a plan saved earlier (``--plan-in``), checked against this model and applied as it is."""

from __future__ import annotations

from dataclasses import dataclass

from onnxprune.graphops.dependency import DependencyGraph
from onnxprune.graphops.plan import PruningPlan
from onnxprune.workers.options import PruneOptions
from onnxprune.workers.strategies.base import Job, Selection, Step
from onnxprune.workers.strategies.needs import NOTHING, Given, Needs
from onnxprune.workers.strategies.registry import register


@register("selector", "plan", position=0)  # chosen by the plan given with the job (--plan-in), not by an option
@dataclass
class SavedPlan:
    plan: PruningPlan

    @classmethod
    def wanted(cls, options: PruneOptions, given: Given) -> bool:
        return given.plan

    @classmethod
    def build(cls, options: PruneOptions, plan: PruningPlan | None) -> SavedPlan:
        if plan is None:
            raise ValueError("a saved-plan selector without a plan")
        return cls(plan)

    def needs(self, options: PruneOptions, given: Given) -> Needs:
        return NOTHING  # nothing is scored

    def select(self, job: Job, dep: DependencyGraph, step: Step) -> Selection:
        with job.stages.stage("select"):
            self.plan.check(dep)
        return Selection(self.plan, from_saved_plan=True)
