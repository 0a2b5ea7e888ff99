"""Heads and MLP neurons of transformer blocks in the fused forms onnxruntime's optimizer writes,
pruned and proven by the oracle.

com.microsoft Attention projects x by one packed weight [in, Q heads | K heads | V heads] and takes
``num_heads``; MultiHeadAttention and ONNX's Attention (opset 23) take Q, K, V projected by MatMuls.
SkipLayerNormalization sits on the residual stream (which stays whole) and must not block the heads
and neurons inside a block; BiasGelu / FastGelu carry the neurons' bias. The decomposed blocks of
``tests.support.transformer_models`` are fused by the optimizer itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from onnxprune.graphops.cost import measure_cost
from onnxprune.graphops.masking import mask_removed_channels
from onnxprune.graphops.plan import PruningPlan
from onnxprune.graphops.shares import macs_shares
from onnxprune.graphops.surgery import apply_plan
from tests.support.cli import onnxprune
from tests.support.oracle import analyse, assert_outputs_close, assert_prune_matches_oracle, output_names, run_model
from tests.support.transformer_models import (
    bert_style,
    fused_by_onnxruntime,
    fused_mlp,
    group_query_attention,
    hidden_state_feeds,
    minilm_path,
    onnx_attention,
    onnx_attention_4d,
    random_unit_plan,
    vit_style,
)

BERT_SHAPES = {"x": [2, 7, 32], "attention_mask": [2, 7]}

# name, builder, analysis shapes, fused ops the block must contain, heads (units), unit width,
# producers per head group, MLP width, layers
CASES = [
    ("packed_attention", lambda: fused_by_onnxruntime(bert_style(), 4, 32), BERT_SHAPES,
     {"Attention", "SkipLayerNormalization", "BiasGelu"}, 4, 8, 1, 48, 2),
    ("multi_head_attention", lambda: fused_by_onnxruntime(bert_style(), 4, 32, multi_head=True), BERT_SHAPES,
     {"MultiHeadAttention", "SkipLayerNormalization", "BiasGelu"}, 4, 8, 3, 48, 2),
    ("vit_fused_norms_and_fast_gelu", lambda: fused_by_onnxruntime(vit_style(opset=17), 4, 32, model_type="vit"),
     {"x": [2, 9, 32]},
     {"SkipLayerNormalization", "FastGelu"}, 4, 8, 3, 64, 2),
    ("onnx_attention_opset_23", onnx_attention, {"x": [2, 5, 24]}, {"Attention"}, 3, 8, 3, None, 1),
    ("onnx_attention_4d_split_heads", onnx_attention_4d, {"x": [2, 5, 24]}, {"Attention"}, 3, 8, 3, None, 1),
    ("onnx_grouped_query_attention", lambda: onnx_attention(hidden=32, heads=4, kv_heads=2), {"x": [2, 5, 32]},
     {"Attention"}, 2, 16, 3, None, 1),
]  # fmt: skip
IDS = [case[0] for case in CASES]


@pytest.mark.parametrize(
    ("name", "build", "shapes", "fused", "heads", "unit", "writers", "width", "layers"), CASES, ids=IDS
)
def test_heads_and_mlp_neurons_of_fused_blocks_are_the_prunable_units(
    name, build, shapes, fused, heads, unit, writers, width, layers
):
    model = build()
    dep = analyse(model, shapes).dep

    assert fused <= {node.op_type for node in model.graph.node}
    head_groups = [g for g in dep.prunable if g.unit == unit]
    neuron_groups = [g for g in dep.prunable if g.unit == 1]
    assert [(g.channels, len(g.linear_producers)) for g in head_groups] == [(heads, writers)] * layers
    assert [g.channels for g in neuron_groups] == ([width] * layers if width else [])
    hidden = shapes["x"][2]
    assert all(g.frozen for g in dep.groups if g.channels == hidden)


@pytest.mark.parametrize(
    ("name", "build", "shapes", "fused", "heads", "unit", "writers", "width", "layers"), CASES, ids=IDS
)
@pytest.mark.parametrize("seed", [0, 1])
def test_pruned_fused_blocks_match_the_masked_original_at_any_batch_and_sequence(
    name, build, shapes, fused, heads, unit, writers, width, layers, seed
):
    analysed = analyse(build(), shapes)
    plan = random_unit_plan(analysed.dep, seed)

    result = assert_prune_matches_oracle(None, plan, analysed=analysed, seed=seed)

    batch, sequence = (3, 11) if "attention_mask" in shapes else (3, shapes["x"][1])
    feeds = hidden_state_feeds(analysed.original, batch, sequence, seed)
    names = output_names(result.pruned)
    assert_outputs_close(run_model(result.masked, feeds), run_model(result.pruned, feeds), names, 1e-4)
    assert [i.type for i in result.pruned.graph.input] == [i.type for i in analysed.original.graph.input]


def _head_counts(model: onnx.ModelProto) -> list[tuple[str, int]]:
    return [
        (attr.name, attr.i)
        for node in model.graph.node
        for attr in node.attribute
        if attr.name in ("num_heads", "q_num_heads", "kv_num_heads")
    ]


@pytest.mark.parametrize("norm", ["SkipLayerNormalization", "SkipSimplifiedLayerNormalization"])
@pytest.mark.parametrize("activation", ["BiasGelu", "FastGelu", "Gelu", "QuickGelu"])
def test_fused_activations_carry_the_mlp_neurons_and_skip_norms_keep_the_residual_stream(activation, norm):
    analysed = analyse(fused_mlp(activation, norm), {"x": [2, 5, 16]})

    (neurons,) = analysed.dep.prunable
    assert (neurons.channels, neurons.producers) == (24, ("fc1",))
    assert [g.channels for g in analysed.dep.frozen] == [16]
    assert_prune_matches_oracle(None, random_unit_plan(analysed.dep, 0), analysed=analysed)


# builder, shapes, units kept, head-count attributes after
HEAD_COUNT_CASES = [
    (lambda: fused_by_onnxruntime(bert_style(layers=1), 4, 32), BERT_SHAPES, [0, 3], [("num_heads", 2)]),
    (lambda: fused_by_onnxruntime(bert_style(layers=1), 4, 32, multi_head=True), BERT_SHAPES, [0, 3],
     [("num_heads", 2)]),
    (onnx_attention, {"x": [2, 5, 24]}, [0, 2], [("q_num_heads", 2), ("kv_num_heads", 2)]),
    (lambda: onnx_attention(hidden=32, heads=4, kv_heads=2), {"x": [2, 5, 32]}, [1],
     [("q_num_heads", 2), ("kv_num_heads", 1)]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("build", "shapes", "keep", "expected"),
    HEAD_COUNT_CASES,
    ids=["packed_attention", "multi_head_attention", "onnx_attention", "onnx_grouped_query_attention"],
)
def test_surgery_rewrites_the_head_count_and_slices_the_packed_weight(build, shapes, keep, expected):
    analysed = analyse(build(), shapes)
    (heads,) = [g for g in analysed.dep.prunable if g.unit > 1]
    plan = PruningPlan.from_keep(analysed.dep, {heads.id: keep})

    result = assert_prune_matches_oracle(None, plan, analysed=analysed)

    assert sorted(_head_counts(result.pruned)) == sorted(expected)
    packed = [n for n in result.pruned.graph.node if n.op_type == "Attention" and n.domain == "com.microsoft"]
    for node in packed:
        weight = next(i for i in result.pruned.graph.initializer if i.name == node.input[1])
        assert list(weight.dims) == [32, 3 * 2 * 8]  # [in, Q | K | V] of the two kept heads of 8


def _with_attribute(model: onnx.ModelProto, op_type: str, **attributes) -> onnx.ModelProto:
    for node in model.graph.node:
        if node.op_type == op_type:
            node.attribute.extend(helper.make_attribute(key, value) for key, value in attributes.items())
    return model


def test_a_packed_attention_with_attributes_it_does_not_follow_keeps_its_heads_and_says_why():
    model = _with_attribute(fused_by_onnxruntime(bert_style(), 4, 32), "Attention", qkv_hidden_sizes=[32, 32, 32])
    dep = analyse(model, BERT_SHAPES).dep

    frozen_heads = [g for g in dep.groups if g.unit == 8]
    assert len(frozen_heads) == 2 and all(g.frozen for g in frozen_heads)
    assert all("qkv_hidden_sizes" in g.frozen_reason for g in frozen_heads)
    assert [g.channels for g in dep.prunable] == [48, 48]  # the MLPs still prune


def _gqa_feeds(sequence: int, seed: int) -> dict[str, np.ndarray]:
    x = np.random.default_rng(seed).standard_normal((1, sequence, 32)).astype(np.float32)
    lengths = np.array([sequence - 1], dtype=np.int32)  # onnxruntime's convention: total length - 1
    return {"x": x, "seqlens_k": lengths, "total_sequence_length": np.array(sequence, dtype=np.int32)}


@pytest.mark.parametrize(("keep", "heads", "kv_heads"), [([1], 2, 1), ([0, 1], 4, 2)])
def test_onnxruntime_group_query_attention_prunes_whole_kv_groups(keep, heads, kv_heads):
    """Four query heads read two key/value heads: a unit is a KV head with its two query heads."""
    analysed = analyse(group_query_attention(), {"x": [1, 5, 32], "seqlens_k": [1], "total_sequence_length": []})
    (groups,) = analysed.dep.prunable
    plan = PruningPlan.from_keep(analysed.dep, {groups.id: keep})

    pruned, masked = apply_plan(analysed.dep, plan), mask_removed_channels(analysed.dep, plan)

    assert (groups.channels, groups.unit, len(groups.linear_producers)) == (2, 16, 3)
    assert sorted(_head_counts(pruned)) == [("kv_num_heads", kv_heads), ("num_heads", heads)]
    for sequence, seed in ((5, 0), (9, 1)):
        feeds = _gqa_feeds(sequence, seed)
        assert_outputs_close(run_model(masked, feeds), run_model(pruned, feeds), ["y"], 1e-4)


def test_group_query_attention_with_a_kv_cache_keeps_its_projections_and_says_why():
    model = group_query_attention()
    model.graph.output.append(helper.make_tensor_value_info("present_key", onnx.TensorProto.FLOAT, None))
    dep = analyse(model, {"x": [1, 5, 32], "seqlens_k": [1], "total_sequence_length": []}).dep

    projections = [g for g in dep.groups if g.producers[0] in ("query", "key", "value")]
    assert projections and all(g.frozen for g in projections)
    assert all("returns the present key" in g.frozen_reason for g in projections)
    assert not dep.prunable


def test_fused_attention_macs_count_and_fall_with_the_heads():
    analysed = analyse(fused_by_onnxruntime(bert_style(), 4, 32), BERT_SHAPES)
    shapes = analysed.input_shapes
    before = {n.name: n.macs for n in measure_cost(analysed.prepared, shapes).nodes if n.op_type == "Attention"}
    heads = [g for g in analysed.dep.prunable if g.unit == 8]
    plan = PruningPlan.from_keep(analysed.dep, {g.id: [0, 1] for g in heads})
    result = assert_prune_matches_oracle(None, plan, analysed=analysed)
    after = {n.name: n.macs for n in measure_cost(result.pruned, shapes).nodes if n.op_type == "Attention"}

    batch, sequence, hidden = BERT_SHAPES["x"]
    full = batch * sequence * hidden * 3 * hidden + 2 * batch * sequence * sequence * hidden
    assert set(before.values()) == {full}
    assert set(after.values()) == {full // 2}


def test_a_packed_attention_counts_its_macs_once_in_the_heads_share():
    """Q, K and V of the packed weight are three producers of one node: its MACs are counted once."""
    analysed = analyse(fused_by_onnxruntime(bert_style(), 4, 32), BERT_SHAPES)
    nodes = measure_cost(analysed.prepared, analysed.input_shapes).nodes
    node_macs = {node.name: node.macs for node in nodes}

    shares = macs_shares(analysed.dep, node_macs)

    total = sum(node_macs.values())
    for group in analysed.dep.prunable:
        if group.unit == 8:
            (attention,) = group.producers
            assert shares[group.id] == pytest.approx(node_macs[attention] / total)
    assert sum(shares.values()) <= 1 + 1e-9


# ---- the real paraphrase-MiniLM-L3-v2, fused by onnxruntime's optimizer --------------------------

MINILM_SHAPES = {"input_ids": [2, 16], "attention_mask": [2, 16]}


def _sentences(batch: int, sequence: int, seed: int) -> dict[str, np.ndarray]:
    """Token ids anywhere in the vocabulary, [CLS] ... [SEP], the first sentence padded."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, 30522, size=(batch, sequence)).astype(np.int64)
    ids[:, 0], ids[:, -1] = 101, 102
    mask = np.ones((batch, sequence), dtype=np.int64)
    mask[0, sequence // 2 :] = 0
    ids[0, sequence // 2 :] = 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.fixture(scope="module")
def fused_minilm(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("minilm") / "fused.onnx"
    onnx.save(fused_by_onnxruntime(onnx.load(minilm_path()), 12, 384), path)
    return path


def test_the_fused_minilm_offers_the_heads_and_neurons_of_the_raw_export(fused_minilm):
    model = onnx.load(fused_minilm)
    dep = analyse(model, MINILM_SHAPES).dep

    fused = [(n.domain, n.op_type) for n in model.graph.node if n.domain]
    assert fused.count(("com.microsoft", "Attention")) == 3 and ("com.microsoft", "EmbedLayerNormalization") in fused
    groups = sorted((g.channels, g.unit, len(g.linear_producers)) for g in dep.prunable)
    assert groups == [(12, 32, 1)] * 3 + [(1536, 1, 1)] * 3
    assert all(g.frozen for g in dep.groups if g.channels == 384)


def test_the_cli_prunes_the_fused_minilm_as_it_prunes_the_raw_export(fused_minilm, tmp_path):
    """Same heads and neurons chosen (the packed Q | K | V scored as three layers), so the fused
    pruned model computes what the raw pruned model computes; and it is the masked original."""
    flags = ["--flops-target", "0.3", "--no-benchmark", "--input-shape", "input_ids:1x128", "--input-shape",
             "attention_mask:1x128"]  # fmt: skip
    fused = onnxprune("prune", fused_minilm, "-o", "fused.onnx", *flags, "--plan-out", "fused.json",
                      "--report", "report.json", cwd=tmp_path)  # fmt: skip
    raw = onnxprune("prune", minilm_path(), "-o", "raw.onnx", *flags, "--plan-out", "raw.json", cwd=tmp_path)

    assert fused.returncode == 0, fused.stderr
    assert raw.returncode == 0, raw.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["macs"]["after"] <= 0.7 * report["macs"]["before"]
    original, pruned = onnx.load(fused_minilm), onnx.load(tmp_path / "fused.onnx")
    assert [i.type for i in pruned.graph.input] == [i.type for i in original.graph.input]
    assert output_names(pruned) == output_names(original)
    heads = [count for _, count in _head_counts(pruned)]
    assert len(heads) == 3 and max(heads) <= 12 and sum(heads) < 36
    kept = [len(group["keep"]) for group in json.loads((tmp_path / "fused.json").read_text())["groups"]]
    assert kept == [len(group["keep"]) for group in json.loads((tmp_path / "raw.json").read_text())["groups"]]

    analysed = analyse(original, MINILM_SHAPES)
    masked = mask_removed_channels(analysed.dep, PruningPlan.from_json((tmp_path / "fused.json").read_text()))
    raw_pruned = onnx.load(tmp_path / "raw.onnx")
    for batch, sequence, seed in ((2, 16, 0), (3, 41, 1)):
        feeds = _sentences(batch, sequence, seed)
        outputs = run_model(pruned, feeds)
        assert_outputs_close(run_model(masked, feeds), outputs, output_names(pruned), 1e-4)
        assert_outputs_close(run_model(raw_pruned, feeds), outputs, output_names(pruned), 1e-4)
