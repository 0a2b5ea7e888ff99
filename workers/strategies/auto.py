"""Selector: per-group ratios from sensitivity curves (``--ratio auto --max-drop``, Li et al.):
each group is cut as far as its curve stays within the bound, then the combined plan is checked on
held-out samples and the per-group budget lowered until it passes (``workers.sensitivity``)."""

from __future__ import annotations

from dataclasses import dataclass

from graphops.dependency import DependencyGraph
from workers.sensitivity import AutoSelection, auto_for_job
from workers.strategies.base import Job, Selection, Step


@dataclass
class AutoRatios:
    max_drop: float

    def select(self, job: Job, dep: DependencyGraph, step: Step) -> Selection:
        with job.stages.stage("score"):
            scores = job.scores(dep)
        with job.stages.stage("select"):
            auto, sensitivity = auto_for_job(
                job.analysis.path,
                job.analysis.sha256,
                dep,
                scores,
                job.analysis.cost,
                criterion=job.options.criterion,
                max_drop=self.max_drop,
                data=job.dataset,
                sensitivity=job.sensitivity,
                round_to=job.round_to,
                exclude=job.options.exclude,
                progress=lambda done, total, _group: job.stages.within("select", done / max(total, 1)),
                limits=job.limits,
            )
        return Selection(auto.plan, notes=self._notes(auto), group_ratios=auto.ratios, sensitivity=sensitivity)

    def _notes(self, auto: AutoSelection) -> list[str]:
        """What ratio 'auto' had to give up, in words for the report."""
        if auto.held_out_after is None:
            return ["ratio auto: the combined drop was not checked on held-out data (no data given)"]
        if not auto.plan.groups:
            return [f"ratio auto: no plan kept the held-out drop within {self.max_drop}; nothing was pruned"]
        if auto.budget < self.max_drop:
            return [
                f"ratio auto: per-group budget lowered from {self.max_drop} to {auto.budget:.4g} so that the "
                f"groups pruned together stay within {self.max_drop} on held-out data"
            ]
        return []
