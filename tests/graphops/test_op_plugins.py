"""Op handlers of other packages plug in through the ``onnxprune.op_handlers`` entry points, and
no registry takes a second entry for a name it has (a duplicate would silently change results).

    input -> conv_a (4) -> Shrink -> conv_b (3) -> output

Shrink is a standard elementwise op with no built-in handler here: it stands in for a custom op
(onnxruntime still runs it, so the oracle checks the surgery the plugin's handler allows).
"""

from __future__ import annotations

from importlib.metadata import EntryPoint

import pytest

from onnxprune.graphops.dependency import analyze
from onnxprune.graphops.errors import DuplicateRegistration, GraphOpsError
from onnxprune.graphops.ops import base, handler_for, registered_op_types
from onnxprune.graphops.ops.elementwise import Unary
from onnxprune.graphops.prepare import prepare_model
from tests.support.zoo import GraphBuilder, float_input

# Pipeline stages run in this process, as in a job's sandbox (tests/support/job_sandbox.py).
pytestmark = pytest.mark.usefixtures("stages_in_the_job_process")

SHAPES = {"input": [1, 3, 8, 8]}


class ShrinkHandler(Unary):
    """What a plugin would ship: Shrink maps channel i to channel i."""


class NotAHandler:
    pass


def _conv_shrink_conv():
    g = GraphBuilder(0)
    y = g.node("Shrink", [g.conv("input", 3, 4)], lambd=0.1)
    return g.model([float_input("input", SHAPES["input"])], g.conv(y, 4, 3), 14, "conv_shrink_conv")


@pytest.fixture
def plugins(monkeypatch):
    """Installs fake ``onnxprune.op_handlers`` entry points (name: op type, value: object path) in a
    registry copy, as if a package that declares them were installed."""

    def install(**points: str) -> None:
        found = [EntryPoint(name, value, base.PLUGIN_GROUP) for name, value in points.items()]
        monkeypatch.setattr(base, "entry_points", lambda group: found if group == base.PLUGIN_GROUP else [])
        monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
        monkeypatch.setattr(base, "_plugins_loaded", False)

    return install


def _shrink_group(dep):
    return next(g for g in dep.groups if g.channels == 4)


def test_without_a_handler_the_ops_channels_stay_whole_and_say_why(plugins):
    plugins()

    group = _shrink_group(analyze(prepare_model(_conv_shrink_conv()), SHAPES))

    assert group.frozen and "unsupported op Shrink" in group.frozen_reason


def test_a_handler_from_an_entry_point_makes_the_custom_op_prunable(plugins, tmp_path):
    import onnx

    from onnxprune.workers.options import PruneOptions
    from onnxprune.workers.pipeline import run_pipeline

    plugins(Shrink=f"{__name__}:ShrinkHandler")

    assert type(handler_for("Shrink")) is ShrinkHandler and "Shrink" in registered_op_types()
    assert not _shrink_group(analyze(prepare_model(_conv_shrink_conv()), SHAPES)).frozen
    onnx.save(_conv_shrink_conv(), tmp_path / "m.onnx")
    options = PruneOptions(ratio=0.5, benchmark=False, round_to=1)
    report = run_pipeline(tmp_path / "m.onnx", tmp_path / "out.onnx", options).report  # oracle-checked surgery
    assert [(g.channels_before, g.channels_after) for g in report.groups] == [(4, 2)]


def test_an_entry_point_for_an_op_that_has_a_handler_is_refused(plugins):
    plugins(Relu=f"{__name__}:ShrinkHandler")

    with pytest.raises(DuplicateRegistration, match=r"^op type 'Relu' already has a handler \(Unary\); entry point"):
        handler_for("Conv")


def test_an_entry_point_that_is_not_a_handler_is_refused(plugins):
    plugins(Shrink=f"{__name__}:NotAHandler")

    with pytest.raises(GraphOpsError, match="is not an OpHandler subclass"):
        handler_for("Shrink")


def test_registering_a_second_handler_for_an_op_type_is_refused(monkeypatch):
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))

    with pytest.raises(DuplicateRegistration, match="op type 'Conv' already has a handler"):
        base.register("Shrink", "Conv")(ShrinkHandler)


def test_the_round_trip_refuses_a_second_pytorch_op_for_an_op_type(monkeypatch):
    from onnxprune.roundtrip import ops

    ops.supported_ops()  # the built-in ops registered
    monkeypatch.setattr(ops, "_OPS", dict(ops._OPS))

    with pytest.raises(DuplicateRegistration, match="op type 'Relu' already runs in PyTorch as"):
        ops.register("Relu")(lambda node, inputs, context: [])
