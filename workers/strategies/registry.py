"""The strategy registry: every way of choosing channels, recovering, scheduling and finishing a job,
each with the options it owns, what it may need (data, labels, PyTorch) and the report section it fills.

This is the one place that lists them (``tests/workers/test_strategy_contracts.py`` checks every entry:
its options round-trip through the CLI, the REST config and the upload form; its declared needs
match what it imports). A strategy registers itself with :func:`register` where it is defined;
``workers.strategies`` chooses among the registered ones, never by a ladder of class names.

The options a strategy owns are a typed model of its own (:class:`StrategyOptions`) whose fields
are fields of the one schema (``workers.options.PruneOptions``): the flat names stay the REST keys,
the CLI flags and the form's inputs, and :func:`own` takes each field's default, bounds and
description from the schema, so ``--help``, ``GET /v1/options`` and OpenAPI say one thing.
:func:`nested_options` gives a job's options nested by strategy (``["recovery"]["finetune"].lr``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict
from typing_extensions import Self

from onnxprune.graphops.errors import DuplicateRegistration
from onnxprune.workers.options import PruneOptions

Kind = Literal["selector", "recovery", "schedule", "finish"]
KINDS: tuple[Kind, ...] = ("selector", "recovery", "schedule", "finish")


class StrategyOptions(BaseModel):
    """The options one strategy reads, typed; built from a job's validated options by :meth:`of`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    @classmethod
    def of(cls, options: PruneOptions) -> Self:
        return cls.model_validate({name: getattr(options, name) for name in cls.model_fields})


class NoOptions(StrategyOptions):
    """A strategy that reads no option of its own (a saved plan, no recovery)."""


def own(name: str) -> Any:
    """The schema's field ``name`` (default, description, metadata), declared again in a strategy's
    options: one definition, so a strategy's options cannot drift from what the CLI and REST accept."""
    return copy.deepcopy(PruneOptions.model_fields[name])


@dataclass(frozen=True)
class Requires:
    """What a strategy may need besides the model, at most: its ``needs(options, given)`` says, for a
    given job, which of these it does need and why. ``torch``: it runs the graph in PyTorch (it imports
    ``roundtrip``); ``labels``: it refuses data without labels (none does: labels add cross-entropy)."""

    data: bool = False
    labels: bool = False
    torch: bool = False


@dataclass(frozen=True)
class Entry:
    """One registered strategy: its kind and name (the word the options choose it by, where one does),
    its class, the options it owns, what it may need, the report section it fills (a ``PruneReport``
    field, dotted where nested; None: it adds notes only) and its position among its kind: the
    order in which they are asked whether a job wants them (recoveries: the order they run)."""

    kind: Kind
    name: str
    cls: type
    options: type[StrategyOptions]
    requires: Requires
    report_section: str | None
    position: int = 50


_REGISTRY: dict[tuple[Kind, str], Entry] = {}
_Cls = TypeVar("_Cls", bound=type)


def register(
    kind: Kind,
    name: str,
    *,
    options: type[StrategyOptions] = NoOptions,
    requires: Requires = Requires(),
    report: str | None = None,
    position: int = 50,
) -> Any:
    """Class decorator: register a strategy of ``kind`` under ``name`` (each name once per kind)."""

    def decorate(cls: _Cls) -> _Cls:
        existing = _REGISTRY.get((kind, name))
        if existing is not None:
            raise DuplicateRegistration(
                f"{kind} '{name}' is already registered ({existing.cls.__qualname__}); "
                f"{cls.__module__}.{cls.__qualname__} registers it too"
            )
        _REGISTRY[(kind, name)] = Entry(kind, name, cls, options, requires, report, position)
        return cls

    return decorate


def registered(kind: Kind | None = None) -> list[Entry]:
    """The registered strategies (of ``kind``), by position (then registration order)."""
    found = [entry for entry in _REGISTRY.values() if kind is None or entry.kind == kind]
    return sorted(found, key=lambda entry: entry.position)


def entry(kind: Kind, name: str) -> Entry:
    found = _REGISTRY.get((kind, name))
    if found is None:
        known = ", ".join(e.name for e in registered(kind))
        raise KeyError(f"no {kind} named '{name}' is registered; known: {known}")
    return found


def entry_of(cls: type) -> Entry:
    """The registration of a strategy class."""
    for found in _REGISTRY.values():
        if found.cls is cls:
            return found
    raise KeyError(f"{cls.__qualname__} is not a registered strategy")


def nested_options(options: PruneOptions) -> dict[Kind, dict[str, StrategyOptions]]:
    """Every registered strategy's typed options in ``options``, nested by kind and name:
    ``nested_options(o)["recovery"]["finetune"].lr`` is ``o.lr``."""
    nested: dict[Kind, dict[str, StrategyOptions]] = {kind: {} for kind in KINDS}
    for found in _REGISTRY.values():
        nested[found.kind][found.name] = found.options.of(options)
    return nested
