"""``onnxprune sensitivity --data photos/`` reads photos as ``prune`` does: the same ``--image-*`` options,
from the same schema (``workers.options.IMAGE_OPTIONS``), validated the same way."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from PIL import Image
from typer.testing import CliRunner

from onnxprune.service.cli import app
from onnxprune.service.cli_options import flag_name
from onnxprune.workers.options import IMAGE_OPTIONS, PruneOptions
from tests.support.small_models import two_branch_model

pytestmark = pytest.mark.usefixtures("stages_in_the_job_process")


@pytest.fixture
def photos_and_model(tmp_path):
    """Four 12x10 photos, and a model with one [N, 3, 8, 8] image input."""
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for index in range(4):
        Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(photos / f"{index}.png")
    onnx.save(two_branch_model(), tmp_path / "model.onnx")
    return photos, tmp_path / "model.onnx"


def _loaded_inputs(monkeypatch, photos, model, *flags):
    """Run ``sensitivity`` on the photos; the input array it measured on, and the result."""
    import onnxprune.roundtrip.data as data

    loaded = []
    real = data.load_dataset

    def recording(*args, **kwargs):
        dataset = real(*args, **kwargs)
        loaded.append(dataset.inputs["input"])
        return dataset

    monkeypatch.setattr(data, "load_dataset", recording)
    result = CliRunner().invoke(
        app, ["sensitivity", str(model), "--data", str(photos), "--ratios", "0.5", "--workers", "1", *flags]
    )
    return (loaded[0] if loaded else None), result


def test_sensitivity_reads_photos_with_the_image_options_prune_takes(monkeypatch, photos_and_model):
    photos, model = photos_and_model

    default, first = _loaded_inputs(monkeypatch, photos, model)
    bgr, second = _loaded_inputs(
        monkeypatch, photos, model, "--image-channels", "bgr", "--image-scale", "1", "--image-resize", "stretch"
    )
    stretched, third = _loaded_inputs(monkeypatch, photos, model, "--image-resize", "stretch")
    normalised, fourth = _loaded_inputs(
        monkeypatch, photos, model, "--image-mean", "0.5,0.5,0.5", "--image-std", "0.25,0.25,0.25"
    )

    assert [r.exit_code for r in (first, second, third, fourth)] == [0, 0, 0, 0], first.output + second.output
    assert default.shape == bgr.shape == (4, 3, 8, 8)
    np.testing.assert_allclose(bgr, stretched[:, ::-1] * 255.0, rtol=1e-5)  # BGR order, 0-255 pixels
    np.testing.assert_allclose(normalised, (default - 0.5) / 0.25, rtol=1e-5, atol=1e-5)


def test_a_bad_image_option_is_one_line_and_exit_2(monkeypatch, photos_and_model):
    photos, model = photos_and_model

    loaded, result = _loaded_inputs(monkeypatch, photos, model, "--image-mean", "0.5,0.5")

    assert result.exit_code == 2 and loaded is None
    assert "image_mean: give three values, one per colour channel (got 2)" in " ".join(result.output.split())


def test_image_options_with_synthetic_inputs_are_named_in_a_warning(photos_and_model):
    _, model = photos_and_model

    result = CliRunner().invoke(
        app,
        ["sensitivity", str(model), "--synthetic", "4", "--ratios", "0.5", "--workers", "1", "--image-channels", "bgr"],
    )

    assert result.exit_code == 0, result.output
    assert "warning: without data these options change nothing: --image-channels bgr" in " ".join(result.output.split())


def test_sensitivity_has_the_image_flags_of_the_schema_with_prunes_help():
    """The flags and their help come from the schema's fields, as prune's do."""
    from typer.main import get_command

    commands = get_command(app).commands  # type: ignore[attr-defined]
    for name in IMAGE_OPTIONS:
        flag = flag_name(name, PruneOptions.model_fields[name])
        ours, prunes = (next(p for p in commands[c].params if flag in p.opts) for c in ("sensitivity", "prune"))
        assert ours.help == prunes.help


def test_the_image_options_are_what_the_preprocessing_reads():
    changed = {
        "image_channels": "bgr",
        "image_resize": "crop",
        "image_scale": 1.0,
        "image_mean": [0.1, 0.2, 0.3],
        "image_std": [0.5, 0.5, 0.5],
    }
    assert set(changed) == set(IMAGE_OPTIONS)
    default = PruneOptions().image_preprocessing
    for name, value in changed.items():
        assert PruneOptions(**{name: value}).image_preprocessing != default, name
    assert set(IMAGE_OPTIONS) == {name for name in PruneOptions.model_fields if name.startswith("image_")}
