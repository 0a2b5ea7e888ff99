"""Help and usage lines as command-line users read them: ``Usage: onnxprune prune [OPTIONS] MODEL``.

Typer 0.29 writes a required argument as ``{model}`` and gives flags a value type (``--help <bool>``,
``--version <bool>``), as if they took a value. Its command classes have no setting for either, so
every command of the app gets a subclass that rewrites the two (applied once, by ``service.cli.main``).
"""

from __future__ import annotations

import re
from typing import Any

_REQUIRED = re.compile(r"\{(.+)\}")
_OPTIONAL = re.compile(r"\[([a-z_]+)\]")


def _usage_piece(piece: str) -> str:
    """``{model}`` -> ``MODEL``, ``[model_b]`` -> ``[MODEL_B]`` (click's convention); others unchanged."""
    if required := _REQUIRED.fullmatch(piece):
        return required.group(1).upper()
    if optional := _OPTIONAL.fullmatch(piece):
        return f"[{optional.group(1).upper()}]"
    return piece


def _plain(cls: type) -> type:
    """A direct subclass of ``cls`` (a mixin would change the object layout: no ``__class__`` swap)."""

    def collect_usage_pieces(self: Any, ctx: Any) -> list[str]:
        return [_usage_piece(piece) for piece in cls.collect_usage_pieces(self, ctx)]  # type: ignore[attr-defined]

    def get_params(self: Any, ctx: Any) -> list[Any]:
        params: list[Any] = cls.get_params(self, ctx)  # type: ignore[attr-defined]
        for param in params:
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""  # a flag takes no value: show none
        return params

    return type(
        f"Plain{cls.__name__}", (cls,), {"collect_usage_pieces": collect_usage_pieces, "get_params": get_params}
    )


def plain_help(command: Any) -> Any:
    """``command`` (a typer group or command) and all its subcommands with plain usage lines and flags."""
    if not type(command).__name__.startswith("Plain"):  # once per command, however often main() runs
        command.__class__ = _plain(type(command))
    for sub in getattr(command, "commands", {}).values():
        plain_help(sub)
    return command
