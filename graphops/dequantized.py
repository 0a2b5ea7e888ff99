"""Constants stored quantized behind ``DequantizeLinear`` (the QDQ format): seen through, sliced at the source.

A QDQ model keeps a conv's weight as an int8/uint8 initializer ``w_q`` and computes the float weight
at run time: ``DequantizeLinear(w_q, scale, zero_point[, axis])``. The float weight has ``w_q``'s
shape, so analysis reads the weight's shape through the DequantizeLinear, and a slice of the float
weight along some axis is a slice of ``w_q`` along that axis, plus a slice of the scale and zero
point when they are per-channel along that same axis (per-tensor ones, and per-channel ones along
another axis, stay). The pruned model stays quantized in the same precision.

Patterns not handled here (a dequantized weight shared by several ops, blocked quantization, a
weight computed by QuantizeLinear at run time) are declined with a reason naming the node.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import numpy_helper

from onnxprune.graphops.errors import UnsupportedPattern

DEQUANTIZE = "DequantizeLinear"


@dataclass(frozen=True)
class DequantizedConstant:
    """``node`` (a DequantizeLinear) turns the constant ``node.inputs[0]`` into the float tensor it feeds."""

    node: gs.Node
    shape: tuple[int, ...]
    axis: int | None  # the axis per-channel scales follow; None when per-tensor

    @property
    def has_zero_point(self) -> bool:
        return len(self.node.inputs) > 2 and self.node.inputs[2] is not None and bool(self.node.inputs[2].name)


class DeclinedSlice(UnsupportedPattern):
    """A constant behind DequantizeLinear that cannot be sliced safely; the message names the node."""


def _describe(node: gs.Node) -> str:
    return f"{node.op} node '{node.name}'"


def dequantizer_of(tensor: gs.Tensor | None) -> gs.Node | None:
    """The DequantizeLinear producing ``tensor``, whatever its inputs; None for anything else."""
    if not isinstance(tensor, gs.Variable) or len(tensor.inputs) != 1:
        return None
    node = tensor.inputs[0]
    return node if node.op == DEQUANTIZE and node.domain in (None, "", "ai.onnx") else None


def dequantized_constant(tensor: gs.Tensor | None) -> DequantizedConstant | None:
    """``tensor`` as a quantized constant behind DequantizeLinear, or None when it is not one.

    Raises :class:`DeclinedSlice` for a DequantizeLinear of a constant whose layout we do not follow
    (blocked quantization, scales that are not constants or do not fit the data).
    """
    node = dequantizer_of(tensor)
    if node is None or not isinstance(node.inputs[0], gs.Constant):
        return None
    shape = tuple(int(d) for d in node.inputs[0].shape)
    scale = node.inputs[1]
    if not isinstance(scale, gs.Constant) or (
        len(node.inputs) > 2
        and node.inputs[2] is not None
        and node.inputs[2].name
        and not isinstance(node.inputs[2], gs.Constant)
    ):
        raise DeclinedSlice(f"{_describe(node)} dequantizes with scales computed at run time")
    if int(node.attrs.get("block_size", 0)):
        raise DeclinedSlice(f"{_describe(node)} uses blocked quantization")
    scale_shape = tuple(int(d) for d in scale.shape)
    if int(np.prod(scale_shape)) == 1 and len(scale_shape) <= 1:
        return DequantizedConstant(node, shape, None)
    axis = int(node.attrs.get("axis", 1))
    axis = axis + len(shape) if axis < 0 else axis
    if len(scale_shape) != 1 or not 0 <= axis < len(shape) or scale_shape[0] != shape[axis]:
        raise DeclinedSlice(f"{_describe(node)} has scales of shape {list(scale_shape)} for data {list(shape)}")
    return DequantizedConstant(node, shape, axis)


def quantized_constant_shape(tensor: gs.Tensor | None) -> tuple[int, ...] | None:
    """The shape of the float tensor a DequantizeLinear computes from a constant (its data's shape).

    Raises :class:`UnsupportedPattern` (the reading node freezes) when a grouped conv reads it as its
    weight: surgery slices grouped weights per conv group, which it does for float weights only.
    """
    node = dequantizer_of(tensor)
    if tensor is None or node is None or not isinstance(node.inputs[0], gs.Constant):
        return None
    shape = tuple(int(d) for d in node.inputs[0].shape)
    for reader in tensor.outputs:
        if len(reader.inputs) > 1 and reader.inputs[1] is tensor and _grouped_filter(reader, shape):
            raise UnsupportedPattern(
                f"{_describe(reader)} is a grouped conv with a quantized weight "
                f"({_describe(node)}), which onnxprune does not slice per group"
            )
    return shape


def quantized_constant_values(tensor: gs.Tensor | None) -> np.ndarray | None:
    """The stored (quantized) values behind a DequantizeLinear of a constant: shapes, never arithmetic."""
    node = dequantizer_of(tensor)
    if node is None or not isinstance(node.inputs[0], gs.Constant):
        return None
    return np.asarray(node.inputs[0].values)


def _grouped_filter(node: gs.Node, shape: tuple[int, ...]) -> bool:
    """A grouped (not depthwise) conv: surgery slices its weight per conv group, in float only."""
    from onnxprune.graphops.ops import handler_for  # the handlers read quantized constants through this module

    groups = int(node.attrs.get("group", 1))
    handler = handler_for(node.op, node.domain)
    if handler.role != "filter" or groups == 1 or len(shape) < 2:
        return False
    weight_reader = onnx.helper.make_node(node.op, ["data", "weight"], ["output"], group=groups)
    return not handler.channels_apart(weight_reader, {"weight": shape}.get)


def quantized_slice_targets(consumer: gs.Node, index: int, axis: int) -> list[tuple[gs.Node, int, int]]:
    """Where a slice of ``consumer``'s dequantized input ``index`` along ``axis`` really happens.

    Returns (node, input index, axis) triples: the quantized data, then the scale and zero point
    when they are per-channel along ``axis``. Empty when the input is not a dequantized constant.
    Raises :class:`DeclinedSlice`, naming the nodes, for a pattern that cannot be sliced safely.
    """
    tensor = consumer.inputs[index]
    try:
        constant = dequantized_constant(tensor)
    except DeclinedSlice as declined:
        raise DeclinedSlice(f"{_describe(consumer)} reads a quantized constant it cannot slice: {declined}") from None
    if constant is None:
        return []
    dq = constant.node
    readers = len(tensor.outputs)
    if readers != 1:
        raise DeclinedSlice(f"the quantized constant dequantized by {_describe(dq)} is read by {readers} ops")
    if _grouped_filter(consumer, constant.shape):
        raise DeclinedSlice(
            f"{_describe(consumer)} is a grouped conv with a quantized weight "
            f"({_describe(dq)}), which onnxprune does not slice per group"
        )
    targets = [(dq, 0, axis)]
    if constant.axis == axis:
        targets.append((dq, 1, 0))
        if constant.has_zero_point:
            targets.append((dq, 2, 0))
    return targets


def zero_point_fill(dq: gs.Node, values: np.ndarray) -> np.ndarray:
    """An array shaped like ``values`` (dq's quantized data) holding the value that dequantizes to 0."""
    zero = np.zeros((), dtype=values.dtype)
    if len(dq.inputs) > 2 and isinstance(dq.inputs[2], gs.Constant):
        zero = np.asarray(dq.inputs[2].values).astype(values.dtype)
    if zero.size <= 1:
        return np.full(values.shape, zero.reshape(()), dtype=values.dtype)
    axis = int(dq.attrs.get("axis", 1))
    axis = axis + values.ndim if axis < 0 else axis
    shape = [1] * values.ndim
    shape[axis] = zero.size
    return np.broadcast_to(zero.reshape(shape), values.shape)


def _dequantize(data: np.ndarray, scale: np.ndarray, zero: np.ndarray | None, axis: int) -> np.ndarray:
    """DequantizeLinear in numpy, per-tensor or per-channel (for scoring filters; never written back)."""
    data = data.astype(np.float64)
    zero = np.zeros(1) if zero is None else zero.astype(np.float64)
    if scale.size > 1:
        shape = [1] * data.ndim
        shape[axis] = scale.size
        scale, zero = scale.reshape(shape), zero.reshape(shape) if zero.size > 1 else zero.reshape(())
    values: np.ndarray = (data - zero) * scale
    return values


def float_weight_reader(model: onnx.ModelProto) -> Callable[[str], np.ndarray | None]:
    """Reads the float value of a weight by tensor name: an initializer, or one behind DequantizeLinear.

    Criteria rank filters by their float weights; for a QDQ model those are the dequantized ones.
    Arrays are built on demand (a ResNet-50 need not be decoded whole to score a few producers).
    """
    arrays = {init.name: init for init in model.graph.initializer}
    dequantizers = {
        node.output[0]: node
        for node in model.graph.node
        if node.op_type == DEQUANTIZE and node.domain in ("", "ai.onnx") and node.output
    }

    def read(name: str) -> np.ndarray | None:
        if name in arrays:
            return numpy_helper.to_array(arrays[name])
        node = dequantizers.get(name)
        if node is None or any(a.name == "block_size" and a.i for a in node.attribute):
            return None
        inputs = list(node.input) + [""] * (3 - len(node.input))
        if inputs[0] not in arrays or inputs[1] not in arrays or (inputs[2] and inputs[2] not in arrays):
            return None
        data = numpy_helper.to_array(arrays[inputs[0]])
        axis = next((int(a.i) for a in node.attribute if a.name == "axis"), 1)
        zero = numpy_helper.to_array(arrays[inputs[2]]) if inputs[2] else None
        scale = numpy_helper.to_array(arrays[inputs[1]]).astype(np.float64)
        return _dequantize(data, scale, zero, axis + data.ndim if axis < 0 else axis)

    return read


def first_quantization_node(model: onnx.ModelProto) -> onnx.NodeProto | None:
    """The first QuantizeLinear or DequantizeLinear of the main graph: the model is already QDQ."""
    return next(
        (
            node
            for node in model.graph.node
            if node.op_type in ("QuantizeLinear", DEQUANTIZE) and node.domain in ("", "ai.onnx")
        ),
        None,
    )
