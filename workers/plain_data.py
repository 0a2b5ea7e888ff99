"""Values crossing from a sandbox to its parent as plain data: JSON and ``.npz``, never pickle.

A sandbox runs a hostile model; if it were compromised, anything it sends back is hostile too, and
unpickling it would run its code in the parent. So results travel as a JSON skeleton (None, bools,
numbers, strings, lists, tuples, string-keyed dicts) plus numpy arrays in an ``.npz`` read with
``allow_pickle=False`` (object arrays are refused). Written by hand because neither json nor numpy
alone carries both; the format is three parts: an 8-byte length, the JSON, the npz.
"""

from __future__ import annotations

import io
import json
import struct
from typing import Any

import numpy as np

_ARRAY, _TUPLE, _SCALAR, _PAIRS, _STRINGS = "__array__", "__tuple__", "__scalar__", "__pairs__", "__strings__"
_MARKERS = (_ARRAY, _TUPLE, _SCALAR, _PAIRS, _STRINGS)


def encode(value: Any) -> bytes:
    """``value`` as bytes; TypeError for anything that is not plain data."""
    arrays: list[np.ndarray] = []
    skeleton = json.dumps(_skeleton(value, arrays)).encode()
    buffer = io.BytesIO()
    np.savez(buffer, *arrays)
    return struct.pack("<Q", len(skeleton)) + skeleton + buffer.getvalue()


def decode(data: bytes) -> Any:
    """The value ``encode`` wrote; ValueError for malformed input."""
    (length,) = struct.unpack_from("<Q", data)
    skeleton = json.loads(data[8 : 8 + length])
    with np.load(io.BytesIO(data[8 + length :]), allow_pickle=False) as archive:
        arrays = [archive[f"arr_{index}"] for index in range(len(archive.files))]
    return _rebuild(skeleton, arrays)


def _skeleton(value: Any, arrays: list[np.ndarray]) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.ndarray):
        if value.dtype == object:  # onnxruntime's string tensors: kept as text, given back as objects
            if not all(isinstance(item, str) for item in value.flat):
                raise TypeError("object arrays are not plain data unless they hold strings")
            arrays.append(value.astype(str))
            return {_STRINGS: len(arrays) - 1}
        arrays.append(value)
        return {_ARRAY: len(arrays) - 1}
    if isinstance(value, np.generic):
        arrays.append(np.asarray(value))
        return {_SCALAR: len(arrays) - 1}
    if isinstance(value, tuple):
        return {_TUPLE: [_skeleton(item, arrays) for item in value]}
    if isinstance(value, list):
        return [_skeleton(item, arrays) for item in value]
    if isinstance(value, dict) and all(isinstance(key, str) for key in value):
        if any(key in _MARKERS for key in value):
            raise TypeError("dict keys clash with the encoding's markers")
        return {key: _skeleton(item, arrays) for key, item in value.items()}
    if isinstance(value, dict):  # e.g. onnxruntime's ZipMap outputs: int64 class ids as keys
        if not all(isinstance(key, (int, float, str)) for key in value):
            raise TypeError("dict keys must be numbers or strings")
        return {_PAIRS: [[_skeleton(key, arrays), _skeleton(item, arrays)] for key, item in value.items()]}
    raise TypeError(f"{type(value).__name__} is not plain data")


def _rebuild(skeleton: Any, arrays: list[np.ndarray]) -> Any:
    if isinstance(skeleton, list):
        return [_rebuild(item, arrays) for item in skeleton]
    if not isinstance(skeleton, dict):
        return skeleton
    if _ARRAY in skeleton:
        return arrays[int(skeleton[_ARRAY])]
    if _STRINGS in skeleton:
        return arrays[int(skeleton[_STRINGS])].astype(object)
    if _SCALAR in skeleton:
        return arrays[int(skeleton[_SCALAR])][()]
    if _TUPLE in skeleton:
        return tuple(_rebuild(item, arrays) for item in skeleton[_TUPLE])
    if _PAIRS in skeleton:
        return {_rebuild(key, arrays): _rebuild(item, arrays) for key, item in skeleton[_PAIRS]}
    return {key: _rebuild(item, arrays) for key, item in skeleton.items()}
