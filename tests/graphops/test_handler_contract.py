"""The op-handler contract: a handler declines a pattern only by raising ``UnsupportedPattern``
(the group freezes, with the reason); anything else it raises is a bug that fails loudly.

    input -> conv_a (4) -> Relu -> conv_b (3) -> output
"""

from __future__ import annotations

import pytest

from onnxprune.graphops.dependency import analyze
from onnxprune.graphops.errors import AnalysisBug, ModelRejected, UnsupportedPattern
from onnxprune.graphops.ops import base
from onnxprune.graphops.ops.base import OpHandler, describe
from onnxprune.graphops.prepare import prepare_model
from tests.support.generated_nets import BlockSpec, NetSpec, prune_and_check
from tests.support.zoo import GraphBuilder, float_input

SHAPES = {"input": [1, 3, 8, 8]}


def _conv_relu_conv():
    g = GraphBuilder(0)
    y = g.node("Relu", [g.conv("input", 3, 4)])
    return g.model([float_input("input", SHAPES["input"])], g.conv(y, 4, 3), 14, "conv_relu_conv")


class _DecliningRelu(OpHandler):
    def propagate(self, node, ctx):
        ctx.set_layout(node.outputs[0], ctx.layout(node.inputs[0]))
        raise UnsupportedPattern(f"{describe(node)} is declined for this test")


class _BuggyRelu(OpHandler):
    def propagate(self, node, ctx):
        return [][0]  # an IndexError, as a handler bug would raise


@pytest.fixture
def relu_handler(monkeypatch):
    def install(handler: OpHandler) -> None:
        monkeypatch.setitem(base._REGISTRY, "Relu", handler)

    return install


def test_a_declined_pattern_freezes_the_group_with_the_handlers_reason(relu_handler):
    relu_handler(_DecliningRelu())

    dep = analyze(prepare_model(_conv_relu_conv()), SHAPES, strict=True)

    group = next(g for g in dep.groups if g.channels == 4)
    assert group.frozen
    assert "Relu node 'relu_4' is declined for this test" in group.frozen_reason


def test_a_handler_bug_fails_loudly_in_strict_mode(relu_handler):
    relu_handler(_BuggyRelu())

    with pytest.raises(IndexError):
        analyze(prepare_model(_conv_relu_conv()), SHAPES, strict=True)


def test_a_handler_bug_is_an_internal_error_naming_the_node_in_jobs(relu_handler):
    relu_handler(_BuggyRelu())

    with pytest.raises(AnalysisBug, match=r"Relu handler failed on Relu node 'relu_4' \(IndexError") as caught:
        analyze(prepare_model(_conv_relu_conv()), SHAPES, strict=False)
    assert not isinstance(caught.value, ModelRejected)  # never blamed on the user's model


def test_a_handler_bug_fails_the_property_tests(relu_handler):
    relu_handler(_BuggyRelu())
    block = BlockSpec("conv", 4, 3, 1, False, "Relu")
    spec = NetSpec(3, 8, (block,), "gap_gemm", 0)

    # The property test's body (tests/graphops/test_properties.py) on one generated network.
    with pytest.raises(IndexError):
        prune_and_check(spec, ("random", 0, 0.5, 1))


def test_a_handler_bug_in_a_job_is_an_internal_error_not_a_user_error():
    from onnxprune.jobs.policy import classify

    failure = classify(AnalysisBug("onnxprune bug: the Relu handler failed on Relu node 'r' (IndexError: x)"))

    assert failure.code == "internal_error"
