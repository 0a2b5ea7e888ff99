"""A fine-tuning that diverges (a non-finite loss) stops and keeps the best weights it had, and the
report says so: a step size too large for one model never loses the job (YOLOX on its 0-255 pixels
at the default lr reached nan at step 11 and the job failed as an internal error)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from onnxprune.roundtrip.executor import OnnxModule
from onnxprune.roundtrip.objective import Objective
from onnxprune.roundtrip.training import finetune, outputs_on
from onnxprune.workers.options import PruneOptions
from onnxprune.workers.pipeline import run_pipeline

# Pipeline stages run in this process, as in a job's sandbox (tests/support/job_sandbox.py).
pytestmark = pytest.mark.usefixtures("stages_in_the_job_process")

NAN_FROM = 4  # the training loss turns nan at this call (a fake: this small net does not diverge on demand)


@pytest.fixture
def diverging(monkeypatch):
    """The training loss is nan from its NAN_FROM-th step on (evaluations, without gradients, are not touched)."""
    steps = {"n": 0}
    real = Objective.loss

    def loss(self, outputs, batch, targets):
        value = real(self, outputs, batch, targets)
        if not torch.is_grad_enabled():
            return value
        steps["n"] += 1
        return value * float("nan") if steps["n"] >= NAN_FROM else value

    monkeypatch.setattr(Objective, "loss", loss)


@pytest.mark.parametrize("selecting", [True, False], ids=["with a selection split", "without one"])
def test_a_diverging_run_stops_and_keeps_the_weights_it_was_given(pruned, selecting, diverging):
    context, model = pruned
    module = OnnxModule(model)
    inputs = next(context.validation.batches(8)).inputs
    before = outputs_on(module, inputs)

    torch.manual_seed(0)
    run = finetune(
        module, context.objective, context.train, steps=200, lr=0.5, batch_size=16,
        select_on=context.validation if selecting else None,
    )  # fmt: skip

    assert run.diverged == f"step {NAN_FROM} (loss nan)"
    assert run.steps == NAN_FROM - 1 and run.kept_step == 0
    after = outputs_on(module, inputs)
    for name, values in before.items():
        np.testing.assert_array_equal(after[name], values)


def test_the_report_says_where_fine_tuning_diverged_and_what_was_kept(small_model, small_data, tmp_path, diverging):
    options = PruneOptions(ratio=0.5, finetune_steps=200, lr=0.5, recovery="finetune", benchmark=False)

    report = run_pipeline(small_model, tmp_path / "out.onnx", options, data=small_data["labelled"]).report

    (note,) = [w for w in report.warnings if "fine-tuning diverged at step" in w]
    assert "the weights of step 0 were kept" in note and "a lower --lr than 0.5 trains further" in note
    assert (tmp_path / "out.onnx").exists()
