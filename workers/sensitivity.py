"""Sensitivity analysis (Li et al. 2017, Figure 2) and the per-group ratios of ``ratio='auto'``.

Every prunable group is pruned alone at each ratio, without retraining, and the pruned model is
scored on data in onnxruntime: accuracy with labels, fidelity to the original without (see
``workers.evaluation``). Groups are measured in parallel, one sandboxed child process per group
(one session per pruned model, all data through it); ratios that remove the same number of channels
of a group share one measurement.

``choose_auto`` then prunes each group as far as its curve stays within a tolerated drop and skips
sensitive groups. Single-group drops do not simply add up when groups are pruned together, so the
combined plan is judged on validation samples (after layer-wise reconstruction when the job's
recovery reconstructs, ``workers.strategies.judge``) and the per-group budget halved while the
combined drop exceeds the bound, or doubled while it stays within (reconstruction recovers more
than single raw curves show), then bisected between the last budget that passed and the first
that failed.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from onnxprune.graphops.cost import ModelCost
from onnxprune.graphops.dependency import DependencyGraph
from onnxprune.graphops.errors import ModelRejected
from onnxprune.graphops.plan import PruningPlan
from onnxprune.graphops.scoring import Scores, score_groups
from onnxprune.graphops.selection import MacsModel, select_by_group_ratios
from onnxprune.graphops.sensitivity_select import tolerated_ratios
from onnxprune.graphops.surgery import apply_plan
from onnxprune.roundtrip.data import Dataset
from onnxprune.workers.analysis import analyse_model
from onnxprune.workers.evaluation import Evaluator, make_evaluator
from onnxprune.workers.job_threads import current as current_budget
from onnxprune.workers.report import FrozenReport, SensitivityCurve, SensitivityReport
from onnxprune.workers.sandbox import RunnerLimits

DEFAULT_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
# Per-group budgets ``choose_auto`` tries below the tolerated drop when it fails, as fractions of it.
SHRINK_STEPS = (0.5, 0.25, 0.125, 0.0625, 0.0)
REFINE_STEPS = 3  # bisection steps between the budget that passed and the one that failed

SweepProgress = Callable[[int, int, str], None]  # groups done, groups in all, last group id


def parse_ratios(text: str) -> tuple[float, ...]:
    """``0.1,0.2,0.5`` -> sorted unique ratios, each in (0, 1)."""
    try:
        ratios = sorted({float(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise ModelRejected(f"ratios {text!r} are not comma-separated numbers (e.g. 0.1,0.2,0.5)") from None
    if not ratios or any(not 0.0 < r < 1.0 for r in ratios):
        raise ModelRejected(f"ratios {text!r} must be numbers in (0, 1)")
    return tuple(ratios)


def measure_sensitivity(
    model_path: Path,
    data: Dataset,
    *,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    criterion: str = "l1",
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    workers: int | None = None,
    synthetic: bool = False,
    progress: SweepProgress | None = None,
    limits: RunnerLimits = RunnerLimits(),
) -> SensitivityReport:
    """Load, analyse and sweep ``model_path`` (the ``onnxprune sensitivity`` command)."""
    from onnxprune.workers.options import criterion_needs_data

    if criterion_needs_data(criterion):
        raise ModelRejected(
            f"sensitivity ranks filters by weights (l1, l2, random, ...); criterion '{criterion}' "
            "needs the data-driven pipeline: use it with prune --ratio auto --data instead"
        )
    analysis = analyse_model(model_path, input_shapes)
    scores = score_groups(analysis.dep, criterion)
    evaluator = make_evaluator(model_path, data, limits=limits, synthetic=synthetic)
    return sweep(
        analysis.dep,
        scores,
        evaluator,
        analysis.cost,
        model_sha256=analysis.sha256,
        criterion=criterion,
        ratios=ratios,
        workers=workers,
        progress=progress,
    )


def sweep(
    dep: DependencyGraph,
    scores: Scores,
    evaluator: Evaluator,
    cost: ModelCost,
    *,
    model_sha256: str,
    criterion: str,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    workers: int | None = None,
    progress: SweepProgress | None = None,
) -> SensitivityReport:
    """The curve of every prunable group, measured ``workers`` groups at a time."""
    started = time.perf_counter()
    ratios = sorted(set(float(r) for r in ratios))
    macs = MacsModel(dep, {node.name: node.macs for node in cost.nodes})
    indices = [i for i, g in enumerate(dep.groups) if g.prunable and g.id in scores]
    budget = current_budget()  # in a job: its threads (``workers.job_threads``), not every core
    workers = max(1, min(workers or (budget.threads if budget else os.cpu_count()) or 1, len(indices) or 1))
    curves: dict[int, SensitivityCurve] = {}
    with (
        tempfile.TemporaryDirectory(prefix="onnxprune-sensitivity-") as workdir,
        ThreadPoolExecutor(workers, thread_name_prefix="onnxprune-sensitivity") as pool,
    ):
        futures = {pool.submit(_curve, dep, scores, i, ratios, evaluator, macs, Path(workdir)): i for i in indices}
        for future in as_completed(futures):
            curves[futures[future]] = future.result()
            if progress is not None:
                progress(len(curves), len(indices), dep.groups[futures[future]].id)
    return SensitivityReport(
        model_sha256=model_sha256,
        criterion=criterion,
        metric=evaluator.metric,
        source=evaluator.source,
        samples=len(evaluator.data),
        baseline=evaluator.baseline,
        macs=macs.total,
        ratios=ratios,
        curves=[curves[i] for i in indices],
        frozen=[
            FrozenReport(id=g.id, nodes=list(g.nodes), channels=g.channels, reason=g.frozen_reason) for g in dep.frozen
        ],
        seconds=round(time.perf_counter() - started, 3),
    )


def _curve(
    dep: DependencyGraph,
    scores: Scores,
    index: int,
    ratios: Sequence[float],
    evaluator: Evaluator,
    macs: MacsModel,
    workdir: Path,
) -> SensitivityCurve:
    group = dep.groups[index]
    plans = [select_by_group_ratios(dep, scores, {group.id: ratio}) for ratio in ratios]
    removed = [plan.removed_channels for plan in plans]
    paths: dict[int, Path] = {}
    for count, plan in zip(removed, plans):
        if count and count not in paths:
            paths[count] = workdir / f"group{index}-minus{count}.onnx"
            paths[count].write_bytes(apply_plan(dep, plan).SerializeToString())
    measured = dict(zip(paths, evaluator.score(list(paths.values())))) if paths else {}
    for path in paths.values():
        path.unlink(missing_ok=True)
    baseline = evaluator.baseline
    return SensitivityCurve(
        group=group.id,
        producers=list(group.producers),
        channels=group.channels,
        ratios=list(ratios),
        channels_removed=removed,
        values=[measured.get(count, baseline) for count in removed],
        macs_after=[macs.macs(plan) for plan in plans],
    )


def load_sensitivity(path: Path) -> SensitivityReport:
    try:
        return SensitivityReport.model_validate_json(Path(path).read_text())
    except ValueError as exc:
        raise ModelRejected(
            f"{Path(path).name} is not an onnxprune sensitivity file: {str(exc).splitlines()[0]}"
        ) from None


@dataclass
class AutoSelection:
    """What ``choose_auto`` settled on, and every budget it tried with the validation drop it gave."""

    plan: PruningPlan
    ratios: dict[str, float]
    budget: float
    validation_before: float | None = None
    validation_after: float | None = None
    tried: list[tuple[float, float | None]] = field(default_factory=list)


def curves_as_drops(sensitivity: SensitivityReport) -> dict[str, list[tuple[float, float]]]:
    return {c.group: [(r, sensitivity.baseline - v) for r, v in zip(c.ratios, c.values)] for c in sensitivity.curves}


def choose_auto(
    dep: DependencyGraph,
    scores: Scores,
    sensitivity: SensitivityReport,
    max_drop: float,
    *,
    check: Callable[[PruningPlan], float] | None = None,
    baseline: float | None = None,
    round_to: int = 1,
    exclude: Iterable[str] = (),
) -> AutoSelection:
    """Per-group ratios within a budget on each curve; with ``check`` (a plan's metric on validation
    samples, after whatever recovery the caller runs in the loop) and ``baseline`` (the original's),
    the largest budget whose combined drop stays within ``max_drop``: from ``max_drop``, halved while
    it fails or doubled while it passes (recovery lets groups go past their raw curves), then bisected
    between the last budget that passed and the first that failed."""
    known = {g.id for g in dep.groups}
    stale = [c.group for c in sensitivity.curves if c.group not in known]
    if stale:
        raise ModelRejected(f"sensitivity curves name group {stale[0]!r}, which this model does not have")
    curves = curves_as_drops(sensitivity)
    if check is None or baseline is None:
        ratios = {g: r for g, r in tolerated_ratios(curves, max_drop).items() if r > 0}
        plan = select_by_group_ratios(dep, scores, ratios, round_to=round_to, exclude=exclude)
        return AutoSelection(plan, ratios, max_drop, tried=[(max_drop, None)])
    measured: dict[tuple[tuple[str, float], ...], tuple[PruningPlan, float]] = {}  # ratios -> (plan, metric)
    tried: list[tuple[float, float | None]] = []

    def attempt(budget: float) -> tuple[float, dict[str, float], PruningPlan, float] | None:
        """The budget's plan and metric when its drop is within ``max_drop``, else None."""
        ratios = {g: r for g, r in tolerated_ratios(curves, budget).items() if r > 0}
        key = tuple(sorted(ratios.items()))
        if key not in measured:
            plan = select_by_group_ratios(dep, scores, ratios, round_to=round_to, exclude=exclude)
            measured[key] = (plan, check(plan) if plan.groups else baseline)
        plan, after = measured[key]
        tried.append((budget, baseline - after))
        return (budget, ratios, plan, after) if baseline - after <= max_drop else None

    # Beyond the largest drop on any curve, a larger budget changes no ratio.
    ceiling = max((drop for points in curves.values() for _, drop in points), default=0.0)
    passed, failed = attempt(max_drop), None
    if passed is not None:
        budget = max_drop
        while failed is None and budget < ceiling:
            budget = min(2 * budget, ceiling)
            result = attempt(budget)
            if result is None:
                failed = budget
            else:
                passed = result
    else:
        failed = max_drop
        for step in SHRINK_STEPS:
            passed = attempt(max_drop * step)
            if passed is not None:
                break
            failed = max_drop * step
    if passed is None:
        return AutoSelection(PruningPlan({}), {}, 0.0, baseline, baseline, tried)
    if failed is not None:
        low, high = passed[0], failed
        for _ in range(REFINE_STEPS):
            middle = (low + high) / 2
            result = attempt(middle)
            if result is not None:
                passed, low = result, middle
            else:
                high = middle
    budget, ratios, plan, after = passed
    return AutoSelection(plan, ratios, budget, baseline, after, tried)


def auto_for_job(
    model_path: Path,
    model_sha256: str,
    dep: DependencyGraph,
    scores: Scores,
    cost: ModelCost,
    *,
    criterion: str,
    max_drop: float,
    train: Dataset | None,
    check: Callable[[PruningPlan], float] | None = None,
    baseline: float | None = None,
    sensitivity: SensitivityReport | None = None,
    round_to: int = 1,
    exclude: Iterable[str] = (),
    progress: SweepProgress | None = None,
    limits: RunnerLimits = RunnerLimits(),
) -> tuple[AutoSelection, SensitivityReport]:
    """``ratio='auto'`` in the pipeline: curves on the training split (unless given), combined plans
    judged by ``check`` against ``baseline`` (on the validation split: ``workers.strategies.judge``)."""
    if sensitivity is not None and sensitivity.model_sha256 != model_sha256:
        raise ModelRejected("the sensitivity file was measured on a different model (its model_sha256 differs)")
    if train is None or check is None or baseline is None:
        if sensitivity is None:
            raise ModelRejected(
                "ratio 'auto' needs data: pass --data DATA.npz (or a --sensitivity file "
                "from 'onnxprune sensitivity'); see docs/SENSITIVITY.md"
            )
        return choose_auto(dep, scores, sensitivity, max_drop, round_to=round_to, exclude=exclude), sensitivity
    if sensitivity is None:
        sensitivity = sweep(
            dep,
            scores,
            make_evaluator(model_path, train, limits=limits),
            cost,
            model_sha256=model_sha256,
            criterion=criterion,
            progress=progress,
        )
    auto = choose_auto(
        dep,
        scores,
        sensitivity,
        max_drop,
        check=check,
        baseline=baseline,
        round_to=round_to,
        exclude=exclude,
    )
    return auto, sensitivity
