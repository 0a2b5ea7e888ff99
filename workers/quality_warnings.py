"""One-line warnings when a pruned model keeps little of the original's behaviour, with what would help.

A model whose outputs point elsewhere than the original's (cosine below 0.9 on the benchmark inputs)
or that misses the tolerated held-out drop is still written (the surgery is right, the oracle says
so), but nobody should ship it unaware: the CLI prints the warning and the report carries it.
"""

from __future__ import annotations

import math

from onnxprune.workers.report import Fidelity, HeldOutEvaluation

MIN_COSINE = 0.9
# Without --max-drop, a held-out drop above this is worth a warning (2 points of accuracy).
DEFAULT_DROP = 0.02


def quality_warnings(
    fidelity: Fidelity | None,
    evaluation: HeldOutEvaluation | None,
    *,
    data_given: bool,
    recovered: bool,
    max_drop: float | None,
) -> list[str]:
    """Warnings for a result; ``recovered``: reconstruction or fine-tuning ran."""
    if not data_given:
        help_text = "pass --data with a few thousand samples (layer-wise reconstruction runs by default)"
    elif recovered:
        help_text = "give recovery more time (a larger --time-budget) or more samples, or prune less"
    else:
        help_text = "give recovery a budget (--time-budget or --finetune-steps), or prune less"
    notes = []
    bound = max_drop if max_drop is not None else DEFAULT_DROP
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
