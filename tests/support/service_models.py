"""Small ONNX models for the service tests, built with onnx.helper, and hostile variants of them.

input [1,3,H,W] -> Conv 3->C1 (3x3) -> Relu -> Conv C1->C2 (3x3) -> Relu
                -> GlobalAveragePool -> Flatten -> Gemm C2->10 -> output [1,10]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.support.hostile_models import counting_body


def convnet(c1: int = 8, c2: int = 16, size: int = 16, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)

    def init(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.3, name)

    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "wf", "bf"], ["output"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "convnet",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 10])],
        [
            init("w1", c1, 3, 3, 3),
            init("b1", c1),
            init("w2", c2, c1, 3, 3),
            init("b2", c2),
            init("wf", 10, c2),
            init("bf", 10),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="svc-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def save(model: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


def external_data_model() -> onnx.ModelProto:
    """w1 claims to live in ../../etc/passwd."""
    model = convnet()
    w1 = next(t for t in model.graph.initializer if t.name == "w1")
    w1.ClearField("raw_data")
    w1.ClearField("float_data")
    w1.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "../../etc/passwd"), ("offset", "0"), ("length", "864")):
        entry = w1.external_data.add()
        entry.key, entry.value = key, value
    return model


def huge_initializer_model() -> onnx.ModelProto:
    """An initializer declaring 10^12 elements (with no data behind them)."""
    model = convnet()
    huge = TensorProto(name="huge", data_type=TensorProto.FLOAT, dims=[1_000_000, 1_000_000])
    model.graph.initializer.append(huge)
    return model


def custom_domain_model() -> onnx.ModelProto:
    model = convnet()
    model.opset_import.append(helper.make_opsetid("com.evil", 1))
    relu = next(n for n in model.graph.node if n.name == "relu1")
    relu.op_type, relu.domain = "Backdoor", "com.evil"
    return model


def no_conv_model() -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["input"], ["output"], name="relu")],
        "noconv",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _with_side_output(model: onnx.ModelProto, nodes: list[onnx.NodeProto], output: str) -> onnx.ModelProto:
    """``model`` plus a branch computed from its input at run time (so nothing can fold it ahead)."""
    model.graph.node.extend(nodes)
    model.graph.output.append(helper.make_tensor_value_info(output, TensorProto.FLOAT, []))
    onnx.checker.check_model(model)
    return model


def _runtime_count(value: float, name: str) -> list[onnx.NodeProto]:
    """An int64 [1] tensor equal to ``value``, computed from the input so that it is known only at run time."""
    return [
        helper.make_node("Constant", [], [f"{name}_zero"], value=numpy_helper.from_array(np.array(0.0, np.float32))),
        helper.make_node("Constant", [], [f"{name}_value"], value=numpy_helper.from_array(np.array(value, np.float32))),
        helper.make_node("Constant", [], [f"{name}_axes"], value=numpy_helper.from_array(np.array([0], np.int64))),
        helper.make_node("ReduceMax", ["input"], [f"{name}_max"], keepdims=0),
        helper.make_node("Mul", [f"{name}_max", f"{name}_zero"], [f"{name}_nil"]),
        helper.make_node("Add", [f"{name}_nil", f"{name}_value"], [f"{name}_float"]),
        helper.make_node("Cast", [f"{name}_float"], [f"{name}_scalar"], to=TensorProto.INT64),
        helper.make_node("Unsqueeze", [f"{name}_scalar", f"{name}_axes"], [name]),
    ]


def runtime_memory_bomb() -> onnx.ModelProto:
    """The convnet plus a ConstantOfShape of 4e9 floats (16 GB) whose size is known only at run time."""
    nodes = [
        *_runtime_count(4e9, "count"),
        helper.make_node("ConstantOfShape", ["count"], ["huge"], value=helper.make_tensor("one", 1, [1], [1.0])),
        helper.make_node("ReduceSum", ["huge"], ["bomb"], keepdims=0),
    ]
    return _with_side_output(convnet(), nodes, "bomb")


def runtime_endless_loop() -> onnx.ModelProto:
    """The convnet plus a Loop of 1e15 iterations whose trip count is known only at run time."""
    step = helper.make_node("Constant", [], ["step"], value=numpy_helper.from_array(np.array(1.0, np.float32)))
    body = counting_body([step], [], "step")
    nodes = [
        *_runtime_count(1e15, "trips"),
        helper.make_node("Squeeze", ["trips"], ["trip_count"]),
        helper.make_node("Constant", [], ["keep_going"], value=numpy_helper.from_array(np.array(True, np.bool_))),
        helper.make_node("Constant", [], ["start"], value=numpy_helper.from_array(np.array(0.0, np.float32))),
        helper.make_node("Loop", ["trip_count", "keep_going", "start"], ["spin"], body=body),
    ]
    return _with_side_output(convnet(), nodes, "spin")
