"""Learned pruning (Huang et al. 2018): per-layer agents trained with REINFORCE on R = psi * phi.

The small network of ``conftest``:

    input -> conv(8)-BN-ReLU -> conv(16)-BN-ReLU -> [conv(16)-BN-ReLU-conv(16)-BN + x] -> ReLU -> GAP -> Linear(4)
             group A (8)        group B (16, the residual stream)   group C (16)

"Balanced" is the same network with its Linear bias shifted so that its own predictions cover all
four classes; those predictions are the labels (the unpruned accuracy is 1.0).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from typer.testing import CliRunner

from onnxprune.graphops.dependency import analyze
from onnxprune.graphops.kinds import KindLimits, limit_groups
from onnxprune.graphops.plan import PruningPlan
from onnxprune.graphops.prepare import prepare_model
from onnxprune.graphops.surgery import apply_plan
from onnxprune.roundtrip.agent import PruningAgent, filter_features, train_agent
from onnxprune.roundtrip.context import build_context
from onnxprune.roundtrip.executor import OnnxModule
from onnxprune.roundtrip.learned import (
    MaskedEvaluator,
    SearchSettings,
    _decide,
    _reward_batches,
    layer_order,
    reward,
    search,
)
from onnxprune.roundtrip.training import evaluate
from onnxprune.workers.options import PruneOptions
from tests.support.bn_net import samples
from tests.support.oracle import analyse
from tests.support.transformer_models import bert_style

# Integration: the pipeline, the CLI or a sandbox; the pipeline's stages run in this process, as in a
# job's sandbox (tests/support/job_sandbox.py).
pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("stages_in_the_job_process")]

SHAPES = {"input": [1, 3, 12, 12]}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Two threads on a busy two-core machine are ~100x slower for these tiny convs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def balanced(small_model, tmp_path_factory) -> dict[str, Path]:
    import onnxruntime as ort

    model = onnx.load(small_model)
    x = samples(160)
    logits = ort.InferenceSession(str(small_model), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    gemm = next(node for node in model.graph.node if node.op_type == "Gemm")
    bias = next(init for init in model.graph.initializer if init.name == gemm.input[2])
    bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) - logits.mean(0), bias.name))
    directory = tmp_path_factory.mktemp("balanced")
    onnx.save(model, directory / "balanced.onnx")
    labels = (logits - logits.mean(0)).argmax(1).astype(np.int64)
    np.savez(directory / "labelled.npz", input=x, labels=labels)
    return {"model": directory / "balanced.onnx", "data": directory / "labelled.npz"}


def _setup(model_path: Path, data_path: Path):
    model = onnx.load(model_path)
    dep = analyze(prepare_model(model), SHAPES)
    return dep, build_context(data_path, model, SHAPES, batch_size=32, score_batches=2)


def _no_verify(*_):
    return None


def _validation_drop(result, context) -> float:
    """p_hat - p of the written model on the whole validation split (here also the reward samples)."""
    metrics = evaluate(OnnxModule(result.recovery.model), context.objective, context.validation, 64)
    return result.baseline - (metrics.accuracy if context.objective.use_labels else metrics.cosine)


def test_reward_is_psi_times_phi():
    assert reward(0.0, 8, 16, 0.1) == pytest.approx(math.log(2))
    assert reward(0.05, 4, 16, 0.1) == pytest.approx(0.5 * math.log(4))
    assert reward(0.3, 16, 16, 0.1) == 0.0  # nothing removed: nothing gained, nothing lost
    assert reward(0.3, 4, 16, 0.1) < 0 < reward(0.05, 4, 16, 0.1)  # beyond the bound, removal is punished


def test_masked_evaluation_equals_the_pruned_model(small_model, small_data):
    dep, context = _setup(small_model, small_data["unlabelled"])
    batches = _reward_batches(context, 1024)
    group = dep.prunable[1]  # the residual stream: read by several convs
    keep = np.ones(group.channels, dtype=bool)
    keep[[0, 3, 5, 9, 12]] = False
    masked = MaskedEvaluator(dep.model, dep, batches, context.objective).metric(group.id, keep)
    pruned = apply_plan(dep, PruningPlan.from_keep(dep, {group.id: np.flatnonzero(keep).tolist()}))
    assert MaskedEvaluator(pruned, dep, batches, context.objective).metric() == pytest.approx(masked, abs=1e-6)
    assert masked < 1.0 - 1e-4  # and the mask did change the outputs


def test_decision_adds_filters_back_in_the_agents_order_until_within_bound(small_model):
    """An agent that keeps 2 of 16 (and never sampled better), where each removed filter costs 0.02
    and b = 0.1: the decision keeps 11, the most probable ones."""
    dep = analyze(prepare_model(onnx.load(small_model)), SHAPES)
    group = dep.prunable[2]
    probabilities = np.linspace(0.45, 0.05, group.channels)  # filter 0 the most probable
    probabilities[[0, 1]] = 0.99

    def drop_of(mask):
        return 0.02 * int((~mask).sum())

    keep = _decide(dep, group.id, probabilities, np.zeros(group.channels, bool), SearchSettings(max_drop=0.1), drop_of)
    assert np.flatnonzero(keep).tolist() == list(range(11))


def test_judged_after_recovery_the_decision_keeps_the_fewest_filters_within_bound(small_model):
    """The same agent, its decision judged after reconstruction (``fewer``): it asked to keep 13 of 16,
    which is within b, so the count is searched down to the fewest within b (11), in its order."""
    dep = analyze(prepare_model(onnx.load(small_model)), SHAPES)
    group = dep.prunable[2]
    probabilities = np.linspace(0.95, 0.55, group.channels)  # filter 0 the most probable
    probabilities[-3:] = 0.1
    tried: list[int] = []

    def drop_of(mask):
        tried.append(int(mask.sum()))
        return 0.02 * int((~mask).sum())

    best_sample = probabilities >= 0.5
    keep = _decide(dep, group.id, probabilities, best_sample, SearchSettings(max_drop=0.1), drop_of, fewer=True)
    assert np.flatnonzero(keep).tolist() == list(range(11))
    assert tried[0] == 13 and len(set(tried)) <= 5  # the agent's count first, then a binary search


def test_a_decision_on_attention_heads_counts_in_heads_on_the_kernels_step():
    """Two of four heads of 8 channels, with the job's step of 16 channels: 2 heads are 16 channels, on
    the step (counted in channels, the grid of a 4-channel group would have kept all four)."""
    dep = analyse(bert_style(), {"x": [2, 7, 32], "attention_mask": [2, 7]}).dep
    heads = next(g for g in dep.prunable if g.kind == "head")
    probabilities = np.array([0.9, 0.1, 0.8, 0.1])

    def drop_of(mask):
        return 0.0

    keep = _decide(dep, heads.id, probabilities, probabilities > 0.5, SearchSettings(round_to=16), drop_of)
    assert np.flatnonzero(keep).tolist() == [0, 2]


def test_agent_training_raises_the_reward(small_model, small_data):
    dep, context = _setup(small_model, small_data["unlabelled"])
    evaluator = MaskedEvaluator(dep.model, dep, _reward_batches(context, 1024), context.objective)
    group = dep.prunable[2]
    baseline = evaluator.metric()

    def reward_of(mask):
        return reward(baseline - evaluator.metric(group.id, mask), int(mask.sum()), group.channels, 0.05)

    agent = PruningAgent(filter_features(dep, group.id), seed=0)
    training = train_agent(agent, reward_of, episodes=20, samples=8, pinned=np.zeros(group.channels, bool), seed=0)
    assert len(training.rewards) == 20
    assert np.mean(training.rewards[-4:]) > np.mean(training.rewards[:4]) + 0.05


def test_agent_training_starts_no_episode_after_its_deadline(small_model, small_data):
    dep, context = _setup(small_model, small_data["unlabelled"])
    group = dep.prunable[2]
    episodes_run = []

    def slow_reward(mask):
        time.sleep(0.05)
        return float(mask.mean())

    training = train_agent(
        PruningAgent(filter_features(dep, group.id), seed=0),
        slow_reward,
        episodes=1000,
        samples=2,
        pinned=np.zeros(group.channels, bool),
        progress=lambda episode, *_: episodes_run.append(episode),
        deadline=time.monotonic() + 0.5,
    )
    assert 1 <= len(training.rewards) < 20
    assert episodes_run[-1] == len(training.rewards)


def test_a_spent_time_budget_leaves_the_layers_not_yet_searched_whole(small_model, small_data):
    dep, context = _setup(small_model, small_data["unlabelled"])
    result = search(
        dep,
        SearchSettings(max_drop=0.2, episodes=4, samples=4, deadline=time.monotonic() - 1),
        context,
        verify=_no_verify,
    )
    assert result.layers == []
    assert result.unsearched == layer_order(dep, ())
    assert result.recovery.plan.removed_channels == 0


@pytest.mark.parametrize(
    "kind, bound, finetune_steps, reconstruct_samples",
    [("labels", 0.3, 0, 0), ("fidelity", 0.02, 10, 0), ("fidelity", 0.02, 0, 64)],
)
def test_validation_drop_respects_max_drop(
    small_model, small_data, balanced, kind, bound, finetune_steps, reconstruct_samples
):
    """Tolerance: none. The reward samples here are the whole validation split (32 samples), each
    layer's decision is checked against b there (after reconstruction in the last case, which is
    what goes forward), and fine-tuning is kept only where that still holds."""
    model, data = (balanced["model"], balanced["data"]) if kind == "labels" else (small_model, small_data["unlabelled"])
    dep, context = _setup(model, data)
    result = search(
        dep,
        SearchSettings(
            max_drop=bound,
            episodes=8,
            samples=6,
            finetune_steps=finetune_steps,
            reconstruct_samples=reconstruct_samples,
        ),
        context,
        verify=_no_verify,
    )
    assert result.recovery.plan.removed_channels > 0
    assert result.baseline == pytest.approx(1.0)
    assert _validation_drop(result, context) <= bound + 1e-9
    assert result.drop == pytest.approx(_validation_drop(result, context), abs=1e-6)
    for layer in result.layers:
        assert len(layer.rewards) == 8
        assert layer.drop <= bound + 1e-9


def test_a_larger_bound_removes_more_filters(small_model, small_data):
    dep, context = _setup(small_model, small_data["unlabelled"])
    removed = {
        bound: search(
            dep, SearchSettings(max_drop=bound, episodes=8, samples=6), context, verify=_no_verify
        ).recovery.plan.removed_channels
        for bound in (0.005, 0.1)
    }
    assert removed[0.1] > removed[0.005]


def test_exclude_and_round_to_are_honoured(small_model, small_data):
    dep, context = _setup(small_model, small_data["unlabelled"])
    result = search(
        dep,
        SearchSettings(max_drop=0.2, episodes=4, samples=4, round_to=4, exclude=("/2/conv1/*",)),
        context,
        verify=_no_verify,
    )
    assert [layer.group for layer in result.layers] == ["/0/0.0/Conv", "/1/1.0/Conv"]
    assert all(layer.kept % 4 == 0 for layer in result.layers)
    assert result.recovery.plan.removed_channels > 0


def test_pipeline_reports_each_layer(small_model, small_data, tmp_path):
    from onnxprune.workers.pipeline import run_pipeline

    options = PruneOptions(
        criterion="learned",
        max_drop=0.05,
        learned_episodes=3,
        learned_samples=4,
        finetune_steps=5,
        benchmark=False,
        round_to=1,
    )
    labels: list[str] = []
    result = run_pipeline(
        small_model,
        tmp_path / "out.onnx",
        options,
        data=small_data["unlabelled"],
        progress=lambda label, fraction: labels.append(label),
    )
    learned = result.report.learned
    assert learned is not None and learned.metric == "fidelity" and learned.max_drop == 0.05
    assert [len(layer.rewards) for layer in learned.layers] == [3] * len(learned.layers) and len(learned.layers) == 3
    assert result.report.macs.after < result.report.macs.before
    assert {g.id: g.channels_after for g in result.report.groups} == {
        layer.group: layer.kept for layer in learned.layers
    }
    assert result.report.evaluation.finetune.schedule == "layer-by-layer (learned)"
    assert any("episode 3/3" in label for label in labels)
    assert onnx.load(tmp_path / "out.onnx").graph.node


def _budgeted_search(small_model, small_data, tmp_path):
    from onnxprune.workers.pipeline import run_pipeline

    options = PruneOptions(
        criterion="learned", max_drop=0.05, learned_episodes=10_000, time_budget=5, benchmark=False, round_to=1
    )
    return run_pipeline(small_model, tmp_path / "out.onnx", options, data=small_data["unlabelled"])


@pytest.mark.timing
def test_the_time_budget_bounds_the_whole_job_in_wall_clock(small_model, small_data, tmp_path):
    """Wall clock (pytest -m timing): a 5 s budget ends the job within three times that."""
    started = time.monotonic()
    _budgeted_search(small_model, small_data, tmp_path)
    assert time.monotonic() - started < 3 * 5


def test_the_time_budget_bounds_the_search(small_model, small_data, tmp_path):
    """10,000 episodes a layer would run for hours: the budget, not the episode count, ends each search."""
    result = _budgeted_search(small_model, small_data, tmp_path)

    learned = result.report.learned
    assert learned is not None
    assert all(len(layer.rewards) < 10_000 for layer in learned.layers)
    assert len(learned.layers) + len(learned.unsearched) == 3
    if learned.unsearched:
        assert any("time budget ran out before the learned search" in w for w in result.report.warnings)


def test_under_a_time_budget_the_model_the_search_built_is_fine_tuned_for_what_the_search_left(
    small_model, small_data, tmp_path
):
    from onnxprune.workers.pipeline import run_pipeline

    options = PruneOptions(
        criterion="learned", max_drop=0.2, learned_episodes=3, time_budget=8, benchmark=False, round_to=1
    )
    result = run_pipeline(small_model, tmp_path / "out.onnx", options, data=small_data["unlabelled"])

    finetune = result.report.evaluation.finetune
    assert finetune is not None and result.report.macs.after < result.report.macs.before
    *layers, final = finetune.iterations
    assert all(layer.after_finetune is None for layer in layers)  # no --finetune-steps: none between layers
    assert final.after_finetune is not None and final.steps > 0
    assert final.macs == result.report.macs.after


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"criterion": "learned", "ratio": 0.5}, "criterion 'learned' chooses how many filters each layer keeps"),
        ({"criterion": "learned", "flops_target": 0.5}, "drop ratio and flops_target"),
        ({"criterion": "learned", "iterative_steps": 3}, "drop iterative_steps"),
        ({"criterion": "l1", "max_drop": 0.05}, "max_drop applies only to ratio 'auto' or criterion 'learned'"),
    ],
)
def test_options_refuse_targets_the_search_chooses(fields, message):
    with pytest.raises(ValueError, match=message):
        PruneOptions(**fields)


def test_options_default_bound_and_budget():
    options = PruneOptions(criterion="learned")
    assert (options.ratio, options.flops_target, options.max_drop) == (None, None, 0.01)
    assert (options.learned_episodes, options.learned_samples) == (20, 8)


def test_cli_refuses_a_ratio_with_learned(small_model, small_data, tmp_path):
    from onnxprune.service.cli import app

    result = CliRunner().invoke(
        app,
        [
            "prune",
            str(small_model),
            "-o",
            str(tmp_path / "o.onnx"),
            "--criterion",
            "learned",
            "--ratio",
            "0.5",
            "--data",
            str(small_data["unlabelled"]),
        ],
    )
    assert result.exit_code == 2
    assert "criterion 'learned' chooses how many filters" in result.output


def test_the_agents_skip_the_kinds_prune_kinds_leaves_whole():
    dep = analyse(bert_style(), {"x": [2, 7, 32], "attention_mask": [2, 7]}).dep
    limited = limit_groups(dep, KindLimits(frozenset({"neuron"})))

    assert [dep.group(gid).kind for gid in layer_order(dep, ())] == ["head", "neuron"] * 2
    assert [limited.group(gid).kind for gid in layer_order(limited, ())] == ["neuron", "neuron"]
