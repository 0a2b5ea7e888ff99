"""A self-contained HTML page for a pruning report (or a sensitivity analysis alone).

One file with everything inlined (CSS, matplotlib PNGs as data URIs, no script, nothing fetched),
so it can be mailed, attached to a ticket or opened offline. Node names come from uploaded models:
the template autoescapes every value.
"""

from __future__ import annotations

import base64
from functools import lru_cache
from typing import TYPE_CHECKING

from onnxprune.workers import plots
from onnxprune.workers.report import PruneReport, SensitivityReport

if TYPE_CHECKING:  # jinja2 is imported when a page is rendered
    from jinja2 import Environment


@lru_cache(maxsize=1)
def _environment() -> Environment:
    from jinja2 import Environment, PackageLoader, select_autoescape

    return Environment(
        loader=PackageLoader("onnxprune.workers", "templates"),
        autoescape=select_autoescape(["html", "j2"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _data_uri(png: bytes | None) -> str | None:
    return None if png is None else "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def render_report_html(
    report: PruneReport | None = None, *, sensitivity: SensitivityReport | None = None, title: str = "onnxprune report"
) -> str:
    """The page for ``report`` (its own sensitivity curves if it has them) or for ``sensitivity`` alone."""
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
            sensitivity=sensitivity,
            figures=figures,
            drops=_drops(sensitivity),
        )
    )


def _drops(sensitivity: SensitivityReport | None) -> dict[str, list[float]]:
    if sensitivity is None:
        return {}
    return {c.group: [sensitivity.baseline - v for v in c.values] for c in sensitivity.curves}
