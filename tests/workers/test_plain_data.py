"""onnxprune.workers.plain_data: what a sandbox sends back is plain data, and nothing else gets through."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from onnxprune.workers import plain_data


def test_plain_values_and_arrays_come_back_equal_with_their_types():
    value = (
        "ok",
        {"logits": np.arange(6, dtype=np.float32).reshape(2, 3), "names": np.array(["a", "b"])},
        [1, 2.5, None, True, np.float64(0.25)],
        [{0: 0.75, 1: 0.25}, {"cat": 1.0}],  # ZipMap outputs: maps keyed by class id or label
        np.array(["cat", "dog"], dtype=object),  # a string tensor as onnxruntime returns it
    )

    back = plain_data.decode(plain_data.encode(value))

    assert isinstance(back, tuple) and back[0] == "ok"
    assert back[1]["logits"].dtype == np.float32 and np.array_equal(back[1]["logits"], value[1]["logits"])
    assert back[1]["names"].tolist() == ["a", "b"]
    assert back[2] == [1, 2.5, None, True, 0.25]
    assert back[3] == [{0: 0.75, 1: 0.25}, {"cat": 1.0}]
    assert back[4].dtype == object and back[4].tolist() == ["cat", "dog"]


@pytest.mark.parametrize("value", [object(), {(1, 2): "tuple key"}, np.array([object()]), {"__array__": 0}])
def test_anything_else_is_refused_when_encoding(value):
    with pytest.raises(TypeError):
        plain_data.encode(value)


def test_a_pickle_is_not_decoded(tmp_path):
    marker = tmp_path / "ran"
    hostile = pickle.dumps(_Exploit(str(marker)))

    with pytest.raises(ValueError):
        plain_data.decode(hostile)
    assert not marker.exists()


class _Exploit:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))
