"""Shape and indexing ops: Reshape, Concat, Slice, Gather, reductions, casts and constants.

Shape arguments arrive as int64 tensors and are read as Python ints: the executor runs eagerly,
so dynamic shapes (Shape -> Gather -> Concat -> Reshape) just work.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import onnx
import torch
from onnx import helper, numpy_helper

from onnxprune.roundtrip.ops import OpContext, OpFn, OpInputs, attrs, optional, register, required


def _ints(tensor: torch.Tensor) -> list[int]:
    return [int(v) for v in tensor.reshape(-1).tolist()]


def _axes(node: onnx.NodeProto, inputs: OpInputs, ctx: OpContext, since: int, index: int = 1) -> list[int] | None:
    """Axes as an attribute (before opset ``since``) or as input ``index`` (from it on)."""
    if ctx.opset < since:
        a = attrs(node)
        return a.integers("axes") if "axes" in a else None
    axes = optional(inputs, index)
    if axes is not None and axes.numel():
        return _ints(axes)
    return None


@register("Reshape")
def reshape(node: onnx.NodeProto, inputs: OpInputs, ctx: OpContext) -> list[torch.Tensor]:
    x = required(inputs, 0)
    shape = _ints(required(inputs, 1)) if len(inputs) > 1 else attrs(node).integers("shape")
    allowzero = attrs(node).integer("allowzero", 0)
    shape = [x.shape[i] if d == 0 and not allowzero else d for i, d in enumerate(shape)]
    # A graph exported at a fixed batch bakes it into its Reshape shapes: read it as the batch.
    if (
        ctx.static_batch is not None
        and ctx.batch is not None
        and ctx.batch != ctx.static_batch
        and shape
        and shape[0] == ctx.static_batch
        and x.dim()
        and x.shape[0] == ctx.batch
    ):
        shape[0] = ctx.batch
    return [x.reshape(shape)]


@register("Flatten")
def flatten(node: onnx.NodeProto, inputs: OpInputs, ctx: OpContext) -> list[torch.Tensor]:
    x = required(inputs, 0)
    axis = attrs(node).integer("axis", 1) % (x.dim() + 1) if x.dim() else 0
    return [x.reshape(int(np.prod(x.shape[:axis])), -1)]


@register("Transpose")
def transpose(node: onnx.NodeProto, inputs: OpInputs, ctx: OpContext) -> list[torch.Tensor]:
    x = required(inputs, 0)
    a = attrs(node)
    perm = a.integers("perm") if "perm" in a else list(reversed(range(x.dim())))
    return [x.permute(*perm)]


@register("Concat")
def concat(node: onnx.NodeProto, inputs: OpInputs, ctx: OpContext) -> list[torch.Tensor]:
    return [torch.cat([t for t in inputs if t is not None], dim=attrs(node).integer("axis"))]


@register("Split")
def split(node: onnx.NodeProto, inputs: OpInputs, ctx: OpContext) -> list[torch.Tensor]:
    x = required(inputs, 0)
    a = attrs(node)
    axis = a.integer("axis", 0)
    count = len(node.output)
    sizes: list[int] | None
    if ctx.opset < 13:
        sizes = a.integers("split") if "split" in a else None
    else:
        split_input = optional(inputs, 1)
        sizes = _ints(split_input) if split_input is not None else None
    if sizes is None:
        length = x.shape[axis]
        chunk = -(-length // count)
        sizes = [min(chunk, length - i * chunk) for i in range(count)]
    return list(torch.split(x, sizes, dim=axis))


@register("Slice")
def slice_(node: onnx.NodeProto, inputs: OpInputs, ctx: OpContext) -> list[torch.Tensor]:
    x = required(inputs, 0)
    if ctx.opset < 10:
        a = attrs(node)
        starts, ends = a.integers("starts"), a.integers("ends")
        axes = a.integers("axes", range(len(starts)))
        steps = [1] * len(starts)
    else:
        starts, ends = _ints(required(inputs, 1)), _ints(required(inputs, 2))
        axes_input, steps_input = optional(inputs, 3), optional(inputs, 4)
        axes = _ints(axes_input) if axes_input is not None else list(range(len(starts)))
        steps = _ints(steps_input) if steps_input is not None else [1] * len(starts)
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis %= x.dim()
        length = x.shape[axis]
        if step > 0:
            begin, stop = slice(start, end).indices(length)[:2]
            x = x.narrow(axis, begin, max(0, stop - begin))[(slice(None),) * axis + (slice(None, None, step),)]
        else:  # torch has no negative steps: flip, then slice forward
            begin, stop, _ = slice(start, end, step).indices(length)
            index = torch.arange(begin, stop, step, dtype=torch.long)
            x = x.index_select(axis, index)
    return [x]


@register("Squeeze")
def squeeze(node: onnx.NodeProto, inputs: OpInputs, ctx: OpContext) -> list[torch.Tensor]:
    x = required(inputs, 0)
    axes = _axes(node, inputs, ctx, since=13)
    if axes is None:
        return [x.squeeze()]
    keep = [d for i, d in enumerate(x.shape) if i not in {a % x.dim() for a in axes}]
    return [x.reshape(keep)]


@register("Unsqueeze")
def unsqueeze(node: onnx.NodeProto, inputs: OpInputs, ctx: OpContext) -> list[torch.Tensor]:
    x = required(inputs, 0)
    axes = _axes(node, inputs, ctx, since=13)
    if axes is None:
        raise ValueError("Unsqueeze has no axes")
    for axis in sorted(a % (x.dim() + len(axes)) for a in axes):
        x = x.unsqueeze(axis)
    return [x]


@register("Gather")
def gather(node: onnx.NodeProto, inputs: OpInputs, ctx: OpContext) -> list[torch.Tensor]:
    data, index = required(inputs, 0), required(inputs, 1)
    axis = attrs(node).integer("axis", 0) % data.dim()
    index = index.long()
    index = torch.where(index < 0, index + data.shape[axis], index)
    picked = data.index_select(axis, index.reshape(-1))
    return [picked.reshape((*data.shape[:axis], *index.shape, *data.shape[axis + 1 :]))]  # a tuple: () for a scalar


@register("Shape")
def shape(node: onnx.NodeProto, inputs: OpInputs, ctx: OpContext) -> list[torch.Tensor]:
    a = attrs(node)
    dims = list(required(inputs, 0).shape)
    start, end = a.integer("start", 0), a.integer("end") if "end" in a else None
    return [torch.tensor(dims[start:end], dtype=torch.int64)]


@register("Size")
def size(node: onnx.NodeProto, inputs: OpInputs, ctx: OpContext) -> list[torch.Tensor]:
    return [torch.tensor(required(inputs, 0).numel(), dtype=torch.int64)]


def _torch_dtype(dtype: np.dtype) -> torch.dtype:
    """torch's dtype for a NumPy dtype, read off an empty (writable) array: asking ``torch.from_numpy``
    of a read-only array (an attribute's tensor from raw bytes) warns, and copying it only for its dtype is waste."""
    return torch.from_numpy(np.empty(0, dtype=dtype)).dtype


@register("Cast")
def cast(node: onnx.NodeProto, inputs: OpInputs, ctx: OpContext) -> list[torch.Tensor]:
    dtype = helper.tensor_dtype_to_np_dtype(attrs(node).integer("to"))
    return [required(inputs, 0).to(_torch_dtype(dtype))]


@register("Constant")
def constant(node: onnx.NodeProto, inputs: OpInputs, ctx: OpContext) -> list[torch.Tensor]:
    a = attrs(node)
    array: npt.NDArray[np.generic]
    if "value" in a:
        array = numpy_helper.to_array(a.tensor("value"))
    elif "value_float" in a:
        array = np.array(a.number("value_float"), dtype=np.float32)
    elif "value_int" in a:
        array = np.array(a.integer("value_int"), dtype=np.int64)
    elif "value_floats" in a:
        array = np.array(a.numbers("value_floats"), dtype=np.float32)
    elif "value_ints" in a:
        array = np.array(a.integers("value_ints"), dtype=np.int64)
    else:
        raise ValueError(f"Constant '{node.name}' has no supported value attribute")
    return [torch.from_numpy(np.array(array))]


@register("ConstantOfShape")
def constant_of_shape(node: onnx.NodeProto, inputs: OpInputs, ctx: OpContext) -> list[torch.Tensor]:
    a = attrs(node)
    array = numpy_helper.to_array(a.tensor("value")) if "value" in a else np.zeros(1, np.float32)
    return [torch.full(_ints(required(inputs, 0)), array.reshape(-1)[0].item(), dtype=_torch_dtype(array.dtype))]


@register("Expand")
def expand(node: onnx.NodeProto, inputs: OpInputs, ctx: OpContext) -> list[torch.Tensor]:
    x = required(inputs, 0)
    target = _ints(required(inputs, 1))
    if x.dtype != torch.bool:
        return [x * torch.ones(target, dtype=x.dtype)]
    return [x.expand(np.broadcast_shapes(x.shape, target))]  # numpy's rules are ONNX's (and typed, unlike torch's)


@register("Tile")
def tile(node: onnx.NodeProto, inputs: OpInputs, ctx: OpContext) -> list[torch.Tensor]:
    return [required(inputs, 0).repeat(*_ints(required(inputs, 1)))]


@register("Range")
def range_(node: onnx.NodeProto, inputs: OpInputs, ctx: OpContext) -> list[torch.Tensor]:
    start, limit, delta = (required(inputs, index).item() for index in range(len(inputs)))
    return [torch.arange(start, limit, delta, dtype=required(inputs, 0).dtype)]


Reduction = Callable[[torch.Tensor, list[int], bool], torch.Tensor]


def _reduce(fn: Reduction, since: int = 18) -> OpFn:
    def run(node: onnx.NodeProto, inputs: OpInputs, ctx: OpContext) -> list[torch.Tensor]:
        x = required(inputs, 0)
        a = attrs(node)
        axes = _axes(node, inputs, ctx, since=since)
        keep = bool(a.integer("keepdims", 1))
        if axes is None:
            if a.integer("noop_with_empty_axes", 0):
                return [x]
            axes = list(range(x.dim()))
        return [fn(x, axes, keep)]

    return run


register("ReduceMean")(_reduce(lambda x, axes, keep: x.mean(dim=axes, keepdim=keep)))
register("ReduceSum")(_reduce(lambda x, axes, keep: x.sum(dim=axes, keepdim=keep), since=13))
register("ReduceMax")(_reduce(lambda x, axes, keep: x.amax(dim=axes, keepdim=keep)))
register("ReduceMin")(_reduce(lambda x, axes, keep: x.amin(dim=axes, keepdim=keep)))
register("ReduceL2")(_reduce(lambda x, axes, keep: x.pow(2).sum(dim=axes, keepdim=keep).sqrt()))


@register("ArgMax")
def argmax(node: onnx.NodeProto, inputs: OpInputs, ctx: OpContext) -> list[torch.Tensor]:
    a = attrs(node)
    return [required(inputs, 0).argmax(dim=a.integer("axis", 0), keepdim=bool(a.integer("keepdims", 1)))]


@register("DepthToSpace")
def depth_to_space(node: onnx.NodeProto, inputs: OpInputs, ctx: OpContext) -> list[torch.Tensor]:
    x = required(inputs, 0)
    a = attrs(node)
    b = a.integer("blocksize")
    n, c, h, w = x.shape
    if a.text("mode", "DCR") == "DCR":
        y = x.reshape(n, b, b, c // (b * b), h, w).permute(0, 3, 4, 1, 5, 2)
    else:
        y = x.reshape(n, c // (b * b), b, b, h, w).permute(0, 1, 4, 2, 5, 3)
    return [y.reshape(n, c // (b * b), h * b, w * b)]
