"""The contract every registered strategy keeps (``workers.strategies.registry``): it is registered
once; the options it owns are fields of the one schema and round-trip through the CLI flags, the
REST config and the upload form; the needs it reports stay within what it declares; and what it
declares matches what runs: with ``import torch`` failing, a job whose strategies declare no need of
PyTorch prunes, and one whose strategies do fails on importing it (an undeclared import of torch, or
a declaration nothing uses, fails here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import numpy as np
import onnx
import pytest
import typer.main

import onnxprune.workers.strategies as strategies
from onnxprune.graphops.errors import DuplicateRegistration
from onnxprune.service.cli import app
from onnxprune.service.cli_options import flag_name, set_options
from onnxprune.service.errors import ApiError
from onnxprune.service.option_form import OptionSpec, option_specs
from onnxprune.service.uploads import parse_config
from onnxprune.workers.options import PruneOptions
from onnxprune.workers.report import PruneReport
from onnxprune.workers.strategies import choose_schedule, job_needs
from onnxprune.workers.strategies.finish import choose_finish
from onnxprune.workers.strategies.needs import Given
from onnxprune.workers.strategies.nesting import echo_options, strategies_run
from onnxprune.workers.strategies.registry import Entry, nested_options, register, registered
from tests.support import zoo

ROOT = Path(__file__).resolve().parents[2]
ENTRIES = registered()
IDS = [f"{entry.kind}-{entry.name}" for entry in ENTRIES]

# Options of the job as a whole, read by the pipeline and every strategy alike (a strategy whose choice
# depends on one owns it too: the latency selector takes its step from the table with round_to 'auto').
JOB_WIDE = {
    "exclude",
    "prune_kinds",
    "max_filter_ratio",
    "max_head_ratio",
    "max_neuron_ratio",
    "input_shapes",
    "detector",
    "detection_confidence",
    "image_channels",
    "image_resize",
    "image_scale",
    "image_mean",
    "image_std",
    "benchmark",
    "benchmark_runs",
    "threads",
    "seed",
    "round_to",
    "score_batches",
    "flops_regularization",
}

# Options that choose each strategy (one of several that do), the base its own options are varied on.
CHOOSES = {
    ("selector", "plan"): {},
    ("selector", "ratio"): {"ratio": 0.5},
    ("selector", "macs"): {"flops_target": 0.3},
    ("selector", "auto"): {"ratio": "auto"},
    ("selector", "latency"): {"latency_target": 0.5},
    ("recovery", "reconstruct"): {"recovery": "reconstruct"},
    ("recovery", "finetune"): {"finetune_steps": 5},
    ("recovery", "none"): {"recovery": "none"},
    ("schedule", "learned"): {"criterion": "learned"},
    ("schedule", "stepwise"): {},
    ("finish", "quantize"): {"quantize": "int8"},
    ("finish", "float"): {},
}

# A value other than the default for each option a strategy owns, as a user would set it.
SAMPLES: dict[str, Any] = {
    "ratio": 0.3,
    "criterion": "l2",
    "flops_target": 0.4,
    "max_drop": 0.05,
    "latency_target": 0.7,
    "latency_budget_s": 5.0,
    "latency_iterations": 2,
    "round_to": 4,
    "recovery": "finetune",
    "reconstruct_samples": 64,
    "finetune_steps": 7,
    "iterative_steps": 3,
    "lr": 0.01,
    "time_budget": 60.0,
    "augment": False,
    "match_features": True,
    "learned_episodes": 3,
    "learned_samples": 4,
    "batch_size": 16,
    "quantize": "dynamic",
    "calibration_method": "entropy",
}


def _strategy_classes() -> set[type]:
    """Every class in ``workers.strategies`` that selects, recovers, runs a schedule or finishes."""
    found = set()
    for module in strategies.STRATEGY_MODULES + (strategies.recovery,):
        for value in vars(module).values():
            if isinstance(value, type) and value.__module__ == module.__name__:
                if not getattr(value, "_is_protocol", False) and {"select", "recover", "run", "finish"} & set(
                    vars(value)
                ):
                    found.add(value)
    return found


def test_every_strategy_class_is_registered_once():
    classes = [entry.cls for entry in ENTRIES]

    assert _strategy_classes() == set(classes)
    assert len(classes) == len(set(classes))
    for kind in ("selector", "recovery", "schedule", "finish"):
        assert [entry for entry in ENTRIES if entry.kind == kind], f"no {kind} registered"


def test_a_second_strategy_under_a_registered_name_is_refused():
    with pytest.raises(DuplicateRegistration, match="recovery 'finetune' is already registered"):

        @register("recovery", "finetune")
        class Another:
            pass

    assert [entry.cls.__name__ for entry in registered("recovery") if entry.name == "finetune"] == ["FineTune"]


def test_every_option_of_the_schema_is_owned_by_a_strategy_or_the_job():
    owned = {name for entry in ENTRIES for name in entry.options.model_fields}

    assert owned | JOB_WIDE == set(PruneOptions.model_fields)


def _plain(annotation: Any) -> Any:
    """A type without its constraints (``Annotated``), as a comparable structure."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _plain(typing.get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return frozenset(_plain(arg) for arg in typing.get_args(annotation))
    if origin is Literal:
        return ("Literal", typing.get_args(annotation))
    return annotation


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_its_options_are_the_schema_fields_of_the_same_name(entry: Entry):
    for name, field in entry.options.model_fields.items():
        schema = PruneOptions.model_fields[name]
        assert _plain(field.annotation) == _plain(schema.annotation), name
        assert field.get_default(call_default_factory=True) == schema.get_default(call_default_factory=True), name
        assert field.description == schema.description and field.description, name


def _cli(flags: list[str]) -> PruneOptions:
    """Options as ``onnxprune prune`` parses ``flags`` (click's own parser, then ``set_options``)."""
    command = typer.main.get_command(app).commands["prune"]  # type: ignore[attr-defined]
    context = command.make_context("prune", ["model.onnx", "-o", "out.onnx", *flags], resilient_parsing=False)
    return PruneOptions(**set_options(dict(context.params)))


def _typed(value: Any) -> list[str]:
    """What a user types on the command line for ``value``."""
    return [str(value).lower() if isinstance(value, bool) else str(value)]


def _flags(name: str, value: Any) -> list[str]:
    flag = flag_name(name, PruneOptions.model_fields[name])
    if isinstance(value, bool):
        return [flag if value else f"--no-{flag[2:]}"]
    return [flag, *_typed(value)]


def _form_value(spec: OptionSpec, text: str | bool) -> Any:
    """What the upload page puts in the config for what the user entered (``optionValue`` in app.js)."""
    if spec.kind == "boolean":
        return None if text == bool(spec.default) else text
    if spec.kind == "choice":
        return None if text == str(spec.default) else text
    if spec.kind in ("integer", "number"):
        number = float(str(text))
        return None if number == spec.default else (int(number) if number.is_integer() else number)
    if spec.kind == "number-or-word":
        return text if text in spec.choices else float(str(text))
    raise AssertionError(f"no strategy option is entered as {spec.kind}")


def _cli_config(base: dict[str, Any]) -> list[str]:
    return [flag for name, value in base.items() for flag in _flags(name, value)]


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_its_options_round_trip_through_the_cli_the_rest_config_and_the_upload_form(entry: Entry):
    base = CHOOSES[(entry.kind, entry.name)]
    specs = {spec.name: spec for spec in option_specs()}
    for name in entry.options.model_fields:
        value = SAMPLES[name]
        assert value != PruneOptions.model_fields[name].get_default(call_default_factory=True), name
        config = base | {name: value}
        spec = specs[name]
        form = {key: _form_value(specs[key], v if isinstance(v, bool) else str(v)) for key, v in config.items()}

        by_cli = entry.options.of(_cli(_cli_config(config)))
        by_rest = entry.options.of(parse_config(json.dumps(config)))
        by_form = entry.options.of(parse_config(json.dumps({k: v for k, v in form.items() if v is not None})))

        assert getattr(by_cli, name) == getattr(by_rest, name) == getattr(by_form, name) == value, name
        assert by_cli == by_rest == by_form
        assert spec.default == entry.options.model_fields[name].get_default(call_default_factory=True)
        if spec.kind == "choice":
            assert str(value) in spec.choices


def _nested(entry: Entry, name: str, value: Any) -> dict[str, Any]:
    return {"strategies": {entry.kind: {entry.name: {name: value}}}}


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_its_options_round_trip_nested_under_it_and_flat(entry: Entry):
    base = CHOOSES[(entry.kind, entry.name)]
    for name in entry.options.model_fields:
        value = SAMPLES[name]
        others = {key: v for key, v in base.items() if key != name}
        flat = parse_config(json.dumps(others | {name: value}))

        nested = parse_config(json.dumps(others | _nested(entry, name, value)))
        both = parse_config(json.dumps(others | {name: value} | _nested(entry, name, value)))

        assert nested == both == flat, name
        assert getattr(entry.options.of(nested), name) == value, name
        assert name in nested.model_fields_set  # set by the user, as flat: the data defaults leave it alone


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_an_option_given_flat_and_nested_with_different_values_is_refused_naming_it(entry: Entry):
    base = CHOOSES[(entry.kind, entry.name)]
    for name in entry.options.model_fields:
        value, default = SAMPLES[name], PruneOptions.model_fields[name].get_default(call_default_factory=True)
        config = base | {name: value} | _nested(entry, name, default)

        with pytest.raises(ApiError) as refused:
            parse_config(json.dumps(config))

        assert refused.value.status == 422
        where = f"strategies.{entry.kind}.{entry.name}.{name}"
        assert f"config: {name} is given twice with different values: {value!r} at {name} and " in refused.value.message
        assert f"at {where}; give it once" in refused.value.message


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_the_echo_nests_its_options_under_it_and_gives_the_same_options_back(entry: Entry):
    base = CHOOSES[(entry.kind, entry.name)]
    given = Given(data=True, plan=entry.name == "plan")
    for config in [base, *(base | {name: SAMPLES[name]} for name in entry.options.model_fields)]:
        options = parse_config(json.dumps(config))
        echo = echo_options(options, given)

        assert parse_config(json.dumps(echo)) == options, config
        if entry.cls in _chosen(options, given):
            assert echo["strategies"][entry.kind][entry.name] == entry.options.of(options).model_dump(mode="json")
            assert not set(entry.options.model_fields) & set(echo), "an option it reads is nested, not flat"
    assert entry.name in echo_options(parse_config(json.dumps(base)), given)["strategies"][entry.kind]


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_the_options_that_choose_it_do(entry: Entry):
    options = PruneOptions(**CHOOSES[(entry.kind, entry.name)])
    given = Given(data=True, plan=entry.name == "plan")

    assert entry.cls in _chosen(options, given)
    assert {found.cls for found in strategies_run(options, given)} == _chosen(options, given)


def _parts(options: PruneOptions, given: Given) -> list[Any]:
    """The strategies a job with ``options`` runs: its schedule, selector, recoveries and finish."""
    from onnxprune.graphops.plan import PruningPlan

    schedule = choose_schedule(options, PruningPlan({}) if given.plan else None, has_data=given.data)
    parts: list[Any] = [schedule, getattr(schedule, "selector", None), choose_finish(options)]
    recovery = getattr(schedule, "recovery", None)
    while recovery is not None:
        parts.append(recovery)
        recovery = getattr(recovery, "then", None)
    return [part for part in parts if part is not None]


def _chosen(options: PruneOptions, given: Given) -> set[type]:
    return {type(part) for part in _parts(options, given)}


def _own_torch(part: Any, options: PruneOptions, given: Given) -> bool:
    """Whether ``part`` itself needs PyTorch for this job (a schedule's needs include its parts')."""
    if not hasattr(part, "needs") or hasattr(part, "selector"):
        return False
    return part.needs(options, given).torch is not None


NEEDS_GRID = [
    {},
    {"criterion": "taylor"},
    {"recovery": "none"},
    {"recovery": "finetune", "finetune_steps": 3},
    {"iterative_steps": 3},
    {"time_budget": 60},
    {"ratio": "auto"},
    {"flops_target": 0.3, "criterion": "apoz"},
    {"latency_target": 0.5},
    {"criterion": "learned"},
    {"quantize": "int8"},
]


@pytest.mark.parametrize("options", NEEDS_GRID, ids=[json.dumps(o) for o in NEEDS_GRID])
@pytest.mark.parametrize("given", [Given(), Given(data=True), Given(sensitivity=True)], ids=["bare", "data", "curves"])
def test_what_a_strategy_needs_stays_within_what_it_declares(options, given):
    options = PruneOptions(**options)
    parts = [part for part in _parts(options, given) if hasattr(part, "needs")]
    schedule = parts[0]
    declared = {type(part): next(e.requires for e in ENTRIES if e.cls is type(part)) for part in parts}
    for part in parts:
        needs = part.needs(options, given)
        if part is schedule:  # its needs include its parts': within what any of them declares
            assert needs.torch is None or any(d.torch for d in declared.values())
            assert needs.data is None or any(d.data for d in declared.values())
        else:
            assert needs.torch is None or declared[type(part)].torch, type(part).__name__
            assert needs.data is None or declared[type(part)].data, type(part).__name__


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_its_report_section_is_a_section_of_the_report(entry: Entry):
    if entry.report_section is None:
        return
    model: Any = PruneReport
    for part in entry.report_section.split("."):
        assert part in model.model_fields, entry.report_section
        annotation = model.model_fields[part].annotation
        model = next(arg for arg in typing.get_args(annotation) if arg is not type(None))


def test_the_options_nest_by_strategy():
    options = PruneOptions(lr=0.01, finetune_steps=5, quantize="int8")
    nested = nested_options(options)

    assert nested["recovery"]["finetune"].lr == 0.01  # type: ignore[attr-defined]
    assert nested["recovery"]["finetune"].finetune_steps == 5  # type: ignore[attr-defined]
    assert nested["finish"]["quantize"].quantize == "int8"  # type: ignore[attr-defined]
    assert set(nested) == {"selector", "recovery", "schedule", "finish"}


# Each job run with ``import torch`` failing; the strategies it runs declare a need of PyTorch (via
# ``job_needs``) exactly when it fails on importing torch. The cases cover every registered strategy,
# and each strategy that declares torch in a case where it alone needs it.
TORCH_CASES = [
    ("ratio", {"ratio": 0.5, "recovery": "none"}),
    ("macs", {"flops_target": 0.3, "recovery": "none"}),
    ("auto", {"ratio": "auto", "max_drop": 0.5, "recovery": "none"}),
    ("latency", {"latency_target": 0.9, "latency_budget_s": 2.0, "latency_iterations": 1, "recovery": "none"}),
    ("plan", {"recovery": "none", "plan": True}),
    ("quantize", {"ratio": 0.5, "recovery": "none", "quantize": "dynamic"}),
    ("ratio, data criterion", {"ratio": 0.5, "recovery": "none", "criterion": "taylor"}),
    ("macs, data criterion", {"flops_target": 0.3, "recovery": "none", "criterion": "taylor"}),
    ("auto, data criterion", {"ratio": "auto", "max_drop": 0.5, "recovery": "none", "criterion": "taylor"}),
    ("latency, data criterion", {"latency_target": 0.9, "recovery": "none", "criterion": "taylor"}),
    ("reconstruct", {"ratio": 0.5, "recovery": "reconstruct"}),
    ("finetune", {"ratio": 0.5, "recovery": "finetune", "finetune_steps": 1}),
    ("learned", {"criterion": "learned", "max_drop": 0.5, "recovery": "none"}),
]

NO_TORCH_RUNS = """
import sys

tried = []

class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            tried.append(name)
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None

sys.meta_path.insert(0, _NoTorch())

import json
from onnxprune.workers import pipeline, sandbox
from onnxprune.workers.options import PruneOptions

sandbox._inside_sandbox = True  # the stages run here, as in a job's sandbox: under the same import of torch
pipeline.require_capabilities = lambda *args, **kwargs: None  # let the job reach what it imports
cases, model, data, out = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
first = pipeline.run_pipeline(model, out, PruneOptions(recovery="none", benchmark=False, round_to=1), data=data)
results = {}
for name, config in cases:
    config = dict(config)
    plan = first.plan if config.pop("plan", False) else None
    tried.clear()
    try:
        report = pipeline.run_pipeline(model, out, PruneOptions(**config, benchmark=False, round_to=1), data=data, plan=plan).report
        pruned = sum(g.channels_before - g.channels_after for g in report.groups)
        outcome = "ran" if pruned > 0 else "pruned nothing"
    except ModuleNotFoundError as exc:
        outcome = "torch" if "torch" in str(exc) else f"failed: {exc!r}"
    except Exception as exc:
        outcome = f"failed: {exc!r}"
    results[name] = {"outcome": outcome, "tried_torch": bool(tried)}
print(json.dumps(results))
"""


@pytest.mark.integration
def test_declared_torch_needs_match_what_runs_without_torch(tmp_path):
    model, data = tmp_path / "m.onnx", tmp_path / "d.npz"
    onnx.save(_residual_model(), model)
    np.savez(data, input=np.random.default_rng(0).standard_normal((32, 3, 8, 8)).astype(np.float32))
    exercised: dict[type, list[bool]] = {}
    expected = {}
    for name, config in TORCH_CASES:
        plan_given = bool(config.get("plan"))
        options = PruneOptions(**{k: v for k, v in config.items() if k != "plan"})
        needs_torch = job_needs(options, has_data=True, plan_given=plan_given).torch is not None
        expected[name] = needs_torch
        given = Given(data=True, plan=plan_given)
        parts = _parts(options, given)
        for part in parts:
            others = [other for other in parts if other is not part]
            alone = _own_torch(part, options, given) and not any(_own_torch(o, options, given) for o in others)
            exercised.setdefault(type(part), []).append(alone)
    # every strategy runs in some case; each declaring torch is, in one case, alone in needing it
    assert set(exercised) == {entry.cls for entry in ENTRIES}
    for entry in ENTRIES:
        if entry.requires.torch:
            assert True in exercised[entry.cls], entry.name
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}

    done = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(NO_TORCH_RUNS),
            json.dumps(TORCH_CASES),
            model,
            data,
            tmp_path / "o.onnx",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )

    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    for name, needs_torch in expected.items():
        assert results[name] == {"outcome": "torch" if needs_torch else "ran", "tried_torch": needs_torch}, name


def _residual_model() -> onnx.ModelProto:
    """x -> Conv(a) -> Relu -> Conv(b) -> Add(a) -> Relu -> Conv(c) -> GAP -> Flatten -> Gemm(10)"""
    g = zoo.GraphBuilder(seed=3)
    a = g.conv("input", 3, 16)
    b = g.conv(g.node("Relu", [a]), 16, 16)
    c = g.conv(g.node("Relu", [g.node("Add", [a, b])]), 16, 32)
    pooled = g.node("Flatten", [g.node("GlobalAveragePool", [c])], axis=1)
    logits = g.node("Gemm", [pooled, g.random("fc", [10, 32]), g.random("fc_b", [10])], transB=1)
    return g.model([zoo.float_input("input", [1, 3, 8, 8])], logits, 13, "residual")
