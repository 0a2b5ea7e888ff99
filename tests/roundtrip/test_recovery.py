"""Fine-tuning recovers what pruning cost, with labels or (distillation) without; iterative steps too."""

from __future__ import annotations

import pytest

from graphops.scoring import score_groups
from graphops.selection import select_by_ratio
from graphops.surgery import apply_plan
from roundtrip.context import build_context
from roundtrip.executor import OnnxModule
from roundtrip.schedule import Settings, recover, step_targets
from roundtrip.training import evaluate, finetune
from tests.oracle import analyse, assert_outputs_close, output_names, random_feeds, run_model


@pytest.fixture(scope="module")
def analysed(small_model):
    return analyse(small_model, {"input": [1, 3, 12, 12]})


def test_distillation_without_labels_measurably_recovers_fidelity_lost_by_pruning(analysed, small_data):
    context = build_context(small_data["unlabelled"], analysed.prepared, None, batch_size=16, score_batches=2)
    plan = select_by_ratio(analysed.dep, score_groups(analysed.dep, "l1"), 0.5)
    module = OnnxModule(apply_plan(analysed.dep, plan))
    pruned = evaluate(module, context.objective, context.holdout, 32)

    finetune(module, context.objective, context.train, steps=60, lr=0.02, batch_size=16)
    tuned = evaluate(module, context.objective, context.holdout, 32)

    assert context.objective.kind == "distillation"
    assert pruned.cosine < 0.99  # pruning cost something
    assert tuned.loss < 0.7 * pruned.loss  # held-out distillation loss fell markedly
    assert tuned.cosine > pruned.cosine + 0.25 * (1 - pruned.cosine)  # a quarter of the lost fidelity back


def _verify_with_oracle(dep, plan, pruned):
    """What the pipeline's verify stage checks, in process: pruned == masked original."""
    from graphops.masking import mask_removed_channels

    feeds = random_feeds(dep.model, {"input": [1, 3, 12, 12]})
    assert_outputs_close(run_model(mask_removed_channels(dep, plan), feeds), run_model(pruned, feeds),
                         output_names(pruned), 1e-4)
    _verify_with_oracle.calls += 1


def test_iterative_steps_compose_into_one_plan_on_the_original(analysed, small_data):
    context = build_context(small_data["labelled"], analysed.prepared, None, batch_size=16, score_batches=2)
    settings = Settings(criterion="taylor", ratio=0.5, flops_target=None, iterative_steps=3, finetune_steps=3,
                        batch_size=16)
    first = select_by_ratio(analysed.dep, score_groups(analysed.dep, "taylor", data=context), 0.5 / 3)
    _verify_with_oracle.calls = 0

    result = recover(analysed.dep, first, apply_plan(analysed.dep, first), settings, context, verify=_verify_with_oracle)

    assert [s.ratio for s in step_targets(settings)] == pytest.approx([1 / 6, 1 / 3, 1 / 2])
    assert len(result.iterations) == 3 and _verify_with_oracle.calls == 2  # steps 2 and 3; step 1 is the caller's
    assert len(result.losses) == 9
    one_shot = select_by_ratio(analysed.dep, score_groups(analysed.dep, "l1"), 0.5)
    for group_id, keep in result.plan.keep.items():  # within rounding of the one-shot channel counts
        assert abs(len(keep) - len(one_shot.keep[group_id])) <= 2
    assert result.iterations[-1].macs < result.iterations[0].macs
