"""How the CLI writes for people and for programs: tables, progress lines, exit codes.

On a terminal: rich tables at the terminal's width and a live progress bar. Off one (a pipe, a file,
a CI log): plain ASCII tables as wide as their content (rich would cut them at 80 columns), and one
progress line per stage on stderr instead of a bar nobody sees.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich import box
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

# Exit codes, the same for every command (README "Exit codes").
EXIT_OK = 0
EXIT_FAILURE = 1  # our fault (a bug, a failed check of our own), or the network failed
EXIT_BAD_INPUT = 2  # the user's input: a bad option, a missing file, a model or data we refuse
EXIT_REFUSED = 3  # the server refused the request or failed the job because of its input

# Off a terminal nothing limits the width: a table is as wide as its widest row.
UNLIMITED_WIDTH = 100_000


def stdout_console() -> Console:
    """Where results go: stdout, at the terminal's width, or unlimited off a terminal."""
    if sys.stdout.isatty():
        return Console()
    return Console(width=UNLIMITED_WIDTH, no_color=True, highlight=False, emoji=False)


def print_table(table: Table, console: Console | None = None) -> None:
    """Print a table; off a terminal with ASCII borders and never truncated or wrapped."""
    console = console or stdout_console()
    if not console.is_terminal:
        table.box = box.ASCII
        for column in table.columns:
            column.no_wrap = True
    console.print(table)


StageCallback = Callable[[str, float], None]


@contextmanager
def stage_progress(console: Console, first: str = "load") -> Iterator[StageCallback]:
    """A ``(stage, fraction)`` callback: a rich bar on a terminal, else one stderr line per new stage label
    (fine-tuning labels its steps, ``finetune 20/300, loss 1.2``, so long runs print every few steps)."""
    if console.is_terminal:
        with Progress(
            TextColumn("{task.description:<10}"), BarColumn(), TimeElapsedColumn(), console=console, transient=True
        ) as bar:
            task = bar.add_task(first, total=1.0)
            yield lambda stage, fraction: bar.update(task, description=stage, completed=fraction)
        return
    started = time.monotonic()
    last: list[str] = []

    def line(stage: str, fraction: float) -> None:
        if last and last[-1] == stage:
            return
        last.append(stage)
        console.print(
            f"[{time.monotonic() - started:7.1f} s] {fraction:4.0%} {stage}",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )

    yield line
