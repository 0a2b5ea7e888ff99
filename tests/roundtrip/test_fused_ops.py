"""The executor runs onnxruntime's fused transformer ops (com.microsoft) and ONNX's Attention as
onnxruntime computes them, so data-driven criteria, the least-squares refit and distillation work on
models fused by ``onnxruntime.transformers.optimizer``; the forms it does not compute (a KV cache,
rotary embeddings, rare mask layouts) are refused with the reason.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from onnxprune.graphops.errors import ModelRejected
from onnxprune.roundtrip.executor import build_executor
from tests.support import transformer_models as built
from tests.support.cli import onnxprune
from tests.support.oracle import relative_error, run_model
from tests.support.transformer_models import fused_by_onnxruntime, hidden_state_feeds, minilm_path, single_op

RTOL = 1e-4
SHAPES = [(1, 5), (3, 11)]  # (batch, sequence)


def assert_parity(model: onnx.ModelProto, feeds: dict[str, np.ndarray], rtol: float = RTOL) -> None:
    """Every graph output of the executor within ``rtol`` (of its largest magnitude) of onnxruntime's."""
    expected = run_model(model, feeds)
    with torch.no_grad():
        actual = [t.numpy() for t in build_executor(model).run(feeds)]
    for output, want, got in zip(model.graph.output, expected, actual):
        assert got.shape == want.shape, output.name
        assert relative_error(want, got) < rtol, f"{output.name}: relative error {relative_error(want, got):.3g}"


BLOCKS = {
    "packed_attention_raw_mask": lambda: fused_by_onnxruntime(built.bert_style(), 4, 32),
    "packed_attention_tanh_gelu": lambda: fused_by_onnxruntime(built.bert_style(gelu="tanh"), 4, 32),
    "multi_head_attention": lambda: fused_by_onnxruntime(built.bert_style(), 4, 32, multi_head=True),
    "vit_skip_norm_sums_fast_gelu": lambda: fused_by_onnxruntime(built.vit_style(opset=17), 4, 32, model_type="vit"),
    "onnx_attention_3d": built.onnx_attention,
    "onnx_attention_4d": built.onnx_attention_4d,
    "onnx_grouped_query_attention": lambda: built.onnx_attention(hidden=32, heads=4, kv_heads=2),
    **{
        f"mlp_{activation}_{norm}": (lambda a=activation, n=norm: built.fused_mlp(a, n))
        for activation in ("BiasGelu", "FastGelu", "Gelu", "QuickGelu")
        for norm in ("SkipLayerNormalization", "SkipSimplifiedLayerNormalization")
    },
}


@pytest.mark.parametrize(("batch", "sequence"), SHAPES)
@pytest.mark.parametrize("name", list(BLOCKS))
def test_fused_blocks_run_in_the_executor_as_in_onnxruntime(name, batch, sequence):
    model = BLOCKS[name]()
    assert any(node.domain == "com.microsoft" or node.op_type == "Attention" for node in model.graph.node)

    assert_parity(model, hidden_state_feeds(model, batch, sequence, seed=batch))


def test_group_query_attention_is_causal_over_grouped_kv_heads():
    model = built.group_query_attention()
    sequence = 6
    feeds = {
        "x": np.random.default_rng(0).standard_normal((1, sequence, 32)).astype(np.float32),
        "seqlens_k": np.array([sequence - 1], dtype=np.int32),
        "total_sequence_length": np.array(sequence, dtype=np.int32),
    }

    assert_parity(model, feeds)


def _attention_inputs(batch: int, sequence: int, hidden: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "input": rng.standard_normal((batch, sequence, hidden)).astype(np.float32),
        "weights": (rng.standard_normal((hidden, 3 * hidden)) / 4).astype(np.float32),
        "bias": rng.standard_normal(3 * hidden).astype(np.float32),
    }


def _mask_forms(batch: int, sequence: int) -> dict[str, np.ndarray | None]:
    """com.microsoft Attention's mask_index forms, each with some keys masked in some rows."""
    rng = np.random.default_rng(1)
    lengths = np.array([sequence - b for b in range(batch)], dtype=np.int32)
    starts = np.array([min(b, sequence - 1) for b in range(batch)], dtype=np.int32)
    raw = (np.arange(sequence)[None, :] < lengths[:, None]).astype(np.int32)
    return {
        "none": None,
        "key_lengths": lengths,
        "end_and_start": np.concatenate([lengths, starts]),
        "raw_2d": raw,
        "raw_3d": (rng.random((batch, sequence, sequence)) > 0.3).astype(np.int32) | np.eye(sequence, dtype=np.int32),
    }


ATTRIBUTES = {
    "default": {},
    "unidirectional": {"unidirectional": 1},
    "scale_and_filter": {"scale": 0.2, "mask_filter_value": -300.0},
}


@pytest.mark.parametrize("attributes", list(ATTRIBUTES))
@pytest.mark.parametrize("mask", list(_mask_forms(1, 1)))
@pytest.mark.parametrize(("batch", "sequence"), [(2, 5), (3, 9)])
def test_packed_attention_takes_every_mask_index_form(mask, attributes, batch, sequence):
    inputs = {**_attention_inputs(batch, sequence), "mask_index": _mask_forms(batch, sequence)[mask]}
    model, feeds = single_op("Attention", inputs, ["output"], num_heads=4, **ATTRIBUTES[attributes])

    assert_parity(model, feeds)


def test_packed_attention_adds_attention_bias_and_returns_present_keys_and_values():
    rng = np.random.default_rng(2)
    inputs = {**_attention_inputs(2, 6), "mask_index": None, "past": None,
              "attention_bias": rng.standard_normal((1, 4, 6, 6)).astype(np.float32)}  # fmt: skip
    model, feeds = single_op("Attention", inputs, ["output", "present"], num_heads=4)

    assert_parity(model, feeds)


def test_packed_attention_splits_q_k_v_by_qkv_hidden_sizes():
    rng = np.random.default_rng(10)
    inputs = {"input": rng.standard_normal((2, 6, 16)).astype(np.float32),
              "weights": (rng.standard_normal((16, 40)) / 4).astype(np.float32),
              "bias": rng.standard_normal(40).astype(np.float32), "mask_index": _mask_forms(2, 6)["key_lengths"]}  # fmt: skip
    model, feeds = single_op("Attention", inputs, ["output"], num_heads=4, qkv_hidden_sizes=[16, 16, 8])

    assert_parity(model, feeds)


@pytest.mark.parametrize("mask", ["none", "key_lengths", "raw_2d", "raw_3d"])
@pytest.mark.parametrize("unidirectional", [0, 1])
def test_multi_head_attention_takes_key_padding_masks(mask, unidirectional):
    rng = np.random.default_rng(3)
    q, k, v = (rng.standard_normal((3, 7, 16)).astype(np.float32) for _ in range(3))
    inputs = {"query": q, "key": k, "value": v, "bias": rng.standard_normal(48).astype(np.float32),
              "key_padding_mask": _mask_forms(3, 7)[mask]}  # fmt: skip
    model, feeds = single_op("MultiHeadAttention", inputs, ["output"], num_heads=2, unidirectional=unidirectional)

    assert_parity(model, feeds)


def test_multi_head_attention_on_packed_qkv_is_refused_as_onnxruntime_refuses_it_on_cpu():
    rng = np.random.default_rng(8)
    inputs = {"query": rng.standard_normal((2, 5, 4, 3, 8)).astype(np.float32), "key": None, "value": None}
    model, feeds = single_op("MultiHeadAttention", inputs, ["output"], num_heads=4)

    with pytest.raises(ModelRejected, match="not packed QKV / KV"):
        build_executor(model).run(feeds)


def test_group_query_attention_takes_packed_qkv_and_returns_the_present_key_and_value():
    rng = np.random.default_rng(9)
    heads, kv_heads, size, sequence = 4, 2, 8, 5
    inputs = {"query": rng.standard_normal((1, sequence, (heads + 2 * kv_heads) * size)).astype(np.float32),
              "key": None, "value": None, "past_key": None, "past_value": None,
              "seqlens_k": np.array([sequence - 1], np.int32), "total_sequence_length": np.array(sequence, np.int32)}  # fmt: skip
    model, feeds = single_op("GroupQueryAttention", inputs, ["output", "present_key", "present_value"],
                             num_heads=heads, kv_num_heads=kv_heads)  # fmt: skip

    assert_parity(model, feeds)


@pytest.mark.parametrize("segments", [True, False])
@pytest.mark.parametrize("positions", [True, False])
def test_embed_layer_norm_writes_the_normalised_sum_the_mask_index_and_the_raw_sum(segments, positions):
    rng = np.random.default_rng(4)
    batch, sequence, hidden = 3, 8, 12
    mask = (np.arange(sequence)[None, :] < np.array([[8], [5], [2]])).astype(np.int32)
    inputs = {
        "input_ids": rng.integers(0, 50, (batch, sequence)).astype(np.int32),
        "segment_ids": rng.integers(0, 2, (batch, sequence)).astype(np.int32) if segments else None,
        "word_embedding": rng.standard_normal((50, hidden)).astype(np.float32),
        "position_embedding": rng.standard_normal((20, hidden)).astype(np.float32),
        "segment_embedding": rng.standard_normal((2, hidden)).astype(np.float32) if segments else None,
        "gamma": rng.standard_normal(hidden).astype(np.float32),
        "beta": rng.standard_normal(hidden).astype(np.float32),
        "mask": mask,
        "position_ids": rng.integers(0, 20, (1, sequence)).astype(np.int32) if positions else None,
    }
    model, feeds = single_op("EmbedLayerNormalization", inputs, ["output", "mask_index", "sum"], epsilon=1e-5)

    assert_parity(model, feeds)


@pytest.mark.parametrize("norm", ["SkipLayerNormalization", "SkipSimplifiedLayerNormalization"])
@pytest.mark.parametrize("bias", [True, False])
def test_skip_norms_return_the_residual_sum_as_their_fourth_output(norm, bias):
    rng = np.random.default_rng(5)
    x, skip = (rng.standard_normal((2, 5, 8)).astype(np.float32) for _ in range(2))
    beta = {"beta": rng.standard_normal(8).astype(np.float32)} if norm == "SkipLayerNormalization" else {}
    inputs = {"input": x, "skip": skip, "gamma": rng.standard_normal(8).astype(np.float32), **beta,
              "bias": rng.standard_normal(8).astype(np.float32) if bias else None}  # fmt: skip
    model, feeds = single_op(norm, inputs, ["output", "", "", "sum"], epsilon=1e-5)

    assert_parity(model, feeds)


def _onnx_attention_masks(batch: int, heads: int, sequence: int) -> dict[str, np.ndarray | None]:
    rng = np.random.default_rng(6)
    keep = rng.random((batch, 1, sequence, sequence)) > 0.3
    keep[..., 0] = True
    return {
        "none": None,
        "bool": keep,
        "float": rng.standard_normal((1, heads, sequence, sequence)).astype(np.float32),
    }


ONNX_ATTRIBUTES = {"default": {}, "causal": {"is_causal": 1}, "scale_softcap": {"scale": 0.3, "softcap": 2.0}}


@pytest.mark.parametrize("attributes", list(ONNX_ATTRIBUTES))
@pytest.mark.parametrize("mask", list(_onnx_attention_masks(1, 1, 3)))
def test_onnx_attention_takes_bool_and_float_masks_causal_and_softcap(mask, attributes):
    rng = np.random.default_rng(7)
    batch, heads, kv_heads, sequence, size = 2, 4, 2, 6, 8
    inputs = {
        "q": rng.standard_normal((batch, heads, sequence, size)).astype(np.float32),
        "k": rng.standard_normal((batch, kv_heads, sequence, size)).astype(np.float32),
        "v": rng.standard_normal((batch, kv_heads, sequence, size)).astype(np.float32),
        "attn_mask": _onnx_attention_masks(batch, heads, sequence)[mask],
    }
    model, feeds = single_op("Attention", inputs, ["y"], domain="", opset=23, **ONNX_ATTRIBUTES[attributes])

    assert_parity(model, feeds)


DECLINED = [
    ("Attention", {"past": np.zeros((2, 1, 4, 0, 4), np.float32)}, {}, "a past KV cache"),
    ("Attention", {}, {"do_rotary": 1}, "do_rotary=1"),
    ("MultiHeadAttention", {"past_key": np.zeros((1, 4, 0, 4), np.float32)}, {}, "a past key"),
]


@pytest.mark.parametrize(("op", "extra", "attributes", "reason"), DECLINED)
def test_forms_the_executor_does_not_compute_are_refused_when_it_is_built(op, extra, attributes, reason):
    base = _attention_inputs(1, 4)
    if op == "Attention":
        inputs = {**base, "mask_index": None, **extra}
    else:
        x = base["input"]
        inputs = {"query": x, "key": x, "value": x, "bias": None, "key_padding_mask": None, "attention_bias": None,
                  **extra}  # fmt: skip
    model, _ = single_op(op, inputs, ["output"], num_heads=4, **attributes)

    with pytest.raises(ModelRejected, match=f"\\({op} \\(domain 'com.microsoft'\\)\\): the round trip does not run "):
        build_executor(model)
    with pytest.raises(ModelRejected, match=reason):
        build_executor(model)


def test_a_mask_layout_the_executor_does_not_compute_is_refused_naming_its_shape():
    inputs = {**_attention_inputs(2, 4), "mask_index": np.zeros((2, 1, 4, 4), np.int32)}
    model, feeds = single_op("Attention", inputs, ["output"], num_heads=4)

    with pytest.raises(ModelRejected, match=r"attention mask of shape \[2, 1, 4, 4\]"):
        build_executor(model).run(feeds)


def _sentences(batch: int, sequence: int, seed: int) -> dict[str, np.ndarray]:
    """Token ids anywhere in the vocabulary, [CLS] ... [SEP], right-padded as tokenizers pad."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, 30522, size=(batch, sequence)).astype(np.int64)
    lengths = rng.integers(3, sequence + 1, size=batch)
    lengths[0] = sequence
    mask = (np.arange(sequence)[None, :] < lengths[:, None]).astype(np.int64)
    ids[:, 0] = 101
    ids[np.arange(batch), lengths - 1] = 102
    return {"input_ids": ids * mask, "attention_mask": mask}


@pytest.fixture(scope="module")
def fused_minilm(tmp_path_factory):
    path = tmp_path_factory.mktemp("minilm") / "fused.onnx"
    onnx.save(fused_by_onnxruntime(onnx.load(minilm_path()), 12, 384), path)
    return path


@pytest.mark.parametrize(("batch", "sequence", "seed"), [(2, 16, 0), (5, 37, 1)])
def test_the_fused_minilm_runs_in_the_executor_as_in_onnxruntime(fused_minilm, batch, sequence, seed):
    model = onnx.load(fused_minilm)
    assert {n.op_type for n in model.graph.node if n.domain} >= {"EmbedLayerNormalization", "Attention", "BiasGelu"}

    assert_parity(model, _sentences(batch, sequence, seed))


@pytest.mark.integration
def test_the_fused_minilm_prunes_with_data_by_the_default_criterion_and_recovery(fused_minilm, tmp_path):
    np.savez(tmp_path / "sentences.npz", **_sentences(48, 24, 2))
    result = onnxprune("prune", fused_minilm, "-o", "pruned.onnx", "--flops-target", "0.3", "--data",
                       "sentences.npz", "--input-shape", "input_ids:1x24", "--input-shape", "attention_mask:1x24",
                       "--finetune-steps", "2", "--no-benchmark", "--report", "report.json", cwd=tmp_path)  # fmt: skip

    assert result.returncode == 0, result.stderr  # the oracle and the write-back check passed
    report = json.loads((tmp_path / "report.json").read_text())
    # The default with data for a transformer at a MACs target: obs, MLP neurons first, heads whole.
    assert report["options"]["strategies"]["selector"]["macs"]["criterion"] == "obs"
    assert {g["channels_after"] == g["channels_before"] for g in report["groups"] if g["kind"] == "head"} == {True}
    assert report["macs"]["after"] <= 0.7 * report["macs"]["before"]
    finetune = report["evaluation"]["finetune"]
    assert finetune["objective"] == "distillation" and finetune["steps"] == 2
    assert "reconstruction" in finetune["schedule"]
