"""Torch implementations of ONNX ops, one registry keyed by ``op_type``.

Each implementation is ``fn(node, inputs, ctx) -> list of outputs`` where ``inputs`` are torch
tensors (None for omitted optional inputs). An op the registry lacks is refused when the executor
is built, naming the node, never guessed at run time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import onnx
from onnx import helper

from graphops.errors import ModelRejected

OpFn = Callable[..., list]
_OPS: dict[str, OpFn] = {}


@dataclass(frozen=True)
class OpContext:
    """What an op needs besides its inputs: the opset, training mode and the batch heuristic.

    ``static_batch`` is the batch size baked into a graph exported at a fixed batch (usually 1);
    Reshape reads a leading ``static_batch`` as "the batch" so such graphs run on real batches.
    """

    opset: int
    training: bool = False
    static_batch: int | None = None
    batch: int | None = None
    bn_momentum: float | None = None  # overrides every BatchNormalization's (stats re-estimation)
    dropout: bool = False  # Dropout active (training, but not while re-estimating BN statistics)


def register(*op_types: str) -> Callable[[OpFn], OpFn]:
    def decorate(fn: OpFn) -> OpFn:
        for op_type in op_types:
            _OPS[op_type] = fn
        return fn

    return decorate


def supported_ops() -> set[str]:
    _load()
    return set(_OPS)


def op_for(node: onnx.NodeProto) -> OpFn:
    _load()
    if node.domain not in ("", "ai.onnx") or node.op_type not in _OPS:
        domain = f" (domain '{node.domain}')" if node.domain not in ("", "ai.onnx") else ""
        raise ModelRejected(f"node '{node.name}' ({node.op_type}{domain}) has no PyTorch implementation in the round trip")
    return _OPS[node.op_type]


def attrs(node: onnx.NodeProto) -> dict[str, object]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _load() -> None:
    from roundtrip.ops import elementwise, nn, tensor  # noqa: F401  (they register themselves)
