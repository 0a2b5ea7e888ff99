"""CLI flags derived from the one options schema (``workers.options.PruneOptions``).

Every schema field becomes a flag (``--field-name``, or the field's ``flag``), with the field's
description as help, grouped in ``--help`` by the field's group. A command decorated with
:func:`with_prune_options` receives the flags the user set as ``**options`` (unset flags are left
out, so the schema's defaults apply), ready for ``PruneOptions(**options)`` or a REST config.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Iterable
from typing import Annotated, Any, TypeVar, Union

import typer
from pydantic import ValidationError
from pydantic.fields import FieldInfo

from onnxprune.service.cli_common import fail
from onnxprune.service.cli_output import EXIT_BAD_INPUT
from onnxprune.workers.options import OPTION_GROUPS, PruneOptions, option_flag, parse_input_shape

Command = TypeVar("Command", bound=Callable[..., Any])


def flag_name(name: str, field: FieldInfo) -> str:
    return option_flag(name)


def _cli_type(annotation: Any) -> Any:
    """The type typer parses a field's value as; unions with words ('auto') arrive as text."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _cli_type(typing.get_args(annotation)[0])
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin in (Union, types.UnionType):
        return _cli_type(args[0]) if len(args) == 1 else str
    if origin is list:
        return list[str]
    if origin is dict:
        return list[str]  # NAME:VALUE pairs, repeatable
    if origin is typing.Literal:
        return str
    return annotation


_METAVARS: dict[Any, str] = {int: "N", float: "X", str: "TEXT", list[str]: "TEXT", bool: ""}


def _help(field: FieldInfo) -> str:
    text = field.description or ""
    about = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    default = about.get("default", field.get_default(call_default_factory=True))
    if default not in (None, [], {}, ""):
        shown = str(default).lower() if isinstance(default, bool) else default
        text += f" (default: {shown})"
    return text


def option_parameters(names: Iterable[str] | None = None) -> list[inspect.Parameter]:
    """One keyword parameter per schema field (of ``names``: all), each a typer option defaulting to None (unset)."""
    parameters = []
    wanted = None if names is None else set(names)
    for name, field in PruneOptions.model_fields.items():
        if wanted is not None and name not in wanted:
            continue
        about = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        kind = _cli_type(field.annotation)
        flag = flag_name(name, field)
        declarations = [f"{flag}/--no-{flag[2:]}"] if kind is bool else [flag]
        option = typer.Option(
            *declarations,
            help=_help(field),
            show_default=False,
            metavar=_METAVARS.get(kind),
            rich_help_panel=OPTION_GROUPS.get(str(about.get("group")), "Options"),
        )
        parameters.append(
            inspect.Parameter(
                name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[kind | None, option]
            )
        )
    return parameters


def with_prune_options(command: Command) -> Command:
    """Give ``command`` (which takes ``**options``) a flag for every schema field."""
    return with_schema_options()(command)


def with_schema_options(*names: str) -> Callable[[Command], Command]:
    """Give a command (which takes ``**options``) a flag for each of the schema fields ``names`` (none
    named: every field), as ``prune`` has it: the same flag, help, parsing and validation."""
    unknown = set(names) - set(PruneOptions.model_fields)
    if unknown:
        raise KeyError(f"no such options in the schema: {', '.join(sorted(unknown))}")

    def decorate(command: Command) -> Command:
        signature = inspect.signature(command, eval_str=True)
        fixed = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        added = option_parameters(names or None)
        command.__signature__ = signature.replace(parameters=fixed + added)  # type: ignore[attr-defined]
        return command

    return decorate


def options_from_flags(flags: dict[str, Any]) -> PruneOptions:
    """The options the flags the user set spell, validated; a bad value is one line and exit 2."""
    try:
        return PruneOptions(**set_options(flags))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "options"
        fail(f"{where}: {first['msg'].removeprefix('Value error, ')}", EXIT_BAD_INPUT)
    except ValueError as exc:  # a malformed --input-shape
        fail(str(exc), EXIT_BAD_INPUT)


def set_options(values: dict[str, Any]) -> dict[str, Any]:
    """The flags the user set, as schema values (``--input-shape x:1x3x8x8`` becomes a dict).

    Raises ValueError for a malformed NAME:DIMS."""
    options = {
        name: value
        for name, value in values.items()
        if name in PruneOptions.model_fields and value is not None and value not in ([], ())
    }
    if "input_shapes" in options:
        options["input_shapes"] = dict(parse_input_shape(text) for text in options["input_shapes"])
    return options
