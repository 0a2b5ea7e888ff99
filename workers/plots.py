"""The report's figures as PNG bytes: sensitivity curves, channels and MACs per layer, before/after.

matplotlib's object API (``Figure`` + Agg canvas, never ``pyplot``): no global state, so the
service can draw in several threads, and no display is needed. PNGs are inlined in the HTML
report and written by ``onnxprune sensitivity --plot``.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import TYPE_CHECKING

from onnxprune.workers.report import FinetuneReport, GroupReport, LayerReport, PruneReport, SensitivityReport

if TYPE_CHECKING:  # matplotlib is imported when a figure is drawn, not with the report
    from matplotlib.figure import Figure

_BEFORE, _AFTER = "#9db4d0", "#1f5fa8"
_MAX_LEGEND = 14
_DPI = 100
_MAX_BARS = 60  # per-layer and per-group bar charts show the largest; the tables below them list all
_MAX_LABEL = 40  # characters of a node name in a plot label


def plot_label(text: str, limit: int | None = _MAX_LABEL) -> str:
    """User text (node names come from uploaded models) as matplotlib draws it literally.

    matplotlib parses any string with paired ``$`` as mathtext: a crafted name can raise on every
    render or cost seconds of CPU. Escaped, ``$`` is drawn as itself and no parser runs; the name is
    shortened, since a plot label of thousands of characters says nothing and costs layout time.
    """
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "\u2026"
    return text.replace("$", r"\$")


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    return figure


def _png(figure: Figure) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def sensitivity_png(sensitivity: SensitivityReport) -> bytes:
    """One line per group: the metric with that group alone pruned at each ratio (0 = unpruned)."""
    from matplotlib import colormaps

    curves = sensitivity.curves
    figure = _figure(9, 5)
    axes = figure.add_subplot()
    qualitative = len(curves) <= 20
    colours = colormaps["tab20" if qualitative else "viridis"]
    for i, curve in enumerate(curves):
        colour = colours(i) if qualitative else colours(i / max(len(curves) - 1, 1))
        axes.plot(
            [0.0, *curve.ratios],
            [sensitivity.baseline, *curve.values],
            marker="o",
            markersize=3,
            linewidth=1.4,
            color=colour,
            label=f"{plot_label(curve.group)} ({curve.channels})",
        )
    axes.axhline(sensitivity.baseline, color="grey", linestyle=":", linewidth=1)
    axes.set_xlabel("fraction of the group's filters removed (this group alone)")
    label = "top-1 accuracy" if sensitivity.metric == "accuracy" else "fidelity (cosine to original outputs)"
    axes.set_ylabel(label)
    axes.set_title(
        plot_label(
            f"Sensitivity to pruning ({sensitivity.criterion}, {sensitivity.samples} samples, {sensitivity.source})",
            limit=None,
        ),
        fontsize=10,
    )
    axes.set_xlim(0, 1)
    axes.grid(alpha=0.3)
    if len(curves) <= _MAX_LEGEND:
        axes.legend(
            fontsize=7, ncol=2 if len(curves) > 7 else 1, loc="lower left", title="group (channels)", title_fontsize=7
        )
    return _png(figure)


def _paired_bars(
    names: Sequence[str], before: Sequence[float], after: Sequence[float], ylabel: str, title: str
) -> bytes:
    if len(names) > _MAX_BARS:  # the largest by their "before" value, in their original order
        largest = sorted(sorted(range(len(names)), key=lambda i: -before[i])[:_MAX_BARS])
        title = f"{title} (the {_MAX_BARS} largest of {len(names)})"
        names, before, after = [names[i] for i in largest], [before[i] for i in largest], [after[i] for i in largest]
    names = [plot_label(name) for name in names]
    figure = _figure(max(6.0, min(0.32 * len(names) + 2, 18.0)), 4.2)
    axes = figure.add_subplot()
    positions = range(len(names))
    axes.bar([p - 0.2 for p in positions], before, width=0.4, color=_BEFORE, label="before")
    axes.bar([p + 0.2 for p in positions], after, width=0.4, color=_AFTER, label="after")
    axes.set_xticks(list(positions), names, rotation=60, ha="right", fontsize=7)
    axes.set_ylabel(ylabel)
    axes.set_title(title, fontsize=10)
    axes.legend(fontsize=8)
    axes.grid(axis="y", alpha=0.3)
    return _png(figure)


def channels_png(groups: Sequence[GroupReport]) -> bytes:
    return _paired_bars(
        [g.id for g in groups],
        [g.channels_before for g in groups],
        [g.channels_after for g in groups],
        "channels",
        "Channels per group, before and after",
    )


def macs_png(layers: Sequence[LayerReport]) -> bytes:
    return _paired_bars(
        [layer.name for layer in layers],
        [layer.macs_before / 1e6 for layer in layers],
        [layer.macs_after / 1e6 for layer in layers],
        "MMACs",
        "MACs per layer, before and after",
    )


def loss_png(finetune: FinetuneReport) -> bytes | None:
    """Training loss at every fine-tuning step, with a moving average; iterative runs are marked where
    each pruning step began (the loss jumps there). None without recorded losses."""
    import numpy as np

    losses = np.asarray(finetune.losses, dtype=float)
    if losses.size == 0:
        return None
    figure = _figure(7.5, 3.2)
    axes = figure.add_subplot(1, 1, 1)
    steps = np.arange(1, losses.size + 1)
    axes.plot(steps, losses, color=_BEFORE, linewidth=0.8, label="loss per step")
    window = max(1, min(50, losses.size // 10))
    if window > 1:
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        axes.plot(steps[window - 1 :], smooth, color=_AFTER, linewidth=1.6, label=f"mean of {window} steps")
    if finetune.iterative_steps > 1 and finetune.steps > 0:
        for start in range(finetune.steps, losses.size, finetune.steps):
            axes.axvline(start + 0.5, color="#b3261e", linewidth=0.6, linestyle="--")
    axes.set_xlabel("fine-tuning step")
    axes.set_ylabel(plot_label(f"training loss ({finetune.objective})", limit=None))
    axes.set_title(f"fine-tuning on {finetune.samples.get('train', 0):,} training samples", fontsize=9)
    axes.legend(fontsize=8)
    return _png(figure)


def summary_png(report: PruneReport) -> bytes | None:
    """Latency (p50) and accuracy or fidelity, before and after, side by side; None without either."""
    panels: list[tuple[str, dict[str, float]]] = []
    bands: dict[str, list[tuple[float, float]]] = {}  # panel -> (below, above) the bar, per bar
    latency = report.latency_ms
    if latency is not None and latency.after is not None:
        label = "latency p50 (ms), p10-p90 band"
        panels.append((label, {"before": latency.before.p50, "after": latency.after.p50}))
        if latency.before.p10 is not None and latency.after.p10 is not None:
            bands[label] = [(s.p50 - (s.p10 or s.p50), s.p90 - s.p50) for s in (latency.before, latency.after)]
    evaluation = report.evaluation
    if evaluation is not None:
        values = {"before": evaluation.before}
        if evaluation.after_pruning is not None:  # fine-tuned: show what pruning alone left
            values["pruned"] = evaluation.after_pruning
        values["fine-tuned" if evaluation.after_pruning is not None else "after"] = evaluation.after
        panels.append((f"{evaluation.metric} (held-out)", values))
    elif report.fidelity is not None:
        panels.append(("fidelity (cosine, random inputs)", {"before": 1.0, "after": report.fidelity.cosine_similarity}))
    if not panels:
        return None
    figure = _figure(3.2 * len(panels), 3.2)
    for index, (label, values) in enumerate(panels, start=1):
        axes = figure.add_subplot(1, len(panels), index)
        colours = [_BEFORE] + [_AFTER] * (len(values) - 1)
        band = bands.get(label)
        error = None if band is None else [[b for b, _ in band], [a for _, a in band]]
        bars = axes.bar(
            list(values), list(values.values()), color=colours, width=0.6, yerr=error, capsize=4, ecolor="#59636e"
        )
        axes.bar_label(bars, fmt="%.3g", fontsize=8)
        axes.set_title(label, fontsize=9)
        axes.margins(y=0.15)
    return _png(figure)
