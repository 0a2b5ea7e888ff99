"""Per-op channel facts the handlers own and the rest of the code asks: how many filters a filter op
makes (``filter_count``: the report's per-layer counts) and whether each output channel reads only its
own input channels (``channels_apart``: the MACs model scales such an op by its outputs alone)."""

from __future__ import annotations

import pytest
from onnx import helper

from onnxprune.graphops.ops import handler_for, registered_op_types

# (op, group, constant shapes by input name, filters, channels apart)
CASES = {
    "conv": ("Conv", 1, {"w": (8, 3, 3, 3)}, 8, False),
    "depthwise conv": ("Conv", 8, {"w": (8, 1, 3, 3)}, 8, True),
    "depthwise conv, multiplier 2": ("Conv", 4, {"w": (8, 1, 3, 3)}, 8, True),
    "grouped conv": ("Conv", 4, {"w": (8, 2, 3, 3)}, 8, False),
    "conv with a computed weight": ("Conv", 1, {}, None, False),
    "transposed conv": ("ConvTranspose", 1, {"w": (4, 2, 2, 2)}, 2, False),
    "depthwise transposed conv": ("ConvTranspose", 4, {"w": (4, 1, 2, 2)}, 4, True),
    "grouped transposed conv": ("ConvTranspose", 2, {"w": (4, 2, 2, 2)}, 4, False),
    # one group per input channel, two outputs each: grouped, as the analysis treats it
    "transposed conv, multiplier 2": ("ConvTranspose", 4, {"w": (4, 2, 2, 2)}, 8, False),
    "matmul by a weight": ("MatMul", 1, {"w": (6, 4)}, None, False),
    "matmul of two activations": ("MatMul", 1, {}, None, True),
    "gemm": ("Gemm", 1, {"w": (6, 4)}, None, False),
}


@pytest.mark.parametrize("op, group, constants, filters, apart", CASES.values(), ids=CASES.keys())
def test_a_handler_counts_its_filters_and_says_whether_it_reads_channels_apart(op, group, constants, filters, apart):
    node = (
        helper.make_node(op, ["x", "w"], ["y"], group=group) if group > 1 else helper.make_node(op, ["x", "w"], ["y"])
    )

    assert handler_for(op).filter_count(node, constants.get) == filters
    assert handler_for(op).channels_apart(node, constants.get) is apart


@pytest.mark.parametrize("op", registered_op_types())
def test_only_filter_ops_count_filters(op):
    handler = handler_for(op)
    node = helper.make_node(op.rsplit(".", 1)[-1], ["x", "w", "b"], ["y"])

    counted = handler.filter_count(node, {"w": (4, 3, 3, 3), "b": (4,)}.get)

    assert (counted is not None) is (handler.role == "filter"), f"{op} ({handler.role}) counts {counted} filters"
