"""Elementwise arithmetic and activations (numpy broadcasting, as ONNX specifies)."""

from __future__ import annotations

import functools
from collections.abc import Callable

import onnx
import torch
import torch.nn.functional as F

from onnxprune.roundtrip.ops import OpContext, OpFn, OpInputs, attrs, register, required

Unary = Callable[[torch.Tensor], torch.Tensor]
Binary = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _binary(fn: Binary) -> OpFn:
    return lambda node, inputs, ctx: [fn(required(inputs, 0), required(inputs, 1))]


_BINARY: dict[str, Binary] = {
    "Add": torch.add,
    "Sub": torch.sub,
    "Mul": torch.mul,
    "Pow": torch.pow,
    "Equal": torch.eq,
    "Less": torch.lt,
    "Greater": torch.gt,
}
for _name, _fn in _BINARY.items():
    register(_name)(_binary(_fn))


@register("Div")
def div(node: onnx.NodeProto, inputs: OpInputs, ctx: OpContext) -> list[torch.Tensor]:
    a, b = required(inputs, 0), required(inputs, 1)
    if not a.is_floating_point() and not b.is_floating_point():
        return [torch.div(a, b, rounding_mode="trunc")]
    return [a / b]


def _all(inputs: OpInputs) -> list[torch.Tensor]:
    return [required(inputs, index) for index in range(len(inputs))]


def _variadic(fn: Binary) -> OpFn:
    return lambda node, inputs, ctx: [functools.reduce(fn, _all(inputs))]


register("Sum")(_variadic(torch.add))
register("Max")(_variadic(torch.maximum))
register("Min")(_variadic(torch.minimum))


@register("Mean")
def mean(node: onnx.NodeProto, inputs: OpInputs, ctx: OpContext) -> list[torch.Tensor]:
    return [functools.reduce(torch.add, _all(inputs)) / len(inputs)]


def _unary(fn: Unary) -> OpFn:
    return lambda node, inputs, ctx: [fn(required(inputs, 0))]


_UNARY: dict[str, Unary] = {
    "Relu": torch.relu,
    "Sigmoid": torch.sigmoid,
    "Tanh": torch.tanh,
    "Exp": torch.exp,
    "Log": torch.log,
    "Sqrt": torch.sqrt,
    "Neg": torch.neg,
    "Abs": torch.abs,
    "Reciprocal": torch.reciprocal,
    "Erf": torch.erf,
    "Floor": torch.floor,
    "Ceil": torch.ceil,
    "Softplus": F.softplus,
    "Softsign": F.softsign,
    "HardSwish": F.hardswish,
    "Not": torch.logical_not,
    "Identity": lambda x: x,
}
for _name, _one in _UNARY.items():
    register(_name)(_unary(_one))


@register("LeakyRelu")
def leaky_relu(node: onnx.NodeProto, inputs: OpInputs, ctx: OpContext) -> list[torch.Tensor]:
    return [F.leaky_relu(required(inputs, 0), attrs(node).number("alpha", 0.01))]


@register("Elu")
def elu(node: onnx.NodeProto, inputs: OpInputs, ctx: OpContext) -> list[torch.Tensor]:
    return [F.elu(required(inputs, 0), attrs(node).number("alpha", 1.0))]


@register("Selu")
def selu(node: onnx.NodeProto, inputs: OpInputs, ctx: OpContext) -> list[torch.Tensor]:
    a = attrs(node)
    alpha, gamma = a.number("alpha", 1.67326319217681884765625), a.number("gamma", 1.05070102214813232421875)
    x = required(inputs, 0)
    return [gamma * torch.where(x > 0, x, alpha * (torch.exp(x) - 1))]


@register("PRelu")
def prelu(node: onnx.NodeProto, inputs: OpInputs, ctx: OpContext) -> list[torch.Tensor]:
    x, slope = required(inputs, 0), required(inputs, 1)
    return [torch.where(x >= 0, x, x * slope)]


@register("HardSigmoid")
def hard_sigmoid(node: onnx.NodeProto, inputs: OpInputs, ctx: OpContext) -> list[torch.Tensor]:
    a = attrs(node)
    return [torch.clamp(a.number("alpha", 0.2) * required(inputs, 0) + a.number("beta", 0.5), 0.0, 1.0)]


@register("Gelu")
def gelu(node: onnx.NodeProto, inputs: OpInputs, ctx: OpContext) -> list[torch.Tensor]:
    return [F.gelu(required(inputs, 0), approximate=attrs(node).text("approximate", "none"))]


@register("Clip")
def clip(node: onnx.NodeProto, inputs: OpInputs, ctx: OpContext) -> list[torch.Tensor]:
    a = attrs(node)
    x = required(inputs, 0)
    low: float | torch.Tensor | None
    high: float | torch.Tensor | None
    if ctx.opset < 11:
        low = a.number("min") if "min" in a else None
        high = a.number("max") if "max" in a else None
    else:
        low = inputs[1] if len(inputs) > 1 else None
        high = inputs[2] if len(inputs) > 2 else None
    if low is not None:
        x = torch.maximum(x, torch.as_tensor(low, dtype=x.dtype))
    if high is not None:
        x = torch.minimum(x, torch.as_tensor(high, dtype=x.dtype))
    return [x]


@register("Where")
def where(node: onnx.NodeProto, inputs: OpInputs, ctx: OpContext) -> list[torch.Tensor]:
    return [torch.where(required(inputs, 0).bool(), required(inputs, 1), required(inputs, 2))]


@register("Affine")
def affine(node: onnx.NodeProto, inputs: OpInputs, ctx: OpContext) -> list[torch.Tensor]:
    """Experimental op of old converters: alpha * x + beta."""
    a = attrs(node)
    return [a.number("alpha", 1.0) * required(inputs, 0) + a.number("beta", 0.0)]


@register("ImageScaler")
def image_scaler(node: onnx.NodeProto, inputs: OpInputs, ctx: OpContext) -> list[torch.Tensor]:
    """Experimental op of old converters: scale * x + per-channel bias (NCHW)."""
    a = attrs(node)
    x = required(inputs, 0) * a.number("scale", 1.0)
    bias = a.numbers("bias") if "bias" in a else []
    if bias:
        x = x + torch.tensor(bias, dtype=x.dtype).view(1, -1, *([1] * (x.dim() - 2)))
    return [x]
