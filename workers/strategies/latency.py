"""Selector: a latency target (``--latency-target T``): counts chosen by importance per millisecond
from a latency table measured in onnxruntime, the result timed and refined until it meets T
(``workers.latency_target``; HALP, Shen et al. 2022)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from onnxprune.graphops.dependency import DependencyGraph
from onnxprune.graphops.plan import PruningPlan
from onnxprune.workers.latency_target import select_for_latency
from onnxprune.workers.options import PruneOptions
from onnxprune.workers.strategies.base import Job, Selection, Step
from onnxprune.workers.strategies.needs import Given, Needs, criterion_needs
from onnxprune.workers.strategies.registry import Requires, StrategyOptions, own, register


class LatencyOptions(StrategyOptions):
    latency_target: float | None = own("latency_target")
    latency_budget_s: float = own("latency_budget_s")
    latency_iterations: int = own("latency_iterations")
    round_to: int | Literal["auto"] = own("round_to")
    criterion: str = own("criterion")


@register(
    "selector",
    "latency",
    options=LatencyOptions,
    requires=Requires(data=True, torch=True),  # a data-driven criterion; the table is timed in onnxruntime
    report="latency_target",
)
@dataclass
class LatencyTargetSelector:
    ratio: float
    step_from_table: bool  # round_to 'auto': channel counts on the table's measured step

    @classmethod
    def wanted(cls, options: PruneOptions, given: Given) -> bool:
        return options.target.kind == "latency"

    @classmethod
    def build(cls, options: PruneOptions, plan: PruningPlan | None) -> LatencyTargetSelector:
        own_options = LatencyOptions.of(options)
        if own_options.latency_target is None:
            raise ValueError("a latency selector without latency_target")
        return cls(own_options.latency_target, step_from_table=own_options.round_to == "auto")

    def needs(self, options: PruneOptions, given: Given) -> Needs:
        return criterion_needs(options)  # the table is timed in onnxruntime (sandboxed)

    def select(self, job: Job, dep: DependencyGraph, step: Step) -> Selection:
        with job.stages.stage("score"):
            scores = job.scores(dep)
        with job.stages.stage("select"):
            options = job.options.model_copy(update={"latency_target": self.ratio})
            choice = select_for_latency(
                job.analysis.path,
                job.analysis.sha256,
                dep,
                scores,
                job.analysis.cost,
                options,
                step=None if self.step_from_table else int(options.round_to),
                limits=job.limits,
            )
        return Selection(choice.plan, latency_target=choice.report)
