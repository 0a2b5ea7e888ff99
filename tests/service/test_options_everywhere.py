"""Every option of the one schema (``PruneOptions``) is offered by the upload page, by ``submit`` and by
the REST config, and nothing else is: a new field shows up everywhere or this fails."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer.main

from onnxprune.service.errors import ApiError
from onnxprune.service.option_form import option_specs
from onnxprune.service.uploads import parse_config
from onnxprune.workers.options import OPTION_GROUPS, PruneOptions

SCHEMA = set(PruneOptions.model_fields)
# the upload and what to write, not job options
SUBMIT_OWN = {"model", "server", "output", "data", "report", "report_html", "plan_out", "plan_in", "as_json", "token"}
STATIC = Path(__file__).resolve().parents[2] / "service" / "static"


def test_the_upload_page_is_built_from_every_option_of_the_schema(client):
    offered = client.get("/v1/options").json()

    assert {spec["name"] for spec in offered} == SCHEMA
    assert {spec["group"] for spec in offered} <= set(OPTION_GROUPS) | {"options"}
    data_only = {spec["name"] for spec in offered if spec["needs_data"]}
    assert {"finetune_steps", "iterative_steps", "lr", "learned_episodes"} <= data_only
    assert "ratio" not in data_only and "criterion" not in data_only
    # groups titled "(needs data)" hold only such options, so the page hides them whole until a data file is chosen
    assert all(spec["needs_data"] for spec in offered if "needs data" in OPTION_GROUPS.get(spec["group"], ""))
    # where each may be nested in a config: the strategies that read it, none for a job-wide option
    where = {spec["name"]: spec["strategies"] for spec in offered}
    assert where["lr"] == ["recovery.finetune", "schedule.learned"] and where["seed"] == []
    assert "selector.macs" in where["criterion"] and where["calibration_method"] == ["finish.quantize"]
    page = (STATIC / "index.html").read_text() + (STATIC / "app.js").read_text()
    assert 'fetch("/v1/options")' in page
    assert 'id="ratio"' not in page and 'id="criterion"' not in page, "no hand-written option inputs left"


def test_submit_has_a_flag_for_every_option_of_the_schema():
    from onnxprune.service.cli import app

    submit = typer.main.get_command(app).commands["submit"]

    assert {param.name for param in submit.params} - SUBMIT_OWN == SCHEMA


# A value for each option whose default is None, set alone (some exclude each other, e.g. ratio and flops_target).
UNSET_BY_DEFAULT = {
    "ratio": 0.3,
    "max_drop": None,
    "flops_target": 0.3,
    "time_budget": 60.0,
    "latency_target": 0.7,
    "max_filter_ratio": 0.2,
    "max_head_ratio": 0.25,
    "max_neuron_ratio": 0.5,
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
}


def test_the_rest_config_takes_every_option_and_nothing_else():
    defaults = PruneOptions().model_dump(mode="json")
    every = {name: value for name, value in defaults.items() if value is not None}
    unset = {name for name, value in defaults.items() if value is None} - {"ratio"}  # ratio defaults to 0.5

    assert set(every) | unset == SCHEMA
    assert unset | {"ratio"} == set(UNSET_BY_DEFAULT), "give new None-default options a value here"
    assert parse_config(json.dumps(every)).model_dump(include=set(every), mode="json") == every
    for name, value in UNSET_BY_DEFAULT.items():
        config = {name: value} if value is not None else {"ratio": "auto", name: 0.02}
        assert parse_config(json.dumps(config)).model_dump(mode="json")[name] == (value if value is not None else 0.02)
    with pytest.raises(ApiError, match="config.not_an_option"):
        parse_config(json.dumps({"not_an_option": 1}))


def test_option_kinds_say_how_each_is_entered():
    kinds = {spec.name: spec.kind for spec in option_specs()}

    assert kinds["ratio"] == "number-or-word" and kinds["benchmark"] == "boolean"
    assert kinds["exclude"] == "list" and kinds["input_shapes"] == "shapes"
    assert kinds["finetune_steps"] == "integer" and kinds["lr"] == "number" and kinds["quantize"] == "choice"
    criterion = next(spec for spec in option_specs() if spec.name == "criterion")
    assert {"l1", "taylor"} <= set(criterion.choices) and "taylor" in criterion.data_choices
    assert "l1" not in criterion.data_choices
