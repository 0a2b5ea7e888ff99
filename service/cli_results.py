"""What ``prune`` and ``submit`` do with a finished job's report, the same way for both: write the
report, plan and HTML page where asked, then print the report as JSON or the summary and its warnings."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from onnxprune.service.cli_common import console, fail
from onnxprune.service.cli_output import EXIT_BAD_INPUT

if TYPE_CHECKING:
    from onnxprune.graphops.plan import PruningPlan
    from onnxprune.workers.report import PruneReport


def read_plan(path: Path) -> PruningPlan:
    """A saved plan (``--plan-in``); a missing, unreadable or non-UTF-8 file is the user's input: exit 2."""
    from onnxprune.graphops.errors import PlanError
    from onnxprune.graphops.plan import PruningPlan

    try:
        return PruningPlan.from_json(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        fail(f"cannot read plan {path}: {exc.strerror}", EXIT_BAD_INPUT)
    except UnicodeDecodeError:
        fail(f"plan {path} is not UTF-8 JSON (write one with --plan-out)", EXIT_BAD_INPUT)
    except PlanError as exc:
        fail(f"plan {path}: {exc}", EXIT_BAD_INPUT)


def write_results(
    report_json: str,
    report: PruneReport | None,
    plan_json: str,
    *,
    report_path: Path | None,
    plan_out: Path | None,
    report_html: Path | None,
    title: str,
) -> None:
    """The report as JSON, the plan and the HTML page, each written whole (atomically, mode as for models)."""
    from onnxprune.workers.fileio import atomic_write_bytes

    if report_path is not None:
        atomic_write_bytes(report_path, report_json.encode())
    if plan_out is not None:
        atomic_write_bytes(plan_out, plan_json.encode())
    if report_html is not None and report is not None:
        from onnxprune.workers.html_report import render_report_html

        atomic_write_bytes(report_html, render_report_html(report, title=title).encode())


def show_results(report_json: str, report: PruneReport | None, *, as_json: bool) -> None:
    """``--json``: the report alone on stdout (its warnings are in it); else the summary table on
    stdout and each warning once on stderr."""
    if as_json:
        print(report_json)
        return
    if report is None:
        return
    from onnxprune.service.cli import _print_summary

    _print_summary(report)
    for warning in report.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False, soft_wrap=True)
