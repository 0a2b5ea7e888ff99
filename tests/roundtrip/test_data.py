"""Data files: one array per input (any name for one input), optional labels; clear one-line errors."""

from __future__ import annotations

import numpy as np
import pytest

from onnxprune.graphops.errors import ModelRejected
from onnxprune.graphops.loading import load_model
from onnxprune.roundtrip.data import array_shapes, load_dataset, split_data


@pytest.fixture
def model(small_model):
    return load_model(small_model)


def save(tmp_path, **arrays):
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    return path


def test_a_single_input_model_takes_any_array_name_and_float64_is_cast(tmp_path, model):
    data = load_dataset(save(tmp_path, images=np.zeros((10, 3, 12, 12)), labels=np.arange(10) % 4), model)

    assert len(data) == 10 and data.inputs["input"].dtype == np.float32 and data.labels.dtype == np.int64


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"input": np.zeros((10, 3, 12, 12), np.uint8)}, "data for input 'input' is uint8, the model wants float32"),
        ({"input": np.zeros((10, 12, 12, 3), np.float32)}, "axis 1 is 12, expected 3"),
        ({"input": np.zeros((3, 12, 12), np.float32)}, "4-D samples batched on axis 0"),
        ({"input": np.zeros((10, 3, 12, 12), np.float32), "labels": np.zeros(9, np.int64)}, "must be 10 integers"),
        ({"input": np.zeros((10, 3, 12, 12), np.float32), "labels": np.zeros(10, np.float32)}, "must be 10 integers"),
        ({"input": np.full((10, 3, 12, 12), np.nan, np.float32)}, "NaN"),
    ],
)
def test_mismatched_data_is_rejected_in_one_line(tmp_path, model, arrays, message):
    with pytest.raises(ModelRejected, match=message) as error:
        load_dataset(save(tmp_path, **arrays), model)
    assert "\n" not in str(error.value)


def test_pickled_object_arrays_are_never_loaded(tmp_path, model):
    path = tmp_path / "data.npz"
    np.savez(path, input=np.array([{"a": 1}] * 10, dtype=object))

    with pytest.raises(ModelRejected, match="not a readable .npz"):
        load_dataset(path, model)


def test_data_splits_into_train_validation_and_held_out_by_index_mod_5(tmp_path, model):
    data = load_dataset(save(tmp_path, input=np.arange(20 * 432, dtype=np.float32).reshape(20, 3, 12, 12)), model)

    splits = split_data(data)

    def first_values(part):
        return (part.inputs["input"][:, 0, 0, 0] / 432).astype(int).tolist()

    assert first_values(splits.held_out) == [4, 9, 14, 19]
    assert first_values(splits.validation) == [3, 8, 13, 18]
    assert first_values(splits.train) == [0, 1, 2, 5, 6, 7, 10, 11, 12, 15, 16, 17]


def test_too_few_samples_to_split_is_a_clear_user_error(tmp_path, model):
    data = load_dataset(save(tmp_path, input=np.zeros((4, 3, 12, 12), dtype=np.float32)), model)

    with pytest.raises(ModelRejected, match="at least 5 are needed"):
        split_data(data)


def test_the_shapes_of_the_arrays_feeding_the_inputs_are_read_from_their_headers(tmp_path, model):
    compressed = tmp_path / "compressed.npz"
    np.savez_compressed(compressed, images=np.zeros((10, 3, 16, 20), np.float32), labels=np.arange(10))
    photos = save(tmp_path, input=np.zeros((10, 32, 32, 3), np.uint8))

    assert array_shapes(compressed, model) == {"input": [10, 3, 16, 20]}  # one input: any array name
    assert array_shapes(photos, model) == {}  # images letterboxed to the input's size say nothing of it
