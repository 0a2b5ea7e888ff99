"""Layers that lost input channels but cannot be refit as a linear map are left as pruned and named,
with the reason their op handler gives (``OpHandler.linear_form``), never silently.

    input -> Conv (3 -> 4) -> Relu -> ConvTranspose k2 s2 (4 -> 2) -> output
                              Relu -> Conv group 2 (4 -> 4) -> Relu -> Conv (4 -> 2) -> output2

Half of the first conv's filters removed: the transposed conv and the grouped conv lose inputs.
"""

from __future__ import annotations

import numpy as np
import onnx

from onnxprune.graphops.dependency import analyze
from onnxprune.graphops.plan import PruningPlan
from onnxprune.graphops.surgery import apply_plan
from onnxprune.roundtrip.data import Dataset
from onnxprune.roundtrip.reconstruction import layers_to_refit, reconstruct
from tests.support.zoo import GraphBuilder, float_input

SHAPES = {"input": [1, 3, 8, 8]}


def _model() -> onnx.ModelProto:
    g = GraphBuilder(0)
    features = g.node("Relu", [g.conv("input", 3, 4)])
    up = g.node("ConvTranspose", [features, g.random("W", [4, 2, 2, 2]), g.random("B", [2])], strides=[2, 2])
    grouped = g.node("Relu", [g.conv(features, 4, 4, group=2)])
    model = g.model([float_input("input", SHAPES["input"])], g.conv(grouped, 4, 2), 17, "declined_layers")
    inferred = onnx.shape_inference.infer_shapes(model)
    model.graph.output.insert(0, next(info for info in inferred.graph.value_info if info.name == up))
    return model


def test_a_transposed_and_a_grouped_conv_that_lost_inputs_are_named_with_their_reasons():
    model = _model()
    dep = analyze(model, SHAPES, strict=True)
    (first,) = [group for group in dep.prunable if group.id == "conv_3"]
    plan = PruningPlan.from_keep(dep, {first.id: [0, 2]})
    pruned = apply_plan(dep, plan)

    refit, skipped = layers_to_refit(model, pruned)

    assert skipped == {
        "convtranspose_7": "transposed convolution: its outputs are not windows of its input",
        "conv_10": "grouped convolution (group 2): it loses inputs only with its outputs",
    }
    assert "convtranspose_7" not in [node.name for node in refit]
    data = Dataset({"input": np.random.default_rng(0).standard_normal((16, 3, 8, 8)).astype(np.float32)}, None)
    result = reconstruct(dep, plan, pruned, data, samples=16)
    assert result.skipped == skipped and {fit.node for fit in result.layers}.isdisjoint(skipped)
