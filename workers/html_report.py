"""A self-contained HTML page for a pruning report (or a sensitivity analysis alone).

One file with everything inlined (CSS, matplotlib PNGs as data URIs, no script, nothing fetched),
so it can be mailed, attached to a ticket or opened offline. Node names come from uploaded models:
the template autoescapes every value.
"""

from __future__ import annotations

import base64
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from onnxprune.workers import plots
from onnxprune.workers.quality_warnings import budget_warnings_in
from onnxprune.workers.report import PruneReport, SensitivityReport

if TYPE_CHECKING:  # jinja2 is imported when a page is rendered
    from jinja2 import Environment


PAGE_NAME = "report.html"  # the file name of a job's page beside its report.json
MAX_NAME_CHARS = 200  # a node name in the page's tables; the JSON report and the plan keep it whole
# What a group's units are called in the page, by the group's kind (``graphops.kinds``).
UNIT_NAMES = {"filter": "filters", "head": "attention heads", "neuron": "MLP neurons"}


def short_name(text: object) -> str:
    """A name shortened for display: a page of 20,000-character names is unreadable and slow to open."""
    text = str(text)
    return text if len(text) <= MAX_NAME_CHARS else text[: MAX_NAME_CHARS - 1] + "\u2026"


@lru_cache(maxsize=1)
def _environment() -> Environment:
    from jinja2 import Environment, PackageLoader, select_autoescape

    environment = Environment(
        loader=PackageLoader("onnxprune.workers", "templates"),
        autoescape=select_autoescape(["html", "j2"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["short"] = short_name
    return environment


def _data_uri(png: bytes | None) -> str | None:
    return None if png is None else "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def render_report_html(
    report: PruneReport | None = None, *, sensitivity: SensitivityReport | None = None, title: str = "onnxprune report"
) -> str:
    """The page for ``report`` (its own sensitivity curves if it has them) or for ``sensitivity`` alone."""
    from onnxprune.workers.strategies.nesting import flatten_config

    sensitivity = sensitivity or (report.sensitivity if report is not None else None)
    figures = {}
    if sensitivity is not None and sensitivity.curves:
        figures["sensitivity"] = _data_uri(plots.sensitivity_png(sensitivity))
    if report is not None:
        figures["summary"] = _data_uri(plots.summary_png(report))
        if report.groups:
            figures["channels"] = _data_uri(plots.channels_png(report.groups))
        if report.layers:
            figures["macs"] = _data_uri(plots.macs_png(report.layers))
        finetune = report.evaluation.finetune if report.evaluation is not None else None
        if finetune is not None:
            figures["loss"] = _data_uri(plots.loss_png(finetune))
    return (
        _environment()
        .get_template("report.html.j2")
        .render(
            title=title,
            report=report,
            options=flatten_config(report.options) if report is not None else {},  # flat, nested or not
            sensitivity=sensitivity,
            figures=figures,
            drops=_drops(sensitivity),
            budget_warnings=budget_warnings_in(report.warnings) if report is not None else [],
            unit_names=UNIT_NAMES,
        )
    )


def _drops(sensitivity: SensitivityReport | None) -> dict[str, list[float]]:
    if sensitivity is None:
        return {}
    return {c.group: [sensitivity.baseline - v for v in c.values] for c in sensitivity.curves}


def write_report_page(report_path: str, page_path: str, title: str) -> None:
    """Draw the page of the JSON report at ``report_path`` into ``page_path`` (the service runs this in
    a sandboxed child for results published without a page)."""
    from onnxprune.workers.fileio import atomic_write_text

    with open(report_path, "rb") as handle:
        report = PruneReport.model_validate_json(handle.read())
    atomic_write_text(Path(page_path), render_report_html(report, title=title))
