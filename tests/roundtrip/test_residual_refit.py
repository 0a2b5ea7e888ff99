"""A layer whose output joins a residual stream is refit to give back the original's stream, not only its
own output: what the blocks before it lost there (the stream's drift), it can add back.

    x [N, T, 8] -> MatMul W (8 -> 8) -> Add b -> Mul gamma (LayerScale) -> Add x -> y
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from onnxprune.roundtrip.reconstruction import ResidualAfter, _stream_target, residual_after


def block(scale: bool = True, residual: bool = True) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    weights = {
        "w": rng.standard_normal((8, 8)).astype(np.float32),
        "b": rng.standard_normal(8).astype(np.float32),
        "gamma": rng.uniform(0.1, 2.0, 8).astype(np.float32),
    }
    nodes = [helper.make_node("MatMul", ["x", "w"], ["z"], name="dense"), helper.make_node("Add", ["b", "z"], ["zb"])]
    last = "zb"
    if scale:
        nodes.append(helper.make_node("Mul", [last, "gamma"], ["scaled"]))
        last = "scaled"
    if residual:
        nodes.append(helper.make_node("Add", [last, "x"], ["y"]))
        last = "y"
    graph = helper.make_graph(
        nodes,
        "block",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8])],
        [helper.make_tensor_value_info(last, TensorProto.FLOAT, ["batch", 3, 8])],
        [numpy_helper.from_array(value, name) for name, value in weights.items() if scale or name != "gamma"],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


RESIDUAL_CASES = [
    # (LayerScale, residual Add): where the layer's output joins the stream
    (True, True, ResidualAfter("x", "gamma")),
    (False, True, ResidualAfter("x", None)),
    (True, False, None),  # the scaled output is the graph's: no stream
]


@pytest.mark.parametrize(("scale", "residual", "expected"), RESIDUAL_CASES)
def test_the_residual_add_is_found_through_the_bias_and_the_layer_scale(scale, residual, expected):
    model = block(scale, residual)
    (dense,) = [node for node in model.graph.node if node.name == "dense"]

    assert residual_after(dense, model) == expected


def test_the_stream_target_gives_back_the_original_stream_from_the_drifted_one():
    rng = np.random.default_rng(1)
    y, stream = torch.from_numpy(rng.standard_normal((2, 3, 8))), torch.from_numpy(rng.standard_normal((2, 3, 8)))
    drifted = stream + 0.3 * torch.from_numpy(rng.standard_normal((2, 3, 8)))
    b, gamma = torch.from_numpy(rng.standard_normal(8)), torch.from_numpy(rng.uniform(0.1, 2.0, 8))

    target, columns = _stream_target(y, stream, drifted, gamma)

    # The pruned model's stream after the Add, with the target as the layer's output, is the original's.
    assert torch.allclose(gamma * (target + b) + drifted, gamma * (y + b) + stream)
    assert columns is not None and torch.allclose(columns, gamma.abs())  # each output counts by its scale
