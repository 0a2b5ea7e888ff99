"""Which groups a MACs target spares from single-group sensitivity (``groups_to_spare``): the groups
whose cut costs the most per MAC saved, as long as the others can still reach the target with room.

    group:    stem   neck   head   tail
    drop:     1.0    0.05   0.0    0.5      (the metric lost with the group alone cut by half)
    savings:  0.10   0.20   0.20   0.05     (the MACs that cut removes)
    per MAC:  10     0.25   0      10
"""

from __future__ import annotations

import pytest

from onnxprune.graphops.sensitivity_select import allocate_ratios, groups_to_spare

DROPS = {"stem": 1.0, "neck": 0.05, "head": 0.0, "tail": 0.5}
SAVINGS = {"stem": 0.10, "neck": 0.20, "head": 0.20, "tail": 0.05}

CASES = [
    # target, margin, spared: cheapest first (head, neck, stem, tail) until their savings reach margin x target
    (0.1, 1.5, ["neck", "stem", "tail"]),  # head alone (0.20) covers 0.15
    (0.2, 1.5, ["stem", "tail"]),  # head + neck (0.40) cover 0.30
    (0.3, 1.5, ["tail"]),  # head + neck + stem (0.50) cover 0.45 (a tie per MAC goes by name: stem first)
    (0.4, 1.5, []),  # even every group (0.55) cannot cover 0.60: none spared
    (0.4, 1.0, ["stem", "tail"]),  # without room to spare, head + neck (0.40) cover 0.40 exactly
]


@pytest.mark.parametrize("target, margin, spared", CASES)
def test_the_costliest_groups_per_mac_are_spared_while_the_rest_can_reach_the_target(target, margin, spared):
    assert sorted(groups_to_spare(DROPS, SAVINGS, target, margin)) == sorted(spared)


def test_a_group_that_gains_counts_as_free_and_one_that_saves_nothing_as_the_costliest():
    drops, savings = {"gains": -0.2, "free": 0.0, "nothing": 0.0}, {"gains": 0.3, "free": 0.3, "nothing": 0.0}
    assert groups_to_spare(drops, savings, 0.3, 1.5) == ["nothing"]


def test_a_target_outside_zero_one_is_refused():
    with pytest.raises(ValueError, match="target must be in"):
        groups_to_spare(DROPS, SAVINGS, 1.0)


# ``allocate_ratios``: per-group ratios from curves probed at several ratios (ratio -> (drop, savings)).
#
#     group:  stem                 box                  cls
#     50%:    drop 1.0,  save .10  drop 0.0,  save .10  drop 0.2, save .10
#     75%:    drop 4.0,  save .15  drop 0.05, save .15  drop 0.9, save .15
#
# Removed MACs add up here (``removed`` sums the chosen points' savings).
CURVES = {
    "stem": {0.5: (1.0, 0.10), 0.75: (4.0, 0.15)},
    "box": {0.5: (0.0, 0.10), 0.75: (0.05, 0.15)},
    "cls": {0.5: (0.2, 0.10), 0.75: (0.9, 0.15)},
}


def summed(curves):
    return lambda ratios: sum(curves[g][r][1] for g, r in ratios.items())


ALLOCATION_CASES = [
    # target, ratios: box's 50% is free, its 75% costs 1 per MAC, cls's 50% 2 per MAC, cls's 75% 14
    (0.05, {"box": 0.5}),
    (0.15, {"box": 0.75}),  # the insensitive group cut deeper before a sensitive one is cut at all
    (0.25, {"box": 0.75, "cls": 0.5}),
    (0.35, {"box": 0.75, "cls": 0.5, "stem": 0.5}),  # stem's 50% (10 per MAC) before cls's 75% (14)
]


@pytest.mark.parametrize("target, ratios", ALLOCATION_CASES)
def test_ratios_deepen_the_cut_with_the_least_extra_drop_per_mac_until_the_target(target, ratios):
    assert allocate_ratios(CURVES, summed(CURVES), target) == ratios


def test_a_target_the_probed_ratios_cannot_reach_gives_none():
    assert allocate_ratios(CURVES, summed(CURVES), 0.5) is None


def test_removed_macs_are_measured_on_the_ratios_together_not_summed():
    # Two adjacent groups whose cuts overlap: together they remove less than their sum.
    curves = {"a": {0.5: (0.0, 0.2)}, "b": {0.5: (0.1, 0.2)}, "c": {0.5: (0.5, 0.2)}}
    overlapping = {frozenset(): 0.0, frozenset("a"): 0.2, frozenset("ab"): 0.25, frozenset("abc"): 0.45}
    assert allocate_ratios(curves, lambda r: overlapping[frozenset(r)], 0.3) == {"a": 0.5, "b": 0.5, "c": 0.5}


def test_an_allocation_target_outside_zero_one_is_refused():
    with pytest.raises(ValueError, match="target must be in"):
        allocate_ratios(CURVES, summed(CURVES), 0.0)
