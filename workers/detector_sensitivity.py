"""How a detector's MACs target is spread over its groups: Li et al.'s sensitivity, judged by detections.

A global ranking of layer-normalised scores (``--flops-target``) compares channels within a layer,
not what a layer's cut costs the model. A detector's class scores hang on a few layers: on the
shared YOLOv8n, cutting half of the stem's or the first C2f's channels alone loses every detection
(mAP50 against the original 0.0, class logits 8 lower at its boxes), half of a neck or head layer
loses almost none (0.9-1.0). So, for a detector with data, each prunable group is first cut alone,
at ``PROBE_RATIOS`` in turn, and what the cut costs is measured on ``PROBE_SAMPLES`` validation
photos in onnxruntime: the detection loss recovery minimises (``roundtrip.objective.detection_loss``),
continuous where mAP50 on a few dozen boxes is not. The target is then met by per-group ratios,
cheapest extra loss per MAC saved first (``graphops.sensitivity_select.allocate_ratios``): a box
branch may lose half while a sensitive layer loses a quarter and the stem stays whole. Where the
probes cannot reach the target (the budget ran out), or a schedule has several steps, the groups whose
half costs the most per MAC are left whole instead and the ranking cuts among the others
(``groups_to_spare``).
``--detector none`` turns it off, as it does every detection-specific step.
"""

from __future__ import annotations

import glob
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from onnxprune.graphops.dependency import DependencyGraph
from onnxprune.graphops.plan import PruningPlan
from onnxprune.graphops.scoring import Scores
from onnxprune.graphops.selection import MacsModel, excluded_group_ids, select_by_group_ratios
from onnxprune.graphops.sensitivity_select import allocate_ratios, groups_to_spare
from onnxprune.graphops.surgery import apply_plan
from onnxprune.workers.analysis import detector_output
from onnxprune.workers.evaluation import make_evaluator

if TYPE_CHECKING:
    from onnxprune.workers.strategies.base import Job

# Each group is cut alone by these shares of its channels, in this order: every group at the first ratio
# (the spared-groups fallback needs only it) before any at the next, which goes to the groups whose first
# cut cost the least per MAC first. No deeper share: on the shared YOLOv8n, 75% cuts of head layers that
# each cost little alone were taken together and compounded (-30% MACs: mAP50 0.49 with them, 0.60 without).
PROBE_RATIOS = (0.5, 0.25)
# Validation photos each probe is judged on: the detection loss is continuous, so a few photos rank the
# groups as 50 do (on the shared YOLOv8n, Spearman 0.97 of loss per MAC between 16 and 50 photos).
PROBE_SAMPLES = 16
# Probed models scored per child process (one onnxruntime session each, written to disk one batch at a time).
MODELS_PER_CHILD = 8
# With --time-budget, probing ends by this share of the budget (scoring has until 0.3, reconstruction
# until 0.6): the groups not probed by then are ranked as any group is.
PROBE_SHARE = 0.55
_NAMED = 4  # spared groups named in the note


@dataclass(frozen=True)
class DetectorCut:
    """How a detector's MACs target is met: per-group ``ratios`` (None: the probes could not reach the
    target; the ranking then cuts among the groups not ``spared``), and what was measured."""

    ratios: dict[str, float] | None
    spared: list[str]  # groups left whole
    patterns: list[str]  # their producers, as ``--exclude`` patterns
    drops: dict[str, float]  # group -> detection loss with that group alone cut by PROBE_RATIOS[0]
    savings: dict[str, float]  # group -> fraction of the model's MACs that cut removes
    note: str


def detector_cut(job: Job, dep: DependencyGraph, scores: Scores, target: float) -> DetectorCut | None:
    """How a MACs ``target`` (a fraction) should be spread over this detector's groups, or None when it
    does not apply: no data, no YOLO-shaped output (or ``--detector none``), a later pruning step, or no
    box of the original's on the validation photos to judge by."""
    if job.splits is None or dep is not job.dep or detector_output(job.analysis, job.options.detector) is None:
        return None
    started = time.monotonic()
    deadline = job.deadline(PROBE_SHARE)
    if deadline is not None and started >= deadline:
        job.budget_notes.append(_budget_note(job, 0, len(dep.prunable)))
        return None
    mode, confidence = job.options.detector, job.options.detection_confidence
    validation = job.splits.validation
    evaluator = make_evaluator(job.analysis.path, validation, limits=job.limits)
    if evaluator.detection_map50([job.analysis.path], mode, confidence)[0] is None:
        return None
    probe_set = validation.subset(np.arange(min(PROBE_SAMPLES, len(validation))))
    evaluator = make_evaluator(job.analysis.path, probe_set, limits=job.limits)
    protected = excluded_group_ids(dep, job.options.exclude)
    macs = MacsModel(dep, job.analysis.node_macs)

    def saved(plan: PruningPlan) -> float:
        return 1.0 - macs.macs(plan) / max(macs.total, 1)

    def removed(ratios: Mapping[str, float]) -> float:
        return saved(select_by_group_ratios(dep, scores, ratios, round_to=job.round_to))

    candidates = [g.id for g in dep.prunable if g.id in scores and g.id not in protected]
    curves: dict[str, dict[float, tuple[float, float]]] = {}
    cuttable: list[str] = []
    probed, total = 0, 0
    for position, ratio in enumerate(PROBE_RATIOS):
        plans = {}
        for group_id in candidates:
            plan = select_by_group_ratios(dep, scores, {group_id: ratio}, round_to=job.round_to)
            saving = saved(plan)
            known = [s for _, s in curves.get(group_id, {}).values()]
            if plan.groups and saving not in known:  # on the grid, 25% of 16 channels is 50% or nothing
                plans[group_id] = (plan, saving)
        if position:  # deeper cuts first for the groups whose first cut cost the least per MAC
            first = PROBE_RATIOS[0]
            order = sorted(
                (g for g in plans if first in curves.get(g, {})),
                key=lambda g: curves[g][first][0] / max(curves[g][first][1], 1e-12),
            )
        else:
            order = cuttable = list(plans)  # the groups the grid lets the first ratio cut at all
        total += len(order)
        for start in range(0, len(order), MODELS_PER_CHILD):
            now = time.monotonic()
            if deadline is not None and probed and now + (now - started) / probed * MODELS_PER_CHILD > deadline:
                break  # the next chunk would end past the deadline
            chunk = order[start : start + MODELS_PER_CHILD]
            paths = [job.workdir / f"probe-{probed + i}.onnx" for i in range(len(chunk))]
            for path, group_id in zip(paths, chunk):
                path.write_bytes(apply_plan(dep, plans[group_id][0]).SerializeToString())
            for group_id, loss in zip(chunk, evaluator.detection_losses(paths, mode)):
                curves.setdefault(group_id, {})[ratio] = (loss or 0.0, plans[group_id][1])
            for path in paths:
                path.unlink(missing_ok=True)
            probed += len(chunk)
    if probed < total:
        job.budget_notes.append(_budget_note(job, probed, total, all(g in curves for g in cuttable)))
    first = PROBE_RATIOS[0]
    drops = {g: curve[first][0] for g, curve in curves.items() if first in curve}
    savings = {g: curve[first][1] for g, curve in curves.items() if first in curve}
    seconds, photos = time.monotonic() - started, len(probe_set)
    ratios = allocate_ratios(curves, removed, target) if all(g in curves for g in cuttable) else None
    if ratios is not None:
        spared = [g for g in curves if g not in ratios]
        deepest = sorted(ratios.items(), key=lambda item: -item[1])[:_NAMED]
        note = (
            f"detector: the MACs target spread over the groups by what each cut costs the detections "
            f"({probed} cuts of one group at {', '.join(f'{r:.0%}' for r in PROBE_RATIOS)}, detection loss "
            f"against the original on {photos} validation samples, {seconds:.0f} s): {len(ratios)} groups cut, "
            f"{len(spared)} left whole ({_named(spared, drops, savings)}); deepest cuts: "
            + ", ".join(f"{g} {r:.0%}" for g, r in deepest)
            + "; --detector none ranks every group alike"
        )
    else:
        # Groups the deadline left unprobed are cut as the ranking says: counted as costing nothing, they
        # add their savings first and are never spared.
        unprobed = {group: 0.0 for group in candidates if group not in drops}
        spared = [group for group in groups_to_spare({**unprobed, **drops}, savings, target) if group in drops]
        if not spared:
            return None
        note = (
            f"detector: {len(spared)} of {len(drops)} groups left whole, those whose cut costs the most detections "
            f"per MAC saved (each cut {first:.0%} alone, detection loss against the original on "
            f"{photos} validation samples, {seconds:.0f} s): {_named(spared, drops, savings)}; "
            "--detector none ranks every group alike"
        )
    by_id = {group.id: group for group in dep.groups}
    patterns = [glob.escape(name) for group_id in spared for name in by_id[group_id].producers]
    return DetectorCut(ratios, spared, patterns, drops, savings, note)


def _named(spared: list[str], drops: Mapping[str, float], savings: Mapping[str, float]) -> str:
    worst = sorted((g for g in spared if g in drops), key=lambda g: -drops[g] / max(savings[g], 1e-12))[:_NAMED]
    return ", ".join(f"{g} (loss {drops[g]:.2f} for {savings[g]:.1%} of MACs)" for g in worst) or "none"


def _budget_note(job: Job, probed: int, cuts: int, every_group: bool = False) -> str:
    rest = (
        "deeper cuts not measured were not taken"
        if every_group
        else "the groups not probed were ranked as any group is"
    )
    return (
        f"--time-budget: the detector's per-group check made {probed} of {cuts} cuts by "
        f"{PROBE_SHARE:.0%} of the {job.options.time_budget:g} s; {rest} (a larger --time-budget probes them all)"
    )
