"""The report of a pruning job, assembled from what the pipeline and its strategies measured."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

import onnx

from onnxprune.graphops.cost import ModelCost, measure_cost
from onnxprune.graphops.dependency import DependencyGraph
from onnxprune.graphops.kinds import KINDS, KindLimits
from onnxprune.graphops.ops import handler_for
from onnxprune.graphops.ops.base import constant_shapes
from onnxprune.graphops.plan import PruningPlan
from onnxprune.graphops.selection import grid_counts
from onnxprune.graphops.shares import macs_shares
from onnxprune.workers.analysis import Analysis, detector_output
from onnxprune.workers.cleanup import interface_changes
from onnxprune.workers.latency_target import judged_on_closing_benchmark, target_notes
from onnxprune.workers.options import AutoTarget, LearnedTarget, PruneOptions, RatioTarget
from onnxprune.workers.quality_warnings import (
    got_little_cpu,
    quality_warnings,
    reconstruction_warnings,
    recovery_budget_warnings,
)
from onnxprune.workers.report import (
    BeforeAfter,
    DataSplit,
    Fidelity,
    FrozenReport,
    GroupReport,
    HeldOutEvaluation,
    KindReport,
    Latency,
    LayerReport,
    PruneReport,
)
from onnxprune.workers.shortfall import shortfall_notes
from onnxprune.workers.speed import speed_notes
from onnxprune.workers.strategies import Job, Outcome
from onnxprune.workers.strategies.finish import Artifacts
from onnxprune.workers.strategies.needs import Given, idle_finetune, ignored_without_data
from onnxprune.workers.strategies.nesting import echo_options


def onnxprune_version() -> str:
    try:
        return version("onnxprune")
    except PackageNotFoundError:
        return "0+unknown"


def build_report(
    job: Job,
    outcome: Outcome,
    artifacts: Artifacts,
    *,
    output_sha256: str,
    latency: Latency | None,
    fidelity: Fidelity | None,
    evaluation: HeldOutEvaluation | None,
) -> PruneReport:
    analysis, selection = job.analysis, outcome.selection
    cost_after = measure_cost(outcome.model, analysis.input_shapes)  # the float graph: MACs are the same int8
    groups, frozen = group_reports(analysis.dep, outcome.plan, analysis.cost)
    if evaluation is not None and outcome.finetune is not None:
        evaluation = evaluation.model_copy(update={"finetune": outcome.finetune})
    evaluation = with_bound(evaluation, job.options, selection.validation_drop)
    latency_target = judged_on_closing_benchmark(selection.latency_target, latency)
    given = Given(data=job.data_path is not None or job.data_context is not None, plan=selection.from_saved_plan)
    ignored = ignored_without_data(job.options, given)
    idle = idle_finetune(job.options, given)
    return PruneReport(
        onnxprune_version=onnxprune_version(),
        model_sha256=analysis.sha256,
        output_sha256=output_sha256,
        options=echo_options(job.options, given),
        input_shapes=analysis.input_shapes,
        macs=BeforeAfter(before=analysis.cost.macs, after=cost_after.macs),
        params=BeforeAfter(before=analysis.cost.params, after=cost_after.params),
        latency_ms=latency,
        fidelity=fidelity,
        groups=groups,
        frozen=frozen,
        kinds=kind_reports(groups, job.options.kind_limits),
        stage_seconds={**job.stages.seconds, **{f"recovery.{k}": v for k, v in outcome.seconds.items()}},
        layers=layer_reports(analysis, outcome.model, cost_after),
        evaluation=evaluation,
        data_splits=data_splits(job),
        sensitivity=selection.sensitivity,
        group_ratios=selection.group_ratios,
        warnings=[
            *([] if ignored is None else [ignored]),
            *([] if idle is None else [idle]),
            *analysis.input_shape_notes,
            *job.criterion_notes,
            *selection.notes,
            *job.budget_notes,
            *job.recovery_notes,
            *artifacts.notes,
            *speed_notes(latency),
            *target_notes(latency_target),
            *(  # one line on a target that fell short, else the rounding note
                shortfall_notes(
                    job.options,
                    groups,
                    frozen,
                    BeforeAfter(before=analysis.cost.macs, after=cost_after.macs),
                    int(job.options.round_to),
                    job.round_to_source,
                    plan_given=selection.from_saved_plan,
                )
                # a ratio's selector notes only that it met the ratio on the grid, which says it already
                or (
                    []
                    if selection.notes and isinstance(job.options.target, RatioTarget)
                    else rounding_notes(job, groups)
                )
            ),
            *recovery_budget_warnings(outcome.finetune, time_budget=job.options.time_budget),
            *reconstruction_warnings(outcome.finetune),
            *quality_warnings(
                fidelity,
                evaluation,
                data_given=job.data_path is not None,
                recovered=outcome.finetune is not None,
                max_drop=job.options.max_drop,
                little_cpu=got_little_cpu(outcome.finetune),
                detector_output=None if job.data_path is not None else detector_output(analysis, job.options.detector),
            ),
        ],
        learned=outcome.learned,
        quantization=artifacts.quantization,
        round_to=selection.latency_target.step if selection.latency_target else int(job.options.round_to),
        round_to_source="the latency table"
        if selection.latency_target and job.round_to_source != "given"
        else job.round_to_source,
        latency_target=latency_target,
        fastest_cut=selection.fastest_cut,
        interface_changes=interface_changes(analysis.original, outcome.model),
        latency_table_cache=used_cached_table(job, selection.fastest_cut is not None),
    )


def used_cached_table(job: Job, compared_cuts: bool) -> str | None:
    """The cached latency table's path when a job that measures none (no latency target) used it."""
    if job.options.latency_target is not None:
        return None
    if not (compared_cuts or job.round_to_source.startswith("auto: latency table")):
        return None
    from onnxprune.workers.latency import LatencySettings, cached_table_path

    return str(cached_table_path(job.analysis.sha256, job.analysis.input_shapes, LatencySettings.of(job.options)))


def with_bound(
    evaluation: HeldOutEvaluation | None, options: PruneOptions, validation_drop: float | None
) -> HeldOutEvaluation | None:
    """The held-out drop checked against the bound a ``--max-drop`` target chose the plan for."""
    target = options.target
    if evaluation is None or not isinstance(target, (AutoTarget, LearnedTarget)):
        return evaluation
    missed = max(0.0, evaluation.before - evaluation.after - target.max_drop)
    return evaluation.model_copy(
        update={"max_drop": target.max_drop, "validation_drop": validation_drop, "missed_by": round(missed, 6)}
    )


def data_splits(job: Job) -> list[DataSplit]:
    """How the data file was split (``roundtrip.data.split_data``) and what used each part."""
    splits = job.splits
    if splits is None:
        return []
    from onnxprune.roundtrip.data import SPLIT_RULES, SPLIT_USES

    parts = {"train": splits.train, "validation": splits.validation, "held_out": splits.held_out}
    return [
        DataSplit(name=name, samples=len(part), rule=SPLIT_RULES[name], used_for=SPLIT_USES[name])
        for name, part in parts.items()
    ]


def rounding_notes(job: Job, groups: list[GroupReport]) -> list[str]:
    """Say so when ``--round-to auto`` kept small groups whole: the user asked for a cut and got none there."""
    step = job.options.round_to
    if not job.round_to_source.startswith("auto") or not isinstance(step, int) or step <= 1:
        return []
    cut = [g for g in groups if g.channels_after < g.channels_before]
    # Conv filters only: heads and MLP widths follow their kernel's step, and a kind limit is the user's choice.
    whole = [
        g for g in groups if g.channels_after == g.channels_before <= step and g.kind == "filter" and not g.limited_by
    ]
    if not cut or not whole:
        return []
    narrow = ", ".join(str(c) for c in grid_counts(step, step)[1:])
    return [
        f"round-to auto ({step}): {len(whole)} group(s) of at most {step} channels kept whole: below {step}, "
        f"only {narrow} channels run faster on onnxruntime's blocked kernels, a deeper cut than these groups "
        "were asked for; --round-to 1 prunes exact counts"
    ]


def group_reports(
    dep: DependencyGraph, plan: PruningPlan, cost: ModelCost
) -> tuple[list[GroupReport], list[FrozenReport]]:
    shares = macs_shares(dep, {node.name: node.macs for node in cost.nodes})  # each layer counted once
    groups, frozen = [], []
    for group in dep.groups:
        if group.frozen:
            frozen.append(
                FrozenReport(id=group.id, nodes=list(group.nodes), channels=group.channels, reason=group.frozen_reason)
            )
            continue
        groups.append(
            GroupReport(
                id=group.id,
                nodes=list(group.nodes),
                producers=list(group.producers),
                channels_before=group.channels,
                channels_after=len(plan.keep.get(group.id, range(group.channels))),
                pinned=len(group.pinned),
                pinned_reasons=list(group.reasons),
                macs_share=round(shares[group.id], 6),
                unit=group.unit,
                kind=group.kind,
                max_removed=group.max_removed,
                limited_by=group.limited_by,
            )
        )
    return groups, frozen


def kind_reports(groups: list[GroupReport], limits: KindLimits) -> list[KindReport]:
    """Units of each kind before and after, in the order filters, heads, neurons."""
    reports = []
    for kind in KINDS:
        rows = [g for g in groups if g.kind == kind]
        if rows:
            reports.append(
                KindReport(
                    kind=kind,
                    groups=len(rows),
                    pruned_groups=sum(1 for g in rows if g.channels_after < g.channels_before),
                    units_before=sum(g.channels_before for g in rows),
                    units_after=sum(g.channels_after for g in rows),
                    limit=limits.describe(kind),
                )
            )
    return reports


def filter_counts(model: onnx.ModelProto) -> dict[str, int]:
    """Filters (output channels) of every filter op (Conv, ConvTranspose) with constant weights, by node name."""
    constant_shape = constant_shapes(model)
    counts = {}
    for node in model.graph.node:
        count = handler_for(node.op_type, node.domain).filter_count(node, constant_shape)
        if count is not None:
            counts[node.name] = count
    return counts


def layer_reports(analysis: Analysis, after: onnx.ModelProto, cost_after: ModelCost) -> list[LayerReport]:
    """MACs and filters of every node that has MACs; surgery keeps node names, so they pair up."""
    macs_after = {node.name: node.macs for node in cost_after.nodes}
    filters_before, filters_after = filter_counts(analysis.prepared), filter_counts(after)
    return [
        LayerReport(
            name=node.name,
            op_type=node.op_type,
            macs_before=node.macs,
            macs_after=macs_after.get(node.name, 0),
            filters_before=filters_before.get(node.name),
            filters_after=filters_after.get(node.name),
        )
        for node in analysis.cost.nodes
        if node.macs
    ]
