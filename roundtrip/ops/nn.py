"""Convolutions, pooling, normalisation, resizing: the layers of a conv net.

Asymmetric ONNX pads are applied with an explicit ``F.pad`` so every padding mode and ``auto_pad``
matches the ONNX definition, not torch's symmetric one; symmetric pads go to the conv itself (a padded
copy of every activation cost a tenth of a fine-tuning step on ResNet-20).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import onnx
import torch
import torch.nn.functional as F

from onnxprune.roundtrip.ops import Attributes, OpContext, OpFn, OpInputs, attrs, optional, register, required

# torch's functional layers of one kind share a signature across 1-, 2- and 3-D.
Layer = Callable[..., torch.Tensor]
_CONV: dict[int, Layer] = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T: dict[int, Layer] = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
_MAX_POOL: dict[int, Layer] = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG_POOL: dict[int, Layer] = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def _same_pads(
    sizes: Sequence[int], kernel: Sequence[int], strides: Sequence[int], dilations: Sequence[int], lower: bool
) -> list[int]:
    begin: list[int] = []
    end: list[int] = []
    for size, k, s, d in zip(sizes, kernel, strides, dilations):
        out = math.ceil(size / s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
        small, large = total // 2, total - total // 2
        begin.append(large if lower else small)
        end.append(small if lower else large)
    return begin + end


def _window(node: onnx.NodeProto, x: torch.Tensor, kernel: Sequence[int]) -> tuple[list[int], list[int], list[int]]:
    """(strides, dilations, pads as [begins..., ends...]) of a conv or pool node on input ``x``."""
    a = attrs(node)
    n = len(kernel)
    strides = a.integers("strides", [1] * n)
    dilations = a.integers("dilations", [1] * n)
    auto_pad = a.text("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pads = _same_pads(x.shape[2:], kernel, strides, dilations, auto_pad == "SAME_LOWER")
    elif auto_pad == "VALID":
        pads = [0] * (2 * n)
    else:
        pads = a.integers("pads", [0] * (2 * n))
    return strides, dilations, pads


def _pad_spatial(x: torch.Tensor, pads: list[int], value: float = 0.0) -> torch.Tensor:
    """F.pad wants (last-axis begin, last-axis end, ...): reorder ONNX's [begins..., ends...]."""
    n = len(pads) // 2
    if not any(pads):
        return x
    torch_pads: list[int] = []
    for axis in reversed(range(n)):
        torch_pads += [pads[axis], pads[n + axis]]
    return F.pad(x, torch_pads, value=value)


@register("Conv")
def conv(node: onnx.NodeProto, inputs: OpInputs, ctx: OpContext) -> list[torch.Tensor]:
    x, weight = required(inputs, 0), required(inputs, 1)
    bias = optional(inputs, 2)
    kernel = list(weight.shape[2:])
    strides, dilations, pads = _window(node, x, kernel)
    group = attrs(node).integer("group", 1)
    n = len(kernel)
    if pads[:n] == pads[n:]:  # symmetric: the conv pads as it reads, without a padded copy of x
        return [_CONV[n](x, weight, bias, strides, pads[:n], dilations, group)]
    return [_CONV[n](_pad_spatial(x, pads), weight, bias, strides, 0, dilations, group)]


@register("ConvTranspose")
def conv_transpose(node: onnx.NodeProto, inputs: OpInputs, ctx: OpContext) -> list[torch.Tensor]:
    """Full transposed conv, then output_padding and the crop ONNX's pads (or output_shape) ask for."""
    x, weight = required(inputs, 0), required(inputs, 1)
    bias = optional(inputs, 2)
    a = attrs(node)
    kernel = list(weight.shape[2:])
    n = len(kernel)
    strides = a.integers("strides", [1] * n)
    dilations = a.integers("dilations", [1] * n)
    group = a.integer("group", 1)
    output_padding = a.integers("output_padding", [0] * n)
    full = _CONV_T[n](x, weight, None, strides, 0, 0, group, dilations)
    sizes = [
        s * (i - 1) + op + (k - 1) * d + 1
        for i, s, op, k, d in zip(x.shape[2:], strides, output_padding, kernel, dilations)
    ]
    auto_pad = a.text("auto_pad", "NOTSET")
    targets: list[int] | None = None
    if "output_shape" in a:  # as onnxruntime does it: padding never negative, extra rows at the end
        targets = a.integers("output_shape")[-n:]
        totals = [max(0, size - t) for size, t in zip(sizes, targets)]
        heads = [t - t // 2 if auto_pad == "SAME_UPPER" else t // 2 for t in totals]
        pads = heads + [t - h for t, h in zip(totals, heads)]
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        totals = [size - i * s for size, i, s in zip(sizes, x.shape[2:], strides)]
        heads = [(t - t // 2) if auto_pad == "SAME_LOWER" else t // 2 for t in totals]
        pads = heads + [t - h for t, h in zip(totals, heads)]
    else:
        pads = a.integers("pads", [0] * (2 * n))
    # Grow to the padded size (output_padding rows get no contribution), then crop both ends.
    grow = [0] * n + [size - f for size, f in zip(sizes, full.shape[2:])]
    y = _pad_spatial(full, grow)
    index: list[slice] = [slice(None), slice(None)] + [slice(pads[i], y.shape[2 + i] - pads[n + i]) for i in range(n)]
    y = y[tuple(index)]
    if targets is not None:
        y = _pad_spatial(y, [0] * n + [t - size for t, size in zip(targets, y.shape[2:])])
    if bias is not None:
        y = y + bias.view(1, -1, *([1] * n))
    return [y]


@register("Gemm")
def gemm(node: onnx.NodeProto, inputs: OpInputs, ctx: OpContext) -> list[torch.Tensor]:
    a = attrs(node)
    x, w = required(inputs, 0), required(inputs, 1)
    if a.integer("transA", 0):
        x = x.t()
    if a.integer("transB", 0):
        w = w.t()
    y = a.number("alpha", 1.0) * (x @ w)
    c = optional(inputs, 2)
    if c is not None:
        y = y + a.number("beta", 1.0) * c
    return [y]


@register("MatMul")
def matmul(node: onnx.NodeProto, inputs: OpInputs, ctx: OpContext) -> list[torch.Tensor]:
    return [torch.matmul(required(inputs, 0), required(inputs, 1))]


def _pool_geometry(node: onnx.NodeProto, x: torch.Tensor) -> tuple[list[int], list[int], list[int], list[int]]:
    a = attrs(node)
    kernel = a.integers("kernel_shape")
    strides, dilations, pads = _window(node, x, kernel)
    n = len(kernel)
    if a.integer("ceil_mode", 0):  # extra end padding so the last partial window exists, as ONNX counts it
        for i in range(n):
            size = x.shape[2 + i] + pads[i] + pads[n + i]
            span = (kernel[i] - 1) * dilations[i] + 1
            out = math.ceil((size - span) / strides[i]) + 1
            if (out - 1) * strides[i] >= x.shape[2 + i] + pads[i]:
                out -= 1  # ONNX drops a window that would start in the end padding
            pads[n + i] += max(0, (out - 1) * strides[i] + span - size)
    return kernel, strides, dilations, pads


@register("MaxPool")
def max_pool(node: onnx.NodeProto, inputs: OpInputs, ctx: OpContext) -> list[torch.Tensor]:
    x = required(inputs, 0)
    kernel, strides, dilations, pads = _pool_geometry(node, x)
    x = _pad_spatial(x, pads, value=float("-inf"))
    return [_MAX_POOL[len(kernel)](x, kernel, strides, 0, dilations)]


@register("AveragePool")
def average_pool(node: onnx.NodeProto, inputs: OpInputs, ctx: OpContext) -> list[torch.Tensor]:
    x = required(inputs, 0)
    kernel, strides, _, pads = _pool_geometry(node, x)
    n = len(kernel)
    pool = _AVG_POOL[n]
    summed = pool(_pad_spatial(x, pads), kernel, strides, 0) * math.prod(kernel)
    if attrs(node).integer("count_include_pad", 0) and not attrs(node).integer("ceil_mode", 0):
        return [summed / math.prod(kernel)]
    ones = torch.ones((1, 1, *x.shape[2:]), dtype=x.dtype)
    counts = pool(_pad_spatial(ones, pads), kernel, strides, 0) * math.prod(kernel)
    return [summed / counts]


@register("GlobalAveragePool")
def global_average_pool(node: onnx.NodeProto, inputs: OpInputs, ctx: OpContext) -> list[torch.Tensor]:
    x = required(inputs, 0)
    return [x.mean(dim=tuple(range(2, x.dim())), keepdim=True)]


@register("GlobalMaxPool")
def global_max_pool(node: onnx.NodeProto, inputs: OpInputs, ctx: OpContext) -> list[torch.Tensor]:
    x = required(inputs, 0)
    return [x.amax(dim=tuple(range(2, x.dim())), keepdim=True)]


@register("BatchNormalization")
def batch_norm(node: onnx.NodeProto, inputs: OpInputs, ctx: OpContext) -> list[torch.Tensor]:
    """Inference mode uses (and keeps) the running stats; training mode updates them in place."""
    x, scale, bias, mean, var = (required(inputs, index) for index in range(5))
    a = attrs(node)
    momentum = ctx.bn_momentum if ctx.bn_momentum is not None else 1.0 - a.number("momentum", 0.9)
    y = F.batch_norm(x, mean, var, scale, bias, ctx.training, momentum, a.number("epsilon", 1e-5))
    return [y]


@register("InstanceNormalization")
def instance_norm(node: onnx.NodeProto, inputs: OpInputs, ctx: OpContext) -> list[torch.Tensor]:
    x, scale, bias = (required(inputs, index) for index in range(3))
    return [F.instance_norm(x, weight=scale, bias=bias, eps=attrs(node).number("epsilon", 1e-5))]


@register("LayerNormalization")
def layer_norm(node: onnx.NodeProto, inputs: OpInputs, ctx: OpContext) -> list[torch.Tensor]:
    x, scale = required(inputs, 0), required(inputs, 1)
    bias = optional(inputs, 2)
    a = attrs(node)
    axis = a.integer("axis", -1) % x.dim()
    return [F.layer_norm(x, x.shape[axis:], scale, bias, a.number("epsilon", 1e-5))]


@register("Dropout")
def dropout(node: onnx.NodeProto, inputs: OpInputs, ctx: OpContext) -> list[torch.Tensor]:
    """Identity at inference; in training mode the node's ratio, as the model was trained."""
    x = required(inputs, 0)
    ratio = attrs(node).number("ratio", 0.5)
    ratio_input = optional(inputs, 1)
    if ratio_input is not None:
        ratio = float(ratio_input)
    y = F.dropout(x, ratio, training=ctx.dropout)
    return [y, torch.ones_like(x, dtype=torch.bool)]


def _softmax_like(fn: Callable[..., torch.Tensor]) -> OpFn:
    def run(node: onnx.NodeProto, inputs: OpInputs, ctx: OpContext) -> list[torch.Tensor]:
        x = required(inputs, 0)
        axis = attrs(node).integer("axis", -1 if ctx.opset >= 13 else 1) % x.dim()
        if ctx.opset >= 13:
            return [fn(x, dim=axis)]
        flat = x.reshape(math.prod(x.shape[:axis]), -1)  # opset < 13 coerces to 2-D at ``axis``
        return [fn(flat, dim=1).reshape(x.shape)]

    return run


register("Softmax")(_softmax_like(torch.softmax))
register("LogSoftmax")(_softmax_like(torch.log_softmax))


@register("Pad")
def pad(node: onnx.NodeProto, inputs: OpInputs, ctx: OpContext) -> list[torch.Tensor]:
    a = attrs(node)
    x = required(inputs, 0)
    mode = a.text("mode", "constant")
    if ctx.opset < 11:
        pads, value = a.integers("pads"), a.number("value", 0.0)
    else:
        pads = [int(p) for p in required(inputs, 1).tolist()]
        value_input, axes_input = optional(inputs, 2), optional(inputs, 3)
        value = float(value_input) if value_input is not None and value_input.numel() else 0.0
        if axes_input is not None:
            axes = [int(ax) % x.dim() for ax in axes_input.tolist()]
            full = [0] * (2 * x.dim())
            for i, axis in enumerate(axes):
                full[axis], full[x.dim() + axis] = pads[i], pads[len(axes) + i]
            pads = full
    n = x.dim()
    torch_pads: list[int] = []
    for axis in reversed(range(n)):
        torch_pads += [pads[axis], pads[n + axis]]
    while len(torch_pads) > 2 and torch_pads[-2:] == [0, 0]:
        torch_pads = torch_pads[:-2]  # reflect/replicate pad only trailing axes in torch
    if mode == "constant":
        return [F.pad(x, torch_pads, value=value)]
    return [F.pad(x, torch_pads, mode={"reflect": "reflect", "edge": "replicate"}[mode])]


@register("Crop")
def crop(node: onnx.NodeProto, inputs: OpInputs, ctx: OpContext) -> list[torch.Tensor]:
    """Experimental op of old converters: border (left, top, right, bottom), or a scale (h, w) from top-left."""
    a = attrs(node)
    x = required(inputs, 0)
    left, top, right, bottom = a.integers("border", [0, 0, 0, 0])
    scale = a.integers("scale", [])
    height, width = (scale[0], scale[1]) if scale else (x.shape[2] - top - bottom, x.shape[3] - left - right)
    return [x[:, :, top : top + height, left : left + width]]


def _nearest_index(
    out_size: int, in_size: int, scale: float, mode: str, nearest: str, device: torch.device
) -> torch.Tensor:
    out = torch.arange(out_size, dtype=torch.float64, device=device)
    if mode == "asymmetric":
        source = out / scale
    elif mode == "align_corners":
        source = out * (in_size - 1) / max(out_size - 1, 1)
    elif mode == "pytorch_half_pixel":
        source = (out + 0.5) / scale - 0.5 if out_size > 1 else torch.zeros_like(out)
    elif mode in ("half_pixel", "tf_half_pixel_for_nn"):
        source = (out + 0.5) / scale - (0.5 if mode == "half_pixel" else 0.0)
    else:
        raise ValueError(f"Resize coordinate_transformation_mode '{mode}' is not supported")
    if nearest == "floor":
        index = torch.floor(source)
    elif nearest == "ceil":
        index = torch.ceil(source)
    elif nearest == "round_prefer_ceil":
        index = torch.floor(source + 0.5)
    else:  # round_prefer_floor
        index = torch.ceil(source - 0.5)
    return index.clamp(0, in_size - 1).long()


def _resize(
    x: torch.Tensor, scales: Sequence[float] | None, sizes: Sequence[int] | None, a: Attributes, legacy: bool
) -> torch.Tensor:
    spatial = x.dim() - 2
    if sizes is not None:
        sizes = [int(s) for s in sizes][-spatial:]
        scales = [o / i for o, i in zip(sizes, x.shape[2:])]
    elif scales is not None:
        scales = [float(s) for s in scales][-spatial:]
        sizes = [int(math.floor(i * s)) for i, s in zip(x.shape[2:], scales)]
    else:
        raise ValueError("Resize has neither scales nor sizes")
    mode = a.text("mode", "nearest")
    transform = "asymmetric" if legacy else a.text("coordinate_transformation_mode", "half_pixel")
    if mode == "nearest":
        nearest = "floor" if legacy else a.text("nearest_mode", "round_prefer_floor")
        for i in range(spatial):
            index = _nearest_index(sizes[i], x.shape[2 + i], scales[i], transform, nearest, x.device)
            x = x.index_select(2 + i, index)
        return x
    if mode in ("linear", "bilinear") and transform in ("half_pixel", "pytorch_half_pixel", "align_corners"):
        kind = {1: "linear", 2: "bilinear", 3: "trilinear"}[spatial]
        if transform == "pytorch_half_pixel" and min(sizes) <= 1:
            raise ValueError("Resize pytorch_half_pixel to a size of 1 is not supported")
        return F.interpolate(x, size=sizes, mode=kind, align_corners=transform == "align_corners")
    if mode == "cubic" and spatial == 2 and transform in ("half_pixel", "pytorch_half_pixel", "align_corners"):
        # torch's bicubic is ONNX cubic with coefficient -0.75, no exclude_outside and no antialias
        # (ViT exports resize their position embeddings this way)
        coefficient, exclude, antialias = (
            a.number("cubic_coeff_a", -0.75),
            a.integer("exclude_outside", 0),
            a.integer("antialias", 0),
        )
        if coefficient == -0.75 and not exclude and not antialias:
            if transform == "pytorch_half_pixel" and min(sizes) <= 1:
                raise ValueError("Resize pytorch_half_pixel to a size of 1 is not supported")
            return F.interpolate(x, size=sizes, mode="bicubic", align_corners=transform == "align_corners")
        transform += f", cubic_coeff_a {coefficient:g}, exclude_outside {exclude}, antialias {antialias}"
    raise ValueError(f"Resize mode '{mode}' with '{transform}' is not supported")


@register("Resize")
def resize(node: onnx.NodeProto, inputs: OpInputs, ctx: OpContext) -> list[torch.Tensor]:
    a = attrs(node)
    x = required(inputs, 0)
    if ctx.opset < 11:
        return [_resize(x, required(inputs, 1).tolist(), None, a, legacy=True)]
    scales, sizes = optional(inputs, 2), optional(inputs, 3)
    scales = scales if scales is not None and scales.numel() else None
    sizes = sizes if sizes is not None and sizes.numel() else None
    return [
        _resize(
            x, None if scales is None else scales.tolist(), None if sizes is None else sizes.tolist(), a, legacy=False
        )
    ]


@register("Upsample")
def upsample(node: onnx.NodeProto, inputs: OpInputs, ctx: OpContext) -> list[torch.Tensor]:
    a = attrs(node)
    scales = a.numbers("scales") if "scales" in a else required(inputs, 1).tolist()
    return [_resize(required(inputs, 0), scales, None, a, legacy=True)]
