"""Shape and indexing ops: Reshape, Concat, Slice, Gather, reductions, casts and constants.

Shape arguments arrive as int64 tensors and are read as Python ints: the executor runs eagerly,
so dynamic shapes (Shape -> Gather -> Concat -> Reshape) just work.
"""

from __future__ import annotations

import numpy as np
import torch
from onnx import helper, numpy_helper

from roundtrip.ops import attrs, register


def _ints(tensor) -> list[int]:
    return [int(v) for v in tensor.reshape(-1).tolist()]


def _axes(node, inputs, ctx, since: int, index: int = 1) -> list[int] | None:
    """Axes as an attribute (before opset ``since``) or as input ``index`` (from it on)."""
    if ctx.opset < since:
        value = attrs(node).get("axes")
        return None if value is None else list(value)
    if len(inputs) > index and inputs[index] is not None and inputs[index].numel():
        return _ints(inputs[index])
    return None


@register("Reshape")
def reshape(node, inputs, ctx):
    x = inputs[0]
    shape = _ints(inputs[1]) if len(inputs) > 1 else list(attrs(node)["shape"])
    allowzero = int(attrs(node).get("allowzero", 0))
    shape = [x.shape[i] if d == 0 and not allowzero else d for i, d in enumerate(shape)]
    # A graph exported at a fixed batch bakes it into its Reshape shapes: read it as the batch.
    if (ctx.static_batch is not None and ctx.batch is not None and ctx.batch != ctx.static_batch
            and shape and shape[0] == ctx.static_batch and x.dim() and x.shape[0] == ctx.batch):
        shape[0] = ctx.batch
    return [x.reshape(shape)]


@register("Flatten")
def flatten(node, inputs, ctx):
    x = inputs[0]
    axis = int(attrs(node).get("axis", 1)) % (x.dim() + 1) if x.dim() else 0
    return [x.reshape(int(np.prod(x.shape[:axis])), -1)]


@register("Transpose")
def transpose(node, inputs, ctx):
    x = inputs[0]
    perm = attrs(node).get("perm")
    return [x.permute(*(list(perm) if perm is not None else reversed(range(x.dim()))))]


@register("Concat")
def concat(node, inputs, ctx):
    return [torch.cat([t for t in inputs if t is not None], dim=int(attrs(node)["axis"]))]


@register("Split")
def split(node, inputs, ctx):
    x = inputs[0]
    a = attrs(node)
    axis = int(a.get("axis", 0))
    count = len(node.output)
    if ctx.opset < 13:
        sizes = list(a["split"]) if "split" in a else None
    else:
        sizes = _ints(inputs[1]) if len(inputs) > 1 and inputs[1] is not None else None
    if sizes is None:
        length = x.shape[axis]
        chunk = -(-length // count)
        sizes = [min(chunk, length - i * chunk) for i in range(count)]
    return list(torch.split(x, sizes, dim=axis))


@register("Slice")
def slice_(node, inputs, ctx):
    x = inputs[0]
    if ctx.opset < 10:
        a = attrs(node)
        starts, ends = list(a["starts"]), list(a["ends"])
        axes = list(a.get("axes", range(len(starts))))
        steps = [1] * len(starts)
    else:
        starts, ends = _ints(inputs[1]), _ints(inputs[2])
        axes = _ints(inputs[3]) if len(inputs) > 3 and inputs[3] is not None else list(range(len(starts)))
        steps = _ints(inputs[4]) if len(inputs) > 4 and inputs[4] is not None else [1] * len(starts)
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
def squeeze(node, inputs, ctx):
    x = inputs[0]
    axes = _axes(node, inputs, ctx, since=13)
    if axes is None:
        return [x.squeeze()]
    keep = [d for i, d in enumerate(x.shape) if i not in {a % x.dim() for a in axes}]
    return [x.reshape(keep)]


@register("Unsqueeze")
def unsqueeze(node, inputs, ctx):
    x = inputs[0]
    axes = _axes(node, inputs, ctx, since=13)
    for axis in sorted(a % (x.dim() + len(axes)) for a in axes):
        x = x.unsqueeze(axis)
    return [x]


@register("Gather")
def gather(node, inputs, ctx):
    data, index = inputs
    axis = int(attrs(node).get("axis", 0)) % data.dim()
    index = index.long()
    index = torch.where(index < 0, index + data.shape[axis], index)
    picked = data.index_select(axis, index.reshape(-1))
    return [picked.reshape(*data.shape[:axis], *index.shape, *data.shape[axis + 1:])]


@register("Shape")
def shape(node, inputs, ctx):
    a = attrs(node)
    dims = list(inputs[0].shape)
    start, end = int(a.get("start", 0)), a.get("end")
    return [torch.tensor(dims[start:None if end is None else int(end)], dtype=torch.int64)]


@register("Size")
def size(node, inputs, ctx):
    return [torch.tensor(inputs[0].numel(), dtype=torch.int64)]


@register("Cast")
def cast(node, inputs, ctx):
    dtype = helper.tensor_dtype_to_np_dtype(int(attrs(node)["to"]))
    return [inputs[0].to(torch.from_numpy(np.zeros(0, dtype=dtype)).dtype)]


@register("Constant")
def constant(node, inputs, ctx):
    a = attrs(node)
    if "value" in a:
        array = numpy_helper.to_array(a["value"])
    elif "value_float" in a or "value_int" in a:
        array = np.array(a.get("value_float", a.get("value_int")), dtype=np.float32 if "value_float" in a else np.int64)
    elif "value_floats" in a or "value_ints" in a:
        array = np.array(a.get("value_floats", a.get("value_ints")), dtype=np.float32 if "value_floats" in a else np.int64)
    else:
        raise ValueError(f"Constant '{node.name}' has no supported value attribute")
    return [torch.from_numpy(np.array(array))]


@register("ConstantOfShape")
def constant_of_shape(node, inputs, ctx):
    value = attrs(node).get("value")
    array = numpy_helper.to_array(value) if value is not None else np.zeros(1, np.float32)
    return [torch.full(_ints(inputs[0]), array.reshape(-1)[0].item(), dtype=torch.from_numpy(array).dtype)]


@register("Expand")
def expand(node, inputs, ctx):
    x = inputs[0]
    target = _ints(inputs[1])
    return [x * torch.ones(target, dtype=x.dtype) if x.dtype != torch.bool else x.expand(torch.broadcast_shapes(x.shape, target))]


@register("Tile")
def tile(node, inputs, ctx):
    return [inputs[0].repeat(*_ints(inputs[1]))]


@register("Range")
def range_(node, inputs, ctx):
    start, limit, delta = (t.item() for t in inputs)
    return [torch.arange(start, limit, delta, dtype=inputs[0].dtype)]


def _reduce(fn, since: int = 18):
    def run(node, inputs, ctx):
        x = inputs[0]
        a = attrs(node)
        axes = _axes(node, inputs, ctx, since=since)
        keep = bool(a.get("keepdims", 1))
        if axes is None:
            if a.get("noop_with_empty_axes", 0):
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
def argmax(node, inputs, ctx):
    a = attrs(node)
    return [inputs[0].argmax(dim=int(a.get("axis", 0)), keepdim=bool(a.get("keepdims", 1)))]


@register("DepthToSpace")
def depth_to_space(node, inputs, ctx):
    x = inputs[0]
    a = attrs(node)
    b = int(a["blocksize"])
    n, c, h, w = x.shape
    mode = a.get("mode", b"DCR")
    if (mode.decode() if isinstance(mode, bytes) else mode) == "DCR":
        y = x.reshape(n, b, b, c // (b * b), h, w).permute(0, 3, 4, 1, 5, 2)
    else:
        y = x.reshape(n, c // (b * b), b, b, h, w).permute(0, 1, 4, 2, 5, 3)
    return [y.reshape(n, c // (b * b), h * b, w * b)]
