"""The options a client can set, described for forms: derived from ``PruneOptions.model_fields``.

The upload page builds its form from ``GET /v1/options`` (this list), so a field added to the schema
appears on the page without touching the page; ``submit`` gets its flags from the same schema
(``service.cli_options``). Each option says how to enter it (``kind``), its default, its help text,
its group (``json_schema_extra["group"]``, one group when absent), whether it needs a data file and
the strategies it may be nested under in a config.
"""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from onnxprune.workers.options import OPTION_GROUPS, PruneOptions

DEFAULT_GROUP = "options"

Kind = Literal["number", "integer", "boolean", "choice", "number-or-word", "list", "shapes", "text"]


class OptionSpec(BaseModel):
    name: str
    kind: Kind
    default: Any = None
    description: str = ""
    group: str = DEFAULT_GROUP
    group_title: str = "Options"
    needs_data: bool = False
    choices: list[str] = []  # for "choice"; for "number-or-word", the words
    data_choices: list[str] = []  # the choices that need a data file (criteria that look at activations)
    # Where a config may nest it (``{"strategies": {"recovery": {"finetune": {...}}}}``): "recovery.finetune", the
    # strategies that read it; none for a job-wide option (workers.strategies.nesting)
    strategies: list[str] = []


def _about(field: FieldInfo) -> dict[str, Any]:
    return field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}


def _unwrap(annotation: Any) -> Any:
    return _unwrap(typing.get_args(annotation)[0]) if typing.get_origin(annotation) is Annotated else annotation


def _kind(annotation: Any) -> tuple[Kind, list[str]]:
    """How a field's type is entered in a form, and its fixed choices."""
    annotation = _unwrap(annotation)
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        members = [_unwrap(a) for a in typing.get_args(annotation) if a is not type(None)]
        words = [str(w) for m in members if typing.get_origin(m) is Literal for w in typing.get_args(m)]
        numbers = [m for m in members if m in (int, float)]
        if numbers and words:
            return "number-or-word", words
        if len(members) == 1:
            return _kind(members[0])
        return "text", []
    if origin is Literal:
        return "choice", [str(value) for value in typing.get_args(annotation)]
    if origin is list:
        return "list", []
    if origin is dict:
        return "shapes", []
    if annotation is bool:
        return "boolean", []
    if annotation is int:
        return "integer", []
    if annotation is float:
        return "number", []
    return "text", []


def _choices(name: str, kind: Kind, choices: list[str]) -> tuple[Kind, list[str], list[str]]:
    if name == "criterion":  # a str checked against the criteria registry (entry points), not a Literal
        from onnxprune.workers.options import criterion_needs_data, known_criteria

        known = known_criteria()
        return "choice", known, [c for c in known if criterion_needs_data(c)]
    return kind, choices, []


def option_specs() -> list[OptionSpec]:
    """Every ``PruneOptions`` field, in schema order."""
    from onnxprune.workers.strategies.nesting import option_paths

    paths = option_paths()
    specs = []
    for name, field in PruneOptions.model_fields.items():
        about = _about(field)
        kind, choices, data_choices = _choices(name, *_kind(field.annotation))
        group = str(about.get("group") or DEFAULT_GROUP)
        default = field.get_default(call_default_factory=True)
        specs.append(
            OptionSpec(
                name=name,
                kind=kind,
                default=default,
                description=field.description or "",
                group=group,
                group_title=OPTION_GROUPS.get(group, "Options"),
                needs_data=bool(about.get("needs_data")),
                choices=choices,
                data_choices=data_choices,
                strategies=paths[name],
            )
        )
    return specs
