"""The service commands of the CLI: ``serve``, ``worker`` and ``submit`` (registered by service.cli)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from workers.options import parse_input_shape


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
    app.command("worker")(worker)
    app.command("submit")(submit)


def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
) -> None:
    """Run the REST API. Without ONNXPRUNE_REDIS_URL, jobs run in this process (embedded mode)."""
    import uvicorn

    from jobs.settings import Settings
    from service.api import create_app

    uvicorn.run(create_app(Settings()), host=host, port=port)


def worker(
    loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "info",
    name: Annotated[str | None, typer.Option(help="Worker node name (default celery@HOST).")] = None,
) -> None:
    """Run a Celery worker (same as celery -A jobs.celery_app worker --pool=solo).

    One job at a time per worker process (the pipeline starts its own onnxruntime processes);
    run more workers to run more jobs at once."""
    from jobs.settings import Settings

    settings = Settings()
    if settings.embedded:
        typer.echo("error: set ONNXPRUNE_REDIS_URL (e.g. redis://127.0.0.1:6379/0) to run a worker", err=True)
        raise typer.Exit(2)
    from jobs.celery_app import make_celery

    argv = ["worker", "--pool=solo", f"--loglevel={loglevel}"]
    if name:
        argv.append(f"--hostname={name}")
    make_celery(settings).worker_main(argv)


def submit(
    model: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="The .onnx model to prune.")],
    server: Annotated[str, typer.Option(help="Base URL of the onnxprune service.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the pruned model.")],
    criterion: Annotated[str | None, typer.Option(help="Filter ranking criterion (l1, l2, random...).")] = None,
    ratio: Annotated[str | None, typer.Option(help="Fraction of channels removed per group, or 'auto'.")] = None,
    max_drop: Annotated[float | None, typer.Option(help="With --ratio auto or --criterion learned: tolerated drop.")] = None,
    flops_target: Annotated[float | None, typer.Option(help="Fraction of MACs to remove.")] = None,
    round_to: Annotated[str | None, typer.Option(help="Keep channel counts multiples of this, or 'auto' "
                                                 "(the default: onnxruntime's kernel step).")] = None,
    latency_target: Annotated[float | None, typer.Option(help="Measured latency at most this times the "
                                                          "original's (measured on the server's CPU).")] = None,
    exclude: Annotated[list[str] | None, typer.Option(help="Node name or glob never pruned (repeatable).")] = None,
    input_shape: Annotated[list[str] | None, typer.Option(help="NAME:1x3x224x224 (repeatable).")] = None,
    no_benchmark: Annotated[bool, typer.Option("--no-benchmark", help="Skip latency measurement.")] = False,
    data: Annotated[Path | None, typer.Option(exists=True, dir_okay=False, help="Calibration .npz.")] = None,
    report: Annotated[Path | None, typer.Option(help="Also write the report JSON here.")] = None,
    plan: Annotated[Path | None, typer.Option(help="Also write the pruning plan JSON here.")] = None,
    token: Annotated[str | None, typer.Option(envvar="ONNXPRUNE_TOKEN", help="Bearer token.")] = None,
) -> None:
    """Prune MODEL on a remote onnxprune service and download the result."""
    import httpx
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from service.client import PruneClient, ServiceError

    config: dict[str, Any] = {
        key: value
        for key, value in {"criterion": criterion, "ratio": _number_or_word(ratio), "flops_target": flops_target,
                           "max_drop": max_drop, "round_to": _number_or_word(round_to), "exclude": exclude,
                           "latency_target": latency_target}.items()
        if value is not None and value != []  # 0 is a real choice (--ratio 0 prunes nothing)
    }
    if no_benchmark:
        config["benchmark"] = False
    try:
        if input_shape:
            config["input_shapes"] = dict(parse_input_shape(text) for text in input_shape)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--input-shape") from None

    console = Console(stderr=True)
    try:
        with PruneClient(server, token=token) as client:
            job = client.submit(model, config, data=data)
            with Progress(TextColumn("{task.description:<10}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                          TimeElapsedColumn(), console=console, transient=True) as bar:
                task = bar.add_task("queued", total=1.0)

                def show(job: dict[str, Any]) -> None:
                    bar.update(task, completed=job["progress"], description=job["stage"] or job["status"])

                job = client.wait(job["id"], on_progress=show)
            client.download_model(job["id"], output)
            if report is not None:
                report.write_text(_json(client.report(job["id"])))
            if plan is not None:
                plan.write_text(client.plan(job["id"]))
    except ServiceError as exc:
        console.print(f"error: {exc}", style="red", markup=False, highlight=False)
        raise typer.Exit(1) from None
    except httpx.HTTPError as exc:
        console.print(f"error: cannot talk to {server}: {exc}", style="red", markup=False, highlight=False)
        raise typer.Exit(1) from None
    summary = job.get("report") or {}
    macs = summary.get("macs") or {}
    detail = f" (MACs {macs['before']} -> {macs['after']})" if macs else ""
    console.print(f"job {job['id']} succeeded{detail}: wrote {output}", markup=False, highlight=False)


def _number_or_word(text: str | None) -> float | str | None:
    """``--ratio 0.3`` goes to the server as a number, ``--ratio auto`` as the word."""
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return text


def _json(value: Any) -> str:
    import json

    return json.dumps(value, indent=2)
