"""Per-kind control (``graphops.kinds``): which kinds of unit may go (conv filters, attention heads, MLP
neurons) and at most what fraction of each group, met by every selection and enforced by the plan
check; and 'auto' rounding on the kernel's step for heads and MLP widths (``graphops.kernel_steps``).

The BERT-style block (``tests.support.transformer_models.bert_style``, diagram there): 2 layers,
4 heads of 8 channels, an MLP of 48 neurons, hidden 32. The conv chain
(``tests.support.small_models.chain_model``): two prunable filter groups of 64.
"""

from __future__ import annotations

import pytest

from onnxprune.graphops.cost import measure_cost
from onnxprune.graphops.errors import ModelRejected, PlanError
from onnxprune.graphops.kernel_steps import with_kernel_steps
from onnxprune.graphops.kinds import KindLimits, check_kinds_present, check_macs_reachable, limit_groups
from onnxprune.graphops.latency_select import select_by_latency
from onnxprune.graphops.plan import PruningPlan
from onnxprune.graphops.scoring import score_groups
from onnxprune.graphops.selection import MacsModel, select_by_flops, select_by_group_ratios, select_by_ratio
from onnxprune.graphops.surgery import apply_plan
from tests.support.oracle import analyse, assert_prune_matches_oracle
from tests.support.small_models import chain_model
from tests.support.transformer_models import bert_style

BERT_SHAPES = {"x": [2, 7, 32], "attention_mask": [2, 7]}


@pytest.fixture(scope="module")
def bert():
    return analyse(bert_style(), BERT_SHAPES)


def _node_macs(dep):
    return {node.name: node.macs for node in measure_cost(dep.model, dep.input_shapes).nodes}


def _select(how: str, dep, scores):
    """A plan by each way of choosing that takes a limit from the groups."""
    if how == "ratio":
        return select_by_ratio(dep, scores, 0.6)
    if how == "macs":
        return select_by_flops(dep, scores, 0.3)
    if how == "macs on a grid":
        return select_by_flops(dep, scores, 0.3, round_to=4)
    if how == "group ratios":
        return select_by_group_ratios(dep, scores, {g.id: 0.6 for g in dep.prunable})
    if how == "latency":  # every unit saves time in proportion to its share of the group
        return select_by_latency(
            dep, scores, lambda gid, keep: 1.0 - keep / dep.group(gid).channels, 1.5, step=1, min_keep_fraction=0.0
        )
    raise AssertionError(how)


SELECTIONS = ["ratio", "macs", "macs on a grid", "group ratios", "latency"]


def _removed(dep, plan, kind: str) -> list[tuple[int, int]]:
    """(units removed, group units) of each group of ``kind`` that ``plan`` cuts."""
    return [
        (entry.channels - len(entry.keep), entry.channels)
        for gid, entry in plan.groups.items()
        if dep.group(gid).kind == kind
    ]


def test_each_group_knows_its_kind(bert):
    conv = analyse(chain_model()).dep

    assert sorted((g.kind, g.channels) for g in bert.dep.prunable) == [("head", 4)] * 2 + [("neuron", 48)] * 2
    assert [g.kind for g in conv.prunable] == ["filter", "filter"]


@pytest.mark.parametrize("how", SELECTIONS)
def test_only_the_kinds_named_are_pruned_whatever_the_selection(bert, how):
    dep = limit_groups(bert.dep, KindLimits(frozenset({"neuron"})))
    scores = score_groups(dep, "l1")

    plan = _select(how, dep, scores)

    assert _removed(dep, plan, "head") == []
    assert _removed(dep, plan, "neuron")
    assert all(g.max_removed == 0 and g.limited_by == "prune_kinds neuron" for g in dep.prunable if g.kind == "head")


@pytest.mark.parametrize("how", SELECTIONS)
def test_a_kinds_max_ratio_caps_each_of_its_groups_whatever_the_selection(bert, how):
    dep = limit_groups(bert.dep, KindLimits(max_ratio={"head": 0.25}))
    scores = score_groups(dep, "l1")

    plan = _select(how, dep, scores)

    assert all(removed <= 1 for removed, _ in _removed(dep, plan, "head"))  # 25% of 4 heads
    assert _removed(dep, plan, "neuron")


def test_a_max_ratio_of_0_leaves_the_kind_whole(bert):
    dep = limit_groups(bert.dep, KindLimits(max_ratio={"head": 0.0}))

    plan = select_by_ratio(dep, score_groups(dep, "l1"), 0.5)

    assert _removed(dep, plan, "head") == [] and _removed(dep, plan, "neuron")
    assert {g.limited_by for g in dep.prunable if g.kind == "head"} == {"max_head_ratio 0"}


def test_a_macs_target_takes_what_a_capped_kind_may_not_give_from_the_others(bert):
    limited = limit_groups(bert.dep, KindLimits(max_ratio={"head": 0.25}))
    model = MacsModel(limited, _node_macs(limited))

    free = select_by_flops(bert.dep, score_groups(bert.dep, "l1"), 0.4)
    capped = select_by_flops(limited, score_groups(limited, "l1"), 0.4)

    assert max(removed for removed, _ in _removed(bert.dep, free, "head")) > 1  # the cap binds
    assert model.macs(capped) <= 0.6 * model.total
    assert sum(r for r, _ in _removed(limited, capped, "neuron")) > sum(
        r for r, _ in _removed(bert.dep, free, "neuron")
    )


def test_a_capped_plan_prunes_as_the_oracle_says(bert):
    dep = limit_groups(bert.dep, KindLimits(max_ratio={"head": 0.5, "neuron": 0.25}))
    plan = select_by_ratio(dep, score_groups(dep, "l1"), 0.9)

    assert sorted(_removed(dep, plan, "head") + _removed(dep, plan, "neuron")) == [(2, 4)] * 2 + [(12, 48)] * 2
    assert_prune_matches_oracle(bert_style(), plan, BERT_SHAPES)


def test_a_plan_past_a_limit_is_refused_by_the_plan_check(bert):
    dep = limit_groups(bert.dep, KindLimits(max_ratio={"head": 0.25}))
    heads = next(g for g in dep.prunable if g.kind == "head")

    with pytest.raises(PlanError, match=f"removes 2 of the 4 head units of group '{heads.id}'; max_head_ratio 0.25 "):
        PruningPlan.from_keep(dep, {heads.id: [0, 1]})


LACKING = [
    (KindLimits(max_ratio={"head": 0.25}), "max_head_ratio: the model has no prunable attention heads "
     r"\(it has 2 group\(s\) of conv filters\); drop the option"),
    (KindLimits(frozenset({"head", "neuron"})), "prune_kinds: the model has no prunable attention heads or MLP "
     r"neurons \(it has 2 group\(s\) of conv filters\)"),
]  # fmt: skip


@pytest.mark.parametrize(("limits", "message"), LACKING)
def test_limits_that_name_what_the_model_lacks_are_refused(limits, message):
    with pytest.raises(ModelRejected, match=message):
        check_kinds_present(analyse(chain_model()).dep, limits)


def test_a_kind_listed_beside_others_the_model_has_is_no_error(bert):
    check_kinds_present(bert.dep, KindLimits(frozenset({"filter", "neuron"})))  # 'leave heads alone' on any model


def test_a_macs_target_the_limits_put_out_of_reach_is_refused(bert):
    limits = KindLimits(frozenset({"head"}))
    dep = limit_groups(bert.dep, limits)

    check_macs_reachable(dep, limits, _node_macs(dep), 0.05)
    with pytest.raises(ModelRejected, match=r"flops_target 0.6 cannot be met under prune_kinds head: .* at most \d"):
        check_macs_reachable(dep, limits, _node_macs(dep), 0.6)


def test_an_iterative_step_keeps_what_the_limit_leaves_of_the_original_group(bert):
    limits = KindLimits(max_ratio={"head": 0.5})
    first = limit_groups(bert.dep, limits)
    heads = [g.id for g in first.prunable if g.kind == "head"]
    plan = PruningPlan.from_keep(first, {gid: [0, 1, 2] for gid in heads})  # one of the two heads allowed
    pruned = analyse(apply_plan(first, plan), BERT_SHAPES).dep

    second = limit_groups(pruned, limits, original=bert.dep)

    assert [(second.group(gid).channels, second.group(gid).max_removed) for gid in heads] == [(3, 1)] * 2


def test_auto_rounding_puts_mlp_widths_on_the_sgemm_step_and_leaves_convs_on_the_jobs(bert):
    steps = with_kernel_steps(bert.dep)
    conv = with_kernel_steps(analyse(chain_model()).dep)

    assert {(g.kind, g.round_to) for g in steps.prunable} == {("head", 16), ("neuron", 16)}
    assert [g.round_to for g in conv.prunable] == [None, None]


def test_a_cut_on_the_job_step_keeps_neurons_on_their_kernel_step_and_heads_on_whole_head_widths(bert):
    dep = with_kernel_steps(bert.dep)

    plan = select_by_flops(dep, score_groups(dep, "l1"), 0.4, round_to=4)

    kept = {dep.group(gid).kind: len(entry.keep) for gid, entry in plan.groups.items()}
    assert kept["neuron"] % 16 == 0  # not 4: the SGEMM step, not the conv blocks'
    assert kept.get("head", 4) % 2 == 0  # heads of 8 channels: 2 heads fill 16 columns
    assert all(len(e.keep) < e.channels for e in plan.groups.values())
