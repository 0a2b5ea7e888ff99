"""Augmentation of image-like inputs for recovery on few samples: random crop with padding and
horizontal flip, the standard CIFAR/ImageNet recipe, so a few thousand images go further.

Applied to 4-D float inputs only, on the axes their layout says are spatial: NCHW (PyTorch, Paddle
exports) or NHWC (tf2onnx), told apart by which axis has 1, 3 or 4 entries. Anything else (tokens,
audio, 1-D features) passes through untouched. Padding is with zeros, which after the usual
normalisation is the mean colour.
"""

from __future__ import annotations

import numpy as np

_CHANNEL_COUNTS = (1, 3, 4)


def image_layout(shape: tuple[int, ...]) -> str | None:
    """'NCHW', 'NHWC', or None when ``shape`` is not clearly an image batch."""
    if len(shape) != 4:
        return None
    channels_first, channels_last = shape[1] in _CHANNEL_COUNTS, shape[3] in _CHANNEL_COUNTS
    if channels_first and not channels_last:
        return "NCHW"
    if channels_last and not channels_first:
        return "NHWC"
    return None


def augment_images(array: np.ndarray, rng: np.random.Generator, *, flip: bool = True) -> np.ndarray:
    """A randomly cropped (padding 1/8 of the side) and flipped copy of an image batch."""
    layout = image_layout(array.shape)
    if layout is None or not np.issubdtype(array.dtype, np.floating):
        return array
    images = array if layout == "NCHW" else array.transpose(0, 3, 1, 2)
    n, _, height, width = images.shape
    pad = max(1, min(height, width) // 8)
    padded = np.pad(images, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    rows, cols = rng.integers(0, 2 * pad + 1, size=n), rng.integers(0, 2 * pad + 1, size=n)
    out = np.empty_like(images)
    for i in range(n):
        out[i] = padded[i, :, rows[i] : rows[i] + height, cols[i] : cols[i] + width]
    if flip:
        flipped = rng.random(n) < 0.5
        out[flipped] = out[flipped, :, :, ::-1]
    return out if layout == "NCHW" else np.ascontiguousarray(out.transpose(0, 2, 3, 1))


def augment_inputs(inputs: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Every image-like input of a batch augmented; other inputs as they are."""
    return {name: augment_images(array, rng) for name, array in inputs.items()}


def augmentable(inputs: dict[str, np.ndarray]) -> bool:
    return any(image_layout(a.shape) is not None and np.issubdtype(a.dtype, np.floating) for a in inputs.values())
