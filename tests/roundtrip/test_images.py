"""Photos as --data: a folder of image files, or uint8 images in an .npz, letterboxed into an image input."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from onnxprune.graphops.errors import ModelRejected
from onnxprune.roundtrip.data import load_dataset, split_data
from onnxprune.roundtrip.images import PAD_VALUE, ImagePreprocessing, letterbox, to_input
from tests.support.detection_models import ORIGINAL, table_model

GREY = PAD_VALUE / 255


def red_image(height: int, width: int) -> np.ndarray:
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 0] = 255
    return image


def test_letterbox_keeps_the_aspect_and_centres_the_image_on_grey():
    boxed = letterbox(red_image(20, 10), (8, 8))  # scaled to 8 x 4, 2 columns of grey each side

    assert boxed.shape == (8, 8, 3)
    assert (boxed[:, :2] == PAD_VALUE).all() and (boxed[:, 6:] == PAD_VALUE).all()
    assert (boxed[:, 2:6, 0] == 255).all() and (boxed[:, 2:6, 1:] == 0).all()


def test_a_folder_of_photos_is_data_for_an_image_input(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for index in range(6):
        Image.fromarray(red_image(20, 10)).save(folder / f"{index}.png")
    Image.fromarray(red_image(10, 20)).convert("L").save(folder / "grey.jpg")  # converted to RGB
    (folder / "labels.tsv").write_text("not an image\n")  # ignored: not an image file

    data = load_dataset(folder, table_model(ORIGINAL))

    images = data.inputs["images"]
    assert images.shape == (7, 3, 8, 8) and images.dtype == np.float32 and data.labels is None
    assert images[0, 0, 0, 0] == pytest.approx(GREY) and images[0, 0, 0, 4] == pytest.approx(1.0)
    assert images[0, 1, 0, 4] == 0.0  # RGB order, NCHW
    assert len(split_data(data).held_out) == 1


def test_uint8_images_in_an_npz_are_letterboxed_like_a_folder(tmp_path):
    np.savez(tmp_path / "photos.npz", photos=np.stack([red_image(20, 10)] * 5))

    images = load_dataset(tmp_path / "photos.npz", table_model(ORIGINAL)).inputs["images"]

    assert images.shape == (5, 3, 8, 8) and images[0, 0, 0, 0] == pytest.approx(GREY)


def test_an_unreadable_image_is_named_in_one_line(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "broken.jpg").write_bytes(b"not a jpeg")

    with pytest.raises(ModelRejected, match=r"data image broken.jpg cannot be read"):
        load_dataset(folder, table_model(ORIGINAL))


def test_a_folder_without_images_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")

    with pytest.raises(ModelRejected, match="holds no image files"):
        load_dataset(tmp_path, table_model(ORIGINAL))


def test_a_folder_for_a_model_without_an_image_input_is_refused(tmp_path):
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "vector",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
    )
    Image.fromarray(red_image(4, 4)).save(tmp_path / "a.png")

    with pytest.raises(ModelRejected, match=r"needs a model with one float image input \[N, 3, H, W\]"):
        load_dataset(tmp_path, helper.make_model(graph))


def test_bgr_raw_pixels_as_yolox_wants_them(tmp_path):
    np.savez(tmp_path / "photos.npz", photos=np.stack([red_image(8, 8)] * 5))
    how = ImagePreprocessing(channels="bgr", scale=1.0)

    images = load_dataset(tmp_path / "photos.npz", table_model(ORIGINAL), preprocessing=how).inputs["images"]

    assert images[0, 2].min() == 255.0 and images[0, :2].max() == 0.0  # red last, 0-255


def test_a_centre_crop_and_imagenet_normalisation_as_classifiers_want_them():
    image = red_image(40, 80)
    image[:, :10] = 0  # black bands left and right: the crop cuts them off
    image[:, 70:] = 0
    how = ImagePreprocessing(resize="crop", mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0))

    (batch,) = to_input([image], (8, 8), how)

    assert batch.shape == (3, 8, 8)
    np.testing.assert_allclose(batch[0], 1.0)  # (1 - 0.5) / 0.5: red everywhere, no black band kept
    np.testing.assert_allclose(batch[1], -1.0)  # (0 - 0.25) / 0.25
    np.testing.assert_allclose(batch[2], 0.0)


def test_stretch_fills_the_input_without_grey():
    (batch,) = to_input([red_image(20, 10)], (8, 8), ImagePreprocessing(resize="stretch"))

    np.testing.assert_allclose(batch[0], 1.0)


def test_the_default_is_ultralytics_letterbox_over_255():
    image = np.random.default_rng(0).integers(0, 256, (30, 17, 3), dtype=np.uint8)

    expected = letterbox(image, (16, 16)).transpose(2, 0, 1).astype(np.float32) / 255.0
    np.testing.assert_array_equal(to_input([image], (16, 16))[0], expected)


def test_the_image_options_spell_the_preprocessing_in_the_cli_and_the_rest_config():
    from onnxprune.service.uploads import parse_config
    from onnxprune.workers.options import PruneOptions

    by_rest = parse_config('{"image_channels": "bgr", "image_scale": 1, "image_mean": [0.5, 0.25, 0]}')
    by_text = PruneOptions(image_channels="bgr", image_scale=1.0, image_mean="0.5, 0.25,0")  # a form's text, a flag

    expected = ImagePreprocessing(channels="bgr", scale=1.0, mean=(0.5, 0.25, 0.0))
    assert by_rest.image_preprocessing == by_text.image_preprocessing == expected
    assert PruneOptions().image_preprocessing == ImagePreprocessing()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("image_mean", "0.5,0.5", "give three values, one per colour channel"), ("image_std", [1, 0, 1], "above 0")],
)
def test_image_options_that_cannot_be_applied_are_refused(field, value, message):
    from pydantic import ValidationError

    from onnxprune.workers.options import PruneOptions

    with pytest.raises(ValidationError, match=message):
        PruneOptions(**{field: value})
