"""With data and no criterion, a job ranks filters by the criterion the committed results show best
('auto': taylor, or obs with heads last for a transformer at a MACs target, resolved once the model is
analysed: tests/workers/test_default_criterion_resolved.py); without PyTorch, or with recovery 'none', it keeps l1 and says why where it matters."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from onnxprune.service.cli import app
from onnxprune.workers.options import (
    AUTO_CRITERION,
    DATA_CRITERION,
    TRANSFORMER_CRITERION,
    PruneOptions,
    with_data_defaults,
)

CASES = [
    # (options the user set, data given, torch installed, criterion run, a note)
    ({"flops_target": 0.3}, True, True, "auto", False),
    ({"flops_target": 0.3}, True, False, "l1", True),
    ({"flops_target": 0.3}, False, True, "l1", False),
    ({"flops_target": 0.3, "criterion": "l1"}, True, True, "l1", False),  # chosen: kept
    ({"flops_target": 0.3, "criterion": "l2"}, True, True, "l2", False),
    ({"flops_target": 0.3, "recovery": "none"}, True, True, "l1", False),  # the weight-only path
]


@pytest.mark.parametrize(("given", "data", "torch", "criterion", "noted"), CASES)
def test_the_default_criterion_follows_the_data(given, data, torch, criterion, noted):
    options, note = with_data_defaults(PruneOptions(**given), data_given=data, torch_available=torch)

    assert options.criterion == criterion
    assert (note is not None) == noted
    if noted:
        assert "needs PyTorch" in note and "l1" in note


def test_the_data_default_is_auto_and_prune_help_says_so():
    result = CliRunner().invoke(app, ["prune", "--help"], env={"COLUMNS": "400"})

    assert (AUTO_CRITERION, DATA_CRITERION, TRANSFORMER_CRITERION) == ("auto", "taylor", "obs")
    assert result.exit_code == 0
    assert "default: auto with data" in " ".join(result.output.replace("│", " ").split())
