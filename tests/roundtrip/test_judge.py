"""``--max-drop`` judges a candidate after the recovery the job will run, on the validation split."""

from __future__ import annotations

import time

import pytest

from onnxprune.graphops.scoring import score_groups
from onnxprune.graphops.selection import select_by_ratio
from onnxprune.workers.analysis import analyse_model
from onnxprune.workers.options import PruneOptions
from onnxprune.workers.stages import Stages
from onnxprune.workers.strategies import Job
from onnxprune.workers.strategies.judge import (
    JUDGE_SHARE,
    JUDGED_CANDIDATES,
    PrunedJudge,
    ReconstructedJudge,
    choose_judge,
    finetune_seconds,
)


@pytest.fixture
def job(small_model, small_data, tmp_path):
    def make(data: str = "unlabelled", **options: object) -> Job:
        """Without labels by default (the small model's own labels are nearly all one class): fidelity is judged."""
        analysis = analyse_model(small_model, {"input": [1, 3, 12, 12]})
        chosen = PruneOptions(ratio="auto", max_drop=0.05, round_to=1, batch_size=16, benchmark=False, **options)
        return Job(analysis, chosen, Stages(), tmp_path, data_path=small_data[data])

    return make


def test_the_judge_follows_the_jobs_recovery(job):
    assert isinstance(choose_judge(job()), ReconstructedJudge)
    assert isinstance(choose_judge(job(recovery="reconstruct")), ReconstructedJudge)
    assert isinstance(choose_judge(job(recovery="none")), PrunedJudge)
    assert isinstance(choose_judge(job(recovery="finetune")), PrunedJudge)


def test_under_a_time_budget_candidates_are_also_fine_tuned_briefly_when_fine_tuning_follows(job, monkeypatch):
    import onnxprune.workers.strategies.judge as judge_module

    budgeted, spent = job(time_budget=200), job(time_budget=200)
    spent.started = budgeted.started - 199.5  # what the sensitivity sweep may leave of a short budget

    class StoppedClock:  # asked when the budgeted job starts: the whole budget is left (no wall clock)
        @staticmethod
        def monotonic() -> float:
            return budgeted.started

    monkeypatch.setattr(judge_module, "time", StoppedClock)

    assert choose_judge(budgeted).budgeted
    assert finetune_seconds(budgeted) == pytest.approx(JUDGE_SHARE * 200 / JUDGED_CANDIDATES, rel=0.02)
    assert finetune_seconds(spent) == 0  # under a second each: reconstruction only
    assert not choose_judge(job()).budgeted  # no budget: reconstruction only
    assert not choose_judge(job(time_budget=200, recovery="reconstruct")).budgeted  # no fine-tuning follows
    assert not choose_judge(job(time_budget=200, finetune_steps=50)).budgeted  # steps, not seconds


def test_a_candidate_is_fine_tuned_for_its_seconds_and_scores_no_worse_than_reconstruction_alone(job, monkeypatch):
    import onnxprune.roundtrip.training as training
    import onnxprune.workers.strategies.judge as judge_module

    runs, clock = [], []

    class RecordingClock:  # the judge's clock, read back: the seconds it gives, not how long they took
        @staticmethod
        def monotonic() -> float:
            clock.append(time.monotonic())
            return clock[-1]

    def recorded(*args, **kwargs):
        """The deadline the judge gives, read; then a fixed number of steps (how many fit in its seconds
        is wall clock, and ``StepPlan``'s: ``test_step_plan.py``)."""
        seconds = kwargs["deadline"] - clock[-1]
        runs.append((training_finetune(*args, **{**kwargs, "steps": 30, "deadline": None}), seconds))
        return runs[-1][0]

    training_finetune = training.finetune
    monkeypatch.setattr(training, "finetune", recorded)
    monkeypatch.setattr(judge_module, "time", RecordingClock)
    reconstructing, shown = job(), []
    reconstructing.stages = Stages(lambda label, _fraction: shown.append(label))
    plan = select_by_ratio(reconstructing.dep, score_groups(reconstructing.dep, "l1"), 0.75)

    refit = ReconstructedJudge(reconstructing)(reconstructing.dep, plan)
    judge = ReconstructedJudge(reconstructing, finetune_seconds=2.0)
    tuned = judge(reconstructing.dep, plan)

    [(run, seconds)] = runs
    assert seconds == pytest.approx(2.0)
    assert run.steps == 30 and run.losses[-1] < run.losses[0]  # it trained
    assert tuned >= refit  # the weights before it compete, as in the final recovery
    assert shown and all(label.startswith("select: candidate 1, fine-tune ") for label in shown)
    assert judge.how == "after layer-wise reconstruction and 2 s of fine-tuning"


def test_a_plan_judged_after_reconstruction_scores_what_reconstruction_recovers(job):
    reconstructing, pruned = job(), job(recovery="none")
    plan = select_by_ratio(reconstructing.dep, score_groups(reconstructing.dep, "l1"), 0.5)
    after_reconstruction = ReconstructedJudge(reconstructing)
    as_pruned = PrunedJudge(pruned)

    assert after_reconstruction.samples == as_pruned.samples == 32  # the validation split: i mod 5 == 3
    assert after_reconstruction.baseline == pytest.approx(as_pruned.baseline) == pytest.approx(1.0)
    raw, refit = as_pruned(pruned.dep, plan), after_reconstruction(reconstructing.dep, plan)
    assert raw < 0.95  # pruning half of every group costs fidelity
    assert refit > raw + 0.25 * (1 - raw)  # reconstruction wins back a quarter of it at least
