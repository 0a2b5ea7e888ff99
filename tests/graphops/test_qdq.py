"""Models already quantized in the QDQ format prune in their own precision.

A weight stored as int8/uint8 behind ``DequantizeLinear`` is sliced at its quantized data, with its
per-channel scales and zero points; activation Q/DQ pairs pass channels through. The pruned model
stays QDQ, and matches the masked original in the same precision (removed columns set to the zero
point, which dequantizes to exactly 0).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import onnxprune.graphops.masking as masking
from onnxprune.graphops.cost import measure_cost
from onnxprune.graphops.masking import mask_removed_channels
from onnxprune.graphops.plan import PruningPlan
from onnxprune.graphops.scoring import score_groups
from onnxprune.graphops.selection import select_by_ratio
from tests.support import qdq_models
from tests.support.oracle import (
    Analysed,
    analyse,
    assert_prune_matches_oracle,
    initializer_arrays,
    random_feeds,
    run_model,
)

WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass(frozen=True)
class QdqCase:
    name: str
    per_channel: bool
    weight_type: str  # "int8" (symmetric, zero point 0) or "uint8" (asymmetric, zero points vary by channel)
    head: str = "gemm"


QDQ_CASES = [
    QdqCase("per-channel-int8", per_channel=True, weight_type="int8"),
    QdqCase("per-tensor-int8", per_channel=False, weight_type="int8"),
    QdqCase("per-channel-uint8-matmul", per_channel=True, weight_type="uint8", head="matmul"),
    QdqCase("per-tensor-uint8", per_channel=False, weight_type="uint8"),
]


@pytest.fixture(scope="module", params=QDQ_CASES, ids=lambda case: case.name)
def quantized(request, tmp_path_factory) -> tuple[QdqCase, onnx.ModelProto]:
    case = request.param
    directory = tmp_path_factory.mktemp(case.name)
    return case, qdq_models.quantize_qdq(
        qdq_models.residual_net(case.head), directory, per_channel=case.per_channel, weight_type=case.weight_type
    )


def qdq_counts(model: onnx.ModelProto) -> tuple[int, int]:
    kinds = Counter(node.op_type for node in model.graph.node)
    return kinds["QuantizeLinear"], kinds["DequantizeLinear"]


def dequantizers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    """DequantizeLinear nodes by the tensor they produce."""
    return {node.output[0]: node for node in model.graph.node if node.op_type == "DequantizeLinear"}


def assert_weights_quantized(model: onnx.ModelProto) -> None:
    """Every layer weight comes out of a DequantizeLinear of integer data whose scales fit it."""
    arrays, producers = initializer_arrays(model), dequantizers(model)
    for node in model.graph.node:
        if node.op_type not in WEIGHT_OPS:
            continue
        dq = producers.get(node.input[1])
        assert dq is not None, f"{node.name}: weight '{node.input[1]}' is not behind a DequantizeLinear"
        data, scale = arrays[dq.input[0]], arrays[dq.input[1]]
        assert data.dtype in (np.int8, np.uint8), f"{node.name}: weight stored as {data.dtype}"
        if scale.size > 1:
            axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
            assert scale.shape == (data.shape[axis],), f"{dq.name}: {scale.shape} scales for {data.shape}"
            assert arrays[dq.input[2]].shape == scale.shape, f"{dq.name}: zero points do not follow its scales"
    assert not [name for name, value in arrays.items() if value.dtype == np.float32 and value.ndim >= 2], (
        "a float weight appeared"
    )


def prune_half(analysed: Analysed) -> PruningPlan:
    return select_by_ratio(analysed.dep, score_groups(analysed.dep, "l1"), 0.5)


def test_prepare_keeps_weights_quantized(quantized):
    """Folding constants must not turn DequantizeLinear(int8) into float weights (a silent de-quantization)."""
    _, model = quantized
    analysed = analyse(model)
    assert qdq_counts(analysed.prepared) == qdq_counts(model)
    assert_weights_quantized(analysed.prepared)


def test_qdq_net_prunes_and_matches_oracle(quantized):
    case, model = quantized
    analysed = analyse(model)
    prunable = {group.id for group in analysed.dep.prunable}
    assert {"conv1", "conv2", "deconv"} <= prunable, [(g.id, g.frozen_reason) for g in analysed.dep.groups]
    plan = prune_half(analysed)
    result = assert_prune_matches_oracle(model, plan, analysed=analysed, rtol=1e-5)

    assert qdq_counts(result.pruned) == qdq_counts(model), "the pruned model is not QDQ like the original"
    assert_weights_quantized(result.pruned)
    arrays = initializer_arrays(result.pruned)
    w2 = arrays[
        dequantizers(result.pruned)[next(n.input[1] for n in result.pruned.graph.node if n.name == "conv2")].input[0]
    ]
    assert w2.shape == (len(plan.keep["conv2"]), len(plan.keep["conv1"]), 3, 3)


def test_masked_quantized_weight_dequantizes_to_exactly_zero(tmp_path):
    """The oracle masks in the model's precision: removed input columns hold the zero point."""
    model = qdq_models.quantize_qdq(qdq_models.residual_net(), tmp_path, per_channel=True, weight_type="uint8")
    analysed = analyse(model)
    dq = next(
        n
        for n in analysed.prepared.graph.node
        if n.op_type == "DequantizeLinear"
        and n.output[0] == next(c.input[1] for c in analysed.prepared.graph.node if c.name == "conv2")
    )
    zero = initializer_arrays(model)[dq.input[2]]
    assert len(np.unique(zero)) > 1, "uint8 per-channel weights should have varied zero points"
    plan = prune_half(analysed)
    removed = sorted(set(range(8)) - set(plan.keep["conv1"]))

    masked = initializer_arrays(mask_removed_channels(analysed.dep, plan))
    data, scale = masked[dq.input[0]].astype(np.int32), masked[dq.input[1]]
    dequantized = (data - masked[dq.input[2]].astype(np.int32)[:, None, None, None]) * scale[:, None, None, None]
    assert np.all(dequantized[:, removed] == 0)
    original = initializer_arrays(analysed.prepared)[dq.input[0]]
    kept = plan.keep["conv1"]
    np.testing.assert_array_equal(masked[dq.input[0]][:, kept], original[:, kept])


def test_oracle_fails_if_quantized_weights_were_masked_to_plain_zero(tmp_path, monkeypatch):
    """Guards the test above: with nonzero zero points, writing 0 instead of the zero point must not pass."""
    model = qdq_models.quantize_qdq(qdq_models.residual_net(), tmp_path, per_channel=True, weight_type="uint8")
    analysed = analyse(model)
    plan = prune_half(analysed)
    monkeypatch.setattr(masking, "zero_point_fill", lambda _dq, values: np.zeros_like(values))
    with pytest.raises(AssertionError, match="relative error"):
        assert_prune_matches_oracle(model, plan, analysed=analysed, rtol=1e-5)


def test_per_channel_activation_qdq_slices_its_scales():
    model = qdq_models.per_channel_activation_net()
    analysed = analyse(model)
    assert analysed.dep.group("conv1").prunable
    plan = PruningPlan.from_keep(analysed.dep, dict(conv1=[0, 2, 5]))
    result = assert_prune_matches_oracle(model, plan, analysed=analysed, rtol=1e-5)
    nodes = {node.name: node for node in result.pruned.graph.node}
    arrays = initializer_arrays(result.pruned)
    original = initializer_arrays(model)
    for name in ("c1_q", "c1_dq"):
        scale, zero = arrays[nodes[name].input[1]], arrays[nodes[name].input[2]]
        np.testing.assert_array_equal(scale, original["a_s"][[0, 2, 5]])
        np.testing.assert_array_equal(zero, original["a_z"][[0, 2, 5]])
    assert qdq_counts(result.pruned) == qdq_counts(model)


def test_depthwise_conv_with_quantized_weight_follows_its_channels():
    model = qdq_models.depthwise_net()
    analysed = analyse(model)
    plan = PruningPlan.from_keep(analysed.dep, dict(conv1=[1, 3, 4, 6, 7]))
    result = assert_prune_matches_oracle(model, plan, analysed=analysed, rtol=1e-5)
    depthwise = next(node for node in result.pruned.graph.node if node.name == "depthwise")
    assert next(a.i for a in depthwise.attribute if a.name == "group") == 5
    arrays = initializer_arrays(result.pruned)
    assert arrays["w2_q"].shape == (5, 1, 3, 3)
    np.testing.assert_array_equal(arrays["w2_s"], initializer_arrays(model)["w2_s"][[1, 3, 4, 6, 7]])


def test_scales_along_the_input_axis_follow_the_channels_read():
    model = qdq_models.per_input_channel_scales_net()
    analysed = analyse(model)
    keep = [1, 2, 4]
    result = assert_prune_matches_oracle(
        model, PruningPlan.from_keep(analysed.dep, {"conv1": keep}), analysed=analysed, rtol=1e-5
    )
    arrays, original = initializer_arrays(result.pruned), initializer_arrays(model)
    np.testing.assert_array_equal(arrays["w2_q"], original["w2_q"][:, keep])
    np.testing.assert_array_equal(arrays["w2_s"], original["w2_s"][keep])
    np.testing.assert_array_equal(arrays["w2_z"], original["w2_z"][keep])


DECLINED_CASES = [
    # (builder, groups that must freeze, words their reason must contain, filters that must stay whole)
    (qdq_models.shared_weight_net, ("conv1", "conv_a"), ("w2_dq", "read by 2 ops"), ("conv_a", "conv_b")),
    (qdq_models.grouped_conv_net, ("conv1",), ("grouped conv", "'grouped'", "w2_dq"), ("grouped",)),
    (qdq_models.grouped_deconv_net, ("conv1",), ("grouped conv", "'gdeconv'", "wt_dq"), ("gdeconv",)),
    (qdq_models.blocked_weight_net, ("conv1",), ("blocked", "w2_dq", "conv2"), ("conv2",)),
]


@pytest.mark.parametrize(
    ("build", "frozen", "words", "whole"),
    DECLINED_CASES,
    ids=["shared-weight", "grouped-conv", "grouped-deconv", "blocked-quantization"],
)
def test_unsupported_qdq_patterns_freeze_with_a_reason_naming_the_node(build, frozen, words, whole):
    model = build()
    analysed = analyse(model)
    for group_id in frozen:
        group = analysed.dep.group(group_id)
        assert group.frozen, f"{group_id} should be frozen"
        assert all(word in group.frozen_reason for word in words), group.frozen_reason
    plan = select_by_ratio(analysed.dep, score_groups(analysed.dep, "l1"), 0.5)
    assert not set(plan.keep) & set(frozen)
    pruned = assert_prune_matches_oracle(model, plan, analysed=analysed, rtol=1e-5).pruned
    before, after = initializer_arrays(model), initializer_arrays(pruned)
    for node in model.graph.node:
        if node.name in whole:
            data = next(n.input[0] for n in model.graph.node if n.output[0] == node.input[1])
            assert after[data].shape == before[data].shape, f"{node.name}'s weight changed"


def test_criteria_rank_filters_by_their_dequantized_weights(tmp_path):
    """l1 scores of the QDQ model are (up to int8 rounding) those of the float model it came from."""
    float_model = qdq_models.residual_net()
    model = qdq_models.quantize_qdq(float_model, tmp_path, per_channel=True)
    scores_q = score_groups(analyse(model).dep, "l1")
    scores_f = score_groups(analyse(float_model).dep, "l1")
    assert scores_q.keys() == scores_f.keys()
    for group_id in scores_f:
        np.testing.assert_allclose(scores_q[group_id], scores_f[group_id], rtol=0.03)


def test_cost_counts_quantized_weights_not_scales(tmp_path):
    float_model = qdq_models.residual_net()
    model = qdq_models.quantize_qdq(float_model, tmp_path, per_channel=True)
    shapes = {"x": list(qdq_models.INPUT_SHAPE)}
    cost_q, cost_f = measure_cost(model, shapes), measure_cost(float_model, shapes)
    assert cost_q.macs == cost_f.macs
    assert cost_q.params == cost_f.params == sum(v.size for v in initializer_arrays(float_model).values())


def test_weights_quantized_at_run_time_are_stored_int8_and_pruned():
    """QAT exports quantize float weights with QuantizeLinear at every run: prepare stores the int8
    result (exactly what the runtime computes), after which the weights prune like any QDQ weight."""
    model = qdq_models.qat_export_net()
    analysed = analyse(model)
    kinds = Counter(node.op_type for node in analysed.prepared.graph.node)
    assert kinds["QuantizeLinear"] == 2 and kinds["DequantizeLinear"] == 4, kinds  # activations only
    assert_weights_quantized(analysed.prepared)
    feeds = random_feeds(model, analysed.input_shapes)
    np.testing.assert_array_equal(run_model(model, feeds)[0], run_model(analysed.prepared, feeds)[0])
    assert analysed.dep.group("conv1").prunable
    plan = PruningPlan.from_keep(analysed.dep, dict(conv1=[0, 3, 4]))
    result = assert_prune_matches_oracle(model, plan, analysed=analysed, rtol=1e-5)
    assert initializer_arrays(result.pruned)["w1_s"].shape == (3,)


@pytest.fixture(scope="module")
def asymmetric_qdq(tmp_path_factory) -> tuple[onnx.ModelProto, Analysed]:
    directory = tmp_path_factory.mktemp("asymmetric")
    model = qdq_models.quantize_qdq(qdq_models.residual_net(), directory, per_channel=True, weight_type="uint8")
    return model, analyse(model)


def _kept(channels: int) -> st.SearchStrategy[list[int]]:
    return st.sets(st.integers(0, channels - 1), min_size=1, max_size=channels).map(sorted)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(conv1=_kept(8), conv2=_kept(6), deconv=_kept(5))
def test_any_channel_choice_on_a_qdq_net_matches_the_oracle(asymmetric_qdq, conv1, conv2, deconv):
    """Whatever channels are kept, the pruned QDQ net computes what the zero-point-masked original does."""
    model, analysed = asymmetric_qdq
    plan = PruningPlan.from_keep(analysed.dep, {"conv1": conv1, "conv2": conv2, "deconv": deconv})
    result = assert_prune_matches_oracle(model, plan, analysed=analysed, rtol=1e-5)
    assert qdq_counts(result.pruned) == qdq_counts(model)
