"""The results of ``bench_quality.py`` as issue 10 reads them: its targets, the Markdown table, the plot.

Everything here is computed from the rows alone, so a rerun cannot leave the text stale.
"""

from __future__ import annotations

from pathlib import Path

OURS = ("l1", "taylor", "auto", "learned")
MACS_LEVELS = ((0.3, 1.0), (0.5, 3.0))  # (MACs removed, largest held-out drop in points)
MACS_SLACK = 0.005  # a row removing 29.5% of the MACs counts at the 30% level
TAYLOR_SLACK_POINTS = 0.3
AUTO_MIN_MACS = 0.25


def _ok(rows: list[dict], *methods: str) -> list[dict]:
    return [r for r in rows if r["method"] in methods and "error" not in r]


def _point(row: dict) -> str:
    return f"{row['case']}: -{row['macs_removed']:.1%} MACs, {100 * row['heldout_accuracy']:.2f}% (drop {row['heldout_drop_points']:.2f})"


def _verdict(name: str, status: str, detail: str) -> dict:
    return {"target": name, "status": status, "detail": detail}


def _macs_level(rows: list[dict], level: float, bound: float) -> dict:
    name = f"-{level:.0%} MACs with at most {bound:.1f} points of held-out drop"
    candidates = [r for r in _ok(rows, *OURS) if r["macs_removed"] >= level - MACS_SLACK]
    if not candidates and not any(r["method"] in ("l1", "taylor") and r["value"] == level for r in rows):
        return _verdict(name, "not run", f"no row of ours at --flops-target {level:g}")
    if not candidates:
        return _verdict(name, "NOT met", "every row of ours at this level failed")
    best = max(candidates, key=lambda r: r["heldout_accuracy"])
    return _verdict(name, "met" if best["heldout_drop_points"] <= bound else "NOT met", f"best: {_point(best)}")


def _taylor_vs_l1(rows: list[dict]) -> dict:
    name = f"taylor at least as good as l1 (within {TAYLOR_SLACK_POINTS} points)"
    pairs = [(t, base) for t in _ok(rows, "taylor") for base in _ok(rows, "l1") if t["value"] == base["value"]]
    if not pairs:
        return _verdict(name, "not run", "no MACs target with both rows")
    gaps = [(t["value"], 100 * (t["heldout_accuracy"] - base["heldout_accuracy"])) for t, base in pairs]
    status = "met" if all(gap >= -TAYLOR_SLACK_POINTS for _, gap in gaps) else "NOT met"
    return _verdict(name, status, "; ".join(f"-{v:.0%}: taylor - l1 = {gap:+.2f} points" for v, gap in gaps))


def _bounded(rows: list[dict], method: str, min_macs: float) -> dict:
    label = "--ratio auto" if method == "auto" else "--criterion learned"
    name = f"{label} --max-drop: held-out drop within the bound" + (
        f", at least {min_macs:.0%} MACs removed" if min_macs else ""
    )
    ran = [r for r in rows if r["method"] == method]
    if not ran:
        return _verdict(name, "not run", "")
    details, met = [], True
    for row in ran:
        if "error" in row:
            details.append(f"{row['case']}: failed")
            met = False
            continue
        met &= row["heldout_drop_points"] <= 100 * row["value"] and row["macs_removed"] >= min_macs
        details.append(f"{_point(row)}; bound {100 * row['value']:g} points")
    return _verdict(name, "met" if met else "NOT met", "; ".join(details))


def _against_torch_pruning(rows: list[dict]) -> dict:
    name = "ours ahead of Torch-Pruning at every MACs level"
    by_case = {r["case"]: r for r in rows}
    pairs = [(by_case[r["matched_to"]], r) for r in _ok(rows, "torch_pruning") if r.get("matched_to") in by_case]
    if not pairs:
        return _verdict(name, "not run", "no Torch-Pruning row with a row of ours at its MACs")
    gaps = [(o, 100 * (o["heldout_accuracy"] - t["heldout_accuracy"]), t) for o, t in pairs]
    status = "met" if all(gap > 0 for _, gap, _ in gaps) else "NOT met"
    detail = "; ".join(
        f"{o['case']} -{o['macs_removed']:.1%} vs Torch-Pruning -{t['macs_removed']:.1%}: {gap:+.2f} points"
        for o, gap, t in gaps
    )
    return _verdict(name, status, detail)


def targets(results: dict) -> list[dict]:
    rows = results["rows"]
    return [
        *(_macs_level(rows, level, bound) for level, bound in MACS_LEVELS),
        _taylor_vs_l1(rows),
        _bounded(rows, "auto", AUTO_MIN_MACS),
        _bounded(rows, "learned", 0.0),
        _against_torch_pruning(rows),
    ]


def _cells(row: dict) -> list[str]:
    load = f"{row['load_before']:.1f} -> {row['load_after']:.1f}"
    if "error" in row:
        return [row["case"], "failed", "", "", "", "", f"{row['wall_s']:.0f}", load, row["error"][:120]]
    split = row.get("tool_split") or {}
    tp = row.get("torch_pruning")

    def percent(value: float | None) -> str:
        return "" if value is None else f"{100 * value:.1f}%"

    note = f"{len(row['warnings'])} warning(s), below" if row.get("warnings") else ""
    bought = row.get("finetune") or {}
    if bought.get("total_steps"):  # what the time budget bought (issue 29); none with --recovery reconstruct
        note = (
            f"{bought['total_steps']:,} fine-tuning steps ({bought['epochs']:g} epochs, "
            f"{bought['samples_per_s']:g} samples/s, {bought.get('threads')} thread(s))" + (f"; {note}" if note else "")
        )
    if tp:
        note = (
            f"matched to {row['matched_to'] or 'its target'} (-{tp['macs_removed_tp']:.1%} by Torch-Pruning's count); "
            f"ratio {tp['pruning_ratio']}, "
            f"{tp['finetune']['steps']} steps ({tp['finetune']['epochs']} epochs) in {tp['finetune']['seconds']:.0f} s"
        )
    return [
        row["case"],
        f"{row['macs_removed']:.1%}",
        percent(split.get("after_pruning")),
        percent(split.get("after")),
        f"{100 * row['heldout_accuracy']:.2f}%",
        f"{row['heldout_drop_points']:.2f}",
        f"{row['wall_s']:.0f}",
        load,
        note,
    ]


def markdown(results: dict) -> str:
    lines = [
        f"# Held-out accuracy vs MACs removed: shared ResNet-20 ({results['date']})",
        "",
        *(
            ["**Smoke run** (`--smoke`): tiny samples and budget; it checks the script, not the tool.", ""]
            if results.get("smoke")
            else []
        ),
        "Command:",
        "",
        f"    {results['command']}",
        "",
        f"Machine: {results['machine']}; load average at the start {results['load_average_start']}, at the end "
        f"{results.get('load_average_end')}; {results.get('seconds', 0):.0f} s in all"
        + (
            f"; {results['background_load']} CPU-bound background processes at the same priority for the whole run"
            if results.get("background_load")
            else ""
        )
        + ". Versions: "
        + ", ".join(f"{k} {v}" for k, v in results["versions"].items())
        + ".",
        "",
        f"Calibration: {results['calibration_samples']:,} labelled images of `cifar10-test.npz` (the CLI's `--data`; "
        f"the tool holds out every fifth itself); held out: {results['heldout_samples']:,} others (seed "
        f"{results['seed']}), evaluated on the written model in onnxruntime. Every onnxprune run has "
        f"`--time-budget {results['time_budget']:g}`{' ' + results['extra'] if results['extra'] else ''}. "
        f"Original held-out accuracy: **{100 * results['baseline_heldout_accuracy']:.2f}%**.",
        "",
        "| case | MACs removed | pruned only (tool's split) | recovered (tool's split) | held-out | drop (points) "
        "| wall s | load (1 min) before -> after | notes |",
        "|---|---|---|---|---|---|---|---|---|",
        *("| " + " | ".join(_cells(row)) + " |" for row in results["rows"]),
        "",
        "## Targets of issue 10",
        "",
        *(
            f"- {t['target']}: **{t['status']}**" + (f" ({t['detail']})" if t["detail"] else "")
            for t in results["targets"]
        ),
        "",
        "## Commands",
        "",
        *(f"- `{row['case']}`: `{row['command']}`" for row in results["rows"]),
        "",
        "## Warnings the CLI printed",
        "",
        *(f"- `{row['case']}`: {warning}" for row in results["rows"] for warning in row.get("warnings", [])),
    ]
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    rows = [r for r in results["rows"] if "error" not in r]
    for method in dict.fromkeys(r["method"] for r in rows):
        points = sorted((r["macs_removed"], r["heldout_accuracy"]) for r in rows if r["method"] == method)
        label = "Torch-Pruning (Taylor)" if method == "torch_pruning" else method
        style = "s--" if method == "torch_pruning" else "o-"
        axes.plot([100 * m for m, _ in points], [100 * a for _, a in points], style, label=label)
    axes.axhline(100 * results["baseline_heldout_accuracy"], color="grey", linestyle=":", label="original")
    axes.set_xlabel("MACs removed (%)")
    axes.set_ylabel(f"held-out accuracy (%), {results['heldout_samples']:,} images")
    axes.set_title(
        f"{results['model']}: {results['calibration_samples']:,} calibration images, --time-budget "
        f"{results['time_budget']:g}",
        fontsize=10,
    )
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
