"""Augmentation for image-like inputs during few-sample recovery: random crop with padding and
horizontal flip, the standard CIFAR/ImageNet recipe (He et al. 2016), which makes a few thousand
samples go further when fine-tuning.

Only 4-D float inputs are augmented. The layout is read from the sample shape: channels last (NHWC,
e.g. tf2onnx exports of Keras models) when the last axis is small (<= 4) and axis 1 is not, else
channels first (NCHW). Each sample gets its own crop offset and flip; the teacher sees the same
augmented batch (distillation targets are computed on it, not taken from a cache).
"""

from __future__ import annotations

import numpy as np

PAD_FRACTION = 0.125  # 4 pixels on 32x32


def spatial_axes(shape: tuple[int, ...]) -> tuple[int, int] | None:
    """(height axis, width axis) of a batched 4-D image array, or None if it is not one."""
    if len(shape) != 4:
        return None
    if shape[3] <= 4 < shape[1]:
        return 1, 2  # NHWC
    return 2, 3  # NCHW


def augmentable(inputs: dict[str, np.ndarray]) -> bool:
    return any(np.issubdtype(a.dtype, np.floating) and spatial_axes(a.shape) is not None and min(
        a.shape[ax] for ax in spatial_axes(a.shape)) >= 8 for a in inputs.values())


def augment(inputs: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random crop (zero padding of 1/8 of the side) and horizontal flip of every 4-D float input."""
    out = {}
    for name, array in inputs.items():
        axes = spatial_axes(array.shape)
        if axes is None or not np.issubdtype(array.dtype, np.floating) or min(array.shape[a] for a in axes) < 8:
            out[name] = array
            continue
        h_axis, w_axis = axes
        height, width = array.shape[h_axis], array.shape[w_axis]
        pad_h, pad_w = max(1, int(height * PAD_FRACTION)), max(1, int(width * PAD_FRACTION))
        widths = [(0, 0)] * 4
        widths[h_axis], widths[w_axis] = (pad_h, pad_h), (pad_w, pad_w)
        padded = np.pad(array, widths)
        result = np.empty_like(array)
        for i in range(array.shape[0]):
            top, left = rng.integers(0, 2 * pad_h + 1), rng.integers(0, 2 * pad_w + 1)
            sample = np.take(np.take(padded[i], np.arange(top, top + height), h_axis - 1),
                             np.arange(left, left + width), w_axis - 1)
            result[i] = sample[(slice(None),) * (w_axis - 1) + (slice(None, None, -1),)] if rng.random() < 0.5 else sample
        out[name] = result
    return out
