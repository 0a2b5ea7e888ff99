"""Which groups a detector's MACs target leaves whole: Li et al.'s sensitivity, judged by detections.

A global ranking of layer-normalised scores (``--flops-target``) compares channels within a layer,
not what a layer's cut costs the model. A detector's class scores hang on a few layers: on the
shared YOLOv8n, cutting half of the stem's or the first C2f's channels alone loses every detection
(mAP50 against the original 0.0, class logits 8 lower at its boxes), half of a neck or head layer
loses almost none (0.9-1.0); the Taylor ranking still cut the stem by half, and reconstruction could
not bring the scores back (mAP50 0.27 at -30% MACs). So, for a detector with data, each prunable
group is first cut alone by ``PROBE_RATIO`` and its detections judged on the validation photos
(mAP50 against the original's, in onnxruntime), and the groups that cost the most per MAC saved are
spared (``graphops.sensitivity_select.groups_to_spare``); the ranking then cuts among the others.
``--detector none`` turns it off, as it does every detection-specific step.
"""

from __future__ import annotations

import glob
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from onnxprune.graphops.dependency import DependencyGraph
from onnxprune.graphops.scoring import Scores
from onnxprune.graphops.selection import MacsModel, excluded_group_ids, select_by_group_ratios
from onnxprune.graphops.sensitivity_select import groups_to_spare
from onnxprune.graphops.surgery import apply_plan
from onnxprune.workers.analysis import detector_output
from onnxprune.workers.evaluation import make_evaluator

if TYPE_CHECKING:
    from onnxprune.workers.strategies.base import Job

# Each group is probed with this share of its channels removed (what a -30% to -50% MACs cut asks of a
# layer on average).
PROBE_RATIO = 0.5
# Probed models scored per child process (one onnxruntime session each, written to disk one batch at a time).
MODELS_PER_CHILD = 8
# With --time-budget, probing ends by this share of the budget (scoring has until 0.3, reconstruction
# until 0.6): the groups not probed by then are ranked as any group is.
PROBE_SHARE = 0.55
_NAMED = 4  # spared groups named in the note


@dataclass(frozen=True)
class SparedGroups:
    """Groups left whole (as ``--exclude`` patterns of their producers), and what was measured."""

    groups: list[str]
    patterns: list[str]
    drops: dict[str, float]  # group -> mAP50 lost with that group alone cut by PROBE_RATIO
    savings: dict[str, float]  # group -> fraction of the model's MACs that cut removes
    note: str


def spare_sensitive_groups(job: Job, dep: DependencyGraph, scores: Scores, target: float) -> SparedGroups | None:
    """The groups a MACs ``target`` (a fraction) should spare on this detector, or None when it does not
    apply: no data, no YOLO-shaped output (or ``--detector none``), a later pruning step, or no box
    of the original's on the validation photos to judge by."""
    if job.splits is None or dep is not job.dep or detector_output(job.analysis, job.options.detector) is None:
        return None
    started = time.monotonic()
    deadline = job.deadline(PROBE_SHARE)
    if deadline is not None and started >= deadline:
        job.budget_notes.append(_budget_note(job, 0, len(dep.prunable)))
        return None
    mode, confidence = job.options.detector, job.options.detection_confidence
    evaluator = make_evaluator(job.analysis.path, job.splits.validation, limits=job.limits)
    if evaluator.detection_map50([job.analysis.path], mode, confidence)[0] is None:
        return None
    protected = excluded_group_ids(dep, job.options.exclude)
    macs = MacsModel(dep, job.analysis.node_macs)
    probes, savings = {}, {}
    for group in dep.prunable:
        if group.id not in scores or group.id in protected:
            continue
        plan = select_by_group_ratios(dep, scores, {group.id: PROBE_RATIO}, round_to=job.round_to)
        if plan.groups:
            probes[group.id] = plan
            savings[group.id] = 1.0 - macs.macs(plan) / max(macs.total, 1)
    drops: dict[str, float] = {}
    ids = list(probes)
    for start in range(0, len(ids), MODELS_PER_CHILD):
        now = time.monotonic()
        if deadline is not None and start and now + (now - started) / start * MODELS_PER_CHILD > deadline:
            job.budget_notes.append(_budget_note(job, start, len(ids)))  # the next chunk would end past it
            break
        chunk = ids[start : start + MODELS_PER_CHILD]
        paths = [job.workdir / f"probe-{start + i}.onnx" for i in range(len(chunk))]
        for path, group_id in zip(paths, chunk):
            path.write_bytes(apply_plan(dep, probes[group_id]).SerializeToString())
        for group_id, value in zip(chunk, evaluator.detection_map50(paths, mode, confidence)):
            drops[group_id] = 1.0 - (value or 0.0)
        for path in paths:
            path.unlink(missing_ok=True)
    # Groups the deadline left unprobed are cut as the ranking says: counted as costing nothing, they
    # add their savings first and are never spared.
    unprobed = {group: 0.0 for group in probes if group not in drops}
    spared = [group for group in groups_to_spare({**unprobed, **drops}, savings, target) if group in drops]
    if not spared:
        return None
    by_id = {group.id: group for group in dep.groups}
    patterns = [glob.escape(name) for group_id in spared for name in by_id[group_id].producers]
    worst = sorted(spared, key=lambda g: -drops[g] / max(savings[g], 1e-12))[:_NAMED]
    named = ", ".join(f"{g} (mAP50 -{drops[g]:.2f} for {savings[g]:.1%} of MACs)" for g in worst)
    note = (
        f"detector: {len(spared)} of {len(drops)} groups left whole, those whose cut costs the most detections "
        f"per MAC saved (each cut {PROBE_RATIO:.0%} alone, mAP50 against the original on "
        f"{len(job.splits.validation)} validation samples, {time.monotonic() - started:.0f} s): {named}; "
        "--detector none ranks every group alike"
    )
    return SparedGroups(spared, patterns, drops, savings, note)


def _budget_note(job: Job, probed: int, groups: int) -> str:
    return (
        f"--time-budget: the detector's per-group check probed {probed} of {groups} groups by "
        f"{PROBE_SHARE:.0%} of the {job.options.time_budget:g} s; the others were ranked as any group is "
        "(a larger --time-budget probes them all)"
    )
