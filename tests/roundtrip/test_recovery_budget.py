"""Recovery says what its budget bought (steps, epochs over the training split, samples/s) and warns,
saying why, when that is under two epochs: little CPU, or a budget too short for the model."""

from __future__ import annotations

import pytest

from onnxprune.workers.analysis import analyse_model
from onnxprune.workers.options import PruneOptions
from onnxprune.workers.quality_warnings import got_little_cpu, quality_warnings, recovery_budget_warnings
from onnxprune.workers.report import FinetuneReport, HeldOutEvaluation
from onnxprune.workers.stages import Stages
from onnxprune.workers.strategies import Job
from onnxprune.workers.strategies.finetune import FineTune
from onnxprune.workers.strategies.ranked import RankedByRatio
from onnxprune.workers.strategies.stepwise import Stepwise

# Pipeline stages run in this process, as in a job's sandbox (tests/support/job_sandbox.py).
pytestmark = pytest.mark.usefixtures("stages_in_the_job_process")


def test_the_report_counts_the_steps_and_epochs_fine_tuning_made(small_model, small_data, tmp_path):
    analysis = analyse_model(small_model, {"input": [1, 3, 12, 12]})
    options = PruneOptions(
        criterion="l1", ratio=0.5, round_to=1, iterative_steps=2, finetune_steps=5, batch_size=16, benchmark=False
    )
    job = Job(analysis, options, Stages(), tmp_path, data_path=small_data["labelled"])

    report = Stepwise(RankedByRatio(0.5), FineTune(steps=5, lr=0.01), steps=2).run(job).finetune

    train = report.samples["train"]
    assert report.total_steps == 10 == len(report.losses)  # 5 after each of the 2 pruning steps
    assert report.epochs == pytest.approx(round(10 * min(16, train) / train, 2))
    assert report.train_seconds is not None and report.train_seconds >= 0  # 0.0: under 0.05 s on a quiet machine
    # train_seconds is reported to 0.1 s and samples_per_s from the unrounded time: equal within that rounding
    trained, seconds = 10 * min(16, train), report.train_seconds
    assert report.samples_per_s is not None
    assert trained / (seconds + 0.05) - 0.05 <= report.samples_per_s <= trained / max(seconds - 0.05, 1e-3) + 0.05
    assert report.cpu_per_second is not None and report.cpu_per_second >= 0


def bought(epochs: float, cpu_per_second: float, threads: int = 2, steps: int = 35) -> FinetuneReport:
    return FinetuneReport(
        schedule="one-shot",
        objective="cross-entropy",
        steps=steps,
        iterative_steps=1,
        lr=0.01,
        batch_size=32,
        samples={"train": 1280, "validation": 320},
        total_steps=steps,
        epochs=epochs,
        samples_per_s=2.7,
        train_seconds=420.0,
        cpu_per_second=cpu_per_second,
        threads=threads,
    )


def test_under_two_epochs_on_a_busy_machine_the_warning_blames_the_cpu_not_the_budget():
    finetune = bought(epochs=0.9, cpu_per_second=0.3)

    (warning,) = recovery_budget_warnings(finetune, time_budget=600.0)

    assert "35 fine-tuning steps in 420 s (0.9 epochs over the 1,280 training samples" in warning
    assert "little CPU: 0.30 CPU-seconds per second for its 2 thread(s)" in warning
    assert "--time-budget" not in warning
    assert got_little_cpu(finetune)


def test_under_two_epochs_with_the_cpu_its_own_the_warning_asks_for_a_longer_budget():
    (warning,) = recovery_budget_warnings(bought(epochs=0.9, cpu_per_second=1.9), time_budget=600.0)

    assert "too short for this model" in warning
    assert "two epochs take about 948 s of fine-tuning" in warning  # 2 x 1,280 samples at 2.7 samples/s
    assert "raise --time-budget" in warning


def test_two_epochs_or_more_need_no_warning_and_no_steps_no_warning():
    assert recovery_budget_warnings(bought(epochs=2.0, cpu_per_second=0.3), time_budget=600.0) == []
    assert recovery_budget_warnings(bought(epochs=0.0, cpu_per_second=0.3, steps=0), time_budget=None) == []
    assert recovery_budget_warnings(None, time_budget=600.0) == []


def test_a_held_out_drop_after_cpu_starved_recovery_does_not_ask_for_more_time():
    evaluation = HeldOutEvaluation(
        metric="accuracy", source="labels", samples=400, split="every fifth", before=0.80, after=0.68
    )

    (note,) = quality_warnings(None, evaluation, data_given=True, recovered=True, max_drop=None, little_cpu=True)

    assert "CPU is free" in note and "--time-budget" not in note


def test_the_cli_summary_says_what_the_budget_bought(capsys):
    from onnxprune.service.cli import _print_summary
    from onnxprune.workers.report import BeforeAfter, PruneReport

    evaluation = HeldOutEvaluation(
        metric="accuracy",
        source="labels",
        samples=400,
        split="every fifth",
        before=0.80,
        after=0.79,
        finetune=bought(epochs=0.93, cpu_per_second=0.3),
    )
    report = PruneReport(
        onnxprune_version="test",
        model_sha256="0" * 64,
        options={},
        input_shapes={"x": [1, 3, 32, 32]},
        macs=BeforeAfter(before=100, after=70),
        params=BeforeAfter(before=10, after=7),
        groups=[],
        frozen=[],
        evaluation=evaluation,
    )

    _print_summary(report)

    summary = " ".join(capsys.readouterr().out.split())
    assert "recovery: 35 fine-tuning steps, 0.93 epochs over 1,280 training samples, 2.7 samples/s, 2 thread(s)" in (
        summary
    )
