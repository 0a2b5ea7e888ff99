"""A job's options nested by strategy: ``{"strategies": {kind: {name: {option: value}}}}`` in a config,
beside (or instead of) today's flat keys, and the echo of a job's options in that shape.

The schema stays one (``PruneOptions``, flat): a nested config is flattened before it is validated
(``PruneOptions`` does it), so the CLI flags, the upload form and old clients' flat keys are unchanged,
and an option given both ways must say the same thing. Nesting does not choose a strategy (the options
that choose it do: ``finetune_steps``, ``quantize``...): it says which strategy an option is for. The
echo (report, ``GET /v1/jobs/{id}``) nests each option under every strategy the job runs that reads
it; the rest stay flat (job-wide options, and values no strategy of this job reads). It is itself a
config that gives the same options.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from onnxprune.graphops.plan import PruningPlan
from onnxprune.workers.options import PruneOptions
from onnxprune.workers.strategies import choose_schedule
from onnxprune.workers.strategies.finish import choose_finish
from onnxprune.workers.strategies.needs import Given
from onnxprune.workers.strategies.registry import KINDS, Entry, registered

STRATEGIES_KEY = "strategies"


class ConflictingOption(ValueError):
    """An option given twice (flat and nested, or under two strategies) with different values."""


def flatten_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The flat options a config spells: its flat keys, and each ``strategies.KIND.NAME.OPTION`` as
    ``OPTION``. A kind, strategy or option that does not exist, or a key given twice with different
    values, is refused with a message that names it (the API's 422)."""
    flat = {key: value for key, value in config.items() if key != STRATEGIES_KEY}
    given_at = {key: key for key in flat}
    tree = config.get(STRATEGIES_KEY)
    if tree is None:
        return flat
    entries = {(entry.kind, entry.name): entry for entry in registered()}
    for kind, by_name in _object(tree, STRATEGIES_KEY, "{kind: {name: {option: value}}}").items():
        if kind not in KINDS:
            raise ValueError(f"{STRATEGIES_KEY}.{kind}: no such kind of strategy; kinds: {', '.join(KINDS)}")
        for name, values in _object(by_name, f"{STRATEGIES_KEY}.{kind}", "{name: {option: value}}").items():
            where = f"{STRATEGIES_KEY}.{kind}.{name}"
            entry = entries.get((kind, name))
            if entry is None:
                known = ", ".join(e.name for e in registered(kind))
                raise ValueError(f"{where}: no {kind} named {name!r}; known: {known}")
            for option, value in _object(values, where, "{option: value}").items():
                if option not in entry.options.model_fields:
                    owned = ", ".join(entry.options.model_fields) or "none"
                    raise ValueError(
                        f"{where}.{option}: {kind} {name!r} has no option {option!r}; its options: {owned}"
                    )
                if option in flat and not _same(flat[option], value):
                    raise ConflictingOption(
                        f"{option} is given twice with different values: {flat[option]!r} at {given_at[option]} "
                        f"and {value!r} at {where}.{option}; give it once"
                    )
                flat[option] = value
                given_at.setdefault(option, f"{where}.{option}")
    return flat


def _object(value: object, where: str, shape: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{where} must be an object {shape}, got {type(value).__name__}")
    return value


def _same(a: object, b: object) -> bool:
    """Equal as JSON values (``true`` is not ``1``)."""
    return a == b and isinstance(a, bool) == isinstance(b, bool)


def strategies_run(options: PruneOptions, given: Given) -> list[Entry]:
    """The registered strategies a job with ``options`` runs (schedule, selector, recoveries, finish),
    by kind and position: what ``choose_schedule`` and ``choose_finish`` build."""
    schedule = choose_schedule(options, PruningPlan({}) if given.plan else None, has_data=given.data)
    parts: list[object] = [schedule, getattr(schedule, "selector", None), choose_finish(options)]
    recovery = getattr(schedule, "recovery", None)
    while recovery is not None:
        parts.append(recovery)
        recovery = getattr(recovery, "then", None)
    classes = {type(part) for part in parts if part is not None}
    return [entry for kind in KINDS for entry in registered(kind) if entry.cls in classes]


def nest_options(options: PruneOptions, run: Iterable[Entry]) -> dict[str, Any]:
    """The echo of a job's options: each under every strategy in ``run`` that reads it (``strategies``),
    and flat the job-wide ones and any other value not the default (read by no strategy of this job)."""
    values = options.model_dump(mode="json")
    tree: dict[str, dict[str, dict[str, Any]]] = {}
    nested: set[str] = set()
    for entry in run:
        tree.setdefault(entry.kind, {})[entry.name] = {name: values[name] for name in entry.options.model_fields}
        nested |= set(entry.options.model_fields)
    owned = {name for entry in registered() for name in entry.options.model_fields}
    flat = {
        name: value
        for name, value in values.items()
        if name not in nested and (name not in owned or value != _default(name))
    }
    return {**flat, STRATEGIES_KEY: tree}


def _default(name: str) -> Any:
    return PruneOptions.model_fields[name].get_default(call_default_factory=True)


def echo_options(options: PruneOptions, given: Given) -> dict[str, Any]:
    """``nest_options`` for the strategies such a job runs."""
    return nest_options(options, strategies_run(options, given))


def option_paths() -> dict[str, list[str]]:
    """For each option, where it nests (``recovery.finetune``): the strategies that own it."""
    paths: dict[str, list[str]] = {name: [] for name in PruneOptions.model_fields}
    for kind in KINDS:
        for entry in registered(kind):
            for name in entry.options.model_fields:
                paths[name].append(f"{kind}.{entry.name}")
    return paths


def config_json_schema() -> dict[str, Any]:
    """The JSON schema of a config (OpenAPI's ``POST /v1/jobs``): the flat fields, and ``strategies``
    with, for each kind and strategy, the same fields it owns."""
    schema = PruneOptions.model_json_schema()
    fields = schema["properties"]
    kinds = {
        kind: {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                entry.name: {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {name: fields[name] for name in entry.options.model_fields},
                }
                for entry in registered(kind)
            },
        }
        for kind in KINDS
    }
    description = "The options nested by strategy (kind, name); each given flat too must have the same value."
    fields[STRATEGIES_KEY] = {
        "type": "object",
        "additionalProperties": False,
        "description": description,
        "properties": kinds,
    }
    return schema
