"""The service commands of the CLI: ``serve``, ``worker`` and ``submit`` (registered by service.cli)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from onnxprune.service.cli_options import set_options, with_prune_options


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

    from onnxprune.jobs.settings import load_settings
    from onnxprune.service.api import create_app

    uvicorn.run(create_app(load_settings()), host=host, port=port)


def worker(
    loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "info",
    name: Annotated[str | None, typer.Option(help="Worker node name (default celery@HOST).")] = None,
) -> None:
    """Run a Celery worker (same as celery -A onnxprune.jobs.celery_app worker --pool=solo).

    One job at a time per worker process (the pipeline starts its own onnxruntime processes);
    run more workers to run more jobs at once."""
    from onnxprune.jobs.settings import load_settings

    settings = load_settings()
    if settings.embedded:
        typer.echo("error: set ONNXPRUNE_REDIS_URL (e.g. redis://127.0.0.1:6379/0) to run a worker", err=True)
        raise typer.Exit(2)
    from onnxprune.jobs.celery_app import make_celery

    argv = ["worker", "--pool=solo", f"--loglevel={loglevel}"]
    if name:
        argv.append(f"--hostname={name}")
    make_celery(settings).worker_main(argv)


@with_prune_options
def submit(
    model: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="The .onnx model to prune.")],
    server: Annotated[str, typer.Option(help="Base URL of the onnxprune service.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the pruned model.")],
    data: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            help="Data .npz: one array per model input, optional integer 'labels' (needed by the data options).",
        ),
    ] = None,
    report: Annotated[Path | None, typer.Option(help="Also write the report JSON here.")] = None,
    plan: Annotated[Path | None, typer.Option(help="Also write the pruning plan JSON here.")] = None,
    token: Annotated[str | None, typer.Option(envvar="ONNXPRUNE_TOKEN", help="Bearer token.")] = None,
    **flags: Any,
) -> None:
    """Prune MODEL on a remote onnxprune service and download the result.

    Exit 3 when the server refuses the request or fails the job because of its input; 1 when it fails on its own or cannot be reached; 2 for bad local input."""
    import httpx
    from rich.console import Console

    from onnxprune.service.cli_common import require_output_dirs
    from onnxprune.service.cli_output import EXIT_FAILURE, stage_progress
    from onnxprune.service.client import PruneClient, ServiceError
    from onnxprune.workers.fileio import float_output_path

    config = _config(flags)
    require_output_dirs(output, report, plan)
    # A quantized job keeps its float pruned model: written beside the output, as 'prune' does.
    float_output = float_output_path(output) if config.get("quantize", "none") != "none" else None
    console = Console(stderr=True)
    try:
        with PruneClient(server, token=token) as client:
            job = client.submit(model, config, data=data)
            with stage_progress(console, first="queued") as progress:
                job = client.wait(
                    job["id"], on_progress=lambda job: progress(job["stage"] or job["status"], job["progress"])
                )
            client.download_model(job["id"], output)
            if float_output is not None:
                client.download_model(job["id"], float_output, variant="float")
            if report is not None:
                report.write_text(_json(client.report(job["id"])))
            if plan is not None:
                plan.write_text(client.plan(job["id"]))
    except ServiceError as exc:
        console.print(f"error: {exc}", style="red", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(exit_code_of(exc)) from None
    except httpx.HTTPError as exc:
        console.print(
            f"error: cannot talk to {server}: {exc}", style="red", markup=False, highlight=False, soft_wrap=True
        )
        raise typer.Exit(EXIT_FAILURE) from None
    summary = job.get("report") or {}
    macs = summary.get("macs") or {}
    detail = f" (MACs {macs['before']} -> {macs['after']})" if macs else ""
    wrote = f"{output} (quantized, {config['quantize']}) and {float_output} (float, pruned)" if float_output else output
    console.print(f"job {job['id']} succeeded{detail}: wrote {wrote}", markup=False, highlight=False, soft_wrap=True)


# Job error codes (jobs.policy) that are about the input, not about the server.
INPUT_FAILURES = frozenset({"model_rejected", "resource_limit", "timeout"})


def exit_code_of(error: Exception) -> int:
    """3 when the server said no to this request or this input, 1 when it failed on its own."""
    from onnxprune.service.cli_output import EXIT_FAILURE, EXIT_REFUSED
    from onnxprune.service.client import JobFailed

    if isinstance(error, JobFailed):  # the input refused (or over the server's limits), or the server failed
        return EXIT_REFUSED if error.code in INPUT_FAILURES else EXIT_FAILURE
    status = getattr(error, "status", None)
    if status is not None and (400 <= status < 500 or status == 503):
        return EXIT_REFUSED
    return EXIT_FAILURE


def _config(flags: dict[str, Any]) -> dict[str, Any]:
    """The options the user set, checked here against the same schema the server uses (bad input is
    exit 2 before any upload), sent as typed JSON (``--ratio 0.3`` a number, ``--ratio auto`` the word)."""
    from onnxprune.service.cli import _options

    options = _options(**flags)
    return options.model_dump(mode="json", include=set(set_options(flags)))


def _json(value: Any) -> str:
    import json

    return json.dumps(value, indent=2)
