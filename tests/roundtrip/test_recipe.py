"""The few-sample fine-tuning recipe: cross-entropy plus distillation of the original's logits, AdamW
with warm-up and cosine decay, image augmentation, best-checkpoint selection, and a time budget that
plans the number of steps from the measured step time."""

from __future__ import annotations

import time

import numpy as np
import pytest

from graphops.scoring import score_groups
from graphops.selection import select_by_ratio
from graphops.surgery import apply_plan
from roundtrip.augment import augment, spatial_axes
from roundtrip.context import build_context
from roundtrip.executor import OnnxModule
from roundtrip.training import evaluate, finetune, plan_steps
from tests.oracle import analyse


@pytest.fixture(scope="module")
def analysed(small_model):
    return analyse(small_model, {"input": [1, 3, 12, 12]})


def test_labels_with_distillation_and_adamw_augmented_recover_fidelity_lost_by_pruning(analysed, small_data):
    context = build_context(small_data["labelled"], analysed.prepared, None, batch_size=16, score_batches=2)
    context.objective.distill = True
    plan = select_by_ratio(analysed.dep, score_groups(analysed.dep, "l1"), 0.5)
    module = OnnxModule(apply_plan(analysed.dep, plan))
    pruned = evaluate(module, context.objective, context.holdout, 32)

    losses = finetune(module, context.objective, context.train, steps=60, lr=3e-3, batch_size=16, optimizer="adamw",
                      warmup=0.1, augment=True, select_on=context.holdout)
    tuned = evaluate(module, context.objective, context.holdout, 32)

    assert context.objective.kind == "cross-entropy + distillation" and len(losses) == 60
    assert tuned.loss < 0.8 * pruned.loss  # held-out cross-entropy + distillation fell markedly
    assert tuned.cosine > pruned.cosine + 0.25 * (1 - pruned.cosine)  # a quarter of the lost fidelity back


def test_best_checkpoint_selection_never_leaves_the_model_worse_on_the_selection_split(analysed, small_data):
    context = build_context(small_data["unlabelled"], analysed.prepared, None, batch_size=16, score_batches=2)
    plan = select_by_ratio(analysed.dep, score_groups(analysed.dep, "l1"), 0.3)
    module = OnnxModule(apply_plan(analysed.dep, plan))
    before = evaluate(module, context.objective, context.holdout, 32)

    finetune(module, context.objective, context.train, steps=10, lr=5.0, batch_size=16, select_on=context.holdout)

    assert evaluate(module, context.objective, context.holdout, 32).loss <= before.loss + 1e-9  # lr 5 would wreck it


@pytest.mark.parametrize("shape, axes", [((2, 3, 32, 32), (2, 3)), ((2, 32, 32, 3), (1, 2)), ((2, 1, 28, 28), (2, 3))])
def test_augmentation_reads_the_layout_from_the_shape_and_keeps_it(shape, axes):
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)

    out = augment({"x": x, "ids": np.arange(2)}, np.random.default_rng(1))

    assert spatial_axes(shape) == axes
    assert out["x"].shape == x.shape and out["x"].dtype == x.dtype and not np.array_equal(out["x"], x)
    assert np.array_equal(out["ids"], np.arange(2))  # non-image inputs untouched


def test_planned_steps_fit_the_time_given(analysed, small_data):
    context = build_context(small_data["labelled"], analysed.prepared, None, batch_size=16, score_batches=2)
    module = OnnxModule(analysed.prepared)

    steps = plan_steps(module, context.objective, context.train, 16, 4.0, augment=True)
    started = time.perf_counter()
    finetune(module, context.objective, context.train, steps=steps, lr=1e-3, batch_size=16, augment=True)
    elapsed = time.perf_counter() - started

    assert steps > 0 and elapsed < 1.5 * 4.0 + 2.0  # the machine is shared: its load moves step times


def test_a_job_with_a_time_budget_fine_tunes_and_stays_within_it(small_model, small_data, tmp_path):
    from workers.options import PruneOptions
    from workers.pipeline import run_pipeline

    options = PruneOptions(ratio=0.5, time_budget=30, batch_size=16, benchmark=False)
    started = time.perf_counter()
    result = run_pipeline(small_model, tmp_path / "out.onnx", options, data=small_data["labelled"])
    elapsed = time.perf_counter() - started

    finetune_report = result.report.evaluation.finetune
    assert finetune_report.steps > 0 and finetune_report.schedule == "one-shot + layer-wise reconstruction"
    assert elapsed < 1.5 * 30
