"""Tensor shapes where onnx's own inference stops short.

Raw exports compute shapes at run time (``Reshape(x, Shape(y))``); with concrete input shapes
those small integer subgraphs can be evaluated, and old converters' experimental ops keep known
shapes. Used for MACs and for dependency analysis, so both see the same shapes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from onnxprune.graphops.shapes import Shape, infer_shapes, skeleton

# Ops from before onnx had shape inference for them (opset 7 converters) that keep their input's shape.
_SHAPE_PRESERVING_LEGACY = frozenset({"ImageScaler", "Affine", "ScaledTanh", "ParametricSoftplus", "ThresholdedRelu"})
# Small integer ops that shape subgraphs (Shape -> Gather -> Concat -> Reshape) are made of.
_SHAPE_ARITHMETIC = frozenset(
    {
        "Gather",
        "Unsqueeze",
        "Squeeze",
        "Concat",
        "Cast",
        "Slice",
        "Add",
        "Sub",
        "Mul",
        "Div",
        "Identity",
        "Floor",
        "Ceil",
        # transformers' expand(batch, seq) of buffered token types: Reshape, Equal, Where, ConstantOfShape
        "Reshape",
        "Equal",
        "Where",
        "ConstantOfShape",
    }
)
_MAX_FOLDED_ELEMENTS = 64


def complete_shapes(model: onnx.ModelProto, rounds: int = 16) -> dict[str, Shape]:
    """``infer_shapes``, plus what it cannot reach on raw exports: shape subgraphs computed from
    ``Shape`` (old opsets have no data propagation, and a dynamic batch defeats it in new ones) and
    legacy experimental ops (ImageScaler, Crop). Each round pins what was learned as value_info or
    Constant nodes, on a weightless copy, and infers again."""
    work = skeleton(model)
    shapes = infer_shapes(work)
    for _ in range(rounds):
        if not (
            _pin_legacy_shapes(work, shapes) | _pin_handler_shapes(work, shapes) | _fold_shape_values(work, shapes)
        ):
            break
        shapes = infer_shapes(work)
    return shapes


def _known(shape: Shape | None) -> bool:
    return shape is not None and all(isinstance(d, int) and d >= 0 for d in shape)


def _static(shape: Shape | None) -> tuple[int, ...] | None:
    """``shape`` when every dim is a known size, else None."""
    if shape is None or not _known(shape):
        return None
    return tuple(d for d in shape if isinstance(d, int))


def _pin_handler_shapes(model: onnx.ModelProto, shapes: Mapping[str, Shape]) -> bool:
    """Outputs of ops onnx has no schema for (onnxruntime's fused transformer ops, and its
    LayerNormalization below opset 17, which the optimizer writes into the standard domain): their
    handlers know the shapes (``OpHandler.output_shapes``)."""
    from onnxprune.graphops.ops import handler_for  # the ops package reads shapes; shapes need it only here

    changed = False
    for node in model.graph.node:
        if all(_known(shapes.get(name)) for name in node.output if name):
            continue
        outputs = handler_for(node.op_type, node.domain).output_shapes(node, shapes.get)
        for name, out in zip(node.output, outputs):
            if name and out is not None and _known(out) and not _known(shapes.get(name)):
                model.graph.value_info.append(
                    onnx.helper.make_tensor_value_info(name, _float_elem_type(model, node), list(out))
                )
                changed = True
    return changed


def _pin_legacy_shapes(model: onnx.ModelProto, shapes: Mapping[str, Shape]) -> bool:
    changed = False
    for node in model.graph.node:
        if not node.input or not node.output or _known(shapes.get(node.output[0])):
            continue
        data = _static(shapes.get(node.input[0]))
        if data is None:
            continue
        out: list[int] | None = None
        if node.op_type in _SHAPE_PRESERVING_LEGACY:
            out = list(data)
        elif node.op_type == "Crop" and len(data) == 4:
            attrs = {attr.name: list(attr.ints) for attr in node.attribute}
            n, c, h, w = data
            if attrs.get("scale"):
                out = [n, c, *attrs["scale"]]
            elif len(attrs.get("border", [])) == 4:
                left, top, right, bottom = attrs["border"]
                out = [n, c, h - top - bottom, w - left - right]
        if out is not None:
            model.graph.value_info.append(
                onnx.helper.make_tensor_value_info(node.output[0], _elem_type(model, node.input[0]), out)
            )
            changed = True
    return changed


def _fold_shape_values(model: onnx.ModelProto, shapes: Mapping[str, Shape]) -> bool:
    """Replace small integer tensors computable from known shapes by Constant nodes."""
    values: dict[str, np.ndarray] = {
        init.name: numpy_helper.to_array(init)
        for init in model.graph.initializer
        if init.data_type in (TensorProto.INT64, TensorProto.INT32) and math.prod(init.dims) <= _MAX_FOLDED_ELEMENTS
    }
    folded: dict[int, np.ndarray] = {}
    for index, node in enumerate(model.graph.node):
        if len(node.output) != 1 or node.domain not in ("", "ai.onnx"):
            continue
        value: np.ndarray | None = None
        if node.op_type == "Constant":
            value = _small_int_constant(node)
        elif node.op_type == "Shape" and not node.attribute and _known(shapes.get(node.input[0])):
            value = np.array(shapes[node.input[0]], dtype=np.int64)
        elif node.op_type in _SHAPE_ARITHMETIC and all(name in values for name in node.input if name):
            value = _evaluate(model, node, values)
        if value is None or value.size > _MAX_FOLDED_ELEMENTS or value.dtype.kind not in "iub":
            continue
        values[node.output[0]] = value
        if node.op_type != "Constant":
            folded[index] = value
    for index, value in folded.items():
        node = model.graph.node[index]
        model.graph.node[index].CopyFrom(
            onnx.helper.make_node(
                "Constant", [], [node.output[0]], name=node.name, value=numpy_helper.from_array(value)
            )
        )
    return bool(folded)


def _small_int_constant(node: onnx.NodeProto) -> np.ndarray | None:
    for attr in node.attribute:
        if attr.name == "value" and attr.t.data_type in (TensorProto.INT64, TensorProto.INT32):
            if math.prod(attr.t.dims) <= _MAX_FOLDED_ELEMENTS:
                return numpy_helper.to_array(attr.t)
        if attr.name == "value_ints":
            return np.array(list(attr.ints), dtype=np.int64)
        if attr.name == "value_int":
            return np.array(attr.i, dtype=np.int64)
    return None


def _evaluate(model: onnx.ModelProto, node: onnx.NodeProto, values: Mapping[str, np.ndarray]) -> np.ndarray | None:
    inputs = [name for name in node.input if name]
    graph = onnx.helper.make_graph(
        [node],
        "fold",
        [_numpy_value_info(name, values[name]) for name in inputs],
        [onnx.helper.make_empty_tensor_value_info(node.output[0])],
    )
    single = onnx.helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    from onnx.reference import ReferenceEvaluator  # imported when needed: it costs every process ~0.1 s

    try:
        (result,) = ReferenceEvaluator(single).run(None, {name: values[name] for name in inputs})
    except Exception:  # a shape computation we cannot evaluate stays unknown, as before
        return None
    return np.asarray(result)


def _numpy_value_info(name: str, value: np.ndarray) -> onnx.ValueInfoProto:
    return onnx.helper.make_tensor_value_info(name, onnx.helper.np_dtype_to_tensor_dtype(value.dtype), value.shape)


_FLOAT_TYPES = frozenset({TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16})


def _float_elem_type(model: onnx.ModelProto, node: onnx.NodeProto) -> int:
    """The floating type a fused op computes in: that of its first floating input (ids and masks are not)."""
    types = {init.name: init.data_type for init in model.graph.initializer}
    for value in list(model.graph.input) + list(model.graph.value_info):
        types[value.name] = value.type.tensor_type.elem_type
    return next((types[name] for name in node.input if types.get(name) in _FLOAT_TYPES), TensorProto.FLOAT)


def _elem_type(model: onnx.ModelProto, name: str) -> int:
    for value in list(model.graph.input) + list(model.graph.value_info):
        if value.name == name and value.type.tensor_type.elem_type:
            return int(value.type.tensor_type.elem_type)
    return TensorProto.FLOAT
