"""Pruning every zoo architecture gives the model the masked-original oracle computes.

For each architecture built in code (``tests/support/zoo.py``) and several channel choices, the pruned model
must compute what the original computes with the removed channels' input columns zeroed in every
consumer, be a valid model, and change only what the plan says.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import pytest
import torch

from onnxprune.graphops.cost import measure_cost
from onnxprune.graphops.plan import PruningPlan
from onnxprune.graphops.scoring import score_groups
from onnxprune.graphops.selection import select_by_flops, select_by_ratio
from onnxprune.graphops.surgery import apply_plan
from tests.support import zoo
from tests.support.oracle import (
    Analysed,
    analyse,
    assert_prune_matches_oracle,
    assert_valid,
    random_feeds,
    run_model,
)
from tests.support.zoo_cases import ZOO_CASES, analysed_zoo

CASES_BY_NAME = {case.name: case for case in ZOO_CASES}

# (criterion, seed, ratio): random choices at two ratios and two seeds, and the l1 criterion.
CHOICE_CASES = [
    ("random", 0, 0.25),
    ("random", 1, 0.5),
    ("l1", 0, 0.5),
]


# session, not module: the cache is the process's (tests.support.zoo_cases), and a module-scoped fixture
# would put all of this module's tests on one xdist worker (tests/conftest.py).
@pytest.fixture(scope="session")
def zoo_models() -> Callable[[str], Analysed]:
    """Each zoo model exported and analysed once per test process."""
    return analysed_zoo


def plan_for(analysed: Analysed, criterion: str, seed: int, ratio: float) -> PruningPlan:
    scores = score_groups(analysed.dep, criterion, seed=seed)
    return select_by_ratio(analysed.dep, scores, ratio)


def removed_channels(analysed: Analysed, plan: PruningPlan) -> int:
    channels = {group.id: group.channels for group in analysed.dep.groups}
    return sum(channels[group_id] - len(keep) for group_id, keep in plan.keep.items())


def nodes_by_name(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {node.name: node for node in model.graph.node}


def initializer_bytes(model: onnx.ModelProto) -> dict[str, bytes]:
    return {init.name: init.SerializeToString() for init in model.graph.initializer}


def initializer_dims(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    return {init.name: tuple(init.dims) for init in model.graph.initializer}


FILTER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def output_sources(model: onnx.ModelProto) -> set[str]:
    """The filter nodes whose output channels reach a graph output without passing another filter."""
    producer_of = {out: node for node in model.graph.node for out in node.output}
    sources: set[str] = set()
    pending = [out.name for out in model.graph.output]
    seen: set[str] = set()
    while pending:
        tensor = pending.pop()
        node = producer_of.get(tensor)
        if node is None or tensor in seen:
            continue
        seen.add(tensor)
        if node.op_type in FILTER_OPS:
            sources.add(node.name)
        elif node.op_type != "Shape":
            pending.extend(node.input)
    return sources


ZOO_NAMES = [case.name for case in ZOO_CASES]
PRUNABLE_NAMES = [name for name in ZOO_NAMES if name not in ("layernorm", "groupnorm")]


# --------------------------------------------------------------------------------------------
# The oracle
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("criterion, seed, ratio", CHOICE_CASES)
@pytest.mark.parametrize("name", ZOO_NAMES)
def test_pruned_model_computes_what_the_masked_original_computes(zoo_models, name, criterion, seed, ratio):
    analysed = zoo_models(name)
    plan = plan_for(analysed, criterion, seed, ratio)

    assert_prune_matches_oracle(analysed.original, plan, analysed=analysed)


@pytest.mark.parametrize("name", PRUNABLE_NAMES)
def test_every_prunable_zoo_model_loses_channels_at_ratio_one_half(zoo_models, name):
    analysed = zoo_models(name)
    plan = plan_for(analysed, "l1", 0, 0.5)

    assert analysed.dep.prunable, f"{name}: analysis froze every group: {[g.reasons for g in analysed.dep.frozen]}"
    assert removed_channels(analysed, plan) > 0


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "unet_small"])
def test_flops_selection_satisfies_the_oracle(zoo_models, name):
    analysed = zoo_models(name)
    scores = score_groups(analysed.dep, "l1")
    cost = measure_cost(analysed.prepared, analysed.input_shapes)
    plan = select_by_flops(analysed.dep, scores, 0.3, node_macs={node.name: node.macs for node in cost.nodes})

    result = assert_prune_matches_oracle(analysed.original, plan, analysed=analysed)

    assert removed_channels(analysed, plan) > 0
    assert measure_cost(result.pruned, analysed.input_shapes).macs <= 0.7 * cost.macs * 1.01


# --------------------------------------------------------------------------------------------
# What a plan may and may not change
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_ratio_zero_reproduces_the_original_outputs_exactly(zoo_models, name):
    analysed = zoo_models(name)
    plan = plan_for(analysed, "l1", 0, 0.0)

    pruned = apply_plan(analysed.dep, plan)

    assert removed_channels(analysed, plan) == 0
    assert_valid(pruned)
    feeds = random_feeds(analysed.prepared, analysed.input_shapes)
    for want, have in zip(run_model(analysed.original, feeds), run_model(pruned, feeds), strict=True):
        np.testing.assert_array_equal(have, want)


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_channels_that_reach_a_graph_output_are_never_pruned(zoo_models, name):
    analysed = zoo_models(name)
    output_producers = output_sources(analysed.prepared)
    plan = plan_for(analysed, "random", 3, 0.9)

    pruned = apply_plan(analysed.dep, plan)

    for group in analysed.dep.groups:
        kept = set(plan.keep.get(group.id, range(group.channels)))
        assert group.pinned <= kept, f"group {group.id}: pinned channels {sorted(group.pinned - kept)} removed"
        if output_producers & set(group.producers):
            assert group.frozen, f"group {group.id} of {group.producers} reaches a graph output but is prunable"
            assert len(kept) == group.channels
    feeds = random_feeds(analysed.prepared, analysed.input_shapes)
    for want, have in zip(run_model(analysed.original, feeds), run_model(pruned, feeds), strict=True):
        assert have.shape == want.shape


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_every_group_keeps_at_least_one_channel_even_at_ratio_near_one(zoo_models, name):
    analysed = zoo_models(name)
    plan = plan_for(analysed, "l1", 0, 0.99)

    for group in analysed.dep.groups:
        kept = plan.keep.get(group.id, range(group.channels))
        assert len(kept) >= 1, f"group {group.id} keeps no channel"
        if group.frozen:
            assert len(kept) == group.channels, f"frozen group {group.id} lost channels"
    assert_prune_matches_oracle(analysed.original, plan, analysed=analysed)


@pytest.mark.parametrize("name", PRUNABLE_NAMES)
def test_surgery_leaves_untouched_initializers_and_node_names_alone(zoo_models, name):
    analysed = zoo_models(name)
    plan = plan_for(analysed, "random", 0, 0.5)
    before_bytes, before_dims = initializer_bytes(analysed.prepared), initializer_dims(analysed.prepared)

    pruned = apply_plan(analysed.dep, plan)

    after_bytes, after_dims = initializer_bytes(pruned), initializer_dims(pruned)
    # Weights that kept their shape were not sliced, so their bytes must not change. (Integer
    # tensors are left out: a Reshape target such as [1, C, 1, 1] legitimately changes value.)
    floats = {init.name for init in pruned.graph.initializer if init.data_type == onnx.TensorProto.FLOAT}
    same_shape = [n for n in after_dims if n in before_dims and after_dims[n] == before_dims[n] and n in floats]
    assert same_shape, "surgery renamed or reshaped every weight"
    for init_name in same_shape:
        assert after_bytes[init_name] == before_bytes[init_name], f"initializer {init_name!r} changed values"
    before_nodes, after_nodes = nodes_by_name(analysed.prepared), nodes_by_name(pruned)
    assert sorted(after_nodes) == sorted(before_nodes)
    for node_name, node in after_nodes.items():
        assert node.op_type == before_nodes[node_name].op_type


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_ratio_zero_leaves_every_initializer_bit_identical(zoo_models, name):
    analysed = zoo_models(name)

    pruned = apply_plan(analysed.dep, plan_for(analysed, "l1", 0, 0.0))

    assert initializer_bytes(pruned) == initializer_bytes(analysed.prepared)


def test_a_dynamic_batch_model_stays_dynamic_after_pruning(tmp_path):
    module = zoo.randomize_batchnorm(zoo.resnet18(10, 0.125))
    path = zoo.export_onnx(module, (1, 3, 32, 32), tmp_path / "r18.onnx", dynamic_batch=True)
    analysed = analyse(path, {"input": [2, 3, 32, 32]})
    plan = plan_for(analysed, "random", 0, 0.5)

    result = assert_prune_matches_oracle(path, plan, analysed=analysed)

    batch = result.pruned.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param and not batch.dim_value
    feeds = random_feeds(analysed.prepared, {"input": [3, 3, 32, 32]})
    (masked,), (pruned,) = run_model(result.masked, feeds), run_model(result.pruned, feeds)
    assert pruned.shape == (3, 10)
    assert np.abs(masked - pruned).max() < 1e-4 * np.abs(masked).max()


# (zoo case, opset): exports whose dynamic batch puts Shape -> Reshape round trips in the graph.
DYNAMIC_BATCH_CASES = [("groupnorm", 13), ("groupnorm", 17), ("se_swish_conv", 13), ("unet_small", 11)]


@pytest.mark.parametrize("name, opset", DYNAMIC_BATCH_CASES)
def test_a_dynamic_batch_freezes_no_more_than_a_static_batch(tmp_path, name, opset):
    case = CASES_BY_NAME[name]

    def export(dynamic: bool) -> Analysed:
        torch.manual_seed(0)
        path = tmp_path / f"{name}_{dynamic}.onnx"
        module = zoo.randomize_batchnorm(case.build(), seed=1)
        zoo.export_onnx(module, case.input_shape, path, opset=opset, dynamic_batch=dynamic)
        return analyse(path, {"input": list(case.input_shape)})

    static, dynamic = export(False), export(True)

    assert [g.id for g in dynamic.dep.prunable] == [g.id for g in static.dep.prunable], [
        g.frozen_reason for g in dynamic.dep.frozen
    ]
    assert_prune_matches_oracle(dynamic.original, plan_for(dynamic, "random", 0, 0.5), analysed=dynamic)


# --------------------------------------------------------------------------------------------
# Plans are data
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "split_concat", "nhwc_transpose"])
def test_saved_plan_round_trips_and_reapplies_to_a_bit_identical_model(zoo_models, name, tmp_path):
    analysed = zoo_models(name)
    plan = plan_for(analysed, "random", 5, 0.4)
    saved = tmp_path / "plan.json"
    saved.write_text(plan.to_json())

    loaded = PruningPlan.from_json(saved.read_text())
    fresh = analyse(analysed.original, analysed.input_shapes)

    assert loaded.keep == plan.keep
    assert loaded.to_json() == plan.to_json()
    first = apply_plan(analysed.dep, plan).SerializeToString()
    assert apply_plan(analysed.dep, loaded).SerializeToString() == first
    assert apply_plan(fresh.dep, loaded).SerializeToString() == first


# --------------------------------------------------------------------------------------------
# Architecture-specific rules
# --------------------------------------------------------------------------------------------


# (zoo case, the op the freezing reason must name)
NORM_CASES = [
    ("layernorm", "LayerNormalization"),  # NHWC permute -> LayerNorm(C): normalises over channels
    ("groupnorm", "Reshape"),  # exported as Reshape to (N, groups, -1) -> InstanceNormalization
]


@pytest.mark.parametrize("name, op_type", NORM_CASES)
def test_channels_normalised_together_are_frozen_with_the_op_named(zoo_models, name, op_type):
    analysed = zoo_models(name)

    (group,) = [group for group in analysed.dep.groups if _first_conv(analysed) in group.producers]

    assert group.frozen
    assert op_type in group.frozen_reason, group.frozen_reason


@pytest.mark.parametrize("criterion, seed, ratio", CHOICE_CASES + [("random", 7, 0.7)])
def test_grouped_conv_keeps_equal_channel_counts_in_every_conv_group(zoo_models, criterion, seed, ratio):
    analysed = zoo_models("grouped_conv")
    grouped = next(
        node for node in analysed.prepared.graph.node if node.op_type == "Conv" and _attr(node, "group", 1) > 1
    )
    groups = _attr(grouped, "group", 1)
    plan = plan_for(analysed, criterion, seed, ratio)

    pruned = apply_plan(analysed.dep, plan)

    node = nodes_by_name(pruned)[grouped.name]
    assert _attr(node, "group", 1) == groups
    weight = {init.name: init for init in pruned.graph.initializer}[node.input[1]]
    out_channels, in_per_group = weight.dims[0], weight.dims[1]
    assert out_channels % groups == 0
    # conv-bn-relu -> grouped conv: the first conv's filters are the grouped conv's input channels.
    (input_group,) = [g for g in analysed.dep.groups if _first_conv(analysed) in g.producers]
    kept = plan.keep.get(input_group.id, list(range(input_group.channels)))
    block = input_group.channels // groups
    counts = np.bincount(np.asarray(kept) // block, minlength=groups)
    assert (counts == counts[0]).all(), f"kept input channels per conv group: {counts.tolist()}"
    assert in_per_group == counts[0]
    assert_prune_matches_oracle(analysed.original, plan, analysed=analysed)


@pytest.mark.parametrize("criterion, seed, ratio", CHOICE_CASES)
def test_depthwise_convs_group_attribute_equals_their_new_channel_count(zoo_models, criterion, seed, ratio):
    analysed = zoo_models("mobilenet_v2")
    plan = plan_for(analysed, criterion, seed, ratio)

    pruned = apply_plan(analysed.dep, plan)

    weights = {init.name: init for init in pruned.graph.initializer}
    depthwise = _grouped(pruned)
    assert len(depthwise) == 17
    for node in depthwise:
        weight = weights[node.input[1]]
        assert weight.dims[1] == 1
        assert _attr(node, "group", 1) == weight.dims[0], node.name
    groups_before = [_attr(node, "group", 1) for node in _grouped(analysed.prepared)]
    assert any(weights[node.input[1]].dims[0] < before for node, before in zip(depthwise, groups_before))


@pytest.mark.parametrize("name", ["grouped_conv", "depthwise_multiplier", "grouped_deconv", "mobilenet_v2"])
def test_depthwise_convs_get_one_group_per_kept_input_channel_and_grouped_convs_keep_theirs(zoo_models, name):
    analysed = zoo_models(name)
    plan = plan_for(analysed, "random", 0, 0.5)

    pruned = apply_plan(analysed.dep, plan)

    weights = initializer_dims(pruned)
    after = nodes_by_name(pruned)
    for before in _grouped(analysed.prepared):
        node, group = after[before.name], _attr(before, "group", 1)
        weight = initializer_dims(analysed.prepared)[before.input[1]]
        new_weight = weights[node.input[1]]
        # Conv weight [C_out, C_in / group, ...]: one input channel per conv group is depthwise, with
        # C_out / group filters per channel (a multiplier). ConvTranspose [C_in, C_out / group, ...]:
        # depthwise when C_in == group and one output per group.
        if before.op_type == "Conv" and weight[1] == 1:
            multiplier = weight[0] // group
            assert _attr(node, "group", 1) == new_weight[0] // multiplier, before.name
        elif before.op_type == "ConvTranspose" and weight[1] == 1 and weight[0] == group:
            assert _attr(node, "group", 1) == new_weight[0], before.name
        else:
            assert _attr(node, "group", 1) == group, f"{before.name}: group {group} became {_attr(node, 'group', 1)}"


def _grouped(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose") and _attr(n, "group", 1) > 1]


def _first_conv(analysed: Analysed) -> str:
    return next(node.name for node in analysed.prepared.graph.node if node.op_type == "Conv")


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    for attr in node.attribute:
        if attr.name == name:
            return int(attr.i)
    return default
