"""The CLI's prune flags are derived from the one options schema: every field has a flag, set flags
reach the options unchanged, unset ones leave the schema's defaults."""

from __future__ import annotations

import inspect

import click
import typer.main

from onnxprune.service.cli import app
from onnxprune.service.cli_options import flag_name, set_options
from onnxprune.workers.options import PruneOptions


def _prune_command() -> click.Command:
    group = typer.main.get_command(app)
    return group.commands["prune"]  # type: ignore[attr-defined]


def test_every_schema_field_is_a_prune_flag_and_nothing_else_is():
    flags = {opt for param in _prune_command().params if param.param_type_name == "option" for opt in param.opts}
    expected = {flag_name(name, field) for name, field in PruneOptions.model_fields.items()}
    assert expected <= flags
    files = {
        "--output",
        "-o",
        "--data",
        "--report",
        "--report-html",
        "--plan-out",
        "--plan-in",
        "--sensitivity",
        "--help",
    }
    output_format = {"--json"}
    # no flag outside the schema but the files a run reads and writes, and how it prints its answer
    assert flags - expected - files - output_format == set()


def test_unset_flags_leave_the_schema_defaults_and_set_ones_arrive_typed():
    values = {name: None for name in PruneOptions.model_fields}
    values.update(ratio="0.3", exclude=["head*"], input_shapes=["x:1x3x8x8"], benchmark=False)
    options = PruneOptions(**set_options(values))
    assert options.ratio == 0.3 and options.exclude == ["head*"] and options.benchmark is False
    assert options.input_shapes == {"x": [1, 3, 8, 8]}
    assert options.criterion == PruneOptions().criterion and options.round_to == PruneOptions().round_to


def test_help_shows_each_field_description_once_grouped():
    command = _prune_command()
    for name, field in PruneOptions.model_fields.items():
        param = next(p for p in command.params if flag_name(name, field) in p.opts)
        assert field.description and param.help and param.help.startswith(field.description)
    assert "**flags" not in inspect.signature(command.callback).parameters
