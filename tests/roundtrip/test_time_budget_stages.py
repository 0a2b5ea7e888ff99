"""--time-budget bounds every stage that runs the model on data, not fine-tuning alone: scoring stops after
the batch that leaves no time for another, reconstruction fits on the calibration samples the time left
allows, and fine-tuning that cannot make one step in what is left makes none. Each cut is said in the
report's warnings (``Job.budget_notes``). (ViT-S at 224 with data took 478 s of a 300 s budget: 267 s of
scoring, then one fine-tuning step past the deadline.)

The tests put the deadline in the past (``Job.started`` long ago, or ``deadline=`` now): what a
stage does then is the least it may do, whatever the machine's speed.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from onnxprune.graphops.dependency import analyze
from onnxprune.graphops.scoring import score_groups
from onnxprune.graphops.selection import select_by_ratio
from onnxprune.graphops.surgery import apply_plan
from onnxprune.roundtrip.criteria import ScoredOn
from onnxprune.roundtrip.data import Dataset
from onnxprune.roundtrip.reconstruction import (
    PROBE_SAMPLES,
    calibration_batch,
    layers_to_refit,
    live_bytes,
    reconstruct,
    widest_activation_bytes,
)
from onnxprune.workers.analysis import analyse_model
from onnxprune.workers.options import PruneOptions
from onnxprune.workers.stages import Stages
from onnxprune.workers.strategies import Job
from onnxprune.workers.strategies.finetune import FineTune
from onnxprune.workers.strategies.ranked import RankedByRatio
from onnxprune.workers.strategies.stepwise import Stepwise
from tests.support.bn_net import samples

SHAPE = {"input": [1, 3, 12, 12]}


def late_job(model, data, tmp_path, **options) -> Job:
    """A job whose --time-budget was spent before it began."""
    analysis = analyse_model(model, SHAPE)
    job = Job(analysis, PruneOptions(round_to=1, benchmark=False, **options), Stages(), tmp_path, data_path=data)
    job.started = time.monotonic() - 1_000.0
    return job


def test_scoring_past_its_deadline_looks_at_one_batch_and_the_report_says_so(small_model, small_data, tmp_path):
    job = late_job(small_model, small_data["unlabelled"], tmp_path, criterion="taylor", ratio=0.5, time_budget=60.0)
    observed, unbounded = ScoredOn(), ScoredOn()

    scores = job.scores(job.dep)
    score_groups(job.dep, "taylor", data=job.data, deadline=time.monotonic() - 1.0, observed=observed)
    score_groups(job.dep, "taylor", data=job.data, observed=unbounded)

    assert (observed.batches, observed.samples, observed.cut_by_deadline) == (1, job.options.batch_size, True)
    assert unbounded.batches == unbounded.asked > 1 and not unbounded.cut_by_deadline
    assert all(np.isfinite(values).all() for values in scores.values())  # one batch still scores every channel
    (note,) = job.budget_notes
    assert note.startswith("--time-budget: criterion 'taylor' scored on 32 samples (1 of ")


def pruned_small(small_model):
    import onnx

    dep = analyze(onnx.load(small_model), SHAPE)
    plan = select_by_ratio(dep, score_groups(dep, "l1"), 0.5)
    return dep, plan, apply_plan(dep, plan)


def test_reconstruction_past_its_deadline_fits_on_the_probe_samples_only(small_model):
    dep, plan, pruned = pruned_small(small_model)
    data = Dataset({"input": samples(64, seed=3)}, None)

    late = reconstruct(dep, plan, pruned, data, samples=64, deadline=time.monotonic() - 1.0)
    unbounded = reconstruct(dep, plan, pruned, data, samples=64)

    assert (late.samples, late.affordable) == (PROBE_SAMPLES, 64)
    assert (unbounded.samples, unbounded.affordable) == (64, 64)
    assert late.layers and all(fit.error_after <= fit.error_before for fit in late.layers)


def test_the_calibration_batch_is_sized_from_the_model_s_shapes(small_model, monkeypatch):
    from onnxprune.roundtrip import reconstruction

    dep, _plan, pruned = pruned_small(small_model)
    widest = 8 * 12 * 12 * 4  # bytes: the first conv's 8 channels at 12 x 12
    nodes, _ = layers_to_refit(dep.model, pruned)
    held = live_bytes(dep, nodes)
    monkeypatch.setattr(reconstruction, "LIVE_BYTES", 10 * held)
    data = Dataset({"input": samples(64, seed=3)}, None)

    assert widest_activation_bytes(dep) == widest
    assert held >= 2 * widest  # the original's and the pruned model's runs hold at least that each
    assert len(calibration_batch(data, dep.model, 64, 0, activation_bytes=held, convs=False)["input"]) == 10


def test_fine_tuning_with_no_time_left_for_a_step_makes_none_and_the_report_says_so(small_model, small_data, tmp_path):
    job = late_job(small_model, small_data["labelled"], tmp_path, criterion="l1", ratio=0.5, time_budget=60.0)

    report = Stepwise(RankedByRatio(0.5), FineTune(steps=0, lr=0.01, budgeted=True)).run(job).finetune

    assert report is not None and report.total_steps == 0 and report.losses == []
    note, statistics = job.budget_notes  # the second: no time to try the BatchNorm statistics as given either
    assert "BatchNorm statistics re-estimated" in statistics
    assert note.startswith("--time-budget: no fine-tuning: one step with its checkpoint evaluations takes about ")
    assert "s left for recovery, about" in note and "kept for the evaluations and checks after training" in note


def batchnorm_statistics(original, result) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The BatchNorm means and variances of ``original`` and the same initializers in ``result``."""
    from onnx import numpy_helper

    names = {name for node in original.graph.node if node.op_type == "BatchNormalization" for name in node.input[3:5]}
    given = {i.name: numpy_helper.to_array(i) for i in original.graph.initializer if i.name in names}
    kept = {i.name: numpy_helper.to_array(i) for i in result.graph.initializer if i.name in names}
    assert given and kept.keys() == given.keys()
    return given, kept


def test_with_no_time_for_a_step_the_batchnorm_statistics_as_given_compete_with_re_estimated_ones(
    small_model, small_data, tmp_path, monkeypatch
):
    """Nothing pruned: the original's statistics, estimated on all its training data, score better on
    validation than those re-estimated on a few batches, so they stay exactly as they were. (Time for the
    evaluation that compares them, not for a training step.)"""
    import onnx

    from onnxprune.workers.strategies import finetune

    monkeypatch.setattr(finetune, "_time_for", lambda evaluation_s, end, reserve: True)
    job = late_job(small_model, small_data["labelled"], tmp_path, criterion="l1", ratio=0.5, time_budget=60.0)

    outcome = Stepwise(RankedByRatio(0.0), FineTune(steps=0, lr=0.01, budgeted=True)).run(job)

    given, kept = batchnorm_statistics(job.dep.model, outcome.model)
    assert all(np.array_equal(kept[name], given[name]) for name in given)
    assert isinstance(outcome.model, onnx.ModelProto) and outcome.finetune is not None
    assert outcome.finetune.total_steps == 0


def test_with_no_time_for_the_comparison_the_re_estimated_batchnorm_statistics_stay(small_model, small_data, tmp_path):
    """Past the budget, the statistics re-estimated and evaluated already stay: trying those the model came
    with costs one more evaluation on the validation split (ViT-S/14 at load 8: 60 s), and the report says so."""
    job = late_job(small_model, small_data["labelled"], tmp_path, criterion="l1", ratio=0.5, time_budget=60.0)

    outcome = Stepwise(RankedByRatio(0.0), FineTune(steps=0, lr=0.01, budgeted=True)).run(job)

    given, kept = batchnorm_statistics(job.dep.model, outcome.model)
    assert not all(np.array_equal(kept[name], given[name]) for name in given)
    (note,) = [note for note in job.budget_notes if "BatchNorm" in note]
    assert note.startswith("--time-budget: the BatchNorm statistics re-estimated on the training split were kept ")


@pytest.mark.usefixtures("stages_in_the_job_process")
def test_the_budget_counts_from_when_the_job_was_asked_for_not_from_when_its_pipeline_began(
    small_model, small_data, tmp_path
):
    """The CLI and the job process pass when the job was asked for (``started``): starting the job's
    process and its imports come before the pipeline's own clock would have begun (a fresh process importing
    torch, onnxruntime and the pipeline took 25 s at load 8)."""
    from onnxprune.workers.pipeline import run_pipeline

    options = PruneOptions(
        criterion="taylor", ratio=0.5, time_budget=60.0, score_batches=4, batch_size=16, benchmark=False, round_to=1
    )

    result = run_pipeline(
        small_model, tmp_path / "out.onnx", options, data=small_data["labelled"], started=time.monotonic() - 1_000.0
    )

    assert any(
        warning.startswith("--time-budget: criterion 'taylor' scored on 16 samples (1 of 4 batches)")
        for warning in result.report.warnings
    )
