"""A MACs target with a latency table: among cuts of equal MACs, the fastest predicted is kept
(graphops.fastest_cut); without a table, or with --round-to 1, the cut is the MACs-only one.

Latency tables here are hand-made curves, so nothing depends on the clock.
"""

from __future__ import annotations

import numpy as np
import pytest

from onnxprune.graphops.fastest_cut import (
    IMPORTANCE,
    CutCandidate,
    CutOptions,
    allocate_for_macs,
    choose_fastest,
    select_fastest_by_flops,
)
from onnxprune.graphops.latency_select import counts_of
from onnxprune.graphops.plan import PruningPlan
from onnxprune.graphops.scoring import score_groups
from onnxprune.graphops.selection import MacsModel, select_by_flops
from onnxprune.workers.latency import vector_width
from tests.support.latency_tables import prune, table_of, two_group_model
from tests.support.oracle import analyse

# Pipeline stages run in this process, as in a job's sandbox (tests/support/job_sandbox.py).
pytestmark = pytest.mark.usefixtures("stages_in_the_job_process")


def node_macs(analysed) -> dict[str, int]:
    from onnxprune.graphops.cost import measure_cost

    return {node.name: node.macs for node in measure_cost(analysed.prepared, analysed.input_shapes).nodes}


def candidate(name: str, *, macs: int, importance: float, ms: float) -> CutCandidate:
    return CutCandidate(name, None, PruningPlan({}), macs, importance, ms)


# ---- the knapsack on hand-made options ---------------------------------------------------------


def test_without_weight_on_time_the_knapsack_removes_the_least_importance_per_mac():
    # a and b remove the same MACs per step; a's channels matter a little more but save 3x the time
    a = CutOptions("a", (48, 32, 16), importance=(0.0, 1.1, 2.2), macs=(0.0, 10.0, 20.0), ms=(0.0, 3.0, 6.0))
    b = CutOptions("b", (48, 32, 16), importance=(0.0, 1.0, 2.0), macs=(0.0, 10.0, 20.0), ms=(0.0, 1.0, 2.0))
    assert allocate_for_macs([a, b], macs_goal=20.0, ms_scale=4.0, weight=0.0) == {"b": 16}
    assert allocate_for_macs([a, b], macs_goal=20.0, ms_scale=4.0, weight=2.0) == {"a": 16}


def test_the_knapsack_goes_on_until_the_exact_check_says_the_goal_is_reached():
    a = CutOptions("a", (48, 32, 16), importance=(0.0, 1.0, 2.0), macs=(0.0, 10.0, 20.0), ms=(0.0, 1.0, 2.0))
    b = CutOptions("b", (48, 32), importance=(0.0, 3.0), macs=(0.0, 10.0), ms=(0.0, 1.0))

    def reached(counts) -> bool:
        return len(counts) == 2  # pruning both removes less than the sum: only all three moves do it

    assert allocate_for_macs([a, b], 20.0, 2.0, 0.0) == {"a": 16}
    assert allocate_for_macs([a, b], 20.0, 2.0, 0.0, reached) == {"a": 16, "b": 32}
    assert allocate_for_macs([a, b], 1e9, 2.0, 0.0) == {"a": 16, "b": 32}  # out of reach: all there is


def test_the_knapsack_never_takes_a_move_of_infinite_importance():
    """A channel that must not go (an infinite score): out of reach, all there is stops short of it."""
    inf = float("inf")
    a = CutOptions("a", (48, 32, 16), importance=(0.0, 1.0, inf), macs=(0.0, 10.0, 20.0), ms=(0.0, 1.0, 2.0))
    b = CutOptions("b", (48, 32), importance=(0.0, inf), macs=(0.0, 10.0), ms=(0.0, 1.0))

    assert allocate_for_macs([a, b], 1e9, 2.0, 0.0) == {"a": 32}


# ---- the rule ----------------------------------------------------------------------------------


def test_the_fastest_of_equal_macs_candidates_is_chosen():
    cuts = [
        candidate(IMPORTANCE, macs=500, importance=10.0, ms=8.0),
        candidate("knapsack 1", macs=498, importance=10.5, ms=6.0),
        candidate("knapsack 4", macs=495, importance=10.9, ms=5.0),
    ]
    chosen, eligible = choose_fastest(cuts, total_macs=1000, noise_ms=0.1)
    assert chosen.name == "knapsack 4" and eligible == {IMPORTANCE, "knapsack 1", "knapsack 4"}


def test_a_cut_that_removes_much_more_importance_or_more_macs_is_not_eligible():
    cuts = [
        candidate(IMPORTANCE, macs=500, importance=10.0, ms=8.0),
        candidate("costly", macs=500, importance=11.5, ms=4.0),  # 15% more importance removed
        candidate("deeper", macs=450, importance=10.2, ms=4.0),  # 5% of the MACs beyond the importance cut
        candidate("fair", macs=490, importance=10.2, ms=7.0),
    ]
    chosen, eligible = choose_fastest(cuts, total_macs=1000, noise_ms=0.1)
    assert chosen.name == "fair" and eligible == {IMPORTANCE, "fair"}


def test_a_cut_faster_only_within_the_noise_leaves_the_importance_cut():
    cuts = [candidate(IMPORTANCE, macs=500, importance=10.0, ms=8.0), candidate("w", macs=500, importance=9.0, ms=7.95)]
    assert choose_fastest(cuts, total_macs=1000, noise_ms=0.1)[0].name == IMPORTANCE


# ---- on a model --------------------------------------------------------------------------------


def test_the_cut_a_latency_table_predicts_fastest_is_chosen_at_equal_macs():
    analysed = analyse(two_group_model())
    dep, macs = analysed.dep, node_macs(analysed)
    a, b = (g.id for g in dep.prunable)
    # b's weakest channels matter a little less than a's, but a's channels cost 10x the time of b's
    scores = {a: np.linspace(0.18, 1.82, 128), b: np.linspace(0.15, 1.85, 128)}
    table = table_of({a: (128, 0.05), b: (128, 0.005)})
    cut = select_fastest_by_flops(dep, scores, 0.3, table, node_macs=macs, step=16)
    importance_cut = cut.candidates[0]
    assert importance_cut.name == IMPORTANCE
    assert importance_cut.plan == select_by_flops(dep, scores, 0.3, node_macs=macs, round_to=16)
    assert cut.chosen.name != IMPORTANCE and cut.chosen.name in cut.eligible
    assert cut.chosen.macs == importance_cut.macs  # equal MACs, ...
    assert cut.chosen.predicted_ms < importance_cut.predicted_ms - table.noise_ms  # ... less time
    assert counts_of(cut.chosen.plan)[a] < counts_of(importance_cut.plan)[a]  # the time is in a
    model = MacsModel(dep, macs)
    assert all(c.macs <= cut.goal_macs and c.macs == model.macs(c.plan) for c in cut.candidates)
    assert all(n % 16 == 0 for c in cut.candidates for n in counts_of(c.plan).values())


def test_with_a_flat_latency_curve_the_importance_cut_is_kept():
    analysed = analyse(two_group_model())
    dep, macs = analysed.dep, node_macs(analysed)
    a, b = (g.id for g in dep.prunable)
    scores = {a: np.linspace(0.18, 1.82, 128), b: np.linspace(0.15, 1.85, 128)}
    for rate in (0.0, 0.01):  # no group saves time, or every channel saves the same
        cut = select_fastest_by_flops(
            dep, scores, 0.3, table_of({a: (128, rate), b: (128, rate)}), node_macs=macs, step=16
        )
        assert cut.chosen.name == IMPORTANCE
        assert cut.chosen.plan == select_by_flops(dep, scores, 0.3, node_macs=macs, round_to=16)


def test_no_candidate_keeps_fewer_than_three_quarters_of_what_the_importance_cut_keeps():
    analysed = analyse(two_group_model())
    dep, macs = analysed.dep, node_macs(analysed)
    a, b = (g.id for g in dep.prunable)
    scores = {a: np.linspace(0.18, 1.82, 128), b: np.linspace(0.15, 1.85, 128)}
    greedy = table_of({a: (128, 1.0), b: (128, 0.0)})  # all the time is in a: a knapsack would empty it
    cut = select_fastest_by_flops(dep, scores, 0.3, greedy, node_macs=macs, step=16)
    reference = counts_of(cut.candidates[0].plan)
    assert len(cut.candidates) > 1
    for c in cut.candidates:
        kept = counts_of(c.plan)
        assert all(kept.get(g, 128) >= 0.75 * reference.get(g, 128) for g in (a, b)), (c.name, kept)


# ---- in the pipeline: a cached table is used, --round-to 1 ignores it -------------------------


@pytest.mark.parametrize("round_to", ["auto", 16])
def test_a_flops_target_keeps_the_fastest_cut_a_cached_table_predicts(tmp_path, monkeypatch, round_to):
    analysed, table, report = prune(tmp_path, monkeypatch, round_to=round_to, cached=True)
    cut = report.fastest_cut
    assert cut is not None and cut.table_key == table.key and cut.step == 16 == report.round_to
    chosen = next(c for c in cut.candidates if c.name == cut.chosen)
    assert chosen.eligible and cut.predicted_ms == chosen.predicted_ms < cut.candidates[0].predicted_ms
    assert report.macs.after == chosen.macs == cut.candidates[0].macs <= cut.goal_macs  # equal MACs
    b = analysed.dep.prunable[1].id
    assert next(g.channels_after for g in report.groups if g.id == b) < 128


@pytest.mark.parametrize(("round_to", "cached"), [(1, True), ("auto", False)])
def test_round_to_1_or_no_table_keeps_the_macs_only_cut(tmp_path, monkeypatch, round_to, cached):
    analysed, _, report = prune(tmp_path, monkeypatch, round_to=round_to, cached=cached)
    step = 1 if round_to == 1 else vector_width()[0]
    scores = score_groups(analysed.dep, "l1")
    expected = select_by_flops(analysed.dep, scores, 0.3, node_macs=node_macs(analysed), round_to=step)
    assert report.fastest_cut is None and report.round_to == step
    assert {g.id: g.channels_after for g in report.groups} == {
        g.id: len(expected.keep.get(g.id, range(g.channels))) for g in analysed.dep.prunable
    }


def test_a_cached_table_without_a_curve_for_a_group_the_cut_may_take_is_not_compared_on(tmp_path, monkeypatch):
    """The cache key names no --exclude and no kind limit: a table cached by a job that left a whole (no
    curve for a) would price a's channels at no saving, and the cut on b would look the faster by that
    alone. The importance cut is kept, as without a table, and a warning says why."""
    analysed, _, report = prune(tmp_path, monkeypatch, round_to=16, cached=True, only_b=True)
    a = analysed.dep.prunable[0].id
    scores = score_groups(analysed.dep, "l1")
    expected = select_by_flops(analysed.dep, scores, 0.3, node_macs=node_macs(analysed), round_to=16)

    assert report.fastest_cut is None
    assert {g.id: g.channels_after for g in report.groups} == {
        g.id: len(expected.keep.get(g.id, range(g.channels))) for g in analysed.dep.prunable
    }
    (note,) = [w for w in report.warnings if w.startswith("the latency table cached for this model has no curve")]
    assert f"for 1 group(s) this cut may take ({a}:" in note


def test_a_cached_table_that_covers_the_groups_a_job_may_take_is_compared_on(tmp_path, monkeypatch):
    """The same table for a job that excludes a itself: every group it may take has a curve."""
    analysed, table, report = prune(
        tmp_path, monkeypatch, round_to=16, cached=True, only_b=True, exclude=[analysed_first_conv()]
    )

    assert report.fastest_cut is not None and report.fastest_cut.table_key == table.key
    assert not [w for w in report.warnings if "has no curve" in w]


def analysed_first_conv() -> str:
    """The name of the conv that writes group a (two_group_model's first)."""
    return next(n.name for n in two_group_model().graph.node if n.op_type == "Conv")
