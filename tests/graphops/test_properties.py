"""Property: for any small conv network and any channel choice, pruning satisfies the oracle.

The networks are drawn by ``tests/support/generated_nets.py`` (its docstring draws the blocks and heads).
"""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings

from onnxprune.graphops.scoring import score_groups
from onnxprune.graphops.selection import select_by_ratio
from onnxprune.graphops.surgery import apply_plan
from tests.support.generated_nets import (
    CHOICE,
    NetBuilder,
    NetSpec,
    net_specs,
    prune_and_check,
)
from tests.support.oracle import analyse, assert_valid, random_feeds, run_model


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=net_specs, choice=CHOICE)
def test_any_generated_network_pruned_any_way_satisfies_the_oracle(spec: NetSpec, choice: tuple[str, int, float, int]):
    prune_and_check(spec, choice)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=net_specs)
def test_a_plan_that_removes_nothing_changes_nothing(spec: NetSpec):
    model = NetBuilder(spec).build()
    analysed = analyse(model, {"input": [1, spec.in_channels, spec.size, spec.size]})
    plan = select_by_ratio(analysed.dep, score_groups(analysed.dep, "l1"), 0.0)

    pruned = apply_plan(analysed.dep, plan)

    assert plan.removed_channels == 0
    assert_valid(pruned)
    assert [node.SerializeToString() for node in pruned.graph.node] == [
        node.SerializeToString() for node in analysed.prepared.graph.node
    ]
    feeds = random_feeds(analysed.prepared, analysed.input_shapes)
    for want, have in zip(
        run_model(model, feeds, optimize=False), run_model(pruned, feeds, optimize=False), strict=True
    ):
        np.testing.assert_array_equal(have, want)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=net_specs)
def test_generated_networks_freeze_groups_only_with_a_reason_and_never_for_an_unknown_op(spec: NetSpec):
    model = NetBuilder(spec).build()
    analysed = analyse(model, {"input": [1, spec.in_channels, spec.size, spec.size]})

    # Every op the generator uses is one the pruner must understand; only the channels that reach
    # the output (a conv head, or the input's own channels) may be frozen.
    for group in analysed.dep.frozen:
        assert group.frozen_reason, f"group {group.id} is frozen without a reason"
        assert "unsupported" not in group.frozen_reason, group.frozen_reason
