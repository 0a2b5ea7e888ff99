"""Weights quantized at run time (``QuantizeLinear(float weight) -> DequantizeLinear``) stored quantized.

Exporters of quantization-aware-trained models (PyTorch's fake-quantized modules, TensorFlow QAT via
tf2onnx) write a weight as a float initializer that a QuantizeLinear turns into int8 at every run.
onnxruntime's quantizer stores the int8 values instead. Doing the same here (the QuantizeLinear of
a constant evaluated once) lets analysis slice the int8 data like any QDQ weight; the values are
exactly those the runtime computes, so the model keeps its precision. onnx-graphsurgeon's folder
leaves Q/DQ nodes alone on purpose, so this is the one quantization step folded, and only for
constants.
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper


def _quantize(node: gs.Node, opset: int) -> np.ndarray:
    """The QuantizeLinear's output, by onnx's reference implementation (the spec's rounding and saturation)."""
    names = [f"in{k}" if tensor is not None and tensor.name else "" for k, tensor in enumerate(node.inputs)]
    initializers = [
        onnx.numpy_helper.from_array(np.asarray(tensor.values), name)
        for name, tensor in zip(names, node.inputs) if name
    ]  # fmt: skip
    onnx_node = helper.make_node("QuantizeLinear", names, ["out"], **node.attrs)
    graph = helper.make_graph([onnx_node], "q", [], [helper.make_tensor_value_info("out", 0, None)], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    from onnx.reference import ReferenceEvaluator  # imported when needed: it costs every process ~0.1 s

    outputs = cast(list[Any], ReferenceEvaluator(model).run(None, {}))  # onnx types run() loosely
    return np.asarray(outputs[0])


def fold_weight_quantizers(graph: gs.Graph, opset: int, size_limit: int) -> int:
    """Replace each QuantizeLinear of constants (up to ``size_limit`` bytes) by its quantized values.

    Returns how many were folded; the graph still needs ``cleanup()``.
    """
    folded = 0
    for node in graph.nodes:
        if node.op != "QuantizeLinear" or node.domain not in (None, "", "ai.onnx") or len(node.outputs) != 1:
            continue
        inputs = [tensor for tensor in node.inputs if tensor is not None and tensor.name]
        if not inputs or not all(isinstance(tensor, gs.Constant) for tensor in inputs):
            continue
        if node.outputs[0] in graph.outputs:
            continue
        if int(np.prod(inputs[0].shape)) * 4 > size_limit:
            continue
        try:
            values = _quantize(node, opset)
        except Exception:  # noqa: BLE001 - an op form the reference does not evaluate: left as it is,
            continue  # and its weight then freezes as computed at run time (never a guess)
        output = node.outputs[0]
        node.outputs.clear()
        output.to_constant(values)
        folded += 1
    return folded
