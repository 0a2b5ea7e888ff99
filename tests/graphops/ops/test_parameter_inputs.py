"""Which inputs of an op are learnt weights when they are float constants (``parameter_inputs``: the
round trip trains and writes back those) and which are running statistics (``statistics_inputs``:
re-estimated, never trained); every other constant stays as it is."""

from __future__ import annotations

import pytest
from onnx import helper

from onnxprune.graphops.ops import handler_for
from onnxprune.graphops.ops.base import CONTRIB_DOMAIN

MS = CONTRIB_DOMAIN

# (op, constant shapes by input name, inputs, parameter inputs, statistics inputs)
CASES = {
    "conv": ("Conv", {"w": (4, 3, 3, 3), "b": (4,)}, ["x", "w", "b"], (1, 2), ()),
    "gemm": ("Gemm", {"w": (6, 4), "b": (4,)}, ["x", "w", "b"], (1, 2), ()),
    "matmul by a left-hand weight": ("MatMul", {"w": (6, 4)}, ["w", "x"], (0, 1), ()),
    "batch norm": ("BatchNormalization", {}, ["x", "s", "b", "m", "v"], (1, 2), (3, 4)),
    "instance norm": ("InstanceNormalization", {}, ["x", "s", "b"], (1, 2), ()),
    "layer norm": ("LayerNormalization", {}, ["x", "s", "b"], (1, 2), ()),
    "softmax": ("Softmax", {}, ["x"], (), ()),
    "prelu slope": ("PRelu", {"slope": (4, 1, 1)}, ["x", "slope"], (1,), ()),
    "per-channel bias": ("Add", {"b": (4, 1, 1)}, ["x", "b"], (1,), ()),
    "per-channel scale on the left": ("Mul", {"s": (1, 4, 1, 1)}, ["s", "x"], (0,), ()),
    "scalar arithmetic": ("Mul", {"half": ()}, ["x", "half"], (), ()),
    "one-element constant": ("Sub", {"one": (1,)}, ["one", "x"], (), ()),
    "division": ("Div", {"d": (4, 1, 1)}, ["x", "d"], (), ()),
    "packed attention": (f"{MS}.Attention", {}, ["x", "w", "b"], (1, 2), ()),
    "multi-head attention bias": (f"{MS}.MultiHeadAttention", {}, ["q", "k", "v", "b"], (3,), ()),
    "skip layer norm": (f"{MS}.SkipLayerNormalization", {}, ["x", "skip", "g", "beta", "b"], (2, 3, 4), ()),
    "skip simplified layer norm": (f"{MS}.SkipSimplifiedLayerNormalization", {}, ["x", "skip", "g", "b"], (2, 3), ()),
    "embedding tables stay constant": (
        f"{MS}.EmbedLayerNormalization",
        {},
        ["i", "s", "w", "p", "t", "g", "b"],
        (5, 6),
        (),
    ),
    "bias gelu": (f"{MS}.BiasGelu", {}, ["x", "b"], (1,), ()),
    "relu": ("Relu", {}, ["x"], (), ()),
}


@pytest.mark.parametrize("op, constants, inputs, parameters, statistics", CASES.values(), ids=CASES.keys())
def test_the_handler_names_the_inputs_that_are_learnt_weights_and_running_statistics(
    op, constants, inputs, parameters, statistics
):
    node = helper.make_node(op.removeprefix(f"{MS}."), inputs, ["y"], domain=MS if op.startswith(MS) else "")
    handler = handler_for(node.op_type, node.domain)

    assert handler.parameter_inputs(node, constants.get) == parameters
    assert handler.statistics_inputs(node) == statistics
