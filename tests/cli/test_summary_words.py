"""Small words the CLI summary and the written files get right: what recovery did ("fine-tuned (1 step)",
not "fine-tuned" after one step, "reconstructed" when only layers were refit), and reports, plans and
pages written with the mode a model gets (0644 under umask 022), not mkstemp's 0600."""

from __future__ import annotations

import os
import stat

import pytest

from onnxprune.service.cli import _print_summary
from onnxprune.workers.fileio import atomic_write_bytes
from onnxprune.workers.report import (
    BeforeAfter,
    EvaluationPoint,
    FinetuneReport,
    HeldOutEvaluation,
    IterationReport,
    PruneReport,
)

POINT = EvaluationPoint(loss=1.0, cosine=0.9)


def report_after_recovery(
    steps: int | None, reconstructed: list[str], not_kept: dict[str, str] | None = None
) -> PruneReport:
    finetune = FinetuneReport(
        schedule="one-shot",
        objective="distillation",
        steps=steps or 0,
        iterative_steps=1,
        lr=0.01,
        batch_size=8,
        samples={"train": 60, "validation": 20},
        iterations=[
            IterationReport(
                iteration=0,
                macs=50,
                removed_channels=4,
                after_pruning=POINT,
                steps=steps,
                reconstructed_layers=reconstructed,
                reconstruction_not_kept=not_kept or {},
            )
        ],
    )
    evaluation = HeldOutEvaluation(
        metric="accuracy", source="labels", samples=20, split="i % 5 == 4", before=0.8, after=0.75,
        after_pruning=0.6, finetune=finetune,
    )  # fmt: skip
    return PruneReport(
        onnxprune_version="test",
        model_sha256="0" * 64,
        options={},
        input_shapes={},
        macs=BeforeAfter(before=100, after=50),
        params=BeforeAfter(before=10, after=5),
        groups=[],
        frozen=[],
        evaluation=evaluation,
    )


@pytest.mark.parametrize(
    ("steps", "reconstructed", "words"),
    [
        (1, [], "pruned 0.6000, fine-tuned (1 step) 0.7500"),
        (300, ["conv2"], "pruned 0.6000, reconstructed and fine-tuned (300 steps) 0.7500"),
        (None, ["conv2"], "pruned 0.6000, reconstructed 0.7500"),
    ],
)
def test_the_summary_says_what_recovery_did(steps, reconstructed, words, capsys):
    _print_summary(report_after_recovery(steps, reconstructed))

    assert words in capsys.readouterr().out


@pytest.mark.parametrize(
    ("reconstructed", "not_kept", "words"),
    [
        (["conv1"], {}, "layer-wise reconstruction: 1 of 1 refit(s) kept"),
        (
            ["conv1"],
            {"conv2": "worse", "fc": "worse"},
            "layer-wise reconstruction: 1 of 3 refit(s) kept; 2 did not lower the error on calibration samples held",
        ),
        ([], {"conv2": "worse"}, "layer-wise reconstruction: 0 of 1 refit(s) kept; 1 did not lower the error"),
    ],
)
def test_the_summary_says_how_many_refits_reconstruction_kept(reconstructed, not_kept, words, capsys):
    _print_summary(report_after_recovery(None, reconstructed, not_kept))

    out = " ".join(capsys.readouterr().out.split())  # the caption wraps at the table's width
    assert words in out
    assert ("did not lower" in out) == bool(not_kept)


def test_results_are_written_with_the_mode_a_model_gets(tmp_path):
    previous = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "report.json", b"{}")
        (tmp_path / "model.onnx").write_bytes(b"x")  # as the pipeline writes a model
    finally:
        os.umask(previous)

    assert stat.S_IMODE((tmp_path / "report.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "model.onnx").stat().st_mode) == 0o644
