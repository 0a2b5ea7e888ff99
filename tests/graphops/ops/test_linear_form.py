"""The linear-form contract: each op handler says how its layer maps its input by a constant weight
(``OpHandler.linear_form``), or why it cannot be refit as such a map; layer-wise reconstruction asks
it instead of knowing op types.

    x -> [op with constant weight W (and bias b)] -> y   ==   rows(x) @ matrix(W) + b

``rows``: x's last axis, or for a windowed op (a convolution) its windows at each output position
(im2col); ``matrix``: W flattened to [outputs, inputs * kernel] and transposed when stored outputs first.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.graphops.ops import handler_for, registered_op_types
from onnxprune.graphops.ops.base import CONTRIB_DOMAIN, LAYER_ROLES
from onnxprune.graphops.ops.linear_form import LinearForm
from tests.support.oracle import run_model
from tests.support.zoo import float_input


def _node(op_type: str, inputs: list[str], **attributes: object):
    domain = CONTRIB_DOMAIN if op_type.startswith(f"{CONTRIB_DOMAIN}.") else ""
    return helper.make_node(
        op_type.removeprefix(f"{CONTRIB_DOMAIN}."), inputs, ["y"], name="layer", domain=domain, **attributes
    )


def _constants(shapes: dict[str, tuple[int, ...]]):
    return lambda name: shapes.get(name)


# (op, attributes, data shape, weight shape, bias shape or None): layers refit as a linear map.
FORM_CASES = {
    "conv 3x3": ("Conv", {}, (2, 3, 6, 5), (4, 3, 3, 3), (4,)),
    "conv 1x1 without bias": ("Conv", {}, (2, 3, 4, 4), (5, 3, 1, 1), None),
    "gemm": ("Gemm", {}, (3, 6), (6, 4), (4,)),
    "gemm transB": ("Gemm", {"transB": 1}, (3, 6), (4, 6), (4,)),
    "matmul": ("MatMul", {}, (2, 3, 6), (6, 4), None),
}

# (op, attributes, constant shapes by input name, the reason it gives)
REASON_CASES = {
    "grouped conv": (
        "Conv",
        {"group": 2},
        {"w": (4, 2, 3, 3)},
        "grouped convolution (group 2): it loses inputs only with its outputs",
    ),
    "1-D conv": ("Conv", {}, {"w": (4, 3, 3)}, "not a 2-D convolution with a constant weight"),
    "conv with a computed weight": ("Conv", {}, {}, "not a 2-D convolution with a constant weight"),
    "gemm transA": ("Gemm", {"transA": 1}, {"w": (6, 4)}, "Gemm with transA or alpha/beta other than 1"),
    "gemm alpha": ("Gemm", {"alpha": 0.5}, {"w": (6, 4)}, "Gemm with transA or alpha/beta other than 1"),
    "gemm with a computed weight": ("Gemm", {}, {}, "Gemm weight is not a constant"),
    "matmul of two activations": ("MatMul", {}, {}, "MatMul whose weight is not the right-hand constant"),
    "matmul by a left-hand weight": (
        "MatMul",
        {},
        {"x": (3, 6)},
        "MatMul whose weight is not the right-hand constant",
    ),
    "batched matmul weight": ("MatMul", {}, {"w": (2, 6, 4)}, "MatMul with a batched weight"),
    "transposed conv": (
        "ConvTranspose",
        {},
        {"w": (3, 4, 2, 2)},
        "transposed convolution: its outputs are not windows of its input",
    ),
    "packed attention": (
        f"{CONTRIB_DOMAIN}.Attention",
        {"num_heads": 2},
        {"w": (8, 24)},
        "fused attention: its packed Q, K, V projection is not its output",
    ),
}


def _rows(x: np.ndarray, form: LinearForm) -> np.ndarray:
    """The layer's input as rows: windows in (channel, kernel row, kernel column) order for a windowed op."""
    if not form.windowed:
        return x.reshape(-1, x.shape[-1])
    windows = np.lib.stride_tricks.sliding_window_view(x, form.kernel, axis=(2, 3))  # N, C, H', W', kh, kw
    return windows.transpose(0, 2, 3, 1, 4, 5).reshape(-1, form.matrix_shape[0])


def _as_matrix(weight: np.ndarray, form: LinearForm) -> np.ndarray:
    return weight.reshape(weight.shape[0], -1).T if form.outputs_first else weight


@pytest.mark.parametrize("op, attributes, data, weight, bias", FORM_CASES.values(), ids=FORM_CASES.keys())
def test_a_layers_form_reproduces_its_output_as_rows_times_a_matrix_plus_bias(op, attributes, data, weight, bias):
    rng = np.random.default_rng(0)
    w = rng.standard_normal(weight).astype(np.float32)
    b = None if bias is None else rng.standard_normal(bias).astype(np.float32)
    node = _node(op, ["x", "w"] + (["b"] if bias else []), **attributes)
    shapes = {"w": weight} | ({"b": bias} if bias else {})

    form = handler_for(op).linear_form(node, _constants(shapes))

    assert isinstance(form, LinearForm) and form.weight_shape == weight
    assert (node.input[form.data_input], node.input[form.weight_input]) == ("x", "w")
    assert form.bias_input is None or list(node.input[form.bias_input :]) in ([], ["b"])  # an optional slot
    x = rng.standard_normal(data).astype(np.float32)
    constants = [numpy_helper.from_array(value, name) for name, value in [("w", w), ("b", b)] if value is not None]
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph([node], "layer", [float_input("x", data)], [output], constants)
    (want,) = run_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), {"x": x})
    matrix = _as_matrix(w, form)
    assert matrix.shape == form.matrix_shape and form.input_width * int(np.prod(form.kernel)) == matrix.shape[0]
    got = _rows(x, form) @ matrix + (0 if b is None else b)
    # Rows run over (sample, position) or (sample, token); outputs likewise, channels last.
    expected = (
        np.moveaxis(want, 1, -1).reshape(-1, form.output_width)
        if form.windowed
        else want.reshape(-1, form.output_width)
    )
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("op, attributes, constants, reason", REASON_CASES.values(), ids=REASON_CASES.keys())
def test_a_layer_that_cannot_be_refit_as_a_linear_map_says_why(op, attributes, constants, reason):
    node = _node(op, ["x", "w", "b"], **attributes)

    assert handler_for(op).linear_form(node, _constants(constants)) == reason


@pytest.mark.parametrize("op", registered_op_types())
def test_every_layer_handler_gives_a_form_or_a_reason_and_no_other_handler_gives_a_form(op):
    handler = handler_for(op)
    node = _node(op, ["x", "w", "b"])
    # A plausible constant weight for whichever layout the op has, and nothing constant at all.
    for shapes in ({"w": (4, 3, 3, 3), "b": (4,)}, {"w": (6, 4), "b": (4,)}, {}):
        form = handler.linear_form(node, _constants(shapes))

        assert isinstance(form, (LinearForm, str))
        if handler.role not in LAYER_ROLES:
            assert isinstance(form, str) and form
        elif isinstance(form, str):
            assert form, f"{op} declines without a reason"
        else:
            assert form.weight_shape == shapes["w"] and node.input[form.weight_input] == "w"
    # No layer is refit whose weight is computed at run time.
    assert isinstance(handler.linear_form(node, _constants({})), str)
