"""Selector: per-group ratios from sensitivity curves (``--ratio auto --max-drop``, Li et al.):
each group is cut as far as its curve allows within a per-group budget, and the combined plan is
judged on validation samples after the job's cheap recovery (``workers.strategies.judge``), the
budget searched until the combined drop is as close to the bound as it gets (``workers.sensitivity``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from onnxprune.graphops.dependency import DependencyGraph
from onnxprune.graphops.plan import PruningPlan
from onnxprune.workers.options import PruneOptions
from onnxprune.workers.sensitivity import AutoSelection, auto_for_job
from onnxprune.workers.strategies.base import Job, Selection, Step
from onnxprune.workers.strategies.judge import PlanJudge, choose_judge
from onnxprune.workers.strategies.needs import NOTHING, Given, Needs, criterion_needs
from onnxprune.workers.strategies.registry import Requires, StrategyOptions, own, register


class AutoOptions(StrategyOptions):
    ratio: float | Literal["auto"] | None = own("ratio")
    max_drop: float | None = own("max_drop")
    criterion: str = own("criterion")


@register("selector", "auto", options=AutoOptions, requires=Requires(data=True, torch=True), report="sensitivity")
@dataclass
class AutoRatios:
    max_drop: float

    @classmethod
    def wanted(cls, options: PruneOptions, given: Given) -> bool:
        return options.target.kind == "auto"

    @classmethod
    def build(cls, options: PruneOptions, plan: PruningPlan | None) -> AutoRatios:
        max_drop = AutoOptions.of(options).max_drop
        if max_drop is None:  # the schema sets it with ratio 'auto'
            raise ValueError("ratio 'auto' without max_drop")
        return cls(max_drop)

    def needs(self, options: PruneOptions, given: Given) -> Needs:
        """Each group's drop is measured on data, unless a sensitivity file has the curves. (Judging the
        combined plan after reconstruction is the recovery's need: ``Reconstruct`` declares it.)"""
        curves = NOTHING
        if not given.sensitivity:
            curves = Needs(data="ratio 'auto' needs data (or a sensitivity file) to measure each group's drop")
        return criterion_needs(options) | curves

    def select(self, job: Job, dep: DependencyGraph, step: Step) -> Selection:
        with job.stages.stage("score"):
            scores = job.scores(dep)
        with job.stages.stage("select"):
            judge = choose_judge(job) if job.splits is not None else None
            auto, sensitivity = auto_for_job(
                job.analysis.path,
                job.analysis.sha256,
                dep,
                scores,
                job.analysis.cost,
                criterion=job.options.criterion,
                max_drop=self.max_drop,
                train=None if job.splits is None else job.splits.train,
                check=None if judge is None else (lambda plan: judge(dep, plan)),
                baseline=None if judge is None else judge.baseline,
                sensitivity=job.sensitivity,
                round_to=job.round_to,
                exclude=job.options.exclude,
                progress=lambda done, total, _group: job.stages.within("select", done / max(total, 1)),
                limits=job.limits,
            )
        before, after = auto.validation_before, auto.validation_after
        return Selection(
            auto.plan,
            notes=self._notes(auto, judge),
            group_ratios=auto.ratios,
            sensitivity=sensitivity,
            validation_drop=before - after if before is not None and after is not None and auto.plan.groups else None,
        )

    def _notes(self, auto: AutoSelection, judge: PlanJudge | None) -> list[str]:
        """What ratio 'auto' measured and had to give up, in words for the report."""
        if judge is None or auto.validation_after is None or auto.validation_before is None:
            return ["ratio auto: the combined drop was not checked on data (no data given)"]
        where = f"{judge.samples} validation samples, {judge.how}"
        if not auto.plan.groups:
            return [f"ratio auto: no plan kept the drop within {self.max_drop} on {where}; nothing was pruned"]
        notes = [
            f"ratio auto: the plan's drop on {where}: {auto.validation_before - auto.validation_after:.4f} "
            f"(bound {self.max_drop}); per-group budget {auto.budget:.4g} on the raw sensitivity curves"
        ]
        if auto.budget < self.max_drop:
            notes.append(
                f"ratio auto: per-group budget lowered from {self.max_drop} to {auto.budget:.4g} so that the "
                f"groups pruned together stay within {self.max_drop}"
            )
        return notes
