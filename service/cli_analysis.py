"""``onnxprune sensitivity``: prune each group alone at increasing ratios and measure the model.

Registered on the main CLI by ``service.cli``; the work is ``workers.sensitivity.measure_sensitivity``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from onnxprune.service.cli_common import console, fail, input_shapes, one_line_errors
from onnxprune.service.cli_options import options_from_flags, with_schema_options
from onnxprune.workers.options import IMAGE_OPTIONS

if TYPE_CHECKING:  # the engine loads only when the command runs
    from onnxprune.roundtrip.images import ImagePreprocessing
    from onnxprune.workers.report import SensitivityReport

NO_DATA_MESSAGE = (
    "sensitivity needs held-out data: pass --data DATA.npz (one array per model input, optional "
    "'labels'), or --synthetic N to measure output fidelity on N random inputs (a proxy)"
)
SYNTHETIC_HELP = (
    "No data? Measure output fidelity on N random standard-normal inputs instead: a proxy "
    "that says how much each group changes the outputs, not how accurate the model stays."
)


def register(app: typer.Typer) -> None:
    app.command("sensitivity")(sensitivity)


@with_schema_options(*IMAGE_OPTIONS)  # photos as data are read as prune reads them
def sensitivity(
    model: Annotated[Path, typer.Argument(help="The ONNX model to analyse.")],
    data: Annotated[
        Path | None,
        typer.Option(
            help="Held-out .npz: one array per model input, optional 'labels' (all samples are used); or, for an "
            "image input, a folder of photos or uint8 [N, h, w, 3] images (preprocessed by the --image-* options)."
        ),
    ] = None,
    ratios: Annotated[
        str, typer.Option(help="Comma-separated fractions of each group's filters to remove.")
    ] = "0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9",
    criterion: Annotated[str, typer.Option(help="Filter ranking: l1, l2, random.")] = "l1",
    samples: Annotated[
        int | None, typer.Option(min=1, help="Use at most N samples of the data (evenly strided).")
    ] = None,
    synthetic: Annotated[int | None, typer.Option(min=1, help=SYNTHETIC_HELP)] = None,
    workers: Annotated[
        int | None, typer.Option(min=1, help="Groups measured in parallel (default: CPU cores).")
    ] = None,
    input_shape: Annotated[
        list[str] | None, typer.Option("--input-shape", help="NAME:1x3x224x224 for symbolic inputs (repeatable).")
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the curves as JSON (reusable with prune --sensitivity).")
    ] = None,
    plot: Annotated[Path | None, typer.Option(help="Write the curves as a PNG.")] = None,
    report_html: Annotated[Path | None, typer.Option(help="Write a self-contained HTML page with the curves.")] = None,
    **flags: Any,
) -> None:
    """For every prunable group, prune it alone at each ratio and measure accuracy (labels) or fidelity."""
    one_line_errors(_sensitivity)(
        model,
        data,
        _preprocessing(flags, data_given=data is not None),
        ratios,
        criterion,
        samples,
        synthetic,
        workers,
        input_shapes(input_shape),
        json_out,
        plot,
        report_html,
        fail,
    )


def _preprocessing(flags: dict[str, Any], *, data_given: bool) -> ImagePreprocessing:
    """The --image-* flags, validated by the schema as prune's are; without data a warning names them."""
    from onnxprune.workers.strategies.needs import Given, ignored_without_data

    options = options_from_flags(flags)
    ignored = ignored_without_data(options, Given(data=data_given))
    if ignored is not None:
        console.print(f"[yellow]warning:[/yellow] {ignored}", highlight=False, soft_wrap=True)
    return options.image_preprocessing


def _sensitivity(
    model: Path,
    data: Path | None,
    preprocessing: ImagePreprocessing,
    ratios: str,
    criterion: str,
    samples: int | None,
    synthetic: int | None,
    workers: int | None,
    shapes: dict[str, list[int]],
    json_out: Path | None,
    plot: Path | None,
    report_html: Path | None,
    fail: Callable[[str, int], NoReturn],
) -> None:
    import numpy as np
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from onnxprune.graphops.loading import load_model
    from onnxprune.roundtrip.data import load_dataset
    from onnxprune.workers.evaluation import synthetic_dataset
    from onnxprune.workers.fileio import atomic_write_bytes
    from onnxprune.workers.sensitivity import measure_sensitivity, parse_ratios

    console = Console(stderr=True)
    grid = parse_ratios(ratios)
    if data is None and synthetic is None:
        fail(NO_DATA_MESSAGE, 2)
    if data is not None and synthetic is not None:
        fail("give either --data or --synthetic, not both", 2)
    from onnxprune.service.cli_common import require_output_dirs

    require_output_dirs(json_out, plot, report_html)
    proto = load_model(model)
    if data is not None:
        dataset = load_dataset(data, proto, shapes, preprocessing)
    elif synthetic is not None:
        dataset = synthetic_dataset(proto, shapes, synthetic)
    else:  # refused above; says so again for the type checker
        fail(NO_DATA_MESSAGE, 2)
    if samples is not None and samples < len(dataset):
        dataset = dataset.subset(np.linspace(0, len(dataset) - 1, samples).round().astype(int))
    if synthetic is not None:
        console.print(
            f"[yellow]no data: measuring output fidelity on {synthetic} random inputs (a proxy, not accuracy)[/yellow]"
        )
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    ) as bar:
        task = bar.add_task("groups", total=None)

        def show(done: int, total: int, group: str) -> None:
            bar.update(task, completed=done, total=total, description=f"groups (last: {group})")
            if not console.is_terminal:
                console.print(f"[{done}/{total}] {group}", highlight=False)

        result = measure_sensitivity(
            model,
            dataset,
            ratios=grid,
            criterion=criterion,
            input_shapes=shapes,
            workers=workers,
            synthetic=synthetic is not None,
            progress=show,
        )
    if json_out is not None:
        atomic_write_bytes(json_out, result.model_dump_json(indent=1).encode())
    if plot is not None:
        from onnxprune.workers.plots import sensitivity_png

        atomic_write_bytes(plot, sensitivity_png(result))
    if report_html is not None:
        from onnxprune.workers.html_report import render_report_html

        page = render_report_html(sensitivity=result, title=f"onnxprune sensitivity: {model.name}")
        atomic_write_bytes(report_html, page.encode())
    _print_table(result)


def _print_table(result: SensitivityReport) -> None:
    from rich.table import Table

    from onnxprune.service.cli_output import print_table

    table = Table(
        title=f"{result.metric} with one group pruned (unpruned {result.baseline:.4f}, "
        f"{result.samples} samples, {result.source})",
        header_style="bold",
    )
    table.add_column("group")
    table.add_column("ch", justify="right")
    for ratio in result.ratios:
        table.add_column(f"{ratio:g}", justify="right")
    for curve in result.curves:
        table.add_row(curve.group, str(curve.channels), *(f"{v - result.baseline:+.3f}" for v in curve.values))
    table.caption = f"drop per ratio; {len(result.frozen)} frozen groups; {result.seconds:.1f} s"
    print_table(table)
