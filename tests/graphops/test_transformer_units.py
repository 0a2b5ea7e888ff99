"""Attention heads and MLP neurons of decomposed transformer exports, pruned and proven by the oracle.

A head is a unit of head_dim channels across Q, K, V and the output projection's input rows; an
MLP neuron a column of the first projection and a row of the second. The residual stream stays
whole. The blocks are built in ``tests.support.transformer_models`` (diagrams there).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnxprune.graphops.cost import measure_cost
from onnxprune.graphops.plan import PruningPlan
from onnxprune.graphops.scoring import score_groups
from onnxprune.graphops.selection import MacsModel, select_by_flops, select_by_ratio
from tests.support.oracle import analyse, assert_outputs_close, assert_prune_matches_oracle, output_names, run_model
from tests.support.transformer_models import (
    bert_style,
    hidden_state_feeds,
    random_unit_plan,
    static_attention,
    vit_style,
)

# name, builder, analysis shapes, another shape (batch, sequence) the pruned model must also run at,
# heads, head_dim, MLP width, layers
CASES = [
    ("bert_erf_gelu", lambda: bert_style(gelu="none"), {"x": [2, 7, 32], "attention_mask": [2, 7]}, (3, 11), 4, 8, 48, 2),
    ("bert_tanh_gelu", lambda: bert_style(gelu="tanh"), {"x": [2, 7, 32], "attention_mask": [2, 7]}, (1, 4), 4, 8, 48, 2),
    ("vit_decomposed_layernorm", vit_style, {"x": [2, 9, 32]}, (3, 9), 4, 8, 64, 2),
    ("static_reshape_targets", static_attention, {"x": [2, 7, 24]}, (3, 5), 3, 8, 40, 1),
]  # fmt: skip
IDS = [case[0] for case in CASES]


@pytest.mark.parametrize(("name", "build", "shapes", "other", "heads", "head_dim", "width", "layers"), CASES, ids=IDS)
def test_heads_and_mlp_neurons_are_the_prunable_units_and_the_residual_stream_stays(
    name, build, shapes, other, heads, head_dim, width, layers
):
    dep = analyse(build(), shapes).dep

    head_groups = [g for g in dep.prunable if g.unit == head_dim]
    neuron_groups = [g for g in dep.prunable if g.unit == 1]
    assert [(g.channels, len(g.linear_producers)) for g in head_groups] == [(heads, 3)] * layers
    assert [(g.channels, len(g.linear_producers)) for g in neuron_groups] == [(width, 1)] * layers
    hidden = shapes["x"][2]
    assert all(g.frozen for g in dep.groups if g.channels == hidden)


@pytest.mark.parametrize(("name", "build", "shapes", "other", "heads", "head_dim", "width", "layers"), CASES, ids=IDS)
@pytest.mark.parametrize("seed", [0, 1])
def test_pruned_heads_and_neurons_match_the_masked_original_at_any_batch_and_sequence(
    name, build, shapes, other, heads, head_dim, width, layers, seed
):
    model = build()
    analysed = analyse(model, shapes)
    plan = random_unit_plan(analysed.dep, seed)

    result = assert_prune_matches_oracle(model, plan, shapes, analysed=analysed, seed=seed)

    declared = [[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in model.graph.input]
    assert [[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in result.pruned.graph.input] == (
        declared
    )
    feeds = hidden_state_feeds(model, *other, seed)
    assert_outputs_close(
        run_model(result.masked, feeds), run_model(result.pruned, feeds), output_names(result.pruned), 1e-4
    )
    _assert_weights_follow_the_plan(analysed.dep, plan, result.pruned, head_dim)


def _assert_weights_follow_the_plan(dep, plan, pruned: onnx.ModelProto, head_dim: int) -> None:
    """Q, K and V keep head_dim columns per kept head, the first MLP projection one per kept neuron."""
    arrays = {init.name: numpy_helper.to_array(init) for init in pruned.graph.initializer}
    nodes = {node.name: node for node in pruned.graph.node}
    for group in dep.prunable:
        kept = len(plan.keep[group.id])
        for producer in group.linear_producers:
            assert arrays[nodes[producer].input[1]].shape[1] == kept * group.unit
        assert group.unit in (1, head_dim)


def _reshape_targets(model: onnx.ModelProto) -> list[list[int | str]]:
    """Each Reshape's target, a constant or a Concat of pieces; 'run-time' for computed pieces."""
    arrays = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    targets = []
    for node in model.graph.node:
        if node.op_type != "Reshape":
            continue
        name = node.input[1]
        pieces = producers[name].input if name in producers and producers[name].op_type == "Concat" else [name]
        target: list[int | str] = []
        for piece in pieces:
            target += [int(v) for v in np.ravel(arrays[piece])] if piece in arrays else ["run-time"]
        targets.append(target)
    return targets


@pytest.mark.parametrize(
    ("build", "shapes", "split", "merge"),
    [
        (static_attention, {"x": [1, 4, 24]}, [0, 0, 2, 8], [0, 0, -1]),
        (
            bert_style,
            {"x": [1, 4, 32], "attention_mask": [1, 4]},
            ["run-time", "run-time", 2, 8],
            ["run-time", "run-time", 16],
        ),
    ],
    ids=["constant", "computed"],
)
def test_the_head_count_in_reshape_targets_follows_the_kept_heads_and_head_dim_and_minus_one_stay(
    build, shapes, split, merge
):
    model = build()
    analysed = analyse(model, shapes)
    heads = [g for g in analysed.dep.prunable if g.unit > 1]
    plan = PruningPlan.from_keep(analysed.dep, {g.id: [0, 2] for g in heads})

    pruned = assert_prune_matches_oracle(model, plan, shapes, analysed=analysed).pruned

    targets = [t for t in _reshape_targets(pruned) if len(t) in (3, 4) and t != [-1]]
    assert targets == ([split] * 3 + [merge]) * len(heads)


def test_l1_scores_a_head_by_its_q_k_v_columns_and_output_rows_and_a_neuron_by_its_column_and_row():
    model = static_attention(hidden=24, heads=3, ffn=40)
    weights = {init.name: numpy_helper.to_array(init).copy() for init in model.graph.initializer}
    weights["wo"][8:16] *= 0.01  # head 1 of 3 (head_dim 8) barely reaches the output
    weights["w1"][:, 5] *= 0.01  # neuron 5: small column...
    weights["w2"][5] *= 0.01  # ... and row
    for init in model.graph.initializer:
        init.CopyFrom(numpy_helper.from_array(weights[init.name], init.name))
    dep = analyse(model, {"x": [1, 4, 24]}).dep

    scores = score_groups(dep, "l1")

    heads = next(g for g in dep.prunable if g.unit == 8)
    neurons = next(g for g in dep.prunable if g.channels == 40)
    assert int(np.argmin(scores[heads.id])) == 1
    assert int(np.argmin(scores[neurons.id])) == 5
    assert select_by_ratio(dep, scores, 0.34).keep[heads.id] == [0, 2]


def test_head_counts_round_to_whole_channel_steps_not_to_the_step_itself():
    """A step of 16 channels keeps any count of 8-wide heads that is even, not multiples of 16 heads."""
    dep = analyse(bert_style(hidden=32, heads=4), {"x": [1, 4, 32], "attention_mask": [1, 4]}).dep

    plan = select_by_ratio(dep, score_groups(dep, "l1"), 0.5, round_to=16)

    assert sorted({len(keep) for gid, keep in plan.keep.items() if dep.group(gid).unit == 8}) == [2]


@pytest.mark.parametrize("target", [0.2, 0.4])
def test_predicted_macs_of_heads_and_neurons_are_the_pruned_model_s(target):
    model = bert_style(hidden=32, heads=4, ffn=48, layers=2)
    shapes = {"x": [1, 16, 32], "attention_mask": [1, 16]}
    analysed = analyse(model, shapes)
    node_macs = {n.name: n.macs for n in measure_cost(analysed.prepared, shapes).nodes}

    plan = select_by_flops(analysed.dep, score_groups(analysed.dep, "l2"), target, node_macs=node_macs)

    pruned = assert_prune_matches_oracle(model, plan, shapes, analysed=analysed).pruned
    after = measure_cost(pruned, shapes).macs
    assert MacsModel(analysed.dep, node_macs).macs(plan) == after
    assert after <= sum(node_macs.values()) * (1 - target)
    assert any(dep_group.unit > 1 for dep_group in (analysed.dep.group(gid) for gid in plan.keep))


def test_heads_merged_into_flat_tokens_are_left_whole_with_the_reason():
    """Merge target [-1, hidden] (tokens flattened before the output projection): not followed yet."""
    model = static_attention()
    graph = model.graph
    merge = next(init for init in graph.initializer if init.name == "merge_shape")
    merge.CopyFrom(numpy_helper.from_array(np.array([-1, 24], dtype=np.int64), "merge_shape"))
    residual = next(node for node in graph.node if node.name == "residual1")
    residual.input[0] = "o1_tokens"
    at = [node.name for node in graph.node].index("residual1")
    graph.node.insert(at, onnx.helper.make_node("Shape", ["x"], ["x_shape"], name="x_shape"))
    graph.node.insert(at + 1, onnx.helper.make_node("Reshape", ["o1", "x_shape"], ["o1_tokens"], name="unflatten"))

    analysed = analyse(model, {"x": [2, 4, 24]})

    heads = next(g for g in analysed.dep.groups if "q" in g.producers)
    assert heads.frozen
    assert "Reshape node 'merge' reshapes attention heads" in heads.frozen_reason
    assert next(g for g in analysed.dep.groups if "fc1" in g.producers).prunable


def test_an_op_that_does_not_follow_heads_freezes_them_naming_itself():
    """CumSum over the tokens of Q's heads: no handler says it follows heads, so the heads stay whole."""
    model = static_attention()
    graph = model.graph
    graph.initializer.append(numpy_helper.from_array(np.array(2, dtype=np.int64), "token_axis"))
    qk = next(node for node in graph.node if node.name == "qk")
    qk.input[0] = "q_running"
    at = [node.name for node in graph.node].index("qk")
    graph.node.insert(at, onnx.helper.make_node("CumSum", ["q3", "token_axis"], ["q_running"], name="running"))

    dep = analyse(model, {"x": [1, 4, 24]}).dep

    heads = next(g for g in dep.groups if "q" in g.producers)
    assert heads.frozen
    assert "CumSum node 'running' reads attention heads, which it cannot follow" in heads.frozen_reason
    assert next(g for g in dep.groups if "fc1" in g.producers).prunable
