"""The written model declares intermediate shapes as the user's original did (``graphops.surgery.declare_shapes_like``):
none for an export without value_info (MiniLM-L3's), the pruned model's own for one with them."""

from __future__ import annotations

import onnx
import pytest

from onnxprune.graphops.shapes import inferred_value_info
from onnxprune.workers.options import PruneOptions
from onnxprune.workers.pipeline import run_pipeline
from tests.support.transformer_models import bert_style

# Pipeline stages run in this process, as in a job's sandbox (tests/support/job_sandbox.py).
pytestmark = pytest.mark.usefixtures("stages_in_the_job_process")

SHAPES = {"x": [2, 7, 32], "attention_mask": [2, 7]}


@pytest.mark.parametrize("declared", [False, True], ids=["undeclared", "declared"])
def test_the_written_model_declares_shapes_as_the_original_did(tmp_path, declared):
    original = bert_style()
    if declared:
        original.graph.value_info.extend(inferred_value_info(original))
    onnx.save(original, tmp_path / "bert.onnx")
    options = PruneOptions(ratio=0.5, round_to=1, input_shapes=SHAPES, benchmark=False)

    report = run_pipeline(tmp_path / "bert.onnx", tmp_path / "out.onnx", options).report

    written = onnx.load(tmp_path / "out.onnx")
    assert report.macs.after < report.macs.before
    assert bool(written.graph.value_info) is declared
    if declared:
        assert len(written.graph.value_info) == len(inferred_value_info(written))
