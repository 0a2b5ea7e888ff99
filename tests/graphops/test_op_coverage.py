"""The analysis registry and the round trip's executor agree, or say why not (graphops.ops.coverage)."""

from __future__ import annotations

from onnxprune.graphops.ops import registered_op_types
from onnxprune.graphops.ops.coverage import ANALYSED_NOT_EXECUTABLE, EXECUTABLE_NOT_ANALYSED
from onnxprune.roundtrip.ops import supported_ops


def test_every_op_analysed_but_not_executable_is_declared_with_a_reason():
    analysed, executable = set(registered_op_types()), supported_ops()

    assert sorted(analysed - executable) == sorted(ANALYSED_NOT_EXECUTABLE)
    assert all(reason.strip() for reason in ANALYSED_NOT_EXECUTABLE.values())


def test_every_op_executable_but_not_analysed_is_declared_with_a_reason():
    analysed, executable = set(registered_op_types()), supported_ops()

    assert sorted(executable - analysed) == sorted(EXECUTABLE_NOT_ANALYSED)
    assert all(reason.strip() for reason in EXECUTABLE_NOT_ANALYSED.values())
