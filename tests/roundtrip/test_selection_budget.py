"""Checkpoint selection costs a bounded share of fine-tuning: few steps are not spent on evaluations,
the last step's weights always compete, and the starting weights' metrics are not measured twice."""

from __future__ import annotations

import time

import onnxprune.roundtrip.training as training
from onnxprune.roundtrip.executor import OnnxModule
from onnxprune.roundtrip.training import evaluate, finetune

SLOW_EVALUATION_S = 1.0  # far more than the whole run's steps on this tiny model take


def _scored_steps(monkeypatch, delay: float = 0.0) -> list[int]:
    """Records each selection evaluation (by the running step count seen by ``_select``)."""
    scored: list[int] = []
    real = training._select

    def select(module, objective, data, batch_size, step, best):
        scored.append(step)
        time.sleep(delay)
        return real(module, objective, data, batch_size, step, best)

    monkeypatch.setattr(training, "_select", select)
    return scored


def test_evaluations_slower_than_training_are_thinned_but_the_last_step_still_competes(pruned, monkeypatch):
    context, model = pruned
    scored = _scored_steps(monkeypatch, SLOW_EVALUATION_S)
    run = finetune(
        OnnxModule(model), context.objective, context.train, steps=40, lr=0.02, batch_size=16,
        select_on=context.validation, selections=10,
    )  # fmt: skip
    assert run.steps == 40
    assert scored[-1] == 40  # the last weights were scored
    assert len(scored) <= 3  # of ten due: evaluations past their share of the time were skipped


def test_cheap_evaluations_are_all_made(pruned, monkeypatch):
    context, model = pruned
    scored = _scored_steps(monkeypatch)
    monkeypatch.setattr(training, "SELECTION_SHARE", float("inf"))
    finetune(
        OnnxModule(model), context.objective, context.train, steps=40, lr=0.02, batch_size=16,
        select_on=context.validation, selections=10,
    )  # fmt: skip
    assert scored == [4, 8, 12, 16, 20, 24, 28, 32, 36, 40]


def test_the_starting_metrics_given_are_not_measured_again(pruned, monkeypatch):
    context, model = pruned
    module = OnnxModule(model)
    start = evaluate(module, context.objective, context.validation, 16)
    calls: list[int] = []
    real = training.evaluate
    monkeypatch.setattr(training, "evaluate", lambda *a, **k: calls.append(1) or real(*a, **k))
    # A step size far too large: the given weights are kept, by the metrics given for them.
    run = finetune(
        module, context.objective, context.train, steps=3, lr=5.0, batch_size=16,
        select_on=context.validation, selections=1, start=start,
    )  # fmt: skip
    assert run.kept_step == 0 and run.kept_metric == start.accuracy
    assert len(calls) == 1  # the last step's weights only
