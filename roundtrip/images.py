"""Photos as data: a folder of image files, or an .npz of uint8 images, made into a model's input.

A detector's users have photos, not arrays preprocessed for the model. For a model with one 4-D
float input of 3 channels (``[N, 3, H, W]``), ``--data`` may be a folder of JPEG/PNG/BMP/WebP files
or an .npz whose array is uint8 ``[N, h, w, 3]``. By default each image is preprocessed as
Ultralytics detectors expect: RGB, letterboxed to H x W (scaled to fit, aspect kept, centred on grey
114 padding), divided by 255, NCHW float32. Other models say what they were trained on with
``ImagePreprocessing`` (the ``image_*`` options): BGR and 0-255 for YOLOX and other OpenCV-trained
exports, a centre crop and the ImageNet mean and standard deviation for classifiers. Pillow decodes;
its decompression-bomb guard stays on, and a file it cannot read is a one-line user error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnx

from onnxprune.graphops.errors import ModelRejected

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
PAD_VALUE = 114  # Ultralytics' letterbox grey
# 'crop' scales the shorter side to the input's size over this, then takes the centre: the ImageNet
# evaluation's resize to 256 and centre crop of 224.
CROP_FRACTION = 0.875

ChannelOrder = Literal["rgb", "bgr"]
Resize = Literal["letterbox", "stretch", "crop"]


@dataclass(frozen=True)
class ImagePreprocessing:
    """How a photo becomes the model's input: channel order, how it is brought to the input's size,
    then ``(pixel / scale - mean) / std`` per channel (in the model's channel order). The default is
    Ultralytics': RGB, letterboxed, /255."""

    channels: ChannelOrder = "rgb"
    resize: Resize = "letterbox"
    scale: float = 255.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)


def image_size(value: onnx.ValueInfoProto, shape: Sequence[object] | None) -> tuple[int, int] | None:
    """(H, W) when ``value`` is a float ``[N, 3, H, W]`` input of known size, else None."""
    elem = value.type.tensor_type.elem_type
    if shape is None or len(shape) != 4 or not np.issubdtype(onnx.helper.tensor_dtype_to_np_dtype(elem), np.floating):
        return None
    channels, height, width = shape[1], shape[2], shape[3]
    if channels != 3 or not isinstance(height, int) or not isinstance(width, int) or height <= 0 or width <= 0:
        return None
    return height, width


def letterbox(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """One uint8 ``[h, w, 3]`` RGB image scaled into ``size`` (H, W), aspect kept, centred on grey."""
    from PIL import Image

    height, width = size
    scale = min(height / image.shape[0], width / image.shape[1])
    new_h, new_w = max(1, round(image.shape[0] * scale)), max(1, round(image.shape[1] * scale))
    resized = Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BILINEAR)
    canvas = np.full((height, width, 3), PAD_VALUE, np.uint8)
    top, left = (height - new_h) // 2, (width - new_w) // 2
    canvas[top : top + new_h, left : left + new_w] = np.asarray(resized)
    return canvas


def stretch(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """One uint8 ``[h, w, 3]`` image resized to ``size`` (H, W), aspect not kept."""
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.Resampling.BILINEAR))


def centre_crop(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """One uint8 ``[h, w, 3]`` image scaled so that ``size`` is CROP_FRACTION of it, then its centre."""
    from PIL import Image

    height, width = size
    scale = max(height / image.shape[0], width / image.shape[1]) / CROP_FRACTION
    new_h, new_w = max(height, round(image.shape[0] * scale)), max(width, round(image.shape[1] * scale))
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BILINEAR))
    top, left = (new_h - height) // 2, (new_w - width) // 2
    return resized[top : top + height, left : left + width]


_RESIZE = {"letterbox": letterbox, "stretch": stretch, "crop": centre_crop}


def to_input(
    images: Sequence[np.ndarray] | np.ndarray, size: tuple[int, int], preprocessing: ImagePreprocessing | None = None
) -> np.ndarray:
    """uint8 RGB images (any sizes) as a float32 ``[N, 3, H, W]`` batch, by ``preprocessing``
    (the default: letterboxed, in [0, 1])."""
    how = preprocessing or ImagePreprocessing()
    resized = np.stack([_RESIZE[how.resize](image, size) for image in images])
    if how.channels == "bgr":
        resized = resized[..., ::-1]
    mean, std = np.asarray(how.mean, np.float32), np.asarray(how.std, np.float32)
    batch = (resized.astype(np.float32) / np.float32(how.scale) - mean) / std
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2), dtype=np.float32)


def is_image_array(array: np.ndarray) -> bool:
    """uint8 ``[N, h, w, 3]``: images as a user has them, not preprocessed."""
    return array.dtype == np.uint8 and array.ndim == 4 and array.shape[3] == 3


def read_folder(folder: Path, size: tuple[int, int], preprocessing: ImagePreprocessing | None = None) -> np.ndarray:
    """Every image file in ``folder`` (sorted by name, not recursive) as a ``[N, 3, H, W]`` batch."""
    from PIL import Image, UnidentifiedImageError

    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ModelRejected(f"data folder {folder.name} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
    images = []
    for file in files:
        try:
            with Image.open(file) as opened:
                images.append(np.asarray(opened.convert("RGB")))
        except (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
            raise ModelRejected(f"data image {file.name} cannot be read: {str(exc).splitlines()[0]}") from exc
    return to_input(images, size, preprocessing)
