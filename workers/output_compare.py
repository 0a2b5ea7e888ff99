"""Comparing two runs' outputs, whatever their kind, at a tolerance that fits the model's precision.

onnxruntime returns numeric tensors as arrays, string tensors as object arrays, and ai.onnx.ml
outputs such as ZipMap's ``seq(map(string, float))`` as lists of dicts. Numbers are compared
(tensors as they are, maps and sequences by value, keys matched); what holds no numbers (string
labels) is not compared and never fails a check: it is derived from numbers that are.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx

# The oracle's tolerance, relative to an output's largest magnitude. float32 sums in a different
# order stay far below 1e-3; float16 rounds every intermediate value at 2^-11 relative, and a few
# hundred such roundings in a different order drift by some of its units: 1e-2 (measured on float16
# MobileNet-v2 blocks: below 1e-6, the pruned and masked models round alike).
FLOAT32_RTOL = 1e-3
FLOAT16_RTOL = 1e-2
# An output may also differ by this much in absolute terms: values computed on a unit scale carry
# rounding error of that scale, however small they are. onnxruntime's float32 Sigmoid is exact to
# about one unit in the last place of 1.0 (2**-23), so a saturated probability map whose largest
# value is 1e-7 (a DB text detector on inputs without text) differs by that much between any two
# runs of the same model: relative to its own magnitude, by 0.8. Eight units at 1.0 of each precision.
FLOAT32_ATOL = 8 * 2.0**-23
FLOAT16_ATOL = 8 * 2.0**-10
_HALF = {onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}


def oracle_rtol(model: onnx.ModelProto) -> float:
    """The tolerance for ``model``'s outputs: float16's when any weight, input or output is half precision."""
    graph = model.graph
    half = any(init.data_type in _HALF for init in graph.initializer) or any(
        value.type.tensor_type.elem_type in _HALF for value in list(graph.input) + list(graph.output)
    )
    return FLOAT16_RTOL if half else FLOAT32_RTOL


def oracle_atol(model: onnx.ModelProto) -> float:
    """The absolute tolerance for ``model``'s outputs, at the precision :func:`oracle_rtol` chose."""
    return FLOAT16_ATOL if oracle_rtol(model) == FLOAT16_RTOL else FLOAT32_ATOL


def numeric_values(value: Any) -> np.ndarray | None:
    """An output's numbers as one flat float64 array (maps in key order), or None when it holds
    something that is not a number (strings)."""
    if isinstance(value, np.ndarray):
        return value.astype(np.float64).ravel() if value.dtype.kind in "biuf" else None
    if isinstance(value, (bool, int, float, np.number)):
        return np.array([float(value)])
    if isinstance(value, Mapping):
        parts = [numeric_values(value[key]) for key in sorted(value, key=str)]
    elif isinstance(value, (list, tuple)):
        parts = [numeric_values(item) for item in value]
    else:
        return None
    arrays = [part for part in parts if part is not None]
    if len(arrays) < len(parts):
        return None
    return np.concatenate(arrays) if arrays else np.zeros(0)


def structure(value: Any) -> object:
    """What must match exactly: an array's shape, a map's keys, a sequence's length (recursively)."""
    if isinstance(value, np.ndarray):
        return ("array", value.shape)
    if isinstance(value, Mapping):
        return ("map", tuple(sorted(map(str, value))), tuple(structure(value[k]) for k in sorted(value, key=str)))
    if isinstance(value, (list, tuple)):
        return ("sequence", tuple(structure(item) for item in value))
    return ("scalar",)


def relative_error(reference: np.ndarray, candidate: np.ndarray) -> float:
    """max|a - b| / max|a| (the scale never below 1e-12, so all-zero outputs compare sanely)."""
    if not reference.size:
        return 0.0
    scale = max(float(np.max(np.abs(reference))), 1e-12)
    return float(np.max(np.abs(candidate - reference))) / scale


def output_mismatch(name: str, reference: Any, candidate: Any, rtol: float, atol: float = 0.0) -> str | None:
    """Why ``candidate`` does not match ``reference`` (output ``name``), or None when it does (within
    ``rtol`` of its largest magnitude, or within ``atol``) or when the output holds nothing comparable."""
    expected = numeric_values(reference)
    if expected is None:
        return None
    if candidate is None or structure(candidate) != structure(reference):
        shape = None if candidate is None else structure(candidate)
        return f"output '{name}' has {shape}, expected {structure(reference)}"
    actual = numeric_values(candidate)
    error = relative_error(expected, actual) if actual is not None else float("inf")
    if error <= rtol:
        return None
    difference = float(np.max(np.abs(actual - expected))) if actual is not None and expected.size else float("inf")
    if difference <= atol:
        return None
    absolute = f"; largest difference {difference:.2e}, absolute tolerance {atol:.2g}" if atol else ""
    return f"output '{name}' deviates (relative error {error:.2e}, tolerance {rtol:g}{absolute})"
