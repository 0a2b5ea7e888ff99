"""Selection and plans: how many channels go, which ones, and which constraints always hold."""

from __future__ import annotations

import json

import numpy as np
import pytest

from onnxprune.graphops.cost import measure_cost
from onnxprune.graphops.errors import PlanError
from onnxprune.graphops.plan import PruningPlan
from onnxprune.graphops.scoring import available_criteria, score_groups
from onnxprune.graphops.selection import (
    SNAP_SLACK,
    MacsModel,
    choose_kept,
    excluded_group_ids,
    grid_counts,
    round_keep,
    select_by_flops,
    select_by_ratio,
    split_sections,
)
from tests.support import zoo
from tests.support.needs import shared_model
from tests.support.oracle import analyse, assert_prune_matches_oracle
from tests.support.small_models import c2f_model, residual_model


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
    ("channels", "step", "counts"),
    [
        (64, 16, [64, 48, 32, 16, 8, 4]),  # multiples of the block; below half a block, quarter steps
        (16, 16, [16, 8, 4]),  # 12 of 16 runs no faster than 16 (its consumers read it unblocked)
        (8, 16, [8, 4]),  # narrower than the step
        (40, 16, [40, 32, 16, 8, 4]),  # the whole group, off the grid, stays a choice
        (3, 16, [3]),  # narrower than a quarter step: whole
        (24, 8, [24, 16, 8, 4, 2]),
        (4, 1, [4, 3, 2, 1]),  # --round-to 1: every count
    ],
)
def test_the_grid_of_counts_follows_the_blocked_kernels(channels, step, counts):
    assert grid_counts(channels, step) == counts


@pytest.mark.parametrize(
    ("keep", "channels", "step", "kept"),
    [
        (5, 16, 8, 8),  # up to the next count on the grid
        (20, 64, 16, 32),
        (0, 16, 16, 4),  # never below a quarter step
        (11, 16, 16, 16),  # 12 is not on the grid of a 16-wide group
        (3, 8, 16, 4),
        (0, 3, 16, 3),
        (0, 16, 1, 1),  # --round-to 1: one channel is a step
    ],
)
def test_rounded_counts_go_up_to_the_grid(keep, channels, step, kept):
    assert round_keep(keep, channels, step) == kept


def test_a_deep_macs_target_never_cuts_a_group_below_a_quarter_step(residual):
    plan = select_by_flops(residual.dep, score_groups(residual.dep, "l1"), 0.9, round_to=8)
    assert all(len(keep) >= 2 for keep in plan.keep.values())


@pytest.fixture(scope="module")
def resnet20():
    return analyse(shared_model("onnc_resnet20.onnx"))


def test_a_macs_target_on_the_grid_keeps_the_exact_cuts_allocation(resnet20):
    """Each group lands on a grid count next to its count in the exact cut (--round-to 1): the cut
    is not piled onto some layers to pay for others' rounding (rounding every group up and deepening
    the cut left ResNet-20's 64-wide layers at 16 and stage one whole)."""
    dep = resnet20.dep
    scores = score_groups(dep, "l1")
    exact = select_by_flops(dep, scores, 0.5, round_to=1)
    snapped = select_by_flops(dep, scores, 0.5, round_to=16)
    model = MacsModel(dep, {node.name: node.macs for node in measure_cost(dep.model, dep.input_shapes).nodes})
    assert (0.5 - SNAP_SLACK) * model.total <= model.macs(snapped) <= 0.5 * model.total
    for group in dep.prunable:
        grid = grid_counts(group.channels, 16)
        exact_count = len(exact.keep.get(group.id, range(group.channels)))
        below = max(c for c in grid if c <= exact_count)
        above = min(c for c in grid if c >= exact_count)
        assert below <= len(snapped.keep.get(group.id, range(group.channels))) <= above, group.id


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


# ---- Split sections on the grid -------------------------------------------------------------------
# A group that Split outputs read in parts (YOLOv8's C2f) keeps each part on the step, not only the
# whole: the convs reading a part run on its count (a 3x3 conv reading 46 channels took 0.59 ms where 48
# took 0.49 ms, float and int8 alike; benchmarks/results/qdq_detector.md).


def section_counts(dep, plan, index):
    kept = set(plan.groups[dep.groups[index].id].keep)
    return [len(kept.intersection(section)) for section in split_sections(dep, index)]


@pytest.fixture(scope="module")
def c2f():
    analysed = analyse(c2f_model(width=128))
    index = next(i for i, g in enumerate(analysed.dep.groups) if g.channels == 128)
    scores = score_groups(analysed.dep, "l1")
    # the best 96 channels fall 50 / 46 on the two halves: off the step of 16
    scores[analysed.dep.groups[index].id] = np.random.default_rng(3).random(128) + np.r_[np.full(64, 0.1), np.zeros(64)]
    return analysed, index, scores


def test_the_sections_of_a_group_are_the_parts_its_split_outputs_read(c2f):
    analysed, index, _ = c2f
    assert split_sections(analysed.dep, index) == [list(range(64)), list(range(64, 128))]
    other = next(i for i, g in enumerate(analysed.dep.groups) if g.prunable and i != index)
    assert split_sections(analysed.dep, other) == []  # read whole


def test_without_a_step_each_section_keeps_its_best_channels(c2f):
    analysed, index, scores = c2f
    plan = select_by_ratio(analysed.dep, scores, 0.25, round_to=1)
    assert section_counts(analysed.dep, plan, index) == [50, 46]


@pytest.mark.parametrize("select", ["ratio", "flops"])
def test_with_a_step_each_section_keeps_a_multiple_of_it_and_the_model_still_computes_the_same(c2f, select):
    analysed, index, scores = c2f
    dep = analysed.dep
    if select == "ratio":
        plan = select_by_ratio(dep, scores, 0.25, round_to=16)
    else:
        plan = select_by_flops(dep, scores, 0.3, round_to=16)
    counts = section_counts(dep, plan, index)
    assert all(count % 16 == 0 and count > 0 for count in counts), counts
    if select == "ratio":
        assert counts == [48, 48]  # 96 kept, split as near 50 / 46 as the step allows
    assert_prune_matches_oracle(analysed.original, plan, analysed=analysed)


@pytest.mark.parametrize(
    "sections, n_keep, why",
    [
        ((24, 104), 96, "a section off the step"),
        ((64, 64), 88, "a count off the step"),
        ((64, 64), 16, "fewer steps than sections"),
    ],
)
def test_sections_are_left_to_the_scores_where_no_split_on_the_step_exists(sections, n_keep, why):
    analysed = analyse(c2f_model(width=128, sections=sections))
    dep = analysed.dep
    index = next(i for i, g in enumerate(dep.groups) if g.channels == 128)
    scores = np.random.default_rng(3).random(128)
    assert choose_kept(dep, index, scores, n_keep, round_to=16) == choose_kept(dep, index, scores, n_keep), why
