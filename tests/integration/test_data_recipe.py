"""The README's data recipe, run as written: it builds the .npz for the shared ResNet-20 from the shared
CIFAR-10 arrays, the pipeline's data loader accepts it, and the model scores as its source says
(about 80%, ../shared/README.md): the preprocessing is the model's, not merely the right shape."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx

from onnxprune.roundtrip.data import load_dataset
from tests.support.needs import shared_dir, shared_model
from tests.support.oracle import session

ROOT = Path(__file__).resolve().parents[2]


def readme_data_recipe() -> str:
    """The ```python block that builds data.npz in the README's 'With data' section."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### With data") :]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None and 'np.savez("data.npz"' in match.group(1)
    return match.group(1)


def test_the_readme_recipe_builds_data_the_resnet20_reads_as_it_should(tmp_path, monkeypatch):
    model_path = shared_model("onnc_resnet20.onnx")
    (tmp_path / "shared").symlink_to(shared_dir(), target_is_directory=True)
    (tmp_path / "project").mkdir()
    monkeypatch.chdir(tmp_path / "project")  # the recipe runs from the project root, beside ../shared

    exec(compile(readme_data_recipe(), "README.md", "exec"), {})

    model = onnx.load(str(model_path))
    dataset = load_dataset(Path("data.npz"), model)  # what `prune --data` loads, with its checks
    assert dataset.inputs["input.1"].shape == (2000, 3, 32, 32) and dataset.labels is not None
    assert np.bincount(dataset.labels).tolist() == [200] * 10
    first = slice(0, 2000, 4)  # 500 images, every class
    runner = session(model)  # the model takes one image at a time ([1, 3, 32, 32])
    predictions = [
        int(runner.run(None, {"input.1": image[None]})[0].argmax()) for image in dataset.inputs["input.1"][first]
    ]
    assert (np.asarray(predictions) == dataset.labels[first]).mean() > 0.7  # ~80% with the right preprocessing
