"""Torch implementations of ONNX ops, one registry keyed by ``op_type`` (domain-qualified outside
the standard domain, as ``graphops.ops`` keys its handlers: ``com.microsoft.Attention``).

Each implementation is an ``OpFn``: ``fn(node, inputs, ctx) -> list of outputs`` where ``inputs``
are torch tensors (None for omitted optional inputs). An op the registry lacks is refused when the
executor is built, naming the node, never guessed at run time; so is a form of a known op that its
``declines`` function names (a KV cache, rotary embeddings), with the reason.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import onnx
import torch
from onnx import helper

from onnxprune.graphops.errors import DuplicateRegistration, ModelRejected
from onnxprune.graphops.ops.base import qualified_op


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


OpInputs = Sequence[torch.Tensor | None]
"""A node's inputs in order; None where the graph omits an optional input (an empty name)."""
OpFn = Callable[[onnx.NodeProto, OpInputs, OpContext], list[torch.Tensor]]
Declines = Callable[[onnx.NodeProto], str | None]
"""Why the implementation cannot run this node (a form it does not compute), or None."""
_OPS: dict[str, OpFn] = {}
_DECLINES: dict[str, Declines] = {}


def register(*op_types: str, declines: Declines | None = None) -> Callable[[OpFn], OpFn]:
    """Function decorator: ``fn`` computes every op type named, each of which has no other function;
    ``declines`` names the forms of the op that ``fn`` does not compute."""

    def decorate(fn: OpFn) -> OpFn:
        for op_type in op_types:
            existing = _OPS.get(op_type)
            if existing is not None:
                raise DuplicateRegistration(
                    f"op type '{op_type}' already runs in PyTorch as {existing.__module__}.{existing.__qualname__}; "
                    f"{fn.__module__}.{fn.__qualname__} registers it too"
                )
            _OPS[op_type] = fn
            if declines is not None:
                _DECLINES[op_type] = declines
        return fn

    return decorate


def supported_ops() -> set[str]:
    _load()
    return set(_OPS)


def op_for(node: onnx.NodeProto) -> OpFn:
    _load()
    key = qualified_op(node.op_type, node.domain)
    domain = f" (domain '{node.domain}')" if node.domain not in ("", "ai.onnx") else ""
    if key not in _OPS:
        raise ModelRejected(
            f"node '{node.name}' ({node.op_type}{domain}) has no PyTorch implementation in the round trip"
        )
    declines = _DECLINES.get(key)
    reason = declines(node) if declines is not None else None
    if reason:
        raise ModelRejected(f"node '{node.name}' ({node.op_type}{domain}): the round trip does not run {reason}")
    return _OPS[key]


def required(inputs: OpInputs, index: int) -> torch.Tensor:
    """Input ``index``, which the op cannot run without (the executor names the node on error)."""
    value = inputs[index] if index < len(inputs) else None
    if value is None:
        raise ValueError(f"input {index} is required but missing")
    return value


def optional(inputs: OpInputs, index: int) -> torch.Tensor | None:
    """Input ``index``, or None where the graph omits it (fewer inputs or an empty name)."""
    return inputs[index] if index < len(inputs) else None


class Attributes:
    """A node's attributes, read with the Python type each use needs.

    ``onnx.helper.get_attribute_value`` returns whatever the attribute holds (int, float, bytes, a
    list, a TensorProto); these getters check the kind, so a malformed attribute fails with its name.
    """

    def __init__(self, node: onnx.NodeProto) -> None:
        self._values: dict[str, object] = {a.name: helper.get_attribute_value(a) for a in node.attribute}

    def __contains__(self, name: str) -> bool:
        return name in self._values

    def get(self, name: str) -> object:
        """The raw value, or None when absent (for the few attributes whose kind varies)."""
        return self._values.get(name)

    def _value(self, name: str, default: object) -> object:
        value = self._values.get(name, default)
        if value is None:
            raise ValueError(f"attribute '{name}' is required but missing")
        return value

    def number(self, name: str, default: float | None = None) -> float:
        value = self._value(name, default)
        if not isinstance(value, (int, float)):
            raise ValueError(f"attribute '{name}' is {type(value).__name__}, expected a number")
        return float(value)

    def integer(self, name: str, default: int | None = None) -> int:
        value = self._value(name, default)
        if not isinstance(value, (int, float)):
            raise ValueError(f"attribute '{name}' is {type(value).__name__}, expected an integer")
        return int(value)

    def numbers(self, name: str, default: Sequence[float] | None = None) -> list[float]:
        return [float(v) for v in self._sequence(name, default)]

    def integers(self, name: str, default: Sequence[int] | None = None) -> list[int]:
        return [int(v) for v in self._sequence(name, default)]

    def _sequence(self, name: str, default: Sequence[float] | None) -> list[int | float]:
        value = self._value(name, default)
        if not isinstance(value, (list, tuple, range)) or not all(isinstance(v, (int, float)) for v in value):
            raise ValueError(f"attribute '{name}' is {type(value).__name__}, expected a list of numbers")
        return list(value)

    def text(self, name: str, default: str) -> str:
        value = self._values.get(name)
        if value is None:
            return default
        return value.decode() if isinstance(value, bytes) else str(value)

    def tensor(self, name: str) -> onnx.TensorProto:
        value = self._value(name, None)
        if not isinstance(value, onnx.TensorProto):
            raise ValueError(f"attribute '{name}' is {type(value).__name__}, expected a tensor")
        return value


def attrs(node: onnx.NodeProto) -> Attributes:
    return Attributes(node)


def _load() -> None:
    from onnxprune.roundtrip.ops import (  # noqa: F401  (they register themselves)
        attention,
        elementwise,
        fused_layers,
        nn,
        tensor,
    )
