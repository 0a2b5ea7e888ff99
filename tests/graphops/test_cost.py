"""MACs and parameters against numbers worked out by hand."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.graphops.cost import measure_cost
from onnxprune.graphops.loading import load_model
from onnxprune.graphops.shapes import resolve_input_shapes
from tests.support.needs import shared_model
from tests.support.real_models import REAL_MODEL_CASES


def single_op_model(
    node: onnx.NodeProto, inputs: dict[str, list[int]], weights: dict[str, np.ndarray]
) -> onnx.ModelProto:
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in inputs.items()],
        [helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(value, name) for name, value in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def zeros(*shape: int) -> np.ndarray:
    return np.zeros(shape, np.float32)


CASES = {
    # x[2,8,32,32] -Conv(16x8x3x3, stride 2, pad 1)-> [2,16,16,16]: 2*16*16*16 * 8*9
    "conv-stride-pad": (
        helper.make_node("Conv", ["x", "w", "b"], ["y"], strides=[2, 2], pads=[1, 1, 1, 1]),
        {"x": [2, 8, 32, 32]},
        {"w": zeros(16, 8, 3, 3), "b": zeros(16)},
        2 * 16 * 16 * 16 * 8 * 9,
        16 * 8 * 9 + 16,
    ),
    # dilation 2 on 3x3 covers 5x5, no pad: 20 -> 16
    "conv-dilation": (
        helper.make_node("Conv", ["x", "w"], ["y"], dilations=[2, 2]),
        {"x": [1, 4, 20, 20]},
        {"w": zeros(6, 4, 3, 3)},
        1 * 6 * 16 * 16 * 4 * 9,
        6 * 4 * 9,
    ),
    # 4 groups: each output channel sees 16/4 inputs
    "conv-groups": (
        helper.make_node("Conv", ["x", "w"], ["y"], group=4, pads=[1, 1, 1, 1]),
        {"x": [1, 16, 10, 10]},
        {"w": zeros(32, 4, 3, 3)},
        32 * 10 * 10 * 4 * 9,
        32 * 4 * 9,
    ),
    "conv-depthwise-1d": (
        helper.make_node("Conv", ["x", "w"], ["y"], group=8),
        {"x": [1, 8, 50]},
        {"w": zeros(8, 1, 5)},
        8 * 46 * 1 * 5,
        8 * 5,
    ),
    "conv-3d": (
        helper.make_node("Conv", ["x", "w"], ["y"]),
        {"x": [1, 2, 6, 6, 6]},
        {"w": zeros(3, 2, 3, 3, 3)},
        3 * 4 * 4 * 4 * 2 * 27,
        3 * 2 * 27,
    ),
    # ConvTranspose: N * Cin * in-spatial * (Cout/group) * kernel; 8x8 -> 16x16 at stride 2
    "conv-transpose": (
        helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1]),
        {"x": [1, 8, 8, 8]},
        {"w": zeros(8, 4, 3, 3)},
        1 * 8 * 8 * 8 * 4 * 9,
        8 * 4 * 9,
    ),
    "conv-transpose-groups": (
        helper.make_node("ConvTranspose", ["x", "w"], ["y"], group=2),
        {"x": [1, 4, 5, 5]},
        {"w": zeros(4, 3, 2, 2)},
        1 * 4 * 5 * 5 * 3 * 4,
        4 * 3 * 4,
    ),
    # Gemm transB: A[3,64] x B[10,64]^T -> [3,10], K = 64
    "gemm-transB": (
        helper.make_node("Gemm", ["a", "b", "c"], ["y"], transB=1),
        {"a": [3, 64]},
        {"b": zeros(10, 64), "c": zeros(10)},
        3 * 10 * 64,
        10 * 64 + 10,
    ),
    "gemm-transA": (
        helper.make_node("Gemm", ["a", "b"], ["y"], transA=1),
        {"a": [64, 3]},
        {"b": zeros(64, 10)},
        3 * 10 * 64,
        64 * 10,
    ),
    # batched MatMul: [2,5,7,16] x [16,9] -> [2,5,7,9], K = 16
    "matmul-batched": (
        helper.make_node("MatMul", ["a", "b"], ["y"]),
        {"a": [2, 5, 7, 16]},
        {"b": zeros(16, 9)},
        2 * 5 * 7 * 9 * 16,
        16 * 9,
    ),
    "matmul-two-activations": (
        helper.make_node("MatMul", ["a", "b"], ["y"]),
        {"a": [4, 3, 8], "b": [4, 8, 5]},
        {},
        4 * 3 * 5 * 8,
        0,
    ),
    "relu-is-free": (helper.make_node("Relu", ["a"], ["y"]), {"a": [1, 100]}, {}, 0, 0),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_macs_and_params_match_hand_computed_numbers(case: str) -> None:
    node, inputs, weights, macs, params = CASES[case]
    cost = measure_cost(single_op_model(node, inputs, weights), inputs)
    assert (cost.macs, cost.params) == (macs, params)
    assert [(n.op_type, n.macs, n.params) for n in cost.nodes] == [(node.op_type, macs, params)]


def test_a_shared_weight_counts_once_in_total_and_in_each_node() -> None:
    """x -Conv(w)-> y -Conv(w)-> z: both convs report w, the model holds it once."""
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["y"], name="first", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["y", "w"], ["z"], name="second", pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(zeros(4, 4, 3, 3), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    cost = measure_cost(model, {"x": [1, 4, 8, 8]})
    assert [(n.name, n.params) for n in cost.nodes] == [("first", 144), ("second", 144)]
    assert cost.params == 144
    assert cost.macs == 2 * (4 * 8 * 8 * 4 * 9)


def test_constant_node_weights_count_and_integer_shapes_do_not() -> None:
    """Constant(w) -> Conv; Constant(int64 shape) -> Reshape -> MatMul(float Constant)."""
    weight = numpy_helper.from_array(zeros(2, 3, 1, 1))
    shape = numpy_helper.from_array(np.array([1, -1], np.int64))
    matrix = numpy_helper.from_array(zeros(2 * 4 * 4, 5))
    nodes = [
        helper.make_node("Constant", [], ["w"], value=weight),
        helper.make_node("Conv", ["x", "w"], ["y"], name="conv"),
        helper.make_node("Constant", [], ["s"], value=shape),
        helper.make_node("Reshape", ["y", "s"], ["flat"], name="flatten"),
        helper.make_node("Constant", [], ["m"], value=matrix),
        helper.make_node("MatMul", ["flat", "m"], ["out"], name="fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    cost = measure_cost(model, {"x": [1, 3, 4, 4]})
    by_name = {n.name: (n.macs, n.params) for n in cost.nodes if n.op_type != "Constant"}
    assert by_name == {"conv": (2 * 4 * 4 * 3, 6), "flatten": (0, 0), "fc": (5 * 32, 160)}
    assert cost.params == 166


def test_resnet20_has_about_41_million_macs() -> None:
    path = shared_model("onnc_resnet20.onnx")
    cost = measure_cost(load_model(path), {"input.1": [1, 3, 32, 32]})
    assert cost.macs == pytest.approx(40.8e6, rel=0.01)
    assert cost.params == pytest.approx(0.27e6, rel=0.02)


# Symbolic dims fixed as the original projects feed them.
SHAPE_CHOICES = {
    "paddle_ch_ppocr_mobile_v2.0_cls_infer.onnx": {"x": [1, 3, 48, 192]},
    "winml_style_mosaic.onnx": {"inputImage": [1, 3, 720, 720]},
    "tf2onnx_ai8x_cifar100.onnx": {"input_1:0": [1, 3, 32, 32]},
}


@pytest.mark.parametrize("file", [case.file for case in REAL_MODEL_CASES])
def test_every_shared_model_has_a_cost_for_every_conv(file: str) -> None:
    """Raw exports need shape subgraphs and legacy ops (ImageScaler, Crop) resolved to get here."""
    model = load_model(shared_model(file))
    cost = measure_cost(model, resolve_input_shapes(model, SHAPE_CHOICES.get(file)))
    convs = [n for n in cost.nodes if n.op_type in ("Conv", "ConvTranspose")]
    assert convs and all(n.macs > 0 for n in convs)


def test_shapes_recorded_at_symbolic_sizes_give_way_to_the_probe_size() -> None:
    """A pruned paddle2onnx model records its intermediate shapes at its declared -1 batch and symbolic
    image (``[-1, 4, 'unk__0', 'unk__1']``); MACs at a concrete size are counted from that size."""
    weight = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="conv")],
        "recorded",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 3, "h", "w"])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
        [weight],
        value_info=[helper.make_tensor_value_info("y", TensorProto.FLOAT, [-1, 4, "unk__0", "unk__1"])],
    )
    graph.node.append(helper.make_node("Relu", ["y"], ["z"], name="relu"))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])

    assert measure_cost(model, {"x": [1, 3, 8, 8]}).macs == 4 * 8 * 8 * 3 * 3 * 3
