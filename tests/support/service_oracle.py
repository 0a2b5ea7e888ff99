"""The masked-original oracle: a pruned model must compute what the original computes with the
removed channels zeroed (graphops.masking), on the same random input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def assert_matches_masked_original(original: Path, pruned: Path, plan_json: str, rtol: float = 1e-4) -> None:
    from onnxprune.graphops.dependency import analyze
    from onnxprune.graphops.masking import mask_removed_channels
    from onnxprune.graphops.plan import PruningPlan
    from onnxprune.graphops.prepare import prepare_model
    from onnxprune.graphops.shapes import resolve_input_shapes

    model = onnx.load(str(original))
    shapes = resolve_input_shapes(model)
    dep = analyze(prepare_model(model, shapes))
    masked = mask_removed_channels(dep, PruningPlan.from_json(plan_json))
    pruned_model = onnx.load(str(pruned))
    onnx.checker.check_model(pruned_model)

    rng = np.random.default_rng(0)
    feeds = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}
    expected, actual = _run(masked, feeds), _run(pruned_model, feeds)
    assert len(expected) == len(actual)
    for want, got in zip(expected, actual):
        assert want.shape == got.shape
        rel = np.max(np.abs(want - got)) / max(np.max(np.abs(want)), 1e-12)
        assert rel < rtol, f"pruned output differs from the masked original by {rel:.2e} (relative)"
