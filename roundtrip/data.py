"""Data for data-driven pruning: one ``.npz`` array per model input, optional ``labels``.

Loaded with ``allow_pickle=False`` always (the file may come from a stranger). Arrays must already
be preprocessed as the model expects; a mismatch in shape or dtype is a user error, one line,
naming the input. Numpy only: no torch here.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from onnxprune.graphops.errors import ModelRejected
from onnxprune.graphops.shapes import Shape, declared_input_shapes, graph_inputs
from onnxprune.roundtrip import images

LABELS = "labels"


@dataclass(frozen=True)
class Batch:
    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    indices: np.ndarray


@dataclass(frozen=True)
class Dataset:
    """Samples along axis 0 of every input array; ``labels`` (int64) one per sample, or None."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None

    def __len__(self) -> int:
        return int(next(iter(self.inputs.values())).shape[0])

    def subset(self, indices: np.ndarray) -> Dataset:
        return Dataset(
            {k: v[indices] for k, v in self.inputs.items()}, None if self.labels is None else self.labels[indices]
        )

    def batches(
        self, batch_size: int, *, shuffle: bool = False, seed: int = 0, limit: int | None = None
    ) -> Iterator[Batch]:
        """Batches in order (or a seeded shuffle); ``limit`` caps how many."""
        order = np.random.default_rng(seed).permutation(len(self)) if shuffle else np.arange(len(self))
        for count, start in enumerate(range(0, len(self), batch_size)):
            if limit is not None and count >= limit:
                return
            index = order[start : start + batch_size]
            yield Batch(
                {k: v[index] for k, v in self.inputs.items()},
                None if self.labels is None else self.labels[index],
                index,
            )

    def endless(self, batch_size: int, *, seed: int = 0) -> Iterator[Batch]:
        """Shuffled full batches forever, a new permutation each epoch (for training steps)."""
        epoch = 0
        while True:
            for batch in self.batches(batch_size, shuffle=True, seed=seed + epoch):
                if len(batch.indices) == batch_size or len(self) < batch_size:
                    yield batch
            epoch += 1


def _array_names(path: Path) -> list[str]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            return list(archive.files)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ModelRejected(f"data {path.name} is not a readable .npz of arrays: {str(exc).splitlines()[0]}") from exc


def _check_input(
    name: str, array: np.ndarray, value: onnx.ValueInfoProto, shape: Shape | None, concrete: Sequence[int] | None
) -> np.ndarray:
    dtype = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
    if np.issubdtype(dtype, np.floating):
        if not np.issubdtype(array.dtype, np.floating):
            raise ModelRejected(
                f"data for input '{name}' is {array.dtype}, the model wants {np.dtype(dtype).name}: "
                "save it preprocessed as the model expects (e.g. scaled floats)"
            )
        array = array.astype(dtype, copy=False)
    elif array.dtype != dtype:
        raise ModelRejected(f"data for input '{name}' is {array.dtype}, the model wants {np.dtype(dtype).name}")
    if shape is not None:
        if array.ndim != len(shape):
            raise ModelRejected(
                f"data for input '{name}' has shape {list(array.shape)}: the model wants "
                f"{len(shape)}-D samples batched on axis 0, like {list(concrete or shape)}"
            )
        for axis in range(1, len(shape)):
            want = concrete[axis] if concrete is not None else shape[axis]
            if isinstance(want, int) and want > 0 and array.shape[axis] != want:
                raise ModelRejected(
                    f"data for input '{name}' has shape {list(array.shape)}, the model wants "
                    f"{list(concrete or shape)} (axis {axis} is {array.shape[axis]}, expected {want})"
                )
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise ModelRejected(f"data for input '{name}' holds NaN or infinite values")
    return array


def _arrays_of_inputs(names: Sequence[str], inputs: Sequence[str]) -> dict[str, str]:
    """Which array of the data feeds each model input: its namesake, or the one array of a one-input model."""
    data_names = [n for n in names if n != LABELS]
    if len(inputs) == 1 and len(data_names) == 1:
        return {inputs[0]: data_names[0]}
    missing = [name for name in inputs if name not in names]
    if missing:
        raise ModelRejected(
            f"data has no array for model input '{missing[0]}' (arrays: {', '.join(names) or 'none'}; "
            f"inputs: {', '.join(inputs)})"
        )
    return {name: name for name in inputs}


def array_shapes(path: Path, model: onnx.ModelProto) -> dict[str, list[int]]:
    """The shape of the array feeding each input of ``model`` in the ``.npz`` at ``path``, read from the
    ``.npy`` headers (no values are read): where the data says a symbolic dim's size (a sentence
    length). Images to be letterboxed (uint8 ``[N, h, w, 3]``) and photo folders say nothing."""
    path = Path(path)
    if path.is_dir():
        return {}
    try:
        with zipfile.ZipFile(path) as archive:
            headers = {info.filename.removesuffix(".npy"): _npy_header(archive, info) for info in archive.infolist()}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ModelRejected(f"data {path.name} is not a readable .npz of arrays: {str(exc).splitlines()[0]}") from exc
    mapping = _arrays_of_inputs(list(headers), [v.name for v in graph_inputs(model)])
    return {
        name: list(shape)
        for name, (shape, dtype) in ((name, headers[array]) for name, array in mapping.items())
        if not (dtype == np.uint8 and len(shape) == 4 and shape[3] == 3)
    }


def _npy_header(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> tuple[tuple[int, ...], np.dtype]:
    with archive.open(info) as member:
        version = np.lib.format.read_magic(member)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(member)
    return tuple(int(d) for d in shape), dtype


def load_dataset(
    path: Path,
    model: onnx.ModelProto,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    preprocessing: images.ImagePreprocessing | None = None,
) -> Dataset:
    """The samples in ``path`` for ``model``'s inputs; a single-input model may use any array name.

    A folder of photos, or uint8 ``[N, h, w, 3]`` images in the .npz, feed an image input
    (``roundtrip.images``, by ``preprocessing``: by default letterboxed, /255, RGB NCHW)."""
    path = Path(path)
    values = graph_inputs(model)
    declared = declared_input_shapes(model)
    if path.is_dir():
        return Dataset({values[0].name: _folder_images(path, values, declared, input_shapes, preprocessing)}, None)
    names = _array_names(path)
    mapping = _arrays_of_inputs(names, [v.name for v in values])
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in set(mapping.values()) | ({LABELS} & set(names))}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:  # object arrays need pickle: refused
        raise ModelRejected(f"data {path.name} is not a readable .npz of arrays: {str(exc).splitlines()[0]}") from exc
    inputs = {}
    for value in values:
        concrete = (input_shapes or {}).get(value.name)
        array = arrays[mapping[value.name]]
        size = images.image_size(value, concrete or declared.get(value.name))
        if size is not None and images.is_image_array(array):
            array = images.to_input(array, size, preprocessing)
        inputs[value.name] = _check_input(value.name, array, value, declared.get(value.name), concrete)
    labels = arrays.get(LABELS)
    counts = {name: a.shape[0] if a.ndim else 0 for name, a in inputs.items()}
    if len(set(counts.values())) != 1 or 0 in counts.values():
        raise ModelRejected(f"data arrays must hold the same number (> 0) of samples, got {counts}")
    count = next(iter(counts.values()))
    if labels is not None:
        if not np.issubdtype(labels.dtype, np.integer) or labels.shape != (count,):
            raise ModelRejected(
                f"data 'labels' must be {count} integers (one class per sample), "
                f"got {labels.dtype} of shape {list(labels.shape)}"
            )
        if labels.min() < 0:
            raise ModelRejected("data 'labels' holds negative classes")
        labels = labels.astype(np.int64)
    return Dataset(inputs, labels)


def _folder_images(
    folder: Path,
    values: Sequence[onnx.ValueInfoProto],
    declared: Mapping[str, Shape | None],
    input_shapes: Mapping[str, Sequence[int]] | None,
    preprocessing: images.ImagePreprocessing | None,
) -> np.ndarray:
    value = values[0]
    size = images.image_size(value, (input_shapes or {}).get(value.name) or declared.get(value.name))
    if len(values) != 1 or size is None:
        raise ModelRejected(
            f"data {folder.name} is a folder of images: that needs a model with one float image input "
            "[N, 3, H, W] of known H and W (give --input-shape for symbolic sizes); save other data as .npz"
        )
    return images.read_folder(folder, size, preprocessing)


# The one split of a data file, used by every command so that all numbers refer to the same samples.
# Sample i goes by i mod SPLIT_CYCLE: striding keeps every split fair on files sorted by class.
SPLIT_CYCLE = 5
VALIDATION_POSITION = 3  # i mod 5 == 3: validation
HELD_OUT_POSITION = 4  # i mod 5 == 4: held out
SPLIT_RULES = {
    "train": "three samples in every five of the data file (indices 0, 1, 2, 5, 6, 7, ...)",
    "validation": "every fifth sample of the data file from index 3 (indices 3, 8, 13, ...)",
    "held_out": "every fifth sample of the data file (indices 4, 9, 14, ...)",
}
SPLIT_USES = {
    "train": "data-driven criteria, sensitivity curves, layer-wise reconstruction, BatchNorm re-estimation, "
    "fine-tuning, quantization calibration",
    "validation": "choosing: the fine-tuning checkpoint kept, and the candidates of --ratio auto and "
    "--criterion learned judged against --max-drop",
    "held_out": "this report's evaluation only: no strategy reads it",
}


@dataclass(frozen=True)
class DataSplits:
    """A data file split three ways. ``train`` fits weights and scores; ``validation`` chooses (a
    checkpoint, a candidate plan, whether a bound holds); ``held_out`` is only measured on, after
    everything is chosen, so the report's numbers are not biased by the choices made on them."""

    train: Dataset
    validation: Dataset
    held_out: Dataset


def split_data(dataset: Dataset) -> DataSplits:
    """Train / validation / held out by ``SPLIT_RULES`` (60% / 20% / 20%)."""
    if len(dataset) < SPLIT_CYCLE:
        raise ModelRejected(
            f"data holds {len(dataset)} samples: at least {SPLIT_CYCLE} are needed to split them into "
            "training, validation and held-out samples"
        )
    position = np.arange(len(dataset)) % SPLIT_CYCLE
    return DataSplits(
        train=dataset.subset(np.flatnonzero(~np.isin(position, (VALIDATION_POSITION, HELD_OUT_POSITION)))),
        validation=dataset.subset(np.flatnonzero(position == VALIDATION_POSITION)),
        held_out=dataset.subset(np.flatnonzero(position == HELD_OUT_POSITION)),
    )
