"""Selector: a plan saved earlier (``--plan-in``), checked against this model and applied as it is."""

from __future__ import annotations

from dataclasses import dataclass

from onnxprune.graphops.dependency import DependencyGraph
from onnxprune.graphops.plan import PruningPlan
from onnxprune.workers.options import PruneOptions
from onnxprune.workers.strategies.base import Job, Selection, Step
from onnxprune.workers.strategies.needs import NOTHING, Given, Needs


@dataclass
class SavedPlan:
    plan: PruningPlan

    def needs(self, options: PruneOptions, given: Given) -> Needs:
        return NOTHING  # nothing is scored

    def select(self, job: Job, dep: DependencyGraph, step: Step) -> Selection:
        with job.stages.stage("select"):
            self.plan.check(dep)
        return Selection(self.plan, from_saved_plan=True)
