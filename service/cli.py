"""``onnxprune``: prune, analyze and benchmark ONNX models from the command line.

Thin over ``workers.pipeline``; the service commands (serve, worker, submit) live in
``service.cli_service``. Bad input exits with code 2 and one line on stderr, never a traceback
(set ONNXPRUNE_DEBUG=1 to see one).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from onnxprune.service.cli_common import console, fail, input_shapes, one_line_errors, require_output_dirs
from onnxprune.service.cli_options import options_from_flags, with_prune_options
from onnxprune.service.cli_output import EXIT_BAD_INPUT, print_table, stage_progress, stdout_console
from onnxprune.workers.options import PruneOptions

if TYPE_CHECKING:  # the engine's modules load only when a command runs
    from onnxprune.workers.report import (
        DetectionAgreement,
        HeldOutEvaluation,
        PruneReport,
        SensitivityReport,
        SpeedChange,
    )

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Prune conv filters directly on ONNX models.")


def installed_version() -> str:
    from onnxprune import __version__

    return __version__


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"onnxprune {installed_version()}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the installed version and exit."),
    ] = False,
) -> None:
    """Prune conv filters directly on ONNX models."""


InputShapeOption = Annotated[
    list[str] | None,
    typer.Option("--input-shape", help="Concrete shape for a symbolic input, NAME:1x3x224x224 (repeatable)."),
]


def require_capabilities(options: PruneOptions, *, has_data: bool = False, plan_given: bool = False) -> None:
    """A job whose strategies run in PyTorch, without torch installed: one line with the install hint, exit 2."""
    from onnxprune.workers.capabilities import missing_capability

    missing = missing_capability(options, has_data=has_data, plan_given=plan_given)
    if missing is not None:
        fail(missing, EXIT_BAD_INPUT)


def _data_defaults(options: PruneOptions, data: Path | None, model: Path) -> tuple[PruneOptions, str | None]:
    """With --data and no --criterion: taylor, or l1 and a note saying why (no PyTorch); a QDQ model
    keeps l1 (PyTorch cannot run it), so it is judged on what the user asked."""
    from onnxprune.workers.capabilities import torch_installed
    from onnxprune.workers.options import with_data_defaults
    from onnxprune.workers.precision import is_quantized_file

    quantized = data is not None and "criterion" not in options.model_fields_set and is_quantized_file(model)
    return with_data_defaults(
        options, data_given=data is not None, torch_available=torch_installed(), quantized=quantized
    )


def _require_data(options: PruneOptions, data: Path | None, *, plan_given: bool = False) -> None:
    """Fail fast, before any model is read, when the job needs data and none was given."""
    reason = None if data is not None else options.data_requirement(sensitivity_given=True, plan_given=plan_given)
    if reason:
        fail(f"{reason}: pass --data DATA.npz", EXIT_BAD_INPUT)


def _load_sensitivity(path: Path | None) -> SensitivityReport | None:
    if path is None:
        return None
    from onnxprune.workers.sensitivity import load_sensitivity

    return load_sensitivity(path)


def _detection_row(found: DetectionAgreement) -> tuple[str, str, str, str]:
    """mAP against the original's detections (which are 1.0 against themselves), and the box counts."""
    boxes = f"{found.reference_boxes} -> {found.candidate_boxes} boxes"
    if found.map50 is None or found.map50_95 is None:
        return ("detections mAP50 (held out)", "", "original found none", boxes)
    pruned = "" if found.after_pruning_map50 is None else f"pruned {found.after_pruning_map50:.4f}, recovered "
    return ("detections mAP50 (held out)", "1.0000", f"{pruned}{found.map50:.4f} (50-95 {found.map50_95:.4f})", boxes)


def _print_summary(report: PruneReport) -> None:
    table = Table(title="onnxprune", show_header=True, header_style="bold")
    table.add_column("")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    table.add_column("change", justify="right")
    table.add_row("MACs", f"{report.macs.before:,}", f"{report.macs.after:,}", f"-{report.macs.reduction:.1%}")
    table.add_row("params", f"{report.params.before:,}", f"{report.params.after:,}", f"-{report.params.reduction:.1%}")
    if report.latency_ms and report.latency_ms.after:
        table.add_row(
            "latency p50 (ms)",
            f"{report.latency_ms.before.p50:.3f}",
            f"{report.latency_ms.after.p50:.3f}",
            _speed_words(report.latency_ms.change),
        )
        if report.latency_ms.cleaned is not None:  # the original after the same graph cleanup (workers.cleanup)
            table.add_row(
                "  pruning alone (vs cleaned-up original)",
                f"{report.latency_ms.cleaned.p50:.3f}",
                f"{report.latency_ms.after.p50:.3f}",
                _speed_words(report.latency_ms.pruning_change),
            )
    if report.fidelity:
        table.add_row(
            "fidelity", "", f"cos {report.fidelity.cosine_similarity:.4f}", f"max|Δ| {report.fidelity.max_abs_diff:.3g}"
        )
    evaluation = getattr(report, "evaluation", None)
    if evaluation is not None:
        middle = (
            ""
            if evaluation.after_pruning is None
            else f"pruned {evaluation.after_pruning:.4f}, {_recovered(evaluation)} "
        )
        table.add_row(
            f"{evaluation.metric} (held out)",
            f"{evaluation.before:.4f}",
            f"{middle}{evaluation.after:.4f}",
            f"{evaluation.after - evaluation.before:+.4f}",
        )
        if evaluation.detections is not None:
            table.add_row(*_detection_row(evaluation.detections))
    quantization = getattr(report, "quantization", None)
    if quantization is not None:
        float_ms = quantization.float_latency_ms.p50 if quantization.float_latency_ms else None
        table.add_row(
            f"float pruned ({quantization.mode} above)",
            "",
            "" if float_ms is None else f"{float_ms:.3f} ms",
            "" if quantization.float_held_out is None else f"held out {quantization.float_held_out:.4f}",
        )
    pruned = sum(1 for g in report.groups if g.channels_after < g.channels_before)
    table.caption = f"{pruned} of {len(report.groups)} prunable groups pruned; {len(report.frozen)} frozen"
    kinds = getattr(report, "kinds", [])
    if len(kinds) > 1 or any(k.limit for k in kinds):
        table.caption += "\n" + "; ".join(
            f"{k.kind}s {k.units_before:,} -> {k.units_after:,} in {k.pruned_groups} of {k.groups} groups"
            + (f" ({k.limit})" if k.limit else "")
            for k in kinds
        )
    target = getattr(report, "latency_target", None)
    if target is not None:
        verdict = "met" if target.met else f"missed by {target.missed_by:.3f}"
        what = "" if target.applies_to == "float" else f" of the {target.applies_to} model, vs the float original"
        table.caption += (
            f"\nlatency target {target.target:g}{what}: {verdict} (measured {target.measured.ratio:.3f}x the "
            f"original's p50, p90 {target.measured.p90_ratio:.3f}x, fastest runs "
            f"{target.measured.min_ratio:.3f}x, predicted {target.predicted:.3f}x; "
            f"{len(target.iterations)} pass(es), counts multiples of {target.step})"
        )
    cut = getattr(report, "fastest_cut", None)
    if cut is not None:
        table.caption += (
            f"\nequal-MACs cuts compared on the latency table: kept '{cut.chosen}' of {len(cut.candidates)}, "
            f"predicted {cut.predicted_ratio:.3f}x the original's latency"
        )
    finetune = evaluation.finetune if evaluation is not None else None
    if finetune is not None and finetune.total_steps:  # what the time budget bought (issue 29)
        table.caption += (
            f"\nrecovery: {finetune.total_steps:,} fine-tuning steps, {finetune.epochs:g} epochs over "
            f"{finetune.samples.get('train', 0):,} training samples"
            + (f", {finetune.samples_per_s:g} samples/s" if finetune.samples_per_s else "")
            + (f", {finetune.threads} thread(s)" if finetune.threads else "")
        )
    from onnxprune.workers.quality_warnings import refits_kept

    refits, tried = refits_kept(finetune)
    if tried:
        table.caption += f"\nlayer-wise reconstruction: {refits} of {tried} refit(s) kept" + (
            "" if refits == tried else f"; {tried - refits} did not lower the error on calibration samples held aside"
        )
    from onnxprune.workers.cleanup import credited_speed

    credited = credited_speed(report.latency_ms)
    if credited is not None:
        table.caption += f"\nlatency: {credited}"
    for change in getattr(report, "interface_changes", []):
        table.caption += f"\n{change}"
    cache = getattr(report, "latency_table_cache", None)
    if cache:
        table.caption += (
            f"\nused the latency table an earlier --latency-target run cached on this machine ({cache}); "
            "without it (another machine, an emptied cache) counts can differ (--round-to 1 uses none)"
        )
    if getattr(report, "round_to", None):
        table.caption += f"\nchannel counts multiples of {report.round_to} ({report.round_to_source})"
    learned = getattr(report, "learned", None)
    if learned is not None:
        kept = ", ".join(f"{layer.kept}/{layer.channels}" for layer in learned.layers)
        table.caption += f"\nlearned (max drop {learned.max_drop:g} in {learned.metric}): filters kept per layer {kept}"
    print_table(table)  # the report's warnings follow on stderr, once


def _recovered(evaluation: HeldOutEvaluation) -> str:
    """What recovery did, in the summary's words: "reconstructed", "fine-tuned (300 steps)", or both."""
    finetune = evaluation.finetune
    if finetune is None:
        return "recovered"
    steps = sum(it.steps or 0 for it in finetune.iterations) or len(finetune.losses)
    parts = ["reconstructed"] if any(it.reconstructed_layers for it in finetune.iterations) else []
    if steps:
        parts.append(f"fine-tuned ({steps} step{'s' if steps != 1 else ''})")
    return " and ".join(parts) or "recovered"


def _speed_words(change: SpeedChange | None) -> str:
    """ "1.32x faster (95% interval: between 1.25x faster and 1.40x faster)", flagged when within noise."""
    if change is None:
        return ""
    noise = " [yellow]within noise[/yellow]" if change.within_noise else ""
    return f"{change.summary} ({change.band}){noise}"


@app.command()
@one_line_errors
@with_prune_options
def prune(
    model: Annotated[Path, typer.Argument(help="The ONNX model to prune.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the pruned model.")],
    data: Annotated[
        Path | None,
        typer.Option(
            help="Data .npz: one array per model input (preprocessed), "
            "optional integer 'labels'; or, for an image input [N, 3, H, W], a folder of photos or uint8 "
            "[N, h, w, 3] images (letterboxed, /255, RGB). Every fifth sample is held out."
        ),
    ] = None,
    report: Annotated[Path | None, typer.Option(help="Write the JSON report here.")] = None,
    report_html: Annotated[
        Path | None, typer.Option(help="Write a self-contained HTML report with plots here.")
    ] = None,
    plan_out: Annotated[Path | None, typer.Option(help="Write the pruning plan (kept channels) here.")] = None,
    plan_in: Annotated[Path | None, typer.Option(help="Apply a saved plan instead of scoring.")] = None,
    sensitivity: Annotated[
        Path | None,
        typer.Option(
            help="With --ratio auto: curves from 'onnxprune sensitivity --json' instead of measuring them again."
        ),
    ] = None,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json", help="Print the report as JSON on stdout instead of the summary (progress stays on stderr)."
        ),
    ] = False,
    **flags: Any,
) -> None:
    """Remove filters and write a smaller dense model, with a report of what changed."""
    from onnxprune.service.cli_results import read_plan, show_results, write_results
    from onnxprune.workers.job_process import JobLimits, JobRequest, run_job_process

    started = time.monotonic()  # --time-budget counts from here
    options, note = _data_defaults(options_from_flags(flags), data, model)
    _require_data(options, data, plan_given=plan_in is not None)
    require_capabilities(options, has_data=data is not None, plan_given=plan_in is not None)
    if note is not None:  # after the checks: a refused job prints its one error line and nothing else
        console.print(f"[yellow]note:[/yellow] {note}", highlight=False, soft_wrap=True)
    require_output_dirs(output, report, plan_out, report_html)
    plan = read_plan(plan_in) if plan_in is not None else None
    request = JobRequest(
        model, output, options, data=data, plan=plan, sensitivity=_load_sensitivity(sensitivity), started=started
    )
    with tempfile.TemporaryDirectory(prefix="onnxprune-job-") as workdir, stage_progress(console) as progress:
        result = run_job_process(request, Path(workdir), limits=JobLimits.from_environment(), progress=progress)
    report_json = result.report.model_dump_json(indent=1)
    write_results(
        report_json,
        result.report,
        result.plan.to_json(),
        report_path=report,
        plan_out=plan_out,
        report_html=report_html,
        title=f"onnxprune: {model.name}",
    )
    show_results(report_json, result.report, as_json=as_json)  # --json: the report is the whole answer
    if as_json:
        return
    if result.float_output is not None:
        console.print(f"wrote {output} (quantized, {options.quantize}) and {result.float_output} (float, pruned)")
    else:
        console.print(f"wrote {output}")


@app.command()
@one_line_errors
def analyze(
    model: Annotated[Path, typer.Argument(help="The ONNX model to analyse.")],
    input_shape: InputShapeOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List channel groups (what can be pruned together) and frozen groups with reasons."""
    from onnxprune.workers.analysis_summary import summarize_model

    result = summarize_model(model, input_shapes(input_shape))
    data = result.model_dump()
    if as_json:
        print(json.dumps(data, indent=1))
        return
    out = stdout_console()
    out.print(f"{model.name}: {result.macs:,} MACs, {result.params:,} params, inputs {result.input_shapes}")
    for note in result.input_shape_notes:
        out.print(f"note: {note}")
    table = Table("group", "channels", "pinned", "producers", "MACs share", title="prunable groups")
    for g in data["groups"]:
        producers = ", ".join(g["producers"][:3]) + (" ..." if len(g["producers"]) > 3 else "")
        channels = f"{g['channels']} heads of {g['unit']}" if g.get("unit", 1) > 1 else str(g["channels"])
        table.add_row(g["id"], channels, str(g["pinned"]), producers, f"{g['macs_share']:.1%}")
    prunable_share = sum(g["macs_share"] for g in data["groups"])
    frozen_share = sum(g["macs_share"] for g in data["frozen"])
    table.caption = (
        f"MACs share: the layers computing a group's channels. Prunable {prunable_share:.1%}, "
        f"frozen {frozen_share:.1%}, in no group {max(0.0, 1 - prunable_share - frozen_share):.1%}"
    )
    print_table(table, out)
    frozen = Table("group", "channels", "MACs share", "reason", title="frozen groups")
    for g in data["frozen"]:
        frozen.add_row(g["id"], str(g["channels"]), f"{g['macs_share']:.1%}", g["reason"])
    print_table(frozen, out)


@app.command()
@one_line_errors
def bench(
    model_a: Annotated[Path, typer.Argument(help="Reference model.")],
    model_b: Annotated[Path | None, typer.Argument(help="Model to compare (e.g. the pruned one).")] = None,
    input_shape: InputShapeOption = None,
    runs: Annotated[int, typer.Option(help="Timed runs per model.")] = 50,
    warmup: Annotated[int, typer.Option(help="Untimed runs per model first.")] = 5,
    threads: Annotated[int, typer.Option(help="onnxruntime intra-op threads.")] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Time one model, or two side by side (interleaved runs), and compare their outputs."""
    from onnxprune.workers.benchmark import benchmark as run_benchmark

    result = run_benchmark(
        model_a, model_b, input_shapes(input_shape) or None, runs=runs, warmup=warmup, threads=threads
    )
    data = {
        "latency_ms": result.latency.model_dump(),
        "fidelity": result.fidelity.model_dump() if result.fidelity else None,
    }
    if as_json:
        print(json.dumps(data, indent=1))
        return
    table = Table("model", "p50 ms", "p90 ms", "mean ms", title=f"onnxruntime, {threads} thread(s), {runs} runs")
    for label, path, stats in (("A", model_a, result.latency.before), ("B", model_b, result.latency.after)):
        if stats is not None and path is not None:  # B has latency only when model_b was given
            table.add_row(f"{label}: {path.name}", f"{stats.p50:.3f}", f"{stats.p90:.3f}", f"{stats.mean:.3f}")
    out = stdout_console()
    print_table(table, out)
    change = result.latency.change
    if change is not None:
        out.print(f"B against A (p50): {_speed_words(change)}; p90 ratio {change.p90_ratio:.3f}", highlight=False)
        from onnxprune.workers.speed import noise_warning

        if noise_warning(change):
            console.print(f"[yellow]warning:[/yellow] {noise_warning(change)}", highlight=False, soft_wrap=True)
    if result.fidelity:
        out.print(
            f"outputs: max |A-B| {result.fidelity.max_abs_diff:.3g}, cosine {result.fidelity.cosine_similarity:.6f}"
        )


def _register_service_commands() -> None:
    from onnxprune.service import cli_service

    cli_service.register(app)


_register_service_commands()
from onnxprune.service import cli_analysis  # noqa: E402 - the sensitivity command

cli_analysis.register(app)


def main() -> None:
    """Console entry point (``onnxprune``)."""
    from onnxprune.service.cli_help import plain_help

    plain_help(typer.main.get_command(app))(prog_name="onnxprune")


if __name__ == "__main__":
    main()
