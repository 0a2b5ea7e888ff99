"""Which ONNX opsets and IR versions we accept: asked of the installed onnx and onnxruntime.

A hard-coded table goes stale with every onnxruntime release (users with models of a newer opset were
refused with a message that was no longer true). The highest version we accept is the highest that
both the installed onnx (its checker and shape inference run on every model) and the installed
onnxruntime (it runs the oracle and the benchmarks) know. onnxruntime has no public call for that, so
it is probed once per process with a one-node model of our own (never a user's graph).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import onnx
from onnx import TensorProto, helper

# The lowest versions onnxruntime has supported for years; it offers no call that states them.
LOWEST_OPSET = {"": 7, "ai.onnx.ml": 1}
LOWEST_IR_VERSION = 3


def _onnx_highest() -> tuple[int, dict[str, int]]:
    """The newest IR version and opsets that the installed onnx release defines."""
    _release, ir_version, ai_onnx, ai_onnx_ml, *_ = helper.VERSION_TABLE[-1]
    return min(ir_version, onnx.IR_VERSION), {"": ai_onnx, "ai.onnx.ml": ai_onnx_ml}


def _probe_model(opsets: dict[str, int], ir_version: int) -> bytes:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()])
    model.ir_version = ir_version
    return bytes(model.SerializeToString())


def _onnxruntime_accepts(opsets: dict[str, int], ir_version: int) -> bool:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only, as workers.ort_sessions (graphops cannot import workers)
    try:
        onnxruntime.InferenceSession(_probe_model(opsets, ir_version), options, providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001 - onnxruntime raises several unrelated types for "not supported"
        return False
    return True


def _highest_accepted(candidate: int, lowest: int, accepts: Callable[[int], bool]) -> int:
    """Walk down from ``candidate`` to the first version onnxruntime accepts (a few steps at most)."""
    for version in range(candidate, lowest - 1, -1):
        if accepts(version):
            return version
    return lowest - 1  # nothing accepted: every model is refused, with the range in the message


@lru_cache(maxsize=1)
def supported_ir_versions() -> tuple[int, int]:
    """(lowest, highest) IR version both onnx and onnxruntime handle."""
    onnx_ir, _opsets = _onnx_highest()
    base = {"": 13}  # an opset every IR version from 7 on can declare
    high = _highest_accepted(onnx_ir, 7, lambda ir: _onnxruntime_accepts(base, ir))
    return LOWEST_IR_VERSION, high


@lru_cache(maxsize=1)
def supported_opsets() -> dict[str, tuple[int, int]]:
    """Per domain ("" is ai.onnx), (lowest, highest) opset both onnx and onnxruntime handle."""
    _ir, onnx_opsets = _onnx_highest()
    ir = supported_ir_versions()[1]
    ai_onnx = _highest_accepted(onnx_opsets[""], LOWEST_OPSET[""], lambda v: _onnxruntime_accepts({"": v}, ir))
    ml = _highest_accepted(
        onnx_opsets["ai.onnx.ml"],
        LOWEST_OPSET["ai.onnx.ml"],
        lambda v: _onnxruntime_accepts({"": ai_onnx, "ai.onnx.ml": v}, ir),
    )
    return {"": (LOWEST_OPSET[""], ai_onnx), "ai.onnx.ml": (LOWEST_OPSET["ai.onnx.ml"], ml)}
