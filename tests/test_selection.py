"""Selection and plans: how many channels go, which ones, and which constraints always hold."""

from __future__ import annotations

import json

import numpy as np
import pytest

from onnxprune.graphops.cost import measure_cost
from onnxprune.graphops.errors import PlanError
from onnxprune.graphops.plan import PruningPlan
from onnxprune.graphops.scoring import available_criteria, score_groups
from onnxprune.graphops.selection import MacsModel, excluded_group_ids, round_keep, select_by_flops, select_by_ratio
from tests import zoo
from tests.oracle import analyse


def residual_model(width: int = 16):
    """x -> Conv(a) -> Relu -> Conv(b) -> Add(a) -> Relu -> Conv(c) -> GAP -> Flatten -> Gemm(10)

    Conv a and Conv b write the same channels (the residual Add): one group of ``width``.
    Conv c feeds only the classifier: a second group.
    """
    g = zoo.GraphBuilder(seed=3)
    a = g.conv("input", 3, width)
    b = g.conv(g.node("Relu", [a]), width, width)
    c = g.conv(g.node("Relu", [g.node("Add", [a, b])]), width, 2 * width)
    pooled = g.node("Flatten", [g.node("GlobalAveragePool", [c])], axis=1)
    logits = g.node("Gemm", [pooled, g.random("fc", [10, 2 * width]), g.random("fc_b", [10])], transB=1)
    return g.model([zoo.float_input("input", [1, 3, 8, 8])], logits, 13, "residual")


def grouped_model():
    """x -> Conv(16) -> Conv(16, group=4) -> Relu -> Conv(8) : the grouped conv keeps 4 equal blocks."""
    g = zoo.GraphBuilder(seed=5)
    a = g.conv("input", 3, 16)
    b = g.conv(g.node("Relu", [a]), 16, 16, group=4)
    out = g.conv(g.node("Relu", [b]), 16, 8)
    return g.model([zoo.float_input("input", [1, 3, 8, 8])], out, 13, "grouped")


@pytest.fixture(scope="module")
def residual():
    return analyse(residual_model())


def test_the_residual_add_couples_both_convs_into_one_group(residual):
    coupled = [g for g in residual.dep.prunable if len(g.producers) == 2]
    assert len(coupled) == 1 and coupled[0].channels == 16


def test_ratio_removes_that_fraction_of_every_group(residual):
    plan = select_by_ratio(residual.dep, score_groups(residual.dep, "l1"), 0.25)
    assert {g.id: len(k) for g, k in ((residual.dep.group(i), k) for i, k in plan.keep.items())} == {
        g.id: g.channels - g.channels // 4 for g in residual.dep.prunable
    }


def test_ratio_zero_removes_nothing(residual):
    assert select_by_ratio(residual.dep, score_groups(residual.dep, "l1"), 0.0).groups == {}


def test_lowest_scores_go_first(residual):
    group = residual.dep.prunable[0]
    scores = {g.id: np.arange(g.channels, dtype=float) for g in residual.dep.prunable}
    plan = select_by_ratio(residual.dep, scores, 0.5)
    assert plan.keep[group.id] == list(range(group.channels // 2, group.channels))


def test_round_to_keeps_multiples(residual):
    plan = select_by_ratio(residual.dep, score_groups(residual.dep, "l1"), 0.3, round_to=8)
    assert all(len(keep) % 8 == 0 for keep in plan.keep.values())


@pytest.mark.parametrize(
    ("keep", "channels", "step", "kept"),
    [
        (5, 16, 8, 8),  # up to the next multiple
        (0, 16, 16, 16),  # never below one step: blocked kernels would pad it back
        (0, 64, 16, 16),
        (3, 8, 16, 4),  # narrower than the step: quarter steps, its consumers read it unblocked
        (0, 3, 16, 3),  # narrower than a quarter step: whole
        (0, 16, 1, 1),  # --round-to 1: one channel is a step
    ],
)
def test_rounded_counts_keep_at_least_one_step_and_at_most_the_group(keep, channels, step, kept):
    assert round_keep(keep, channels, step) == kept


def test_a_deep_macs_target_never_cuts_a_group_below_the_step(residual):
    plan = select_by_flops(residual.dep, score_groups(residual.dep, "l1"), 0.9, round_to=8)
    assert all(len(keep) >= 8 for keep in plan.keep.values())


def test_exclude_protects_the_groups_a_named_conv_produces(residual):
    scores = score_groups(residual.dep, "l1")
    coupled = next(g for g in residual.dep.prunable if len(g.producers) == 2)
    assert excluded_group_ids(residual.dep, [coupled.producers[1]]) == {coupled.id}
    plan = select_by_ratio(residual.dep, scores, 0.5, exclude=[coupled.producers[1]])
    assert coupled.id not in plan.keep and len(plan.keep) == len(residual.dep.prunable) - 1
    every_conv = {g.id for g in residual.dep.groups if any(p.startswith("conv") for p in g.producers)}
    assert excluded_group_ids(residual.dep, ["conv*"]) == every_conv


def test_flops_target_is_reached_and_measured_macs_agree(residual):
    cost = measure_cost(residual.prepared, residual.input_shapes)
    node_macs = {n.name: n.macs for n in cost.nodes}
    plan = select_by_flops(residual.dep, score_groups(residual.dep, "l1"), 0.4, node_macs=node_macs)
    from onnxprune.graphops.surgery import apply_plan

    after = measure_cost(apply_plan(residual.dep, plan), residual.input_shapes).macs
    assert MacsModel(residual.dep, node_macs).macs(plan) == after
    assert after <= cost.macs * 0.6


def test_grouped_conv_keeps_equal_counts_per_block():
    dep = analyse(grouped_model()).dep
    for seed in range(5):
        plan = select_by_ratio(dep, score_groups(dep, "random", seed=seed), 0.5)
        for gid, keep in plan.keep.items():
            for index, blocks in dep.balanced:
                if dep.groups[index].id == gid:
                    assert len({len(set(keep) & set(b.tolist())) for b in blocks}) == 1


def test_the_registry_offers_weight_norms_and_random():
    assert {"l1", "l2", "random"} <= available_criteria()


def test_random_scores_are_seeded(residual):
    first = score_groups(residual.dep, "random", seed=7)
    again = score_groups(residual.dep, "random", seed=7)
    assert all(np.array_equal(first[k], again[k]) for k in first)


PLAN_ERROR_CASES = [
    ("unknown group", lambda d: {"nope": [0]}, "does not have"),
    ("empty keep", lambda d: {d["id"]: []}, "invalid channel indices"),
    ("index out of range", lambda d: {d["id"]: [0, 10_000]}, "invalid channel indices"),
]


@pytest.mark.parametrize("label, keep, message", PLAN_ERROR_CASES, ids=[c[0] for c in PLAN_ERROR_CASES])
def test_plans_that_do_not_fit_are_refused_with_a_reason(residual, label, keep, message):
    group = residual.dep.prunable[0]
    with pytest.raises(PlanError, match=message):
        PruningPlan.from_keep(residual.dep, keep({"id": group.id}))


def test_a_plan_for_another_model_is_refused(residual):
    plan = select_by_ratio(residual.dep, score_groups(residual.dep, "l1"), 0.5)
    data = json.loads(plan.to_json())
    data["groups"][0]["channels"] += 1
    with pytest.raises(PlanError, match="channels"):
        PruningPlan.from_dict(data).check(residual.dep)


def test_plan_json_round_trips(residual):
    plan = select_by_ratio(residual.dep, score_groups(residual.dep, "l2"), 0.5)
    assert PruningPlan.from_json(plan.to_json()) == plan


def test_a_flops_target_with_weight_norms_prunes_every_width_not_only_the_widest(tmp_path):
    """Weight norms are alike within a layer: a normalisation that shrinks scores with a group's width
    would rank every channel of the widest layers first and empty them (seen: 64 -> 1 channel)."""
    analysed = analyse(
        zoo.export_onnx(
            zoo.randomize_batchnorm(zoo.resnet18(num_classes=10, width_multiplier=0.25)),
            (1, 3, 32, 32),
            tmp_path / "resnet18.onnx",
        )
    )
    dep = analysed.dep
    plan = select_by_flops(dep, score_groups(dep, "l1"), 0.5)
    kept = {g.id: len(plan.keep.get(g.id, range(g.channels))) / g.channels for g in dep.prunable}
    assert min(kept.values()) >= 0.25, kept
