"""Fine-tuning recovers what pruning cost, with labels or (distillation) without; iterative steps too."""

from __future__ import annotations

import pytest

from onnxprune.graphops.scoring import score_groups
from onnxprune.graphops.selection import select_by_ratio
from onnxprune.graphops.surgery import apply_plan
from onnxprune.roundtrip.context import build_context
from onnxprune.roundtrip.executor import OnnxModule
from onnxprune.roundtrip.training import evaluate, finetune
from onnxprune.workers.analysis import analyse_model
from onnxprune.workers.options import PruneOptions
from onnxprune.workers.stages import Stages
from onnxprune.workers.strategies import Job
from onnxprune.workers.strategies.finetune import FineTune
from onnxprune.workers.strategies.ranked import RankedByRatio
from onnxprune.workers.strategies.stepwise import Stepwise
from tests.support.oracle import analyse

# Pipeline stages run in this process, as in a job's sandbox (tests/support/job_sandbox.py).
pytestmark = pytest.mark.usefixtures("stages_in_the_job_process")


@pytest.fixture(scope="module")
def analysed(small_model):
    return analyse(small_model, {"input": [1, 3, 12, 12]})


def test_distillation_without_labels_measurably_recovers_fidelity_lost_by_pruning(analysed, small_data):
    context = build_context(small_data["unlabelled"], analysed.prepared, None, batch_size=16, score_batches=2)
    plan = select_by_ratio(analysed.dep, score_groups(analysed.dep, "l1"), 0.5)
    module = OnnxModule(apply_plan(analysed.dep, plan))
    pruned = evaluate(module, context.objective, context.validation, 32)

    finetune(module, context.objective, context.train, steps=60, lr=0.02, batch_size=16)
    tuned = evaluate(module, context.objective, context.validation, 32)

    assert context.objective.kind == "distillation"
    assert pruned.cosine < 0.99  # pruning cost something
    assert tuned.loss < 0.7 * pruned.loss  # validation distillation loss fell markedly
    assert tuned.cosine > pruned.cosine + 0.25 * (1 - pruned.cosine)  # a quarter of the lost fidelity back


def test_training_that_only_harms_keeps_the_weights_it_was_given(analysed, small_data):
    context = build_context(small_data["labelled"], analysed.prepared, None, batch_size=16, score_batches=2)
    plan = select_by_ratio(analysed.dep, score_groups(analysed.dep, "l1"), 0.25)
    module = OnnxModule(apply_plan(analysed.dep, plan))
    before = evaluate(module, context.objective, context.validation, 32)

    # A step size far too large: every step scrambles the weights (but stays finite).
    run = finetune(
        module, context.objective, context.train, steps=5, lr=5.0, batch_size=16, select_on=context.validation
    )
    after = evaluate(module, context.objective, context.validation, 32)

    assert run.kept_step == 0
    assert after.loss == pytest.approx(before.loss, rel=1e-5)


def test_iterative_steps_compose_into_one_plan_on_the_original(small_model, small_data, tmp_path, monkeypatch):
    import onnxprune.workers.strategies.base as base

    analysis = analyse_model(small_model, {"input": [1, 3, 12, 12]})
    options = PruneOptions(
        criterion="taylor",
        ratio=0.5,
        round_to=1,
        iterative_steps=3,
        finetune_steps=3,
        batch_size=16,
        score_batches=2,
        benchmark=False,
    )
    job = Job(analysis, options, Stages(), tmp_path, data_path=small_data["labelled"])
    verified, steps = [], []
    real_verify = base.verify_against_oracle
    monkeypatch.setattr(base, "verify_against_oracle", lambda *a, **k: verified.append(1) or real_verify(*a, **k))
    selector = RankedByRatio(0.5)
    real_select = selector.select
    selector.select = lambda job, dep, step: steps.append(step) or real_select(job, dep, step)  # type: ignore[method-assign]

    outcome = Stepwise(selector, FineTune(steps=3, lr=0.01), steps=3).run(job)

    assert [s.goal(0.5) for s in steps] == pytest.approx([1 / 6, 1 / 3, 1 / 2])
    assert len(verified) == 3  # every step's surgery, the first included, checked by the oracle
    iterations = outcome.finetune.iterations
    assert len(iterations) == 3 and len(outcome.finetune.losses) == 9
    one_shot = select_by_ratio(analysis.dep, score_groups(analysis.dep, "l1"), 0.5)
    for group_id, keep in outcome.plan.keep.items():  # within rounding of the one-shot channel counts
        assert abs(len(keep) - len(one_shot.keep[group_id])) <= 2
    assert iterations[-1].macs < iterations[0].macs
