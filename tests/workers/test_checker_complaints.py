"""onnx.checker in verification: a complaint the user's original has too is not held against the pruned model."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.workers.options import PruneOptions
from onnxprune.workers.pipeline import run_pipeline
from onnxprune.workers.verification import VerificationFailed, check_model

# Pipeline stages run in this process, as in a job's sandbox (tests/support/job_sandbox.py).
pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("stages_in_the_job_process")]


def _conv_model_with_layernorm(opset: int) -> onnx.ModelProto:
    """Conv(8) -> Relu -> Conv(4) -> y, and LayerNormalization over y's last axis -> z.

    Below opset 17 LayerNormalization is not in the default domain, so onnx.checker rejects the
    model while onnxruntime runs it (onnxruntime's transformer optimizer writes such graphs)."""
    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array(rng.normal(size=(8, 3, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(size=(4, 8, 3, 3)).astype(np.float32), "w2"),
        numpy_helper.from_array(np.ones(8, np.float32), "gamma"),
        numpy_helper.from_array(np.zeros(8, np.float32), "beta"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["y"], pads=[1, 1, 1, 1]),
        helper.make_node("LayerNormalization", ["y", "gamma", "beta"], ["z"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "conv_layernorm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4, 8, 8]),
        ],
        weights,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_a_model_the_checker_rejects_like_its_original_is_verified_and_written(tmp_path):
    original = _conv_model_with_layernorm(opset=14)
    with pytest.raises(onnx.checker.ValidationError):
        onnx.checker.check_model(original, full_check=True)
    path = tmp_path / "ln14.onnx"
    onnx.save(original, path)

    run_pipeline(path, tmp_path / "out.onnx", PruneOptions(ratio=0.5, round_to=1, benchmark_runs=3))

    pruned = onnx.load(tmp_path / "out.onnx")
    assert numpy_helper.to_array(next(t for t in pruned.graph.initializer if t.name == "w1")).shape[0] == 4


def test_a_checker_complaint_the_original_does_not_have_still_fails_verification():
    original = _conv_model_with_layernorm(opset=17)
    broken = _conv_model_with_layernorm(opset=17)
    broken.graph.node[1].op_type = "NoSuchOp"
    with pytest.raises(VerificationFailed, match="onnx.checker"):
        check_model(broken, original=original)
    with pytest.raises(VerificationFailed, match="onnx.checker"):
        check_model(_conv_model_with_layernorm(opset=14), original=original)
    check_model(_conv_model_with_layernorm(opset=14), original=_conv_model_with_layernorm(opset=14))
