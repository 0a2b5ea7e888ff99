"""Hostile models built in code: a few kilobytes each, each aimed at one unbounded cost.

Every model is a real prunable net around its trap, so that no check short-circuits on "no conv"::

    x [1,3,8,8] -> Conv(w [4,3,3,3]) -> conv ---------> Add -> y
                                                          ^
                              trap (a scalar, or [1,4,8,8]) |

The sizes default to the ones that hurt an unguarded process (see issue 12); tests may pass
smaller ones to show that the same structure passes below a limit.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 13
INPUT = "x"


def _model(
    trap_nodes: list[onnx.NodeProto],
    trap: str,
    *,
    input_shape: Sequence[int | str] = (1, 3, 8, 8),
    functions: Sequence[onnx.FunctionProto] = (),
    initializers: Sequence[onnx.TensorProto] = (),
) -> onnx.ModelProto:
    weight = numpy_helper.from_array(np.full((4, 3, 3, 3), 0.1, np.float32), "w")
    nodes = [
        helper.make_node("Conv", [INPUT, "w"], ["conv"], name="conv", pads=[1, 1, 1, 1]),
        *trap_nodes,
        helper.make_node("Add", ["conv", trap], ["y"], name="add"),
    ]
    graph = helper.make_graph(
        nodes,
        "hostile",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, list(input_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [input_shape[0], 4, *input_shape[2:]])],
        initializer=[weight, *initializers],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], functions=list(functions))
    model.ir_version = 8
    return model


def _int64(name: str, values: list[int] | int) -> onnx.NodeProto:
    return helper.make_node(
        "Constant", [], [name], name=f"{name}_const", value=numpy_helper.from_array(np.array(values, np.int64))
    )


def _generate_and_sum(shape: str) -> list[onnx.NodeProto]:
    """ConstantOfShape(``shape``) of ones -> ``big``, summed to the scalar ``total``: the trap of the bombs."""
    ones = numpy_helper.from_array(np.array([1.0], np.float32))
    return [
        helper.make_node("ConstantOfShape", [shape], ["big"], name="generate", value=ones),
        helper.make_node("ReduceSum", ["big"], ["total"], name="reduce", keepdims=0),
    ]


def abs_shape_bomb(side: int = 20_000, *, declared_small: bool = False) -> onnx.ModelProto:
    """ConstantOfShape(Abs([-side, -side])) summed to a scalar: onnx's inference cannot follow Abs, so
    no static check sees the side*side floats (1.6 GB at 20,000) that evaluating it allocates.
    ``declared_small`` adds value_info claiming the generated tensor is 1x1."""
    model = _model(
        [
            _int64("negative_shape", [-side, -side]),
            helper.make_node("Abs", ["negative_shape"], ["shape"], name="abs"),
            *_generate_and_sum("shape"),
        ],
        "total",
    )
    if declared_small:
        model.graph.value_info.extend(
            [
                helper.make_tensor_value_info("shape", TensorProto.INT64, [2]),
                helper.make_tensor_value_info("big", TensorProto.FLOAT, [1, 1]),
            ]
        )
    return model


def branch_bomb(side: int = 20_000, *, through_abs: bool = True) -> onnx.ModelProto:
    """An If on a constant condition whose taken branch is :func:`abs_shape_bomb`'s trap (or, without
    ``through_abs``, :func:`literal_shape_bomb`'s): constant folding flattens such an If into the
    graph, trap and all."""
    source = abs_shape_bomb(side) if through_abs else literal_shape_bomb(side)
    trap = source.graph.node[1:-1]  # from the shape's Constant to the ReduceSum
    scalar = [helper.make_tensor_value_info("total", TensorProto.FLOAT, [])]
    taken = helper.make_graph(trap, "taken", [], scalar)
    other = helper.make_graph(
        [helper.make_node("Constant", [], ["nothing"], value=numpy_helper.from_array(np.array(0.0, np.float32)))],
        "other",
        [],
        [helper.make_tensor_value_info("nothing", TensorProto.FLOAT, [])],
    )
    branch = helper.make_node("If", ["yes"], ["chosen"], name="branch", then_branch=taken, else_branch=other)
    return _model([branch], "chosen", initializers=[numpy_helper.from_array(np.array(True), "yes")])


def literal_shape_bomb(side: int = 20_000) -> onnx.ModelProto:
    """ConstantOfShape of a literal [side, side]: the static check reads the literal."""
    return _model(
        [
            _int64("shape", [side, side]),
            *_generate_and_sum("shape"),
        ],
        "total",
    )


def generator_fan(count: int = 8, side: int = 4096) -> onnx.ModelProto:
    """``count`` ConstantOfShape nodes of side*side floats each (64 MB at 4,096: each under the fold
    cap), each summed to a scalar: together they are more than any fold may evaluate."""
    nodes = [_int64("shape", [side, side])]
    total = "zero"
    for index in range(count):
        nodes += [
            helper.make_node(
                "ConstantOfShape",
                ["shape"],
                [f"big{index}"],
                name=f"generate{index}",
                value=numpy_helper.from_array(np.array([float(index)], np.float32)),
            ),
            helper.make_node("ReduceSum", [f"big{index}"], [f"sum{index}"], name=f"reduce{index}", keepdims=0),
            helper.make_node("Add", [total, f"sum{index}"], [f"total{index}"], name=f"accumulate{index}"),
        ]
        total = f"total{index}"
    zero = numpy_helper.from_array(np.array(0.0, np.float32), "zero")
    return _model(nodes, total, initializers=[zero])


def constant_matmul(side: int = 1536) -> onnx.ModelProto:
    """Two generated side x side matrices multiplied (side**3 multiply-accumulates: 3.6e9 at 1,536)."""
    fill = numpy_helper.from_array(np.array([0.5], np.float32))
    return _model(
        [
            _int64("shape", [side, side]),
            helper.make_node("ConstantOfShape", ["shape"], ["a"], name="generate_a", value=fill),
            helper.make_node("ConstantOfShape", ["shape"], ["b"], name="generate_b", value=fill),
            helper.make_node("MatMul", ["a", "b"], ["product"], name="matmul"),
            helper.make_node("ReduceSum", ["product"], ["total"], name="reduce", keepdims=0),
        ],
        "total",
    )


def counting_body(nodes: list[onnx.NodeProto], initializers: list[onnx.TensorProto], step: str) -> onnx.GraphProto:
    """A Loop body that keeps going and adds ``step`` (made by ``nodes`` or ``initializers``) to its
    float accumulator on every iteration."""
    return helper.make_graph(
        [
            *nodes,
            helper.make_node("Identity", ["cond_in"], ["cond_out"], name="keep_going"),
            helper.make_node("Add", ["acc_in", step], ["acc_out"], name="increment"),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, []),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, []),
        ],
        initializer=initializers,
    )


def constant_loop(trip_count: int = 30_000_000, *, through_abs: bool = False) -> onnx.ModelProto:
    """A Loop adding 1.0 ``trip_count`` times (about 80 s at 3e7). ``through_abs`` computes the
    count as Abs(-trip_count), which no static check reads."""
    body = counting_body([], [numpy_helper.from_array(np.array(1.0, np.float32), "one")], "one")
    count_nodes = (
        [_int64("negative_count", -trip_count), helper.make_node("Abs", ["negative_count"], ["count"], name="abs")]
        if through_abs
        else [_int64("count", trip_count)]
    )
    start = [
        numpy_helper.from_array(np.array(True), "always"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
    ]
    loop = helper.make_node("Loop", ["count", "always", "zero"], ["counted"], name="loop", body=body)
    return _model([*count_nodes, loop], "counted", initializers=start)


def function_chain(length: int = 3_000, calls_per_function: int = 2) -> onnx.ModelProto:
    """Local functions F0..F{length-1} in the default domain, each calling the previous one
    ``calls_per_function`` times: 2**3000 Relu nodes once inlined, at 2 calls and 3,000 functions."""
    opsets = [helper.make_opsetid("", OPSET)]
    functions = [helper.make_function("", "F0", ["a"], ["b"], [helper.make_node("Relu", ["a"], ["b"])], opsets)]
    for index in range(1, length):
        names = ["a", *(f"t{k}" for k in range(1, calls_per_function)), "b"]
        body = [helper.make_node(f"F{index - 1}", [names[k]], [names[k + 1]]) for k in range(calls_per_function)]
        functions.append(helper.make_function("", f"F{index}", ["a"], ["b"], body, opsets))
    return _model(
        [helper.make_node(f"F{length - 1}", ["conv"], ["chained"], name="call")], "chained", functions=functions
    )


def declared_input(shape: Sequence[int | str] = (1, 3, 8192, 8192)) -> onnx.ModelProto:
    """A plain conv net declaring an input of ``shape``: 1x3x8192x8192 by default (805 MB of float32
    test input)."""
    zero = numpy_helper.from_array(np.array(0.0, np.float32), "zero")
    return _model([], "zero", input_shape=list(shape), initializers=[zero])


def symbolic_batch_model() -> onnx.ModelProto:
    """A conv net over [N, 3, 32, 32]: any batch a config asks for fits the model."""
    return declared_input(("N", 3, 32, 32))


# A config whose input shape asks for a batch of 130,000 CIFAR-sized images (1.6 GB of float32).
HUGE_BATCH_SHAPES = {INPUT: [130_000, 3, 32, 32]}

__all__ = [
    "HUGE_BATCH_SHAPES",
    "abs_shape_bomb",
    "branch_bomb",
    "constant_loop",
    "constant_matmul",
    "function_chain",
    "declared_input",
    "generator_fan",
    "literal_shape_bomb",
    "symbolic_batch_model",
]
