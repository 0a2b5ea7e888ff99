"""What every CLI command shares: one-line errors with their exit codes, input shapes, output directories.

``service.cli`` (prune, analyze, bench), ``service.cli_analysis`` (sensitivity) and ``service.cli_service``
(serve, worker, submit) import it; none of them imports another command module's private names.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from onnxprune.graphops.errors import GraphOpsError, ModelRejected
from onnxprune.service.cli_output import EXIT_BAD_INPUT, EXIT_FAILURE
from onnxprune.workers.options import parse_input_shape
from onnxprune.workers.sandbox import SandboxLimit

console = Console(stderr=True)


def fail(message: str, code: int) -> NoReturn:
    console.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def one_line_errors(command: Callable[..., None]) -> Callable[..., None]:
    """Turn the errors a command can meet into one line and an exit code, never a traceback.

    Exit 2: the input is at fault (bad model, bad option, missing file). Exit 1: we are.
    """

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> None:
        try:
            command(*args, **kwargs)
        except typer.Exit:
            raise
        except ModelRejected as exc:
            fail(str(exc), EXIT_BAD_INPUT)
        except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
            fail(f"{exc.strerror}: {exc.filename}", EXIT_BAD_INPUT)
        except SandboxLimit as exc:  # a limit or the host stopped the run: not the input's fault as such
            fail(str(exc), EXIT_FAILURE)
        except Exception as exc:  # the last line of defence
            if os.environ.get("ONNXPRUNE_DEBUG"):
                raise
            kind = "pruning failed" if isinstance(exc, GraphOpsError) else "internal error"
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            fail(f"{kind}: {first} (set ONNXPRUNE_DEBUG=1 for details)", EXIT_FAILURE)

    return run


def input_shapes(values: list[str] | None) -> dict[str, list[int]]:
    shapes = {}
    for text in values or []:
        try:
            name, dims = parse_input_shape(text)
        except ValueError as exc:
            fail(str(exc), EXIT_BAD_INPUT)
        shapes[name] = dims
    return shapes


def require_output_dirs(*paths: Path | None) -> None:
    """Refuse, before any work, to write into a directory that does not exist (a typo, not a request)."""
    for path in paths:
        if path is not None and not path.parent.is_dir():
            fail(f"output directory {path.parent} does not exist (for {path})", EXIT_BAD_INPUT)
