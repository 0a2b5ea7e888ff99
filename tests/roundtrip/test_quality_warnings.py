"""A result that keeps little of the original's behaviour says so, in one line, with what would help."""

from __future__ import annotations

import pytest

from onnxprune.workers.quality_warnings import quality_warnings, reconstruction_warnings, refits_kept
from onnxprune.workers.report import EvaluationPoint, Fidelity, FinetuneReport, HeldOutEvaluation, IterationReport

# Pipeline stages run in this process, as in a job's sandbox (tests/support/job_sandbox.py).
pytestmark = pytest.mark.usefixtures("stages_in_the_job_process")


def evaluation(before: float, after: float) -> HeldOutEvaluation:
    return HeldOutEvaluation(
        metric="accuracy", source="labels", samples=100, split="every fifth", before=before, after=after
    )


def test_low_output_cosine_without_data_asks_for_data():
    notes = quality_warnings(
        Fidelity(max_abs_diff=5.0, cosine_similarity=-0.27), None, data_given=False, recovered=False, max_drop=None
    )

    assert len(notes) == 1 and "cosine -0.27" in notes[0] and "--data" in notes[0]


def test_low_output_cosine_with_data_asks_for_a_recovery_budget():
    notes = quality_warnings(
        Fidelity(max_abs_diff=1.0, cosine_similarity=0.8),
        evaluation(0.8, 0.7),
        data_given=True,
        recovered=True,
        max_drop=None,
    )

    assert len(notes) == 1 and "--time-budget" in notes[0]


def test_a_held_out_drop_above_the_bound_is_named_with_its_size():
    notes = quality_warnings(
        Fidelity(max_abs_diff=0.1, cosine_similarity=0.99),
        evaluation(0.80, 0.75),
        data_given=True,
        recovered=True,
        max_drop=0.02,
    )

    assert notes == [
        "held-out accuracy dropped by 0.0500 (0.8000 -> 0.7500), above the bound 0.02: give recovery "
        "more time (a larger --time-budget) or more samples, or prune less"
    ]


def test_with_held_out_data_the_drop_judges_not_the_cosine_on_random_inputs():
    quiet = quality_warnings(
        Fidelity(max_abs_diff=1.0, cosine_similarity=0.7),
        evaluation(0.80, 0.79),
        data_given=True,
        recovered=True,
        max_drop=None,
    )
    unrecovered = quality_warnings(
        Fidelity(max_abs_diff=1.0, cosine_similarity=0.99),
        evaluation(0.80, 0.70),
        data_given=True,
        recovered=False,
        max_drop=None,
    )

    assert quiet == []  # one point on real held-out samples is within the default 2
    assert len(unrecovered) == 1 and "above a tolerable 0.02" in unrecovered[0] and "--finetune-steps" in unrecovered[0]


def test_a_faithful_result_has_no_warning():
    assert (
        quality_warnings(
            Fidelity(max_abs_diff=0.01, cosine_similarity=0.999),
            evaluation(0.8, 0.795),
            data_given=True,
            recovered=True,
            max_drop=0.02,
        )
        == []
    )


def test_the_report_carries_the_warning(small_model, tmp_path):
    from onnxprune.workers.options import PruneOptions
    from onnxprune.workers.pipeline import run_pipeline

    result = run_pipeline(small_model, tmp_path / "out.onnx", PruneOptions(ratio=0.9, round_to=1, benchmark=False))

    assert result.report.fidelity.cosine_similarity < 0.9
    assert any("keeps little of the original's behaviour" in w for w in result.report.warnings)


def test_a_missed_max_drop_says_by_how_much_and_where_the_plan_was_chosen():
    bounded = evaluation(0.80, 0.75).model_copy(
        update={"samples": 400, "max_drop": 0.02, "validation_drop": 0.015, "missed_by": 0.03}
    )

    notes = quality_warnings(
        Fidelity(max_abs_diff=0.1, cosine_similarity=0.99), bounded, data_given=True, recovered=True, max_drop=0.02
    )

    assert notes == [
        "held-out accuracy dropped by 0.0500 (0.8000 -> 0.7500): the bound 0.02 is missed by 0.0300 (the plan "
        "was chosen at a drop of 0.0150 on the validation split; the held-out accuracy's standard error on 400 "
        "samples is 0.0217): give recovery more time (a larger --time-budget) or more samples, or prune less"
    ]


def test_a_detector_pruned_without_data_is_said_to_be_unchecked_however_high_its_cosine():
    fine = Fidelity(max_abs_diff=197.0, cosine_similarity=0.98)

    (note,) = quality_warnings(fine, None, data_given=False, recovered=False, max_drop=None, detector_output="output0")
    without_detector = quality_warnings(fine, None, data_given=False, recovered=False, max_drop=None)

    assert note.startswith("detections not checked: output 'output0'") and "--data" in note
    assert without_detector == []


def _refits(*steps: tuple[list[str], dict[str, str]]) -> FinetuneReport:
    """A recovery of one iteration per step: (layers refit and kept, layers refit and not kept)."""
    point = EvaluationPoint(loss=1.0, cosine=0.9)
    iterations = [
        IterationReport(
            iteration=i + 1,
            macs=100,
            removed_channels=4,
            after_pruning=point,
            reconstructed_layers=kept,
            reconstruction_not_kept=not_kept,
            reconstruction_samples=30,
        )
        for i, (kept, not_kept) in enumerate(steps)
    ]
    return FinetuneReport(
        schedule="iterative + layer-wise reconstruction",
        objective="distillation",
        steps=0,
        iterative_steps=len(steps),
        lr=0.002,
        batch_size=32,
        samples={"train": 30},
        iterations=iterations,
    )


def test_reconstruction_that_kept_no_refit_says_how_many_it_tried_and_why_none_was_kept():
    none_kept = _refits(([], {"fc1": "worse"}), ([], {"fc1": "worse", "fc2": "worse"}))
    some_kept = _refits(
        (["fc1"], {"fc2": "worse"}),
    )

    assert refits_kept(none_kept) == (0, 3) and refits_kept(some_kept) == (1, 2) and refits_kept(None) == (0, 0)
    (warning,) = reconstruction_warnings(none_kept)
    assert warning.startswith(
        "layer-wise reconstruction kept none of its 3 refit(s): none lowered the layer's error on the calibration "
        "samples held aside to judge it (a fifth of 30)"
    )
    assert (
        reconstruction_warnings(some_kept) == []
        and reconstruction_warnings(
            _refits(
                ([], {}),
            )
        )
        == []
    )
