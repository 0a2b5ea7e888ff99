"""Patterns that used to freeze whole models now prune, each proven by the masked-original oracle.

ShuffleNet v2 block:   split -> branch -> Concat -> Reshape (2, c/2) -> Transpose -> Reshape
ShuffleNet v1 block:   grouped conv1x1 -> shuffle (g) -> dw3x3 -> grouped conv1x1 (+ input)
depthwise multiplier:  conv (8) -> dw3x3 x2 (8 -> 16, group 8) -> conv1x1
grouped ConvTranspose: conv (8) -> ConvTranspose group 2 -> ConvTranspose depthwise -> conv1x1
"""

from __future__ import annotations

from pathlib import Path

import pytest

from onnxprune.graphops.scoring import score_groups
from onnxprune.graphops.selection import select_by_ratio
from tests.support import zoo
from tests.support.oracle import Analysed, analyse, assert_prune_matches_oracle
from tests.support.small_models import float16

RATIOS = [("random", 0, 0.3), ("random", 1, 0.6), ("l1", 0, 0.5)]


def _exported(tmp_path: Path, module, shape=(1, 3, 16, 16)) -> Analysed:
    import torch

    torch.manual_seed(0)
    path = zoo.export_onnx(zoo.randomize_batchnorm(module, seed=1), shape, tmp_path / "model.onnx")
    return analyse(path, {"input": list(shape)})


def _prune_and_check(analysed: Analysed, criterion: str, seed: int, ratio: float):
    plan = select_by_ratio(analysed.dep, score_groups(analysed.dep, criterion, seed=seed), ratio)
    assert plan.removed_channels > 0
    return plan, assert_prune_matches_oracle(analysed.original, plan, analysed=analysed)


def _groups_through(analysed: Analysed, op_type: str):
    nodes = {node.name: node.op_type for node in analysed.prepared.graph.node}
    return [g for g in analysed.dep.groups if any(nodes.get(n) == op_type for n in g.nodes)]


@pytest.mark.parametrize("criterion, seed, ratio", RATIOS)
@pytest.mark.parametrize("build", [zoo.shufflenet_v2_block, zoo.shufflenet_v1_block], ids=["v2", "v1"])
def test_a_channel_shuffle_is_a_permutation_the_pruning_follows(tmp_path, build, criterion, seed, ratio):
    analysed = _exported(tmp_path, build())
    shuffled = _groups_through(analysed, "Reshape")

    assert shuffled and all(g.prunable for g in shuffled), [g.frozen_reason for g in shuffled]
    _prune_and_check(analysed, criterion, seed, ratio)


@pytest.mark.parametrize("criterion, seed, ratio", RATIOS)
def test_a_depthwise_conv_with_a_channel_multiplier_loses_whole_multiplier_blocks(tmp_path, criterion, seed, ratio):
    analysed = _exported(tmp_path, zoo.depthwise_multiplier_net(width=8, multiplier=2))
    multiplier = next(n for n in analysed.prepared.graph.node if n.op_type == "Conv" and _group(n) == 8)
    group = next(g for g in analysed.dep.groups if multiplier.name in g.nodes and g.producers[0] != multiplier.name)

    assert group.prunable, group.frozen_reason
    plan, result = _prune_and_check(analysed, criterion, seed, ratio)

    kept = len(plan.keep.get(group.id, range(group.channels)))
    pruned_node = next(n for n in result.pruned.graph.node if n.name == multiplier.name)
    weight = next(i for i in result.pruned.graph.initializer if i.name == pruned_node.input[1])
    assert _group(pruned_node) == kept and list(weight.dims[:2]) == [2 * kept, 1]


@pytest.mark.parametrize("criterion, seed, ratio", RATIOS)
def test_a_grouped_conv_transpose_keeps_equal_channel_counts_per_group(tmp_path, criterion, seed, ratio):
    analysed = _exported(tmp_path, zoo.grouped_deconv_net(width=8, groups=2))
    deconv = next(n for n in analysed.prepared.graph.node if n.op_type == "ConvTranspose" and _group(n) == 2)
    produced = next(g for g in analysed.dep.groups if g.producers and g.producers[0] == deconv.name)

    assert produced.prunable, produced.frozen_reason
    plan, result = _prune_and_check(analysed, criterion, seed, ratio)

    pruned_node = next(n for n in result.pruned.graph.node if n.name == deconv.name)
    weight = next(i for i in result.pruned.graph.initializer if i.name == pruned_node.input[1])
    assert _group(pruned_node) == 2 and weight.dims[1] * 2 == len(plan.keep.get(produced.id, range(8)))


def _group(node) -> int:
    return next((int(a.i) for a in node.attribute if a.name == "group"), 1)


def _runtime_flatten_model(through_mul: bool = False):
    """input (batch x 3 x 8 x 8) -> conv (8) -> relu -> conv (6) -> relu -> GAP
    -> Reshape(GAP, Gather(Shape(GAP), [0, 1]) [* 1]) -> Gemm (6 -> 5): ``x.view(x.size(0), x.size(1))``."""
    import numpy as np
    import onnx
    from onnx import helper

    g = zoo.GraphBuilder(5)
    y = g.node("Relu", [g.conv(g.node("Relu", [g.conv("input", 3, 8)]), 8, 6)])
    pooled = g.node("GlobalAveragePool", [y])
    target = g.node("Gather", [g.node("Shape", [pooled]), g.constant("dims", np.array([0, 1], dtype=np.int64))])
    if through_mul:
        target = g.node("Mul", [target, g.constant("ones", np.array([1, 1], dtype=np.int64))])
    out = g.node("Gemm", [g.node("Reshape", [pooled, target]), g.random("fc_W", [5, 6], 0.3)], transB=1)
    graph = helper.make_graph(
        g.nodes,
        "runtime_flatten",
        [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, ["batch", 5])],
        g.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("criterion, seed, ratio", RATIOS)
def test_a_channel_count_read_by_shape_into_the_reshape_of_those_channels_follows_the_pruning(criterion, seed, ratio):
    analysed = analyse(_runtime_flatten_model())
    assert any(n.op_type == "Shape" for n in analysed.prepared.graph.node)  # not folded away: the batch is symbolic
    flattened = next(g for g in analysed.dep.groups if g.channels == 6)

    assert flattened.prunable, flattened.frozen_reason
    _prune_and_check(analysed, criterion, seed, ratio)


def test_a_channel_count_read_by_shape_into_arithmetic_freezes_naming_the_node():
    analysed = analyse(_runtime_flatten_model(through_mul=True))
    flattened = next(g for g in analysed.dep.groups if g.channels == 6)

    assert flattened.frozen
    assert "reads the channel count at run time and Mul node" in flattened.frozen_reason


@pytest.fixture(scope="module")
def mobilenet_v2_float32(tmp_path_factory):
    return _exported(tmp_path_factory.mktemp("mobilenet"), zoo.mobilenet_v2(width_multiplier=0.25)).original


@pytest.mark.parametrize("float32_interface", [False, True], ids=["float16", "mixed_precision"])
@pytest.mark.parametrize("criterion, seed, ratio", [("random", 1, 0.5)])
def test_a_float16_model_is_pruned_in_its_own_precision(
    mobilenet_v2_float32, float32_interface, criterion, seed, ratio
):
    import onnx

    from onnxprune.workers.output_compare import FLOAT16_RTOL, oracle_rtol

    model = float16(mobilenet_v2_float32, float32_interface=float32_interface)
    analysed = analyse(model)
    plan = select_by_ratio(analysed.dep, score_groups(analysed.dep, criterion, seed=seed), ratio)

    assert plan.removed_channels > 0 and oracle_rtol(model) == FLOAT16_RTOL
    result = assert_prune_matches_oracle(model, plan, analysed=analysed, rtol=FLOAT16_RTOL)
    half = {init.name for init in result.pruned.graph.initializer if init.data_type == onnx.TensorProto.FLOAT16}
    floats = {init.name for init in result.pruned.graph.initializer if init.data_type == onnx.TensorProto.FLOAT}
    assert half and not floats  # pruned in its own precision, nothing widened
