"""Small graphs built in code, each under its diagram, that test modules in several folders share."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.support import zoo
from tests.support.zoo import GraphBuilder


def residual_model(width: int = 16):
    """x -> Conv(a) -> Relu -> Conv(b) -> Add(a) -> Relu -> Conv(c) -> GAP -> Flatten -> Gemm(10)

    Conv a and Conv b write the same channels (the residual Add): one group of ``width``.
    Conv c feeds only the classifier: a second group.
    """
    g = zoo.GraphBuilder(seed=3)
    a = g.conv("input", 3, width)
    b = g.conv(g.node("Relu", [a]), width, width)
    c = g.conv(g.node("Relu", [g.node("Add", [a, b])]), width, 2 * width)
    pooled = g.node("Flatten", [g.node("GlobalAveragePool", [c])], axis=1)
    logits = g.node("Gemm", [pooled, g.random("fc", [10, 2 * width]), g.random("fc_b", [10])], transB=1)
    return g.model([zoo.float_input("input", [1, 3, 8, 8])], logits, 13, "residual")


def c2f_model(width: int = 128, sections: tuple[int, int] | None = None, size: int = 8):
    """YOLOv8's C2f block: a conv's channels split in two, the second half through a conv and back.

                                      ┌──────────────────────────────────────┐
    x[1,16,s,s] ─ Conv(a: width) ─ Split(sections) ─┬─ Conv(b: sections[1]) ─ Relu ─ Concat ─ Conv(16) ─> y
                                                    └────────────────────────────────┘

    Conv a's output is one group whose two parts (``sections``, default halves) Split outputs read.
    """
    first, second = sections or (width // 2, width - width // 2)
    g = zoo.GraphBuilder(seed=13)
    a = g.node("Relu", [g.conv("input", 16, width)])
    left, right = g.node("Split", [a, g.constant("sections", np.array([first, second], np.int64))], 2, axis=1)
    b = g.node("Relu", [g.conv(right, second, second)])
    out = g.conv(g.node("Concat", [left, right, b], axis=1), width + second, 16, kernel=1)
    return g.model([zoo.float_input("input", [1, 16, size, size])], out, 13, "c2f")


def two_branch_model(batch: int | str = "N") -> onnx.ModelProto:
    """Two branches side by side; only one of them matters.

                 ┌ Conv "signal" (8 filters, weights ~1) ─ Relu ─┐
    x [N,3,8,8] ─┤                                               Concat ─ GAP ─ Flatten ─ Gemm(10)
                 └ Conv "quiet" (8 filters ~1e-5, no bias) ─ Relu ┘
    """
    g = zoo.GraphBuilder(seed=11)
    signal = g.node("Relu", [g.conv("input", 3, 8)])
    quiet_weight = g.constant("W_quiet", (g.rng.standard_normal([8, 3, 3, 3]) * 1e-5).astype(np.float32))
    quiet = g.node("Relu", [g.node("Conv", ["input", quiet_weight], kernel_shape=[3, 3], pads=[1, 1, 1, 1])])
    pooled = g.node("Flatten", [g.node("GlobalAveragePool", [g.node("Concat", [signal, quiet], axis=1)])], axis=1)
    logits = g.node("Gemm", [pooled, g.random("fc", [10, 16], scale=1.0), g.random("fc_b", [10], 0.01)], transB=1)
    return g.model([zoo.float_input("input", [batch, 3, 8, 8])], logits, 13, "two_branch")


def chain_model(width: int = 64, size: int = 16):
    """x[1,16,s,s] -> Conv(a: width) -> Relu -> Conv(b: width) -> Relu -> Conv(c: 16) -> y

    Two prunable groups (a's and b's outputs); c writes the model output (kept whole)."""
    g = zoo.GraphBuilder(seed=7)
    a = g.conv("input", 16, width)
    b = g.conv(g.node("Relu", [a]), width, width)
    out = g.conv(g.node("Relu", [b]), width, 16)
    return g.model([zoo.float_input("input", [1, 16, size, size])], out, 13, "chain")


def float16(model, *, float32_interface: bool = False):
    """The same network with float16 weights (and inputs/outputs, unless ``float32_interface``:
    then Casts around it, as mixed-precision exports write them)."""
    import onnx
    from onnx import helper

    half = onnx.ModelProto()
    half.CopyFrom(model)
    for index, init in enumerate(half.graph.initializer):
        if init.data_type == onnx.TensorProto.FLOAT:
            array = numpy_helper.to_array(init).astype("float16")
            half.graph.initializer[index].CopyFrom(numpy_helper.from_array(array, init.name))
    for node in half.graph.node:
        for attr in node.attribute:
            if node.op_type == "Constant" and attr.name == "value" and attr.t.data_type == onnx.TensorProto.FLOAT:
                attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype("float16"), attr.t.name))
    del half.graph.value_info[:]
    values = list(half.graph.input) + list(half.graph.output)
    if not float32_interface:
        for value in values:
            value.type.tensor_type.elem_type = onnx.TensorProto.FLOAT16
        return half
    source, sink = half.graph.input[0].name, half.graph.output[0].name
    for node in half.graph.node:
        node.input[:] = [f"{source}_fp16" if name == source else name for name in node.input]
        node.output[:] = [f"{sink}_fp16" if name == sink else name for name in node.output]
    half.graph.node.insert(0, helper.make_node("Cast", [source], [f"{source}_fp16"], to=onnx.TensorProto.FLOAT16))
    half.graph.node.append(helper.make_node("Cast", [f"{sink}_fp16"], [sink], to=onnx.TensorProto.FLOAT))
    return half


LABELS = ["cat", "dog", "bird"]


def zipmap_classifier() -> onnx.ModelProto:
    g = GraphBuilder(7)
    y = g.node("Relu", [g.conv(g.node("Relu", [g.conv("input", 3, 8)]), 8, 6)])
    flat = g.node("Flatten", [g.node("GlobalAveragePool", [y])], axis=1)
    probs = g.node("Softmax", [g.node("Gemm", [flat, g.random("fc_W", [3, 6], 0.5)], transB=1)], axis=1)
    index = g.node("ArgMax", [probs], axis=1, keepdims=0)
    g.nodes.append(
        helper.make_node(
            "LabelEncoder",
            [index],
            ["label"],
            domain="ai.onnx.ml",
            name="labels",
            keys_int64s=[0, 1, 2],
            values_strings=LABELS,
            default_string="?",
        )
    )
    g.nodes.append(
        helper.make_node("ZipMap", [probs], ["scores"], domain="ai.onnx.ml", name="zipmap", classlabels_strings=LABELS)
    )
    scores = helper.make_sequence_type_proto(
        helper.make_map_type_proto(TensorProto.STRING, helper.make_tensor_type_proto(TensorProto.FLOAT, []))
    )
    graph = helper.make_graph(
        g.nodes,
        "zipmap",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("label", TensorProto.STRING, [1]), helper.make_value_info("scores", scores)],
        g.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14), helper.make_opsetid("ai.onnx.ml", 2)])
    model.ir_version = 8
    return model
