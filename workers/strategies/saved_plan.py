"""Selector: a plan saved earlier (``--plan-in``), checked against this model and applied as it is."""

from __future__ import annotations

from dataclasses import dataclass

from onnxprune.graphops.dependency import DependencyGraph
from onnxprune.graphops.plan import PruningPlan
from onnxprune.workers.strategies.base import Job, Selection, Step


@dataclass
class SavedPlan:
    plan: PruningPlan

    def select(self, job: Job, dep: DependencyGraph, step: Step) -> Selection:
        with job.stages.stage("select"):
            self.plan.check(dep)
        return Selection(self.plan, from_saved_plan=True)
