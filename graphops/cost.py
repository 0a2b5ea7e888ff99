"""MACs and parameters, per node and in total, at concrete input shapes.

Conventions (the numbers in every report follow them):

- MACs, not FLOPs: one multiply-add is 1 MAC. Biases, activations, normalisation, pooling and
  every op other than Conv, ConvTranspose, Gemm and MatMul count 0 MACs.
- Conv: ``N * Cout * prod(out spatial) * (Cin / group) * prod(kernel)``, any spatial rank.
- ConvTranspose: ``N * Cin * prod(in spatial) * (Cout / group) * prod(kernel)``.
- Gemm and MatMul (batched too): ``prod(output dims) * K``.
- Parameters: elements of the float initializers and Constant tensors a node consumes directly.
  A tensor shared by several nodes appears in each node's count but once in the total. Integer
  tensors (shapes, indices) are not parameters. Weights computed at run time (e.g. by
  ConstantOfShape) are not counted until ``prepare_model`` folds them into initializers.
  Quantized models (QDQ): the int8 (or int32) data a DequantizeLinear reads counts, its scales and
  zero points do not; the parameters are counted at the DequantizeLinear, not at the conv.
- Only the top-level graph is measured; subgraphs of control-flow ops count 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import onnx
from onnx import TensorProto

from onnxprune.graphops.errors import ModelRejected
from onnxprune.graphops.ops import handler_for
from onnxprune.graphops.shape_completion import complete_shapes
from onnxprune.graphops.shapes import Shape, with_input_shapes

_QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
_FLOAT_TYPES = frozenset({TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16})


@dataclass(frozen=True)
class NodeCost:
    name: str
    op_type: str
    macs: int
    params: int


@dataclass(frozen=True)
class ModelCost:
    nodes: list[NodeCost] = field(default_factory=list)
    params: int = 0

    @property
    def macs(self) -> int:
        return sum(node.macs for node in self.nodes)


def measure_cost(model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]]) -> ModelCost:
    """Cost of every top-level node, in graph order (unnamed nodes are named by their first output)."""
    shapes = complete_shapes(with_input_shapes(model, input_shapes))
    weights = _float_constant_sizes(model.graph) | _quantized_constant_sizes(model.graph)
    nodes: list[NodeCost] = []
    counted: set[str] = set()
    for node in model.graph.node:
        inputs = node.input[:1] if node.op_type in _QDQ_OPS else node.input  # scales are not parameters
        consumed = [name for name in dict.fromkeys(inputs) if name in weights]
        counted.update(consumed)
        nodes.append(
            NodeCost(
                name=node.name or (node.output[0] if node.output else ""),
                op_type=node.op_type,
                macs=_node_macs(node, shapes),
                params=sum(weights[name] for name in consumed),
            )
        )
    return ModelCost(nodes=nodes, params=sum(weights[name] for name in counted))


def _node_macs(node: onnx.NodeProto, shapes: Mapping[str, Shape]) -> int:
    """The op's handler knows its MACs (``OpHandler.macs``); ops without one count 0."""
    return handler_for(node.op_type, node.domain).macs(node, lambda tensor: _shape(node, tensor, shapes))


def _shape(node: onnx.NodeProto, tensor: str, shapes: Mapping[str, Shape]) -> tuple[int, ...]:
    shape = shapes.get(tensor)
    if shape is None or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ModelRejected(
            f"cannot count MACs of {node.op_type} node {node.name or node.output[0]!r}: "
            f"shape of {tensor!r} is {'unknown' if shape is None else list(shape)} at these input shapes"
        )
    return tuple(int(d) for d in shape if isinstance(d, int))  # every dim is one, checked above


def _quantized_constant_sizes(graph: onnx.GraphProto) -> dict[str, int]:
    """Element counts of the initializers a DequantizeLinear reads as data (QDQ weights and biases)."""
    sizes = {init.name: math.prod(init.dims) for init in graph.initializer}
    return {
        node.input[0]: sizes[node.input[0]]
        for node in graph.node
        if node.op_type == "DequantizeLinear" and node.input and node.input[0] in sizes
    }


def _float_constant_sizes(graph: onnx.GraphProto) -> dict[str, int]:
    """Element counts of the float initializers and Constant-node tensors, by tensor name."""
    sizes = {init.name: math.prod(init.dims) for init in graph.initializer if init.data_type in _FLOAT_TYPES}
    for node in graph.node:
        if node.op_type != "Constant" or not node.output:
            continue
        for attr in node.attribute:
            if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type in _FLOAT_TYPES:
                sizes[node.output[0]] = math.prod(attr.t.dims)
            elif attr.name == "value_floats":
                sizes[node.output[0]] = len(attr.floats)
            elif attr.name == "value_float":
                sizes[node.output[0]] = 1
    return sizes
