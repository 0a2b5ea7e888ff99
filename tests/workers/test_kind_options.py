"""The per-kind options (``prune_kinds``, ``max_filter_ratio``, ``max_head_ratio``, ``max_neuron_ratio``):
one spelling through the CLI flags, the REST config and the upload form; contradictions refused with
the message users see; and the job honouring them: a saved plan past them refused, the report's
``kinds`` section and its HTML page, every group's kind and limit.
"""

from __future__ import annotations

import json
import re

import onnx
import pytest
import typer.main

from onnxprune.graphops.errors import PlanError
from onnxprune.graphops.plan import PruningPlan
from onnxprune.service.cli import app
from onnxprune.service.cli_options import set_options
from onnxprune.service.option_form import option_specs
from onnxprune.service.uploads import parse_config
from onnxprune.workers.analysis import analyse_model
from onnxprune.workers.analysis_summary import summarize
from onnxprune.workers.html_report import render_report_html
from onnxprune.workers.options import PruneOptions
from onnxprune.workers.pipeline import run_pipeline
from tests.support.oracle import analyse
from tests.support.transformer_models import bert_style

# Pipeline stages run in this process, as in a job's sandbox (tests/support/job_sandbox.py).
pytestmark = pytest.mark.usefixtures("stages_in_the_job_process")

SHAPES = {"x": [2, 7, 32], "attention_mask": [2, 7]}


def _cli(*flags: str) -> PruneOptions:
    command = typer.main.get_command(app).commands["prune"]  # type: ignore[attr-defined]
    context = command.make_context("prune", ["model.onnx", "-o", "out.onnx", *flags], resilient_parsing=False)
    return PruneOptions(**set_options(dict(context.params)))


def test_the_cli_the_rest_config_and_the_form_spell_them_alike():
    by_flags = _cli("--prune-kinds", "head", "--prune-kinds", "neuron", "--max-head-ratio", "0.25")
    by_commas = _cli("--prune-kinds", "head,neuron", "--max-head-ratio", "0.25")
    by_rest = parse_config(json.dumps({"prune_kinds": ["head", "neuron"], "max_head_ratio": 0.25}))
    by_form = parse_config(json.dumps({"prune_kinds": "head, neuron", "max_head_ratio": 0.25}))
    specs = {spec.name: spec for spec in option_specs()}

    assert by_flags == by_commas == by_rest == by_form
    assert by_rest.prune_kinds == ["head", "neuron"] and by_rest.kind_limits.max_ratio == {"head": 0.25}
    assert (specs["prune_kinds"].kind, specs["max_head_ratio"].kind) == ("list", "number")
    assert PruneOptions().prune_kinds == ["filter", "head", "neuron"] and not PruneOptions().kind_limits.limits_anything


REFUSED = [
    ({"prune_kinds": []}, "name at least one kind to prune: filter, head, neuron"),
    ({"prune_kinds": ["conv"]}, "Input should be 'filter', 'head' or 'neuron'"),
    ({"prune_kinds": ["neuron"], "max_head_ratio": 0.25},
     "max_head_ratio limits attention heads, which prune_kinds (neuron) leaves whole; drop one of the two"),
    ({"prune_kinds": ["head"], "max_head_ratio": 0.0},
     "every kind prune_kinds names (head) has a max ratio of 0: nothing may be removed"),
    ({"max_neuron_ratio": 1.0}, "Input should be less than 1"),
    ({"criterion": "learned", "max_head_ratio": 0.5},
     "criterion 'learned' lets each layer's agent choose its count and takes no max_head_ratio; use prune_kinds "
     "to leave a kind whole, or ratio 'auto' with the limit"),
]  # fmt: skip


@pytest.mark.parametrize(("config", "message"), REFUSED, ids=[str(c) for c, _ in REFUSED])
def test_contradictions_are_refused_before_a_job_exists(config, message):
    with pytest.raises(Exception) as refused:  # the REST parser's 422 (ApiError) names the field and says why
        parse_config(json.dumps(config))

    assert getattr(refused.value, "status", 422) == 422
    assert message in str(refused.value)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("bert") / "bert.onnx"
    onnx.save(bert_style(), path)
    return path


def test_a_saved_plan_that_cuts_a_kind_left_whole_is_refused(model_path, tmp_path):
    dep = analyse(bert_style(), SHAPES).dep
    heads = next(g for g in dep.prunable if g.kind == "head")
    plan = PruningPlan.from_keep(dep, {heads.id: [0, 1, 2]})
    options = PruneOptions(prune_kinds=["neuron"], input_shapes=SHAPES, benchmark=False)

    with pytest.raises(PlanError, match=f"removes 1 of the 4 head units of group '{heads.id}'; prune_kinds neuron"):
        run_pipeline(model_path, tmp_path / "out.onnx", options, plan=plan)
    assert not (tmp_path / "out.onnx").exists()


def test_the_report_and_its_page_give_each_group_its_kind_and_limit_and_the_units_of_each_kind(model_path, tmp_path):
    options = PruneOptions(ratio=0.5, max_head_ratio=0.25, round_to=1, input_shapes=SHAPES, benchmark=False)

    report = run_pipeline(model_path, tmp_path / "out.onnx", options).report

    heads = [g for g in report.groups if g.kind == "head"]
    assert [(g.channels_before, g.channels_after, g.max_removed, g.limited_by) for g in heads] == [
        (4, 3, 1, "max_head_ratio 0.25")
    ] * 2
    assert [(k.kind, k.groups, k.units_before, k.units_after, k.limit) for k in report.kinds] == [
        ("head", 2, 8, 6, "max_head_ratio 0.25"),
        ("neuron", 2, 96, 48, ""),
    ]
    page = render_report_html(report)
    kinds = re.search(r'<table id="kinds">(.*?)</table>', page, re.S)
    assert kinds is not None, "the page has no table of kinds"
    rows = [re.sub(r"<[^>]+>", " ", row).split() for row in re.findall(r"<tr><td.*?</tr>", kinds.group(1))]
    assert rows == [
        ["attention", "heads", "2", "of", "2", "8", "6", "max_head_ratio", "0.25"],
        ["MLP", "neurons", "2", "of", "2", "96", "48", "none"],
    ]
    assert page.count("attention heads of 8 channels") == 2  # each head group's row names its unit


def test_a_latency_target_with_heads_alone_prices_heads_by_head_count(model_path, tmp_path):
    """Heads of 8 channels on the 16-channel SGEMM step: the table times each layer at 2 of 4 heads."""
    options = PruneOptions(
        latency_target=0.8,
        prune_kinds=["head"],
        input_shapes=SHAPES,
        benchmark=False,
        latency_budget_s=10.0,
        latency_iterations=1,
    )

    report = run_pipeline(model_path, tmp_path / "out.onnx", options).report  # oracle-checked

    assert report.latency_target is not None
    assert sorted((g.channels, tuple(g.counts)) for g in report.latency_target.groups) == [(4, (2, 4))] * 2
    assert all(g.kind == "head" for g in report.groups if g.channels_after < g.channels_before)


def test_analyze_names_each_groups_kind(model_path):
    summary = summarize(analyse_model(model_path, SHAPES))

    assert (
        sorted((g.kind, g.channels, g.unit) for g in summary.groups) == [("head", 4, 8)] * 2 + [("neuron", 48, 1)] * 2
    )
