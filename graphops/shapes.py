"""Tensor shapes: fixing symbolic input dims and reading inferred shapes back."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import onnx
from onnx import shape_inference

Dim = int | str | None
Shape = tuple[Dim, ...]


def _type_shape(value_type: onnx.TypeProto) -> Shape | None:
    if not value_type.HasField("tensor_type") or not value_type.tensor_type.HasField("shape"):
        return None
    dims: list[Dim] = []
    for dim in value_type.tensor_type.shape.dim:
        if dim.HasField("dim_value"):
            dims.append(dim.dim_value)
        elif dim.HasField("dim_param"):
            dims.append(dim.dim_param)
        else:
            dims.append(None)
    return tuple(dims)


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The real inputs: graph inputs that are not initializers (old exporters list both)."""
    initializers = {init.name for init in model.graph.initializer}
    return [inp for inp in model.graph.input if inp.name not in initializers]


def declared_input_shapes(model: onnx.ModelProto) -> dict[str, Shape | None]:
    return {inp.name: _type_shape(inp.type) for inp in graph_inputs(model)}


def resolve_input_shapes(
    model: onnx.ModelProto, given: Mapping[str, Sequence[int]] | None = None
) -> dict[str, list[int]]:
    """Concrete shapes for every input: the user's, else the declared ones, with symbolic dims
    probed (see :mod:`graphops.input_shapes`, whose ``choose_input_shapes`` also says how)."""
    from onnxprune.graphops.input_shapes import choose_input_shapes  # it builds on this module

    return choose_input_shapes(model, given).shapes


def with_input_shapes(model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]]) -> onnx.ModelProto:
    """A weightless copy of ``model`` (see :func:`skeleton`) whose inputs have the given shapes.

    Recorded intermediate shapes with a dim that is not a positive number were inferred at the
    declared symbolic sizes (a pruned model's, at a paddle2onnx ``-1`` batch: ``[-1, C, 'unk__0', ...]``),
    and shape inference keeps a recorded dim over the one it would infer: those are dropped, their
    types kept. Fully concrete ones stay (they hold for any input size, or the inputs are fixed)."""
    fixed = skeleton(model)
    for inp in fixed.graph.input:
        if inp.name not in input_shapes:
            continue
        shape = inp.type.tensor_type.shape
        shape.ClearField("dim")
        for value in input_shapes[inp.name]:
            shape.dim.add().dim_value = int(value)
    for value in fixed.graph.value_info:
        recorded = _type_shape(value.type)
        if recorded is not None and not all(isinstance(d, int) and d > 0 for d in recorded):
            value.type.tensor_type.ClearField("shape")
    return fixed


# Initializers with more elements than this lose their data in a skeleton; small ones (shape
# vectors, axes, scalars) keep it, since data propagation reads them.
_SKELETON_KEEP_ELEMENTS = 1024


def model_shell(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every field of ``model`` but its graph (copying a ModelProto whole copies all weights)."""
    shell = onnx.ModelProto()
    for field, value in model.ListFields():
        if field.name == "graph":
            continue
        if hasattr(value, "extend"):  # a repeated field
            getattr(shell, field.name).extend(value)
        elif hasattr(value, "CopyFrom"):  # a message field
            getattr(shell, field.name).CopyFrom(value)
        else:
            setattr(shell, field.name, value)
    return shell


def skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model without its large weights: shape inference needs their dims, not their bytes,
    and serialising a 100 MB model for it costs more than the whole analysis."""
    light = model_shell(model)
    graph, target = model.graph, light.graph
    target.name = graph.name
    for name in ("node", "input", "output", "value_info"):
        getattr(target, name).extend(getattr(graph, name))
    for init in graph.initializer:
        count = 1
        for dim in init.dims:
            count *= dim
        if count <= _SKELETON_KEEP_ELEMENTS:
            target.initializer.append(init)
        else:
            target.initializer.add(name=init.name, data_type=init.data_type, dims=init.dims)
    return light


def inferred_value_info(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """onnx's inferred shapes of the intermediate tensors, computed on a skeleton of ``model``.

    A model declaring ``-1`` for its free dims (paddle2onnx does) infers sizes such as ``[-1, 8, 0, 0]``
    from them: a shape with a dim below 1 is not recorded (the tensor keeps its type)."""
    inferred = shape_inference.infer_shapes(skeleton(model), check_type=False, strict_mode=False, data_prop=True)
    values = list(inferred.graph.value_info)
    for value in values:
        shape = _type_shape(value.type)
        if shape is not None and any(isinstance(d, int) and d < 1 for d in shape):
            value.type.tensor_type.ClearField("shape")
    return values


def infer_shapes(model: onnx.ModelProto) -> dict[str, Shape]:
    """Shapes of every tensor onnx's inference can reach (inputs, outputs, intermediates, initializers)."""
    inferred = shape_inference.infer_shapes(skeleton(model), check_type=False, strict_mode=False, data_prop=True)
    shapes: dict[str, Shape] = {}
    graph = inferred.graph
    for value in list(graph.input) + list(graph.value_info) + list(graph.output):
        shape = _type_shape(value.type)
        if shape is not None:
            shapes[value.name] = shape
    for init in graph.initializer:
        shapes[init.name] = tuple(init.dims)
    return shapes
