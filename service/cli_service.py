"""The service commands of the CLI: ``serve``, ``worker`` and ``submit`` (registered by service.cli)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from onnxprune.service.cli_options import options_from_flags, set_options, with_prune_options


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
    """Run a Celery worker: as many jobs at once as its CPUs hold (ONNXPRUNE_WORKER_CONCURRENCY, default
    CPUs // ONNXPRUNE_JOB_THREADS, 2 threads a job when unset), each job's threads sized to its share."""
    from onnxprune.jobs.settings import load_settings

    settings = load_settings()
    if settings.embedded:
        typer.echo("error: set ONNXPRUNE_REDIS_URL (e.g. redis://127.0.0.1:6379/0) to run a worker", err=True)
        raise typer.Exit(2)
    from onnxprune.jobs.celery_app import make_celery, worker_pool

    argv = ["worker", f"--pool={worker_pool(settings)}", f"--concurrency={settings.jobs_at_once()}"]
    argv.append(f"--loglevel={loglevel}")
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
    report_html: Annotated[
        Path | None, typer.Option(help="Write a self-contained HTML report with plots here.")
    ] = None,
    plan_out: Annotated[
        Path | None, typer.Option("--plan-out", "--plan", help="Write the pruning plan (kept channels) here.")
    ] = None,
    plan_in: Annotated[
        Path | None, typer.Option(help="Apply a saved plan instead of scoring (sent with the job).")
    ] = None,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json", help="Print the job's report as JSON on stdout instead of the summary (progress stays on stderr)."
        ),
    ] = False,
    token: Annotated[str | None, typer.Option(envvar="ONNXPRUNE_TOKEN", help="Bearer token.")] = None,
    **flags: Any,
) -> None:
    """Prune MODEL on a remote onnxprune service and download the result.

    The same flags and output as prune: the summary table and the warnings of the job's report,
    --json, --report, --report-html, --plan-out, --plan-in. prune's --sensitivity (curves measured
    earlier, read from a local file) has no service meaning: the service measures its own.

    Exit 3 when the server refuses the request or fails the job because of its input; 1 when it fails on its own or cannot be reached; 2 for bad local input."""
    import httpx
    from rich.console import Console

    from onnxprune.service.cli_common import require_output_dirs
    from onnxprune.service.cli_output import EXIT_FAILURE, stage_progress
    from onnxprune.service.cli_results import read_plan, show_results, write_results
    from onnxprune.service.client import PruneClient, ServiceError
    from onnxprune.workers.fileio import float_output_path

    config = _config(flags)
    require_output_dirs(output, report, plan_out, report_html)
    plan = read_plan(plan_in).to_json() if plan_in is not None else None  # a bad plan fails here, exit 2
    # A quantized job keeps its float pruned model: written beside the output, as 'prune' does.
    float_output = float_output_path(output) if config.get("quantize", "none") != "none" else None
    console = Console(stderr=True)
    try:
        with PruneClient(server, token=token) as client:
            job = client.submit(model, config, data=data, plan=plan)
            with stage_progress(console, first="queued") as progress:
                job = client.wait(
                    job["id"], on_progress=lambda job: progress(job["stage"] or job["status"], job["progress"])
                )
            client.download_model(job["id"], output)
            if float_output is not None:
                client.download_model(job["id"], float_output, variant="float")
            report_data = client.report(job["id"])
            plan_json = client.plan(job["id"]) if plan_out is not None else ""
    except ServiceError as exc:
        console.print(f"error: {exc}", style="red", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(exit_code_of(exc)) from None
    except httpx.HTTPError as exc:
        console.print(
            f"error: cannot talk to {server}: {exc}", style="red", markup=False, highlight=False, soft_wrap=True
        )
        raise typer.Exit(EXIT_FAILURE) from None
    parsed = _parse_report(report_data)
    report_json = _json(report_data)  # as the server sent it: --json and --report equal GET .../report
    write_results(
        report_json,
        parsed,
        plan_json,
        report_path=report,
        plan_out=plan_out,
        report_html=report_html,
        title=f"onnxprune: {model.name}",
    )
    show_results(report_json, parsed, as_json=as_json)
    if as_json:
        return
    macs = report_data.get("macs") or {}
    detail = f" (MACs {macs['before']} -> {macs['after']})" if parsed is None and macs else ""
    wrote = f"{output} (quantized, {config['quantize']}) and {float_output} (float, pruned)" if float_output else output
    console.print(f"job {job['id']} succeeded{detail}: wrote {wrote}", markup=False, highlight=False, soft_wrap=True)


def _parse_report(data: dict[str, Any]) -> Any:
    """The job's report as a ``PruneReport`` for the summary and the page; None from a server whose
    report this client cannot read (another version): then the JSON alone is written and printed."""
    from pydantic import ValidationError

    from onnxprune.workers.report import PruneReport

    try:
        return PruneReport.model_validate(data)
    except ValidationError:
        return None


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
    options = options_from_flags(flags)
    return options.model_dump(mode="json", include=set(set_options(flags)))


def _json(value: Any) -> str:
    import json

    return json.dumps(value, indent=2)
