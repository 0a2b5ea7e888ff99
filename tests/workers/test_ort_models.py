"""Models handed to onnxruntime with their large float weights fed as inputs compute what the models
compute; quantized and small constants stay in the graph.

    x -> Conv(a) -> Relu -> Conv(b) -> Add(a) -> Relu -> Conv(c) -> GAP -> Flatten -> Gemm(10)

(``tests.support.small_models.residual_model``; its conv b and c weights are large enough to be fed, conv a's
is not), in float32 and float16, and a QDQ net whose int8 weights two convs share.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnxprune.graphops.masking import mask_removed_channels, masked_graph
from onnxprune.graphops.scoring import score_groups
from onnxprune.graphops.selection import select_by_ratio
from onnxprune.graphops.weights import ModelWeights
from onnxprune.workers.benchmark import make_inputs, run_models
from onnxprune.workers.ort_models import FED_MIN_ELEMENTS, fed_graph, fed_model
from tests.support.oracle import analyse
from tests.support.qdq_models import shared_weight_net
from tests.support.small_models import float16, residual_model

MODELS = {
    "float32": residual_model,
    "float16": lambda: float16(residual_model()),
    "qdq_int8": shared_weight_net,
}
TOLERANCE = {"float32": 1e-5, "float16": 1e-2, "qdq_int8": 1e-5}


def run_directly(model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, inputs)


def relative_error(expected: np.ndarray, actual: np.ndarray) -> float:
    expected, actual = expected.astype(np.float64), actual.astype(np.float64)
    return float(np.max(np.abs(expected - actual)) / max(np.max(np.abs(expected)), 1e-12))


@pytest.mark.parametrize("kind", list(MODELS))
def test_a_fed_model_computes_what_the_model_computes(kind):
    model = MODELS[kind]()
    inputs = make_inputs(model)
    (outputs,) = run_models([fed_model(model)], inputs)
    expected = run_directly(model, inputs)
    assert [relative_error(e, a) for e, a in zip(expected, outputs.values())] <= [TOLERANCE[kind]] * len(expected)


def test_large_float_weights_leave_the_graph_small_and_integer_ones_stay():
    model = residual_model()
    fed = fed_model(model)
    large = {i.name for i in model.graph.initializer if np.prod(i.dims) > FED_MIN_ELEMENTS}
    graph = onnx.load_from_string(fed.graph).graph

    assert set(fed.weights) == large and large
    assert not large & {i.name for i in graph.initializer} and large <= {i.name for i in graph.input}
    assert len(fed.graph) < sum(a.nbytes for a in fed.weights.values()) / 4
    quantized = fed_model(shared_weight_net())
    assert not quantized.weights  # int8 weights stay constants: onnxruntime folds and fuses them


def test_the_fed_masked_graph_computes_what_the_masked_model_computes():
    analysed = analyse(residual_model())
    dep = analysed.dep
    plan = select_by_ratio(dep, score_groups(dep, "l1"), 0.5)
    weights = ModelWeights(dep.model)
    inputs = make_inputs(dep.model)
    masked, original = run_models(
        [fed_graph(masked_graph(dep, plan, weights), dep.model), fed_model(dep.model, weights)], inputs
    )

    expected = run_directly(mask_removed_channels(dep, plan), inputs)
    assert relative_error(expected[0], next(iter(masked.values()))) < 1e-5
    assert relative_error(run_directly(dep.model, inputs)[0], next(iter(original.values()))) < 1e-5
    assert relative_error(expected[0], next(iter(original.values()))) > 1e-3  # the masking changed the outputs


def test_weights_also_listed_as_inputs_are_fed_once():
    """Old exporters (IR < 4) list every initializer among the graph inputs too."""
    model = residual_model()
    listed = {value.name for value in model.graph.input}
    model.graph.input.extend(
        onnx.helper.make_tensor_value_info(i.name, i.data_type, list(i.dims))
        for i in model.graph.initializer
        if i.name not in listed
    )
    fed = fed_model(model)
    names = [value.name for value in onnx.load_from_string(fed.graph).graph.input]
    assert len(names) == len(set(names))
    inputs = make_inputs(residual_model())
    assert (
        relative_error(run_directly(residual_model(), inputs)[0], next(iter(run_models([fed], inputs)[0].values())))
        < 1e-5
    )


def _resized_position_embeddings() -> onnx.ModelProto:
    """ViT's interpolated position embeddings (DINOv2 as Hugging Face exports it)::

    pos [1, 37 * 37, 8] -> Reshape [1, 37, 37, 8] -> Transpose -> Resize (cubic, to 16 x 16)
        -> Transpose -> Reshape [1, 256, 8] -> + x [batch, 256, 8]
    """
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((1, 37 * 37, 8)).astype(np.float32), "pos"),
        numpy_helper.from_array(np.array([1, 37, 37, 8], dtype=np.int64), "grid"),
        numpy_helper.from_array(np.array([1, 8, 16, 16], dtype=np.int64), "sizes"),
        numpy_helper.from_array(np.array([1, 256, 8], dtype=np.int64), "tokens"),
    ]
    nodes = [
        helper.make_node("Reshape", ["pos", "grid"], ["pos_grid"]),
        helper.make_node("Transpose", ["pos_grid"], ["pos_nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Resize", ["pos_nchw", "", "", "sizes"], ["pos_small"], mode="cubic"),
        helper.make_node("Transpose", ["pos_small"], ["pos_nhwc"], perm=[0, 2, 3, 1]),
        helper.make_node("Reshape", ["pos_nhwc", "tokens"], ["pos_tokens"]),
        helper.make_node("Add", ["x", "pos_tokens"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "resized_positions",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 256, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 256, 8])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    return model


def test_a_weight_resized_as_data_stays_a_constant_so_onnxruntime_runs_the_fed_model():
    """Fed as an input, onnxruntime's transpose optimizer turns the Resize channels-last, and its
    bicubic kernel refuses that downscale; a constant is folded first."""
    model = _resized_position_embeddings()
    inputs = {"x": np.random.default_rng(1).standard_normal((2, 256, 8)).astype(np.float32)}

    fed = fed_model(model)

    assert "pos" not in fed.weights
    (outputs,) = run_models([fed], inputs)
    np.testing.assert_allclose(outputs["y"], run_directly(model, inputs)[0], rtol=1e-5, atol=1e-5)
