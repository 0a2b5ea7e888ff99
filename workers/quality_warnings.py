"""One-line warnings when a pruned model keeps little of the original's behaviour, with what would help.

A model whose outputs point elsewhere than the original's (cosine below 0.9 on the benchmark inputs)
or that misses the tolerated held-out drop (a detector: whose detections no longer match the
original's, mAP50 below 0.9) is still written (the surgery is right, the oracle says
so), but nobody should ship it unaware: the CLI prints the warning and the report carries it.
"""

from __future__ import annotations

import math
import os

from onnxprune.workers.job_threads import usable_cpus
from onnxprune.workers.report import DetectionAgreement, Fidelity, FinetuneReport, HeldOutEvaluation

MIN_COSINE = 0.9
# A detector whose mAP50 against the original's own detections falls below this is worth a warning.
MIN_MAP50 = 0.9
# Without --max-drop, a held-out drop above this is worth a warning (2 points of accuracy).
DEFAULT_DROP = 0.02


def quality_warnings(
    fidelity: Fidelity | None,
    evaluation: HeldOutEvaluation | None,
    *,
    data_given: bool,
    recovered: bool,
    max_drop: float | None,
    little_cpu: bool = False,
    detector_output: str | None = None,
) -> list[str]:
    """Warnings for a result; ``recovered``: reconstruction or fine-tuning ran; ``little_cpu``: its
    fine-tuning got little CPU (``got_little_cpu``), so more time is not what it lacked;
    ``detector_output``: the output that has a detector's shape (``--detector`` not 'none')."""
    notes = []
    if not data_given and detector_output is not None:
        notes.append(unjudged_detector_note(detector_output))
    if not data_given:
        help_text = "pass --data with a few thousand samples (layer-wise reconstruction runs by default)"
    elif recovered and little_cpu:
        help_text = (
            "run it where CPU is free (recovery got under half its threads' CPU time: the report's "
            "evaluation.finetune), or prune less"
        )
    elif recovered:
        help_text = "give recovery more time (a larger --time-budget) or more samples, or prune less"
    else:
        help_text = "give recovery a budget (--time-budget or --finetune-steps), or prune less"
    bound = max_drop if max_drop is not None else DEFAULT_DROP
    if evaluation is not None and evaluation.detections is not None and evaluation.max_drop is None:
        return _detection_notes(evaluation.detections, help_text)  # a detector is judged by its detections
    if evaluation is not None:  # measured on held-out data: a better judge than random benchmark inputs
        drop = evaluation.before - evaluation.after
        if evaluation.max_drop is not None and drop > evaluation.max_drop:
            notes.append(
                f"{_dropped(evaluation)}: the bound {evaluation.max_drop:g} is missed by "
                f"{drop - evaluation.max_drop:.4f} ({_why(evaluation)}): {help_text}"
            )
        elif evaluation.max_drop is None and drop > bound:
            notes.append(
                f"{_dropped(evaluation)}, above {'the bound' if max_drop is not None else 'a tolerable'} "
                f"{bound:g}: {help_text}"
            )
    elif fidelity is not None and fidelity.cosine_similarity < MIN_COSINE:
        notes.append(
            f"the pruned model keeps little of the original's behaviour (output cosine "
            f"{fidelity.cosine_similarity:.2f} < {MIN_COSINE} on the benchmark inputs"
            f"{'' if recovered else ', no recovery'}): {help_text}"
        )
    return notes


def unjudged_detector_note(output: str) -> str:
    """Without data a detector's detections are not judged, and its output cosine misleads: say so."""
    return (
        f"detections not checked: output '{output}' has a YOLO detector's shape, and without data there is "
        "no held-out photo to compare the two models' detections on (the output cosine on generated inputs "
        "is ruled by box pixels: a pruned detector can keep a cosine of 0.98 and lose every detection); "
        "pass --data with photos of the model's domain (a folder) to get mAP50 against the original's "
        "detections and detector recovery"
    )


def _detection_notes(found: DetectionAgreement, help_text: str) -> list[str]:
    if found.map50 is None:
        return [
            f"the original made no detection at confidence {found.confidence:g} on the {found.images} held-out "
            "samples, so the pruned model's detections were not judged: give photos of the model's domain, "
            "or a lower --detection-confidence"
        ]
    if found.map50 >= MIN_MAP50:
        return []
    return [
        f"the pruned model finds the original's detections at mAP50 {found.map50:.4f} (< {MIN_MAP50}; "
        f"{found.reference_boxes} boxes of the original, {found.candidate_boxes} of the pruned model at "
        f"confidence {found.confidence:g}, on {found.images} held-out samples): {help_text}"
    ]


def _dropped(evaluation: HeldOutEvaluation) -> str:
    return (
        f"held-out {evaluation.metric} dropped by {evaluation.before - evaluation.after:.4f} "
        f"({evaluation.before:.4f} -> {evaluation.after:.4f})"
    )


def _why(evaluation: HeldOutEvaluation) -> str:
    """Where the plan's drop was measured when it was chosen, and how noisy the held-out figure is."""
    chosen = (
        "the plan was chosen on the validation split"
        if evaluation.validation_drop is None
        else f"the plan was chosen at a drop of {evaluation.validation_drop:.4f} on the validation split"
    )
    if evaluation.metric != "accuracy" or evaluation.samples < 1:
        return chosen
    error = math.sqrt(max(evaluation.after * (1 - evaluation.after), 0.0) / evaluation.samples)
    return f"{chosen}; the held-out accuracy's standard error on {evaluation.samples} samples is {error:.4f}"


# Recovery that made fewer passes over the training split than this rarely recovers (issue 29: 35 steps,
# under one epoch, on a busy machine; a quiet run of the same budget made about 190).
MIN_EPOCHS = 2.0
# Below this share of its threads' CPU time while fine-tuning, the job was short of CPU, not of time.
LITTLE_CPU_SHARE = 0.5
# How the warning on what the budget bought begins (the report page finds it by this).
BUDGET_WARNING_START = "recovery made "


def got_little_cpu(finetune: FinetuneReport | None) -> bool:
    """The job's threads got under half their CPU time while fine-tuning (other work on the machine)."""
    if finetune is None or finetune.cpu_per_second is None or not finetune.threads:
        return False
    return finetune.cpu_per_second < LITTLE_CPU_SHARE * finetune.threads


def budget_warnings_in(warnings: list[str]) -> list[str]:
    """The warnings of ``recovery_budget_warnings`` among a report's (the page repeats them beside the steps)."""
    return [warning for warning in warnings if warning.startswith(BUDGET_WARNING_START)]


def recovery_budget_warnings(finetune: FinetuneReport | None, *, time_budget: float | None) -> list[str]:
    """A plain warning when recovery bought under ``MIN_EPOCHS`` epochs, and why: little CPU, or a
    budget (or step count) too short for the model."""
    if finetune is None or not finetune.total_steps or finetune.epochs is None or finetune.epochs >= MIN_EPOCHS:
        return []
    train = finetune.samples.get("train", 0)
    bought = (
        f"{BUDGET_WARNING_START}{finetune.total_steps:,} fine-tuning steps"
        + (f" in {finetune.train_seconds:.0f} s" if finetune.train_seconds else "")
        + f" ({finetune.epochs:g} epochs over the {train:,} training samples"
        + (f", {finetune.samples_per_s:g} samples/s" if finetune.samples_per_s else "")
        + f"): under {MIN_EPOCHS:g} epochs, too little to recover the pruned model"
    )
    if got_little_cpu(finetune):
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        return [
            f"{bought}; the job got little CPU: {finetune.cpu_per_second:.2f} CPU-seconds per second for its "
            f"{finetune.threads} thread(s)"
            + (f" (load average {load:.1f} on {usable_cpus():g} CPUs)" if load else "")
            + ": run it where CPU is free, or with fewer jobs at once"
        ]
    if time_budget is None:
        return [f"{bought}; raise --finetune-steps (or give --time-budget)"]
    needed = MIN_EPOCHS * train / finetune.samples_per_s if finetune.samples_per_s else None
    return [
        f"{bought}; the CPU was the job's, the time budget is too short for this model"
        + (f" (two epochs take about {needed:.0f} s of fine-tuning at this rate)" if needed else "")
        + ": raise --time-budget"
    ]


def refits_kept(finetune: FinetuneReport | None) -> tuple[int, int]:
    """(kept, tried) refits of layer-wise reconstruction over the job's steps."""
    if finetune is None:
        return 0, 0
    kept = sum(len(it.reconstructed_layers) for it in finetune.iterations)
    return kept, kept + sum(len(it.reconstruction_not_kept) for it in finetune.iterations)


def reconstruction_warnings(finetune: FinetuneReport | None) -> list[str]:
    """A warning when layer-wise reconstruction tried refits and kept none: it did nothing, which the
    report's list of refit layers (empty) would not say."""
    kept, tried = refits_kept(finetune)
    if finetune is None or not tried or kept:
        return []
    samples = max((it.reconstruction_samples or 0 for it in finetune.iterations), default=0)
    return [
        f"layer-wise reconstruction kept none of its {tried} refit(s): none lowered the layer's error on the "
        f"calibration samples held aside to judge it (a fifth of {samples}); with more data it fits on more "
        "(up to --reconstruct-samples), or --recovery finetune skips it "
        "(evaluation.finetune.iterations[].reconstruction_not_kept says each layer's errors)"
    ]
