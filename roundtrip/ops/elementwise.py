"""Elementwise arithmetic and activations (numpy broadcasting, as ONNX specifies)."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from roundtrip.ops import attrs, register


def _binary(fn):
    return lambda node, inputs, ctx: [fn(inputs[0], inputs[1])]


for _name, _fn in {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Pow": torch.pow,
                   "Equal": torch.eq, "Less": torch.lt, "Greater": torch.gt}.items():
    register(_name)(_binary(_fn))


@register("Div")
def div(node, inputs, ctx):
    a, b = inputs
    if not a.is_floating_point() and not b.is_floating_point():
        return [torch.div(a, b, rounding_mode="trunc")]
    return [a / b]


def _variadic(fn):
    return lambda node, inputs, ctx: [functools.reduce(fn, inputs)]


register("Sum")(_variadic(torch.add))
register("Max")(_variadic(torch.maximum))
register("Min")(_variadic(torch.minimum))


@register("Mean")
def mean(node, inputs, ctx):
    return [functools.reduce(torch.add, inputs) / len(inputs)]


def _unary(fn):
    return lambda node, inputs, ctx: [fn(inputs[0])]


for _name, _fn in {"Relu": torch.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Exp": torch.exp,
                   "Log": torch.log, "Sqrt": torch.sqrt, "Neg": torch.neg, "Abs": torch.abs,
                   "Reciprocal": torch.reciprocal, "Erf": torch.erf, "Floor": torch.floor, "Ceil": torch.ceil,
                   "Softplus": F.softplus, "Softsign": F.softsign, "HardSwish": F.hardswish,
                   "Not": torch.logical_not, "Identity": lambda x: x}.items():
    register(_name)(_unary(_fn))


@register("LeakyRelu")
def leaky_relu(node, inputs, ctx):
    return [F.leaky_relu(inputs[0], float(attrs(node).get("alpha", 0.01)))]


@register("Elu")
def elu(node, inputs, ctx):
    return [F.elu(inputs[0], float(attrs(node).get("alpha", 1.0)))]


@register("Selu")
def selu(node, inputs, ctx):
    a = attrs(node)
    alpha, gamma = float(a.get("alpha", 1.67326319217681884765625)), float(a.get("gamma", 1.05070102214813232421875))
    x = inputs[0]
    return [gamma * torch.where(x > 0, x, alpha * (torch.exp(x) - 1))]


@register("PRelu")
def prelu(node, inputs, ctx):
    x, slope = inputs
    return [torch.where(x >= 0, x, x * slope)]


@register("HardSigmoid")
def hard_sigmoid(node, inputs, ctx):
    a = attrs(node)
    return [torch.clamp(float(a.get("alpha", 0.2)) * inputs[0] + float(a.get("beta", 0.5)), 0.0, 1.0)]


@register("Gelu")
def gelu(node, inputs, ctx):
    approximate = attrs(node).get("approximate", b"none")
    return [F.gelu(inputs[0], approximate=approximate.decode() if isinstance(approximate, bytes) else approximate)]


@register("Clip")
def clip(node, inputs, ctx):
    a = attrs(node)
    x = inputs[0]
    if ctx.opset < 11:
        low, high = a.get("min"), a.get("max")
    else:
        low = inputs[1] if len(inputs) > 1 else None
        high = inputs[2] if len(inputs) > 2 else None
    if low is not None:
        x = torch.maximum(x, torch.as_tensor(low, dtype=x.dtype))
    if high is not None:
        x = torch.minimum(x, torch.as_tensor(high, dtype=x.dtype))
    return [x]


@register("Where")
def where(node, inputs, ctx):
    return [torch.where(inputs[0].bool(), inputs[1], inputs[2])]


@register("Affine")
def affine(node, inputs, ctx):
    """Experimental op of old converters: alpha * x + beta."""
    a = attrs(node)
    return [float(a.get("alpha", 1.0)) * inputs[0] + float(a.get("beta", 0.0))]


@register("ImageScaler")
def image_scaler(node, inputs, ctx):
    """Experimental op of old converters: scale * x + per-channel bias (NCHW)."""
    a = attrs(node)
    x = inputs[0] * float(a.get("scale", 1.0))
    bias = a.get("bias")
    if bias:
        x = x + torch.tensor(list(bias), dtype=x.dtype).view(1, -1, *([1] * (x.dim() - 2)))
    return [x]
