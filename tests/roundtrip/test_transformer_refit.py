"""Few-sample recovery of transformers (Kwon et al. 2022, mask tuning): the output projections that lost
input rows (attention output, MLP second layer) are refit by least squares to the original's outputs.

    x [N, T, 8] -> MatMul W1 (8 -> 6) -> Add b1 -> h -> MatMul W2 (6 -> 5) -> Add b2 -> y

The two channels of ``h`` the plan removes are affine combinations of the four it keeps, so a refit of
W2 and b2 that sees the kept four can give back the original ``y`` exactly.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.graphops.dependency import analyze
from onnxprune.graphops.plan import PruningPlan
from onnxprune.graphops.prepare import prepare_model
from onnxprune.graphops.surgery import apply_plan
from onnxprune.roundtrip import reconstruction
from onnxprune.roundtrip.data import Dataset
from onnxprune.roundtrip.reconstruction import (
    LIVE_BYTES,
    calibration_batch,
    drifted_sequence_layers,
    layers_to_refit,
    live_bytes,
    reconstruct,
    widest_activation_bytes,
)
from onnxprune.workers.options import PruneOptions
from onnxprune.workers.pipeline import run_pipeline
from tests.support.oracle import relative_error, run_model
from tests.support.transformer_models import bert_style

# Pipeline stages run in this process, as in a job's sandbox (tests/support/job_sandbox.py).
pytestmark = pytest.mark.usefixtures("stages_in_the_job_process")

KEPT = [0, 1, 2, 3]


def linear_pair(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((8, 6)).astype(np.float32)
    b1 = rng.standard_normal(6).astype(np.float32)
    w1[:, 4], b1[4] = 0.5 * w1[:, 0] - 2.0 * w1[:, 1], 0.5 * b1[0] - 2.0 * b1[1] + 0.3
    w1[:, 5], b1[5] = w1[:, 2] + w1[:, 3], b1[2] + b1[3] - 1.0
    weights = {
        "w1": w1,
        "b1": b1,
        "w2": rng.standard_normal((6, 5)).astype(np.float32),
        "b2": rng.standard_normal(5).astype(np.float32),
    }
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["p"], name="fc1"),
        helper.make_node("Add", ["p", "b1"], ["h"], name="fc1_bias"),
        helper.make_node("MatMul", ["h", "w2"], ["q"], name="fc2"),
        helper.make_node("Add", ["q", "b2"], ["y"], name="fc2_bias"),
    ]
    graph = helper.make_graph(
        nodes,
        "linear_pair",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 7, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 7, 5])],
        [numpy_helper.from_array(value, name) for name, value in weights.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_the_refit_gives_back_the_original_when_the_removed_inputs_are_combinations_of_kept_ones():
    original = linear_pair()
    dep = analyze(original, {"x": [1, 7, 8]})
    (group,) = [g for g in dep.prunable if g.channels == 6]
    plan = PruningPlan.from_keep(dep, {group.id: KEPT})
    pruned = apply_plan(dep, plan)
    rng = np.random.default_rng(1)
    calibration = Dataset({"x": rng.standard_normal((64, 7, 8)).astype(np.float32)}, None)
    unseen = {"x": rng.standard_normal((16, 7, 8)).astype(np.float32)}
    (want,) = run_model(original, unseen)

    result = reconstruct(dep, plan, pruned, calibration, samples=64, ridge=1e-9)

    assert relative_error(want, run_model(pruned, unseen)[0]) > 0.1  # pruning alone changed y
    assert [(fit.node, fit.kept) for fit in result.layers] == [("fc2", True)]
    assert relative_error(want, run_model(result.model, unseen)[0]) < 1e-5
    w2 = numpy_helper.to_array(next(i for i in result.model.graph.initializer if i.name == "w2"))
    assert w2.shape == (4, 5)


def test_the_widest_activation_of_one_sample_is_read_from_the_analysed_shapes():
    prepared = prepare_model(bert_style(hidden=32, heads=4, ffn=48, layers=2))

    one = widest_activation_bytes(analyze(prepared, {"x": [1, 6, 32], "attention_mask": [1, 6]}))
    two = widest_activation_bytes(analyze(prepared, {"x": [2, 6, 32], "attention_mask": [2, 6]}))

    assert one == two == 4 * 6 * 48  # the MLP's hidden layer, per sample: wider than attention's 4 x 6 x 6


def test_what_a_sample_holds_while_the_runs_advance_is_read_from_the_analysed_shapes():
    prepared = prepare_model(bert_style(hidden=32, heads=4, ffn=48, layers=2))
    one = analyze(prepared, {"x": [1, 6, 32], "attention_mask": [1, 6]})
    two = analyze(prepared, {"x": [2, 6, 32], "attention_mask": [2, 6]})
    layers = [node for node in one.model.graph.node if node.op_type == "MatMul" and "fc2" in node.name]

    held = live_bytes(one, layers)

    assert held == live_bytes(two, layers)  # per sample
    # Both runs hold the MLP's hidden layer at once with the residual stream, at least.
    assert held >= 2 * (widest_activation_bytes(one) + 4 * 6 * 32)
    assert live_bytes(one, layers[:1]) <= held  # the runs stop at the last layer refit


def test_token_ids_are_sized_by_what_their_activations_hold_not_as_16_times_the_input():
    """70 int64 ids of MiniLM become [70, 1536] floats and more: sized as 16x the ids, 1,024 samples
    would hold over 1 GB per activation."""
    ids = Dataset({"input_ids": np.ones((2000, 70), np.int64)}, None)
    images = Dataset({"input": np.zeros((2000, 3, 32, 32), np.float32)}, None)
    held = 2 * 70 * (1536 + 384) * 4

    tokens = calibration_batch(ids, onnx.ModelProto(), 2000, 0, activation_bytes=held, convs=False)
    unchanged = calibration_batch(images, onnx.ModelProto(), 2000, 0, activation_bytes=16 * 32 * 32 * 4)

    assert len(tokens["input_ids"]) == LIVE_BYTES // held
    assert len(unchanged["input"]) == reconstruction.BATCH_BYTES // (16 * 3 * 32 * 32 * 4)  # 16x the input


def lossless_pair() -> onnx.ModelProto:
    """``linear_pair`` whose fc2 reads nothing from the channels not KEPT: pruning them loses nothing."""
    model = linear_pair()
    w2 = next(i for i in model.graph.initializer if i.name == "w2")
    weights = numpy_helper.to_array(w2).copy()
    weights[len(KEPT) :] = 0.0
    w2.CopyFrom(numpy_helper.from_array(weights, "w2"))
    return model


def test_a_refit_that_does_not_lower_the_error_is_not_kept_and_its_own_error_is_recorded():
    original = lossless_pair()
    dep = analyze(original, {"x": [1, 7, 8]})
    (group,) = [g for g in dep.prunable if g.channels == 6]
    plan = PruningPlan.from_keep(dep, {group.id: KEPT})
    calibration = Dataset({"x": np.random.default_rng(1).standard_normal((64, 7, 8)).astype(np.float32)}, None)

    result = reconstruct(dep, plan, apply_plan(dep, plan), calibration, samples=64)

    (fit,) = result.layers
    assert (fit.node, fit.kept) == ("fc2", False)
    assert fit.refit_error is not None and fit.refit_error >= fit.error_before == fit.error_after
    assert (result.samples, result.check_samples) == (64, 13)  # a fifth held aside to judge the refit


@pytest.mark.integration  # the whole pipeline, its sandboxed checks in processes of their own
def test_the_report_says_which_refits_were_not_kept_and_why_and_warns_when_none_was(tmp_path):
    original = lossless_pair()
    onnx.save(original, tmp_path / "pair.onnx")
    dep = analyze(original, {"x": [1, 7, 8]})
    (group,) = [g for g in dep.prunable if g.channels == 6]
    np.savez(tmp_path / "data.npz", x=np.random.default_rng(2).standard_normal((40, 7, 8)).astype(np.float32))
    options = PruneOptions(recovery="reconstruct", benchmark=False, round_to=1, input_shapes={"x": [1, 7, 8]})

    result = run_pipeline(
        tmp_path / "pair.onnx",
        tmp_path / "out.onnx",
        options,
        data=tmp_path / "data.npz",
        plan=PruningPlan.from_keep(dep, {group.id: KEPT}),
    )

    (iteration,) = result.report.evaluation.finetune.iterations
    assert iteration.reconstructed_layers == [] and iteration.reconstruction_samples == 24  # 3 in 5 train
    assert list(iteration.reconstruction_not_kept) == ["fc2"]
    assert "on the 5 calibration sample(s) held aside was" in iteration.reconstruction_not_kept["fc2"]
    assert any(w.startswith("layer-wise reconstruction kept none of its 1 refit(s)") for w in result.report.warnings)


def test_a_refit_summed_over_small_batches_equals_the_refit_on_the_whole_batch(monkeypatch):
    """The normal equations (x^T x, x^T y) are sums over rows: fitting 5 samples at a time gives the
    weights of one solve on all of them (Kwon et al.'s mask tuning on every token of every sample)."""
    original = linear_pair()
    dep = analyze(original, {"x": [1, 7, 8]})
    (group,) = [g for g in dep.prunable if g.channels == 6]
    plan = PruningPlan.from_keep(dep, {group.id: KEPT})
    pruned = apply_plan(dep, plan)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((64, 7, 8)).astype(np.float32)
    b2 = numpy_helper.to_array(next(i for i in original.graph.initializer if i.name == "b2"))
    q = run_model(original, {"x": x})[0] - b2  # fc2's own output, the refit's target
    calibration = Dataset({"x": x}, None)
    (fc2,), _ = layers_to_refit(dep.model, pruned)
    monkeypatch.setattr(reconstruction, "BATCH_BYTES", 5 * widest_activation_bytes(dep))

    result = reconstruct(dep, plan, pruned, calibration, samples=64, ridge=1e-3)

    weights = {i.name: numpy_helper.to_array(i) for i in result.model.graph.initializer}
    # The same ridge solve in one go on every sample's rows (kept: the fifth held aside judged it), bias
    # last, pulled toward the weights as pruned (and an intercept of 0).
    kept = {i.name: numpy_helper.to_array(i).astype(np.float64) for i in pruned.graph.initializer}
    h = (x.astype(np.float64) @ kept["w1"] + kept["b1"]).reshape(-1, 4)  # fc2's input as pruned
    rows = np.concatenate([h, np.ones((len(h), 1))], 1)
    gram = rows.T @ rows
    pull = 1e-3 * gram.diagonal().mean()
    prior = np.concatenate([kept["w2"], np.zeros((1, 5))])
    want = np.linalg.solve(gram + pull * np.eye(5), rows.T @ q.reshape(-1, 5) + pull * prior)
    assert np.allclose(weights["w2"], want[:4], atol=1e-4)
    assert np.allclose(weights["b2"], b2 + want[4], atol=1e-4)  # the intercept goes into the Add's bias
    assert fc2.name == "fc2" and result.layers[0].kept


def test_the_layers_whose_inputs_drift_are_those_after_the_first_layer_that_lost_inputs():
    model = bert_style(hidden=32, heads=4, ffn=48, layers=2)
    dep = analyze(model, {"x": [1, 6, 32], "attention_mask": [1, 6]})
    (neurons,) = [g for g in dep.prunable if g.id == "/layers.0/fc1/MatMul"]
    plan = PruningPlan.from_keep(dep, {neurons.id: list(range(40))})  # MLP neurons of the first block only

    drifted = drifted_sequence_layers(dep, apply_plan(dep, plan))

    # After the first block's second MLP layer (which lost inputs): every linear layer of the second block.
    names = ("attention/query", "attention/key", "attention/value", "attention/output", "fc1", "fc2")
    assert drifted == {f"/layers.1/{name}/MatMul" for name in names}


@pytest.mark.integration  # the whole pipeline, its sandboxed checks in processes of their own
def test_a_transformer_pipeline_with_data_refits_each_attention_output_and_second_mlp_layer(tmp_path):
    model = bert_style(hidden=32, heads=4, ffn=48, layers=2)
    onnx.save(model, tmp_path / "bert.onnx")
    rng = np.random.default_rng(0)
    mask = np.ones((160, 6), dtype=np.int64)
    mask[::3, 4:] = 0
    data = tmp_path / "data.npz"
    np.savez(data, x=rng.standard_normal((160, 6, 32)).astype(np.float32), attention_mask=mask)
    options = PruneOptions(
        ratio=0.5, criterion="l1", recovery="reconstruct", benchmark=False, round_to=1,
        input_shapes={"x": [1, 6, 32], "attention_mask": [1, 6]},
    )  # fmt: skip

    result = run_pipeline(tmp_path / "bert.onnx", tmp_path / "out.onnx", options, data=data)

    report = json.loads(result.report.model_dump_json())
    (iteration,) = report["evaluation"]["finetune"]["iterations"]
    matmuls = [
        n.name
        for n in model.graph.node
        if n.op_type == "MatMul" and n.input[1] in {i.name for i in model.graph.initializer}
    ]
    projections = {name for name in matmuls if "attention/output" in name or "fc2" in name}
    # The first block's Q/K/V run before anything pruned: their inputs never drift, they are never refit.
    first_qkv = {name for name in matmuls if name.startswith("/layers.0/") and name not in projections}
    first_qkv -= {name for name in first_qkv if "fc1" in name}
    refit = set(iteration["reconstructed_layers"])
    assert len(projections) == 4 and projections <= refit <= set(matmuls) - first_qkv
    evaluation = report["evaluation"]
    assert evaluation["after"] > evaluation["after_pruning"]  # the refit brought the outputs closer
