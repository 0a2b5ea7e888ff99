"""The command line as a user meets it: real processes, exit codes, files and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from tests.support.cli import onnxprune
from tests.support.oracle import random_feeds, run_model
from tests.support.small_models import residual_model

pytestmark = pytest.mark.integration  # the pipeline, the CLI or a sandbox, in processes of their own

REPORT_CONTRACT = [
    ("macs", "before"), ("macs", "after"), ("params", "before"), ("params", "after"),
    ("latency_ms", "before", "p50"), ("latency_ms", "after", "p50"),
    ("latency_ms", "before", "p90"), ("latency_ms", "after", "p90"), ("fidelity", "cosine_similarity"),
]  # fmt: skip


# session, not module: cheap to build, and a module-scoped fixture puts every test of the module on one
# xdist worker (tests/conftest.py), where these long tests would queue behind each other.
@pytest.fixture(scope="session")
def model_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "residual.onnx"
    onnx.save(residual_model(), path)
    return path


def test_prune_writes_model_report_and_plan(model_path, tmp_path):
    result = onnxprune(
        "prune",
        model_path,
        "-o",
        "out.onnx",
        "--ratio",
        "0.5",
        "--report",
        "report.json",
        "--plan-out",
        "plan.json",
        "--runs",
        "5",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    for path in REPORT_CONTRACT:
        value = report
        for key in path:
            value = value[key]
        assert isinstance(value, (int, float)), path
    assert report["macs"]["after"] < report["macs"]["before"]
    assert {"nodes", "channels_before", "channels_after"} <= set(report["groups"][0])
    assert {"nodes", "reason"} <= set(report["frozen"][0])
    onnx.checker.check_model(onnx.load(tmp_path / "out.onnx"), full_check=True)
    assert json.loads((tmp_path / "plan.json").read_text())["groups"]


def test_a_saved_plan_reproduces_the_same_model(model_path, tmp_path):
    first = onnxprune(
        "prune",
        model_path,
        "-o",
        "a.onnx",
        "--criterion",
        "random",
        "--seed",
        "3",
        "--ratio",
        "0.4",
        "--plan-out",
        "plan.json",
        "--no-benchmark",
        cwd=tmp_path,
    )
    again = onnxprune("prune", model_path, "-o", "b.onnx", "--plan-in", "plan.json", "--no-benchmark", cwd=tmp_path)
    assert first.returncode == again.returncode == 0, first.stderr + again.stderr
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


def test_ratio_zero_gives_the_original_outputs_exactly(model_path, tmp_path):
    result = onnxprune("prune", model_path, "-o", "same.onnx", "--ratio", "0", "--no-benchmark", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    original, pruned = onnx.load(model_path), onnx.load(tmp_path / "same.onnx")
    feeds = random_feeds(original, {"input": [1, 3, 8, 8]})
    for want, have in zip(run_model(original, feeds), run_model(pruned, feeds)):
        assert (want == have).all()


BAD_INPUT_CASES = [
    ("random bytes", lambda d: d / "rand.onnx", ["--ratio", "0.5"], "not an ONNX model"),
    ("missing file", lambda d: d / "missing.onnx", ["--ratio", "0.5"], "does not exist"),
    ("ratio out of range", None, ["--ratio", "1.5"], "ratio"),
    ("unknown criterion", None, ["--criterion", "magic"], "unknown criterion 'magic'"),
    ("both targets", None, ["--ratio", "0.2", "--flops-target", "0.3"], "not both"),
    ("bad input shape", None, ["--input-shape", "input:1xfoo"], "NAME:DxDx"),
    ("unknown input", None, ["--input-shape", "image:1x3x8x8"], "not a model input"),
    ("round-to zero", None, ["--round-to", "0"], "round_to: must be 'auto' or a whole number"),
    ("latency and MACs targets", None, ["--latency-target", "0.5", "--flops-target", "0.3"], "latency_target"),
    ("fine-tuning without recovery", None, ["--recovery", "none", "--finetune-steps", "10"], "recovery 'none'"),
]


@pytest.mark.parametrize("label, path, args, message", BAD_INPUT_CASES, ids=[c[0] for c in BAD_INPUT_CASES])
def test_bad_input_exits_2_with_one_line(model_path, tmp_path, label, path, args, message):
    (tmp_path / "rand.onnx").write_bytes(b"\x93\x17garbage" * 10)
    target = path(tmp_path) if path else model_path
    result = onnxprune("prune", target, "-o", "out.onnx", *args, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr
    # One error line; progress lines (off a terminal, one per stage started, '[  0.0 s] ...') may precede it.
    errors = [line for line in result.stderr.strip().splitlines() if not line.startswith("[")]
    assert len(errors) == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "out.onnx").exists()


def test_analyze_lists_groups_and_frozen_with_reasons(model_path, tmp_path):
    result = onnxprune("analyze", model_path, "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["macs"] > 0 and data["params"] > 0
    assert sum(g["macs_share"] for g in data["groups"]) > 0
    assert any("graph output" in f["reason"] for f in data["frozen"])


def test_bench_compares_two_models(model_path, tmp_path):
    result = onnxprune("bench", model_path, model_path, "--runs", "5", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["latency_ms"]["before"]["p50"] > 0 and data["latency_ms"]["after"]["p50"] > 0
    assert data["fidelity"]["max_abs_diff"] == 0.0
    change = data["latency_ms"]["change"]  # the same model twice: any "speed-up" is noise
    assert change["low"] <= change["ratio"] <= change["high"] and change["runs"] == 5
    assert change["summary"].endswith(("faster", "slower", "no change"))


def test_bench_says_faster_or_slower_with_its_interval(model_path, tmp_path):
    result = onnxprune("bench", model_path, model_path, "--runs", "5", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "B against A (p50):" in result.stdout and "interval" in result.stdout
