"""Selector: rank channels by the criterion's scores and remove a fraction of every group
(``--ratio``, Li et al.) or the globally least important until MACs fall by a fraction
(``--flops-target``, Molchanov et al.); for a detector with data, a MACs target is spread over the
groups by what each one's cut alone costs the detections (``workers.detector_sensitivity``). With
a latency table measured before for the model (and a step other than 1), a MACs target compares
cuts of equal MACs and keeps the one predicted fastest (``graphops.fastest_cut``).

In a schedule of several steps each step removes its share of the target, measured on the
original model: step i of k reaches i/k of the ratio (or of the MACs cut).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from onnxprune.graphops.cost import ModelCost, measure_cost
from onnxprune.graphops.dependency import DependencyGraph
from onnxprune.graphops.fastest_cut import MACS_SLACK, TOLERANCE, FastestCut, select_fastest_by_flops
from onnxprune.graphops.latency_table import LatencyTable
from onnxprune.graphops.plan import PruningPlan
from onnxprune.graphops.selection import MacsModel, Scores, select_by_flops, select_by_group_ratios, select_by_ratio
from onnxprune.workers.detector_sensitivity import detector_cut
from onnxprune.workers.options import PruneOptions
from onnxprune.workers.report import CutCandidateReport, FastestCutReport
from onnxprune.workers.strategies.base import Job, Selection, Step
from onnxprune.workers.strategies.needs import Given, Needs, criterion_needs
from onnxprune.workers.strategies.registry import Requires, StrategyOptions, own, register

# Below this a step has nothing left to remove.
_NOTHING = 1e-9
_MOST = 0.999
# A rounded ratio cut that removes nothing is met on the grid instead, unless the grid's nearest cut
# removes more than this many times the exact cut's MACs.
_MOST_OVERSHOOT = 2.5


class RatioOptions(StrategyOptions):
    ratio: float | Literal["auto"] | None = own("ratio")
    criterion: str = own("criterion")


class MacsOptions(StrategyOptions):
    flops_target: float | None = own("flops_target")
    criterion: str = own("criterion")


# A data-driven criterion scores on data in PyTorch (``criterion_needs``): the ranking selectors may need both.
RANKING_REQUIRES = Requires(data=True, torch=True)


@register("selector", "ratio", options=RatioOptions, requires=RANKING_REQUIRES)
@dataclass
class RankedByRatio:
    ratio: float

    @classmethod
    def wanted(cls, options: PruneOptions, given: Given) -> bool:
        return options.target.kind == "ratio"

    @classmethod
    def build(cls, options: PruneOptions, plan: PruningPlan | None) -> RankedByRatio:
        return cls(float(RatioOptions.of(options).ratio or 0.0))

    def needs(self, options: PruneOptions, given: Given) -> Needs:
        return criterion_needs(options)

    def select(self, job: Job, dep: DependencyGraph, step: Step) -> Selection:
        with job.stages.stage("score"):
            scores = job.scores(dep, step=step.index)
        with job.stages.stage("select"):
            # The ratio of what is left that takes the model from ``done`` to ``goal``.
            goal = step.goal(self.ratio)
            ratio = goal if step.index == 0 else 1.0 - (1.0 - goal) / (1.0 - step.done(self.ratio))
            if ratio <= _NOTHING:
                return Selection(PruningPlan({}))
            options = job.options
            plan = select_by_ratio(dep, scores, min(ratio, _MOST), round_to=job.round_to, exclude=options.exclude)
            if job.round_to <= 1:
                return Selection(plan)
            return _ratio_on_the_grid(job, dep, scores, min(ratio, _MOST), plan, self.ratio)


@register("selector", "macs", options=MacsOptions, requires=RANKING_REQUIRES, report="fastest_cut")
@dataclass
class RankedByMacs:
    fraction: float  # of the original model's MACs to remove
    # Producers of the groups a detector's target leaves whole: chosen on the original, for the whole
    # target, at the first step, and left whole in every step.
    spared: list[str] = field(default_factory=list)

    @classmethod
    def wanted(cls, options: PruneOptions, given: Given) -> bool:
        return options.target.kind == "macs"

    @classmethod
    def build(cls, options: PruneOptions, plan: PruningPlan | None) -> RankedByMacs:
        return cls(float(MacsOptions.of(options).flops_target or 0.0))

    def needs(self, options: PruneOptions, given: Given) -> Needs:
        return criterion_needs(options)

    def select(self, job: Job, dep: DependencyGraph, step: Step) -> Selection:
        with job.stages.stage("score"):
            scores = job.scores(dep, step=step.index)
        with job.stages.stage("select"):
            cost = job.analysis.cost if dep is job.dep else measure_cost(dep.model, job.analysis.input_shapes)
            # The fraction of the current model's MACs that leaves 1 - goal of the original's.
            goal = step.goal(self.fraction)
            fraction = goal if step.index == 0 else 1.0 - (1.0 - goal) * job.analysis.cost.macs / max(cost.macs, 1)
            if fraction <= _NOTHING:
                return Selection(PruningPlan({}))
            options = job.options
            notes, detector = [], None
            if step.index == 0:
                detector = detector_cut(job, dep, scores, min(self.fraction, _MOST))
                if detector is not None:
                    self.spared, notes = detector.patterns, [detector.note]
            exclude = [*options.exclude, *self.spared]
            if detector is not None and detector.ratios is not None and step.total == 1:
                # A schedule's steps spare the same groups and rank the rest instead.
                plan = select_by_group_ratios(dep, scores, detector.ratios, round_to=job.round_to, exclude=exclude)
                return Selection(plan, notes=notes, group_ratios=detector.ratios)
            node_macs = {node.name: node.macs for node in cost.nodes}
            table = job.latency_table if dep is job.dep else None  # its groups are the original's
            if table is not None:
                table, uncovered = _covering(job, dep, scores, cost, table, tuple(exclude))
                notes += uncovered
            if table is not None:
                cut = select_fastest_by_flops(
                    dep,
                    scores,
                    min(fraction, _MOST),
                    table,
                    node_macs=node_macs,
                    step=job.round_to,
                    exclude=exclude,
                )
                report = fastest_cut_report(cut, table, job.round_to)
                return Selection(cut.chosen.plan, notes=notes, fastest_cut=report)
            plan = select_by_flops(
                dep, scores, min(fraction, _MOST), node_macs=node_macs, round_to=job.round_to, exclude=exclude
            )
            return Selection(plan, notes=notes)


def _covering(
    job: Job, dep: DependencyGraph, scores: Scores, cost: ModelCost, table: LatencyTable, exclude: tuple[str, ...]
) -> tuple[LatencyTable | None, list[str]]:
    """``table`` when it has a curve for every group this cut may take, else None and a note: a table
    another job cached with other kind limits or excludes would price the groups it lacks at no saving
    and mislead the comparison of cuts; the cut is then the importance cut, as without a table."""
    from onnxprune.workers.latency import LatencySettings, uncovered_groups

    missing = uncovered_groups(table, dep, scores, cost, LatencySettings.of(job.options), exclude)
    if not missing:
        return table, []
    return None, [
        f"the latency table cached for this model has no curve for {len(missing)} group(s) this cut may take "
        f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}: it was measured for a job that left "
        "them whole, by --exclude or a kind limit): the MACs cut was chosen by importance alone, not compared "
        "on it; a --latency-target run with this job's limits measures them"
    ]


def _ratio_on_the_grid(
    job: Job, dep: DependencyGraph, scores: Scores, ratio: float, rounded: PruningPlan, asked: float
) -> Selection:
    """A ratio whose counts, rounded up to the grid, remove nothing (every group of at most a step or
    two stays whole: 30% of 16 channels rounds back to 16) is met in MACs instead: the exact cut's
    MACs, reached on the grid (``graphops.selection.snap_to_grid``), so the counts still run at the
    blocked kernels' speed, and a note says so. A rounded cut that removes something is kept (the
    report warns when it is far less than asked: ``workers.shortfall``)."""
    if rounded.groups:  # the rounded cut removes something: kept (a shortfall is warned of)
        return Selection(rounded)
    cost = job.analysis.cost if dep is job.dep else measure_cost(dep.model, job.analysis.input_shapes)
    node_macs = {node.name: node.macs for node in cost.nodes}
    model = MacsModel(dep, node_macs)
    exact = select_by_ratio(dep, scores, ratio, round_to=1, exclude=job.options.exclude)
    wanted = model.total - model.macs(exact)
    if wanted <= 0:
        return Selection(rounded)
    step, fraction = job.round_to, wanted / max(model.total, 1)
    flag = "auto" if job.round_to_source.startswith("auto") else str(step)
    on_grid = select_by_flops(dep, scores, fraction, node_macs=node_macs, round_to=step, exclude=job.options.exclude)
    removed = model.total - model.macs(on_grid)
    if removed <= 0 or removed > _MOST_OVERSHOOT * wanted:  # the report says why nothing (workers.shortfall)
        return Selection(rounded)
    return Selection(
        on_grid,
        notes=[
            f"ratio {asked:g}: rounded up to the grid of {step} channels (--round-to {flag}), "
            f"{asked:.0%} of each group would remove nothing, where the exact cut removes {fraction:.1%} of MACs "
            f"(groups of a few steps stay whole); the exact cut's MACs were met on the grid instead "
            f"(-{removed / max(model.total, 1):.1%}, {len(on_grid.groups)} group(s) cut, counts multiples of {step}); "
            "--round-to 1 removes exactly that ratio of every group"
        ],
    )


def fastest_cut_report(cut: FastestCut, table: LatencyTable, step: int) -> FastestCutReport:
    reference = table.reference_ms
    return FastestCutReport(
        chosen=cut.chosen.name,
        predicted_ms=round(cut.chosen.predicted_ms, 4),
        predicted_ratio=round(cut.chosen.predicted_ms / reference, 4),
        baseline_ms=round(table.baseline_ms, 4),
        noise_ms=round(table.noise_ms, 4),
        step=step,
        goal_macs=cut.goal_macs,
        rule=f"the fastest predicted of the cuts within {TOLERANCE:.0%} of the least importance removed and "
        f"within {MACS_SLACK:.0%} of the original's MACs of the importance cut, if faster than that cut by "
        f"more than the noise; else the importance cut",
        table_key=table.key,
        candidates=[
            CutCandidateReport(
                name=c.name,
                weight=c.weight,
                macs=c.macs,
                importance_removed=round(c.importance, 4),
                predicted_ms=round(c.predicted_ms, 4),
                predicted_ratio=round(c.predicted_ms / reference, 4),
                eligible=c.name in cut.eligible,
            )
            for c in cut.candidates
        ],
    )
