"""The latency knapsack over units of different widths (``graphops.latency_select``): attention heads
are offered by head count on their grid, and importance is counted per channel, so that a head of
head_dim channels costs what head_dim neurons of the same normalised score cost; and heads come in
a later tier than neurons (``latency_tiers``).

The BERT-style block (``tests.support.transformer_models.bert_style``, diagram there): 2 layers,
4 heads of 8 channels, an MLP of 48 neurons, hidden 32.
"""

from __future__ import annotations

import numpy as np
import pytest

from onnxprune.graphops.kinds import KindLimits, limit_groups
from onnxprune.graphops.latency_select import (
    GroupOptions,
    allocate,
    counts_of,
    group_options,
    latency_tiers,
    select_by_latency,
    unit_costs,
)
from tests.support.oracle import analyse, assert_prune_matches_oracle
from tests.support.small_models import chain_model
from tests.support.transformer_models import bert_style

BERT_SHAPES = {"x": [2, 7, 32], "attention_mask": [2, 7]}


@pytest.fixture(scope="module")
def bert():
    return analyse(bert_style(), BERT_SHAPES)


def per_channel_ms(dep):
    """A latency model where every channel removed saves 1 ms, whatever its unit (a head: head_dim ms)."""
    return lambda gid, keep: float((dep.group(gid).channels - keep) * dep.group(gid).unit)


def ones(dep):
    return {g.id: np.ones(g.channels) for g in dep.prunable}


def test_a_unit_costs_its_normalised_score_times_its_channels():
    assert unit_costs(np.array([0.5, 1.5]), 8).tolist() == [4.0, 12.0]
    assert unit_costs(np.array([0.5, 1.5]), 1).tolist() == [0.5, 1.5]  # filters and neurons: as before


@pytest.mark.parametrize(("step", "head_counts"), [(16, (4, 2)), (8, (4, 3, 2, 1))])
def test_heads_are_offered_by_head_count_on_the_channel_step(bert, step, head_counts):
    """Heads of 8 channels on a 16-channel step go in pairs; on an 8-channel step one by one. Neurons
    keep the channel step."""
    dep = bert.dep
    options = {o.group: o for o in group_options(dep, ones(dep), per_channel_ms(dep), step=step, min_keep_fraction=0)}

    heads = [o for gid, o in options.items() if dep.group(gid).kind == "head"]
    neurons = [o for gid, o in options.items() if dep.group(gid).kind == "neuron"]
    assert len(heads) == 2 and all(o.counts == head_counts for o in heads)
    assert len(neurons) == 2 and all(o.counts == tuple(range(48, 0, -step)) for o in neurons)


def test_equal_scores_and_equal_time_per_channel_price_heads_and_neurons_alike(bert):
    """The currency: with every unit at its group's mean score and every channel saving the same
    time, a head and a neuron cost the same importance per millisecond (per unit, a head of 8
    channels would look 8 times cheaper and go first)."""
    dep = bert.dep
    for option in group_options(dep, ones(dep), per_channel_ms(dep), step=8, min_keep_fraction=0):
        prices = [cost / saving for cost, saving in zip(option.cost[1:], option.saving[1:])]
        assert prices == pytest.approx([1.0] * len(prices))


def test_the_knapsack_takes_unimportant_neurons_before_average_heads(bert):
    """Half of each MLP's neurons score a fifth of the mean: at equal time per channel they are the
    cheapest time to take, before any head (all at the mean); a goal within them leaves heads whole."""
    dep = bert.dep
    scores = ones(dep)
    for group in dep.prunable:
        if group.kind == "neuron":
            scores[group.id] = np.where(np.arange(group.channels) % 2 == 0, 0.2, 1.8)

    plan = select_by_latency(dep, scores, per_channel_ms(dep), 40.0, step=8, min_keep_fraction=0)

    kept = counts_of(plan)
    assert {dep.group(gid).kind for gid in kept} == {"neuron"}
    assert sum(48 - count for count in kept.values()) >= 40


def test_heads_go_when_they_are_the_cheaper_time_and_the_plan_passes_the_oracle(bert):
    """Heads scoring a tenth of the neurons' normalised score per channel are taken first; the plan
    that removes them is a valid surgery."""
    dep = bert.dep
    scores = ones(dep)
    for group in dep.prunable:
        if group.kind == "head":
            scores[group.id] = np.array([0.1, 1.0, 1.0, 1.9])  # one head far below the others

    plan = select_by_latency(dep, scores, per_channel_ms(dep), 16.0, step=8, min_keep_fraction=0)

    assert {dep.group(gid).kind for gid in counts_of(plan)} == {"head"}
    assert all(entry.keep == (1, 2, 3) for entry in plan.groups.values())  # the weak head of each layer
    assert_prune_matches_oracle(bert_style(), plan, BERT_SHAPES, analysed=bert)


def test_a_head_limit_is_a_floor_of_the_head_options(bert):
    dep = limit_groups(bert.dep, KindLimits(max_ratio={"head": 0.25}))
    options = group_options(dep, ones(dep), per_channel_ms(dep), step=8, min_keep_fraction=0)

    assert sorted(o.counts for o in options if dep.group(o.group).kind == "head") == [(4, 3), (4, 3)]


def test_heads_come_in_a_later_tier_than_neurons(bert):
    first, last = latency_tiers(bert.dep)

    assert first.held == "attention heads" and last.held == "" and last.dep is bert.dep
    held = [g for g in first.dep.prunable if g.max_removed == 0]
    assert [g.kind for g in held] == ["head", "head"] and {g.limited_by for g in held} == {
        "latency_target: attention heads last"
    }
    assert all(g.max_removed is None for g in first.dep.prunable if g.kind == "neuron")


@pytest.mark.parametrize("kinds", [{"head"}, {"neuron"}])
def test_one_free_kind_is_one_tier(bert, kinds):
    dep = limit_groups(bert.dep, KindLimits(frozenset(kinds)))

    (tier,) = latency_tiers(dep)
    assert tier.dep is dep and tier.held == ""


def test_a_model_of_conv_filters_is_one_tier():
    dep = analyse(chain_model()).dep

    (tier,) = latency_tiers(dep)
    assert tier.dep is dep and tier.held == ""


# A channel that must not go has an infinite score (``selection.normalised_scores``), so every count that
# removes it costs infinite importance: such a move is never taken, even when it is the only one left.
INFINITE_PRICE_CASES = [
    # (id, options, goal_ms, counts)
    ("the only move left", [GroupOptions("a", (8, 4), cost=(0.0, float("inf")), saving=(0.0, 1.0))], 1.0, {}),
    ("after a finite one", [GroupOptions("a", (8, 6, 4), cost=(0.0, 1.0, float("inf")), saving=(0.0, 1.0, 2.0))],
     2.0, {"a": 6}),
    ("beside a finite one elsewhere", [
        GroupOptions("a", (8, 4), cost=(0.0, float("inf")), saving=(0.0, 5.0)),
        GroupOptions("b", (8, 4), cost=(0.0, 3.0), saving=(0.0, 1.0)),
    ], 5.0, {"b": 4}),
]  # fmt: skip


@pytest.mark.parametrize(
    ("options", "goal_ms", "counts"), [c[1:] for c in INFINITE_PRICE_CASES], ids=[c[0] for c in INFINITE_PRICE_CASES]
)
def test_a_move_of_infinite_price_is_never_taken(options, goal_ms, counts):
    assert allocate(options, goal_ms) == counts


def test_a_latency_plan_keeps_a_channel_of_infinite_score_whatever_the_goal():
    """chain_model's groups (diagram there), every one of whose scores is infinite but one channel's: an
    unreachable goal removes that one channel and no other (before: the groups were emptied to their floors)."""
    dep = analyse(chain_model()).dep
    scores = {g.id: np.full(g.channels, np.inf) for g in dep.prunable}
    first = dep.prunable[0]
    scores[first.id][0] = 1.0

    plan = select_by_latency(dep, scores, lambda gid, keep: float(dep.group(gid).channels - keep), 1e9, step=1)

    assert {gid: len(entry.keep) for gid, entry in plan.groups.items() if len(entry.keep) < entry.channels} == {
        first.id: first.channels - 1
    }
