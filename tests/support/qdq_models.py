"""Small QDQ models built in code: float nets quantized by onnxruntime's quantizer, and hand-built patterns.

The float nets are written with ``onnx.helper`` (no torch export: fast), then quantized with
``onnxruntime.quantization.quantize_static(..., quant_format=QuantFormat.QDQ)`` on seeded random
calibration inputs, exactly as a user would quantize them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 13
INPUT_SHAPE = (1, 3, 8, 8)


def _model(
    nodes, inits: dict[str, np.ndarray], output: str, output_shape, *, opset: int = OPSET, input_shape=INPUT_SHAPE
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "net",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(input_shape))],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, output_shape)],
        [numpy_helper.from_array(value, name) for name, value in inits.items()],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _weights(seed: int, **shapes: tuple[int, ...]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: (rng.standard_normal(shape) * 0.3).astype(np.float32) for name, shape in shapes.items()}


def residual_net(head: str = "gemm") -> onnx.ModelProto:
    """A conv chain with a residual Add, a ConvTranspose and a fully connected head.

        x -conv1(8)-relu-+-conv2(6)-relu-conv3(8)-Add-relu-deconv(5, stride 2)-relu-GAP-Flatten-fc(10)
                         '-------------------------'
    ``head``: "gemm" (Gemm, transB) or "matmul" (MatMul + Add bias).
    """
    inits = _weights(
        0,
        w1=(8, 3, 3, 3),
        b1=(8,),
        w2=(6, 8, 3, 3),
        b2=(6,),
        w3=(8, 6, 3, 3),
        b3=(8,),
        wt=(8, 5, 2, 2),
        bt=(5,),
        wf=(10, 5) if head == "gemm" else (5, 10),
        bf=(10,),
    )
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "w3", "b3"], ["c3"], pads=[1, 1, 1, 1], name="conv3"),
        helper.make_node("Add", ["c3", "r1"], ["a"], name="add"),
        helper.make_node("Relu", ["a"], ["r3"], name="relu3"),
        helper.make_node("ConvTranspose", ["r3", "wt", "bt"], ["ct"], strides=[2, 2], kernel_shape=[2, 2], name="deconv"),
        helper.make_node("Relu", ["ct"], ["r4"], name="relu4"),
        helper.make_node("GlobalAveragePool", ["r4"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
    ]  # fmt: skip
    if head == "gemm":
        nodes.append(helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], transB=1, name="fc"))
    else:
        nodes += [
            helper.make_node("MatMul", ["f", "wf"], ["m"], name="fc"),
            helper.make_node("Add", ["m", "bf"], ["y"], name="fc_bias"),
        ]
    return _model(nodes, inits, "y", [1, 10])


def quantize_qdq(
    model: onnx.ModelProto,
    directory: Path,
    *,
    per_channel: bool,
    weight_type: str = "int8",
    samples: int = 8,
    feeds: list[dict[str, np.ndarray]] | None = None,
) -> onnx.ModelProto:
    """``model`` quantized by onnxruntime in the QDQ format (uint8 activations), calibrated on ``feeds``
    (default: ``samples`` random inputs); int8 weights symmetric (zero point 0), uint8 weights asymmetric."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    if feeds is None:
        rng = np.random.default_rng(1)
        feeds = [{"x": rng.standard_normal(INPUT_SHAPE).astype(np.float32)} for _ in range(samples)]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._feeds = iter(feeds)

        def get_next(self):
            return next(self._feeds, None)

    source, target = directory / "float.onnx", directory / f"qdq_{int(per_channel)}_{weight_type}.onnx"
    onnx.save(model, source)
    quantize_static(
        str(source),
        str(target),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=per_channel,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8 if weight_type == "int8" else QuantType.QUInt8,
        # uint8 weights asymmetric (the quantizer makes per-channel ones symmetric unless told
        # per tensor): zero points that vary by channel and are not 0.
        extra_options={
            "WeightSymmetric": weight_type == "int8",
            "TensorQuantOverrides": {}
            if weight_type == "int8"
            else {
                name: [{"symmetric": False, **({"axis": axis} if per_channel else {})}]
                for name, axis in _layer_weights(model).items()
            },
        },
    )
    return onnx.load(target)


def _layer_weights(model: onnx.ModelProto) -> dict[str, int]:
    """Each layer's weight and the axis of its output channels (where per-channel scales go)."""
    axes = {"Conv": 0, "ConvTranspose": 1, "Gemm": 0, "MatMul": 1}  # Gemm here always has transB=1
    return {node.input[1]: axes[node.op_type] for node in model.graph.node if node.op_type in axes}


def _int8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.round(values), -127, 127).astype(np.int8)


def per_channel_activation_net() -> onnx.ModelProto:
    """Hand-built QDQ: an activation quantized per channel (axis 1) between two convs.

    x -DQ(w1)-> conv1(6) -Q/DQ(axis 1, 6 scales)-> relu -DQ(w2)-> conv2(4) -> y
    """
    rng = np.random.default_rng(2)
    inits = {
        "w1_q": _int8(rng.standard_normal((6, 3, 3, 3)) * 40), "w1_s": np.full(6, 0.01, np.float32),
        "w1_z": np.zeros(6, np.int8),
        "w2_q": _int8(rng.standard_normal((4, 6, 1, 1)) * 40), "w2_s": np.float32(0.02), "w2_z": np.int8(0),
        "a_s": (rng.random(6) * 0.05 + 0.01).astype(np.float32), "a_z": rng.integers(100, 150, 6).astype(np.uint8),
    }  # fmt: skip
    nodes = [
        helper.make_node("DequantizeLinear", ["w1_q", "w1_s", "w1_z"], ["w1"], axis=0, name="w1_dq"),
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("QuantizeLinear", ["c1", "a_s", "a_z"], ["c1_q"], axis=1, name="c1_q"),
        helper.make_node("DequantizeLinear", ["c1_q", "a_s", "a_z"], ["c1_dq"], axis=1, name="c1_dq"),
        helper.make_node("Relu", ["c1_dq"], ["r1"], name="relu1"),
        helper.make_node("DequantizeLinear", ["w2_q", "w2_s", "w2_z"], ["w2"], name="w2_dq"),
        helper.make_node("Conv", ["r1", "w2"], ["y"], name="conv2"),
    ]  # fmt: skip
    return _model(nodes, inits, "y", [1, 4, 8, 8])


def shared_weight_net() -> onnx.ModelProto:
    """One dequantized weight read by two convs (weight sharing): sliced for one, it would change the other.

    x -DQ(w)-> conv_a(4) -relu-> conv_b(4, same DQ(w2)) ... both read DQ(w2) -> Add -> y
    """
    rng = np.random.default_rng(3)
    inits = {
        "w1_q": _int8(rng.standard_normal((4, 3, 3, 3)) * 40), "w1_s": np.float32(0.01),
        "w2_q": _int8(rng.standard_normal((4, 4, 3, 3)) * 40), "w2_s": np.float32(0.01),
    }  # fmt: skip
    nodes = [
        helper.make_node("DequantizeLinear", ["w1_q", "w1_s"], ["w1"], name="w1_dq"),
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("DequantizeLinear", ["w2_q", "w2_s"], ["w2"], name="w2_dq"),
        helper.make_node("Conv", ["c1", "w2"], ["c2"], pads=[1, 1, 1, 1], name="conv_a"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu"),
        helper.make_node("Conv", ["r2", "w2"], ["y"], pads=[1, 1, 1, 1], name="conv_b"),
    ]  # fmt: skip
    return _model(nodes, inits, "y", [1, 4, 8, 8])


def grouped_conv_net() -> onnx.ModelProto:
    """A grouped (not depthwise) conv with a quantized weight, between two dense ones.

    x -conv1(8)-> grouped conv (group 2, DQ weight) -> conv3(4) -> y
    """
    rng = np.random.default_rng(4)
    inits = {
        "w1_q": _int8(rng.standard_normal((8, 3, 3, 3)) * 40), "w1_s": np.float32(0.01),
        "w2_q": _int8(rng.standard_normal((8, 4, 3, 3)) * 40), "w2_s": np.float32(0.01),
        "w3_q": _int8(rng.standard_normal((4, 8, 1, 1)) * 40), "w3_s": np.float32(0.01),
    }  # fmt: skip
    nodes = [
        helper.make_node("DequantizeLinear", ["w1_q", "w1_s"], ["w1"], name="w1_dq"),
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("DequantizeLinear", ["w2_q", "w2_s"], ["w2"], name="w2_dq"),
        helper.make_node("Conv", ["c1", "w2"], ["c2"], pads=[1, 1, 1, 1], group=2, name="grouped"),
        helper.make_node("DequantizeLinear", ["w3_q", "w3_s"], ["w3"], name="w3_dq"),
        helper.make_node("Conv", ["c2", "w3"], ["y"], name="conv3"),
    ]  # fmt: skip
    return _model(nodes, inits, "y", [1, 4, 8, 8])


def depthwise_net() -> onnx.ModelProto:
    """A depthwise conv with a per-channel quantized weight: it carries conv1's channels through.

    x -conv1(8)-> depthwise (group 8, DQ weight, 8 scales) -> relu -> conv3(4) -> y
    """
    rng = np.random.default_rng(5)
    inits = {
        "w1_q": _int8(rng.standard_normal((8, 3, 3, 3)) * 40), "w1_s": np.full(8, 0.01, np.float32),
        "w1_z": np.zeros(8, np.int8),
        "w2_q": _int8(rng.standard_normal((8, 1, 3, 3)) * 40), "w2_s": (rng.random(8) * 0.02 + 0.005).astype(np.float32),
        "w2_z": np.zeros(8, np.int8),
        "w3_q": _int8(rng.standard_normal((4, 8, 1, 1)) * 40), "w3_s": np.float32(0.01),
    }  # fmt: skip
    nodes = [
        helper.make_node("DequantizeLinear", ["w1_q", "w1_s", "w1_z"], ["w1"], axis=0, name="w1_dq"),
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("DequantizeLinear", ["w2_q", "w2_s", "w2_z"], ["w2"], axis=0, name="w2_dq"),
        helper.make_node("Conv", ["c1", "w2"], ["c2"], pads=[1, 1, 1, 1], group=8, name="depthwise"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu"),
        helper.make_node("DequantizeLinear", ["w3_q", "w3_s"], ["w3"], name="w3_dq"),
        helper.make_node("Conv", ["r2", "w3"], ["y"], name="conv3"),
    ]  # fmt: skip
    return _model(nodes, inits, "y", [1, 4, 8, 8])


def qat_export_net() -> onnx.ModelProto:
    """As quantization-aware-training exports write it: float weights quantized at run time.

    x -Q/DQ-> conv1(6; QuantizeLinear(w1 float, 6 scales) -> DQ) -relu-Q/DQ-> conv2(4; Q(w2) -> DQ) -> y
    """
    rng = np.random.default_rng(6)
    inits = {
        "w1": (rng.standard_normal((6, 3, 3, 3)) * 0.3).astype(np.float32),
        "w1_s": (rng.random(6) * 0.01 + 0.004).astype(np.float32), "w1_z": np.zeros(6, np.int8),
        "w2": (rng.standard_normal((4, 6, 3, 3)) * 0.3).astype(np.float32),
        "w2_s": np.float32(0.006), "w2_z": np.int8(0),
        "x_s": np.float32(0.03), "x_z": np.uint8(128), "r_s": np.float32(0.02), "r_z": np.uint8(0),
    }  # fmt: skip
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_s", "x_z"], ["xq"], name="x_q"),
        helper.make_node("DequantizeLinear", ["xq", "x_s", "x_z"], ["xd"], name="x_dq"),
        helper.make_node("QuantizeLinear", ["w1", "w1_s", "w1_z"], ["w1q"], axis=0, name="w1_q"),
        helper.make_node("DequantizeLinear", ["w1q", "w1_s", "w1_z"], ["w1d"], axis=0, name="w1_dq"),
        helper.make_node("Conv", ["xd", "w1d"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("QuantizeLinear", ["r1", "r_s", "r_z"], ["r1q"], name="r1_q"),
        helper.make_node("DequantizeLinear", ["r1q", "r_s", "r_z"], ["r1d"], name="r1_dq"),
        helper.make_node("QuantizeLinear", ["w2", "w2_s", "w2_z"], ["w2q"], name="w2_q"),
        helper.make_node("DequantizeLinear", ["w2q", "w2_s", "w2_z"], ["w2d"], name="w2_dq"),
        helper.make_node("Conv", ["r1d", "w2d"], ["y"], pads=[1, 1, 1, 1], name="conv2"),
    ]  # fmt: skip
    return _model(nodes, inits, "y", [1, 4, 8, 8])


def blocked_weight_net() -> onnx.ModelProto:
    """A weight quantized in blocks along its input axis (opset 21 ``block_size``): scales [C_out, C_in / 2, k, k]."""
    rng = np.random.default_rng(7)
    inits = {
        "w1_q": _int8(rng.standard_normal((4, 3, 3, 3)) * 40), "w1_s": np.float32(0.01),
        "w2_q": _int8(rng.standard_normal((4, 4, 3, 3)) * 40),
        "w2_s": (rng.random((4, 2, 3, 3)) * 0.01 + 0.005).astype(np.float32),
    }  # fmt: skip
    nodes = [
        helper.make_node("DequantizeLinear", ["w1_q", "w1_s"], ["w1"], name="w1_dq"),
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("DequantizeLinear", ["w2_q", "w2_s"], ["w2"], axis=1, block_size=2, name="w2_dq"),
        helper.make_node("Conv", ["c1", "w2"], ["y"], pads=[1, 1, 1, 1], name="conv2"),
    ]  # fmt: skip
    return _model(nodes, inits, "y", [1, 4, 8, 8], opset=21)


def per_input_channel_scales_net() -> onnx.ModelProto:
    """A weight whose per-channel scales and zero points run along its input axis (axis 1): they follow
    the channels the conv reads, so removing conv1's channels slices them too.

        x -DQ(w1)-> conv1(6) -relu-> conv2(4; DQ(w2 uint8, axis 1: 6 scales, 6 zero points)) -> y
    """
    rng = np.random.default_rng(8)
    inits = {
        "w1_q": _int8(rng.standard_normal((6, 3, 3, 3)) * 40), "w1_s": np.float32(0.01),
        "w2_q": rng.integers(0, 256, (4, 6, 3, 3)).astype(np.uint8),
        "w2_s": (rng.random(6) * 0.004 + 0.001).astype(np.float32), "w2_z": rng.integers(90, 170, 6).astype(np.uint8),
    }  # fmt: skip
    nodes = [
        helper.make_node("DequantizeLinear", ["w1_q", "w1_s"], ["w1"], name="w1_dq"),
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("DequantizeLinear", ["w2_q", "w2_s", "w2_z"], ["w2"], axis=1, name="w2_dq"),
        helper.make_node("Conv", ["r1", "w2"], ["y"], pads=[1, 1, 1, 1], name="conv2"),
    ]  # fmt: skip
    return _model(nodes, inits, "y", [1, 4, 8, 8])


def grouped_deconv_net() -> onnx.ModelProto:
    """A grouped ConvTranspose (group 2) with a quantized weight, between two dense convs.

    x -conv1(8)-> grouped deconv (group 2, DQ weight [8, 3, 2, 2], stride 2) -> conv3(4) -> y
    """
    rng = np.random.default_rng(9)
    inits = {
        "w1_q": _int8(rng.standard_normal((8, 3, 3, 3)) * 40), "w1_s": np.float32(0.01),
        "wt_q": _int8(rng.standard_normal((8, 3, 2, 2)) * 40), "wt_s": np.float32(0.01),
        "w3_q": _int8(rng.standard_normal((4, 6, 1, 1)) * 40), "w3_s": np.float32(0.01),
    }  # fmt: skip
    nodes = [
        helper.make_node("DequantizeLinear", ["w1_q", "w1_s"], ["w1"], name="w1_dq"),
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("DequantizeLinear", ["wt_q", "wt_s"], ["wt"], name="wt_dq"),
        helper.make_node("ConvTranspose", ["c1", "wt"], ["c2"], group=2, strides=[2, 2], kernel_shape=[2, 2],
                         name="gdeconv"),
        helper.make_node("DequantizeLinear", ["w3_q", "w3_s"], ["w3"], name="w3_dq"),
        helper.make_node("Conv", ["c2", "w3"], ["y"], name="conv3"),
    ]  # fmt: skip
    return _model(nodes, inits, "y", [1, 4, 16, 16])


YOLO_INPUT_SHAPE = (1, 3, 64, 64)


def _conv_silu(name: str, source: str, out: str, kernel: int = 1, stride: int = 1) -> list[onnx.NodeProto]:
    """Ultralytics' Conv: conv (BN folded) then SiLU written as x * Sigmoid(x), as its exports write it."""
    pad = kernel // 2
    return [
        helper.make_node("Conv", [source, f"{name}_w", f"{name}_b"], [f"{name}_c"], kernel_shape=[kernel, kernel],
                         strides=[stride, stride], pads=[pad] * 4, name=name),
        helper.make_node("Sigmoid", [f"{name}_c"], [f"{name}_s"], name=f"{name}_sigmoid"),
        helper.make_node("Mul", [f"{name}_c", f"{name}_s"], [out], name=f"{name}_silu"),
    ]  # fmt: skip


def yolo_block_net(width: int = 16) -> onnx.ModelProto:
    """A YOLOv8-style detector in miniature: every pattern of the real one that carries channels.

        x -stem(16, s2)-down(32, s2)- C2f -+- SPPF -Resize x2-+
                                           '------------------Concat-fuse(32)-+- box: conv3x3(16)-conv(4) -+-Concat
                                                                              '- cls: conv3x3(16)-conv(3)-Sigmoid -'
        C2f:  cv1(32) -Split(16, 16)-> [a, b, bottleneck(b) + b] -Concat(48)- cv2(32)
        SPPF: cv1(16) -MaxPool5-MaxPool5-MaxPool5-> Concat(64) -cv2(32)
    Every conv is followed by SiLU (Sigmoid * Mul); the output is [1, 7, anchors] (boxes, class scores).
    Channel counts are drawn for ``width`` 16; other widths scale them.
    """
    w = width
    shapes = {
        "stem": (w, 3, 3), "down": (2 * w, w, 3), "c2f_cv1": (2 * w, 2 * w, 1), "bneck1": (w, w, 3),
        "bneck2": (w, w, 3), "c2f_cv2": (2 * w, 3 * w, 1), "sppf_cv1": (w, 2 * w, 1), "sppf_cv2": (2 * w, 4 * w, 1),
        "fuse": (2 * w, 4 * w, 1), "box1": (w, 2 * w, 3), "cls1": (w, 2 * w, 3),
    }  # fmt: skip
    rng = np.random.default_rng(10)
    inits: dict[str, np.ndarray] = {}
    for name, (out, cin, k) in [*shapes.items(), ("box2", (4, w, 1)), ("cls2", (3, w, 1))]:
        inits[f"{name}_w"] = (rng.standard_normal((out, cin, k, k)) * (1.5 / np.sqrt(cin * k * k))).astype(np.float32)
        inits[f"{name}_b"] = (rng.standard_normal(out) * 0.2).astype(np.float32)
    inits["split"] = np.array([w, w], np.int64)
    inits["scales"] = np.array([1, 1, 2, 2], np.float32)
    inits["anchors"] = np.array([1, 7, -1], np.int64)
    nodes = [
        *_conv_silu("stem", "x", "p1", 3, 2),
        *_conv_silu("down", "p1", "p2", 3, 2),
        *_conv_silu("c2f_cv1", "p2", "c2f_in", 1),
        helper.make_node("Split", ["c2f_in", "split"], ["c2f_a", "c2f_b"], axis=1, name="c2f_split"),
        *_conv_silu("bneck1", "c2f_b", "bn1", 3),
        *_conv_silu("bneck2", "bn1", "bn2", 3),
        helper.make_node("Add", ["c2f_b", "bn2"], ["c2f_m"], name="bneck_add"),
        helper.make_node("Concat", ["c2f_a", "c2f_b", "c2f_m"], ["c2f_cat"], axis=1, name="c2f_concat"),
        *_conv_silu("c2f_cv2", "c2f_cat", "c2f", 1),
        *_conv_silu("sppf_cv1", "c2f", "s0", 1),
        helper.make_node("MaxPool", ["s0"], ["s1"], kernel_shape=[5, 5], pads=[2] * 4, name="sppf_pool1"),
        helper.make_node("MaxPool", ["s1"], ["s2"], kernel_shape=[5, 5], pads=[2] * 4, name="sppf_pool2"),
        helper.make_node("MaxPool", ["s2"], ["s3"], kernel_shape=[5, 5], pads=[2] * 4, name="sppf_pool3"),
        helper.make_node("Concat", ["s0", "s1", "s2", "s3"], ["sppf_cat"], axis=1, name="sppf_concat"),
        *_conv_silu("sppf_cv2", "sppf_cat", "sppf", 1),
        helper.make_node("MaxPool", ["sppf"], ["sppf_down"], kernel_shape=[2, 2], strides=[2, 2], name="neck_down"),
        helper.make_node("Resize", ["sppf_down", "", "scales"], ["up"], mode="nearest", name="neck_up"),
        helper.make_node("Concat", ["up", "c2f"], ["neck_cat"], axis=1, name="neck_concat"),
        *_conv_silu("fuse", "neck_cat", "feat", 1),
        *_conv_silu("box1", "feat", "box_h", 3),
        helper.make_node("Conv", ["box_h", "box2_w", "box2_b"], ["box"], name="box2"),
        *_conv_silu("cls1", "feat", "cls_h", 3),
        helper.make_node("Conv", ["cls_h", "cls2_w", "cls2_b"], ["cls_logits"], name="cls2"),
        helper.make_node("Sigmoid", ["cls_logits"], ["cls"], name="cls_sigmoid"),
        helper.make_node("Concat", ["box", "cls"], ["head"], axis=1, name="head_concat"),
        helper.make_node("Reshape", ["head", "anchors"], ["y"], name="head_reshape"),
    ]  # fmt: skip
    side = YOLO_INPUT_SHAPE[2] // 4
    return _model(nodes, inits, "y", [1, 7, side * side], input_shape=YOLO_INPUT_SHAPE)


def yolo_calibration_feeds(samples: int = 8) -> list[dict[str, np.ndarray]]:
    """Image-like calibration inputs for :func:`yolo_block_net`: values in [0, 1], as x / 255."""
    rng = np.random.default_rng(11)
    return [{"x": rng.random(YOLO_INPUT_SHAPE).astype(np.float32)} for _ in range(samples)]


def photo_batches(photos: Path, count: int, side: int) -> list[np.ndarray]:
    """The first ``count`` photos of a folder as detectors take them: RGB, ``side`` x ``side``, / 255, NCHW."""
    from PIL import Image  # matplotlib's dependency: images only where a test reads photos

    batches = []
    for path in sorted(photos.glob("*.jpg"))[:count]:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB").resize((side, side)), dtype=np.float32) / 255.0
        batches.append(pixels.transpose(2, 0, 1)[None])
    return batches


def quantize_detector(model_path: Path, photos: Path, directory: Path, *, side: int = 320, count: int = 4) -> Path:
    """A real detector quantized as users quantize it: its image input fixed at 1x3xSIDExSIDE, then
    onnxruntime's ``quantize_static`` (QDQ, per-channel int8 weights, uint8 activations) calibrated on
    ``count`` real photos. Returns the QDQ model's path."""
    model = onnx.load(model_path)
    image = model.graph.input[0]
    for dim, size in zip(image.type.tensor_type.shape.dim, (1, 3, side, side)):
        dim.Clear()
        dim.dim_value = size
    fixed = directory / "float_fixed.onnx"
    onnx.save(model, fixed)
    feeds = [{image.name: batch} for batch in photo_batches(photos, count, side)]
    return _quantize_file(fixed, directory / "qdq.onnx", feeds)


def _quantize_file(source: Path, target: Path, feeds: list[dict[str, np.ndarray]]) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._feeds = iter(feeds)

        def get_next(self):
            return next(self._feeds, None)

    quantize_static(
        str(source),
        str(target),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    return target
