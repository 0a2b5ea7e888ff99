"""One sandboxed child process per job: the whole pipeline runs there, never in the caller.

Everything that executes the user's graph (constant folding, input probing, the oracle, fidelity,
benchmarks, held-out evaluation, the PyTorch round trip) happens in ``run_pipeline``; running it in
one child per job keeps a hostile model's memory, CPU and crashes away from the API, the Celery
worker and the CLI, and lets the stages share one process (``workers.sandbox.enter_sandbox``).

The child is a fresh interpreter (``python -m onnxprune.workers.job_process``), not a fork: no inherited
threads, locks, sockets or secrets (its environment is a short allow-list; ``close_fds``). It runs in
a private working directory (its ``cwd``, ``HOME`` and ``TMPDIR``) that holds the request, its log,
and what it sends back, all as plain data: the request and result as JSON, the report and the plan
as the JSON files the job keeps anyway, progress as JSON lines on a pipe. Nothing is unpickled.

The parent enforces the wall-time limit and cancellation (it kills the child's process group); the
child limits its own memory and CPU time before it touches the model. Every way the child can end
becomes an exception the callers already sort: ``SandboxTimeout`` / ``SandboxOutOfMemory`` (limits),
``RunnerError`` (the model crashed the runtime), the pipeline's own errors re-raised by class, and
``SandboxFailure`` (an internal error) for anything else.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onnxprune.graphops.errors import AnalysisBug, ModelRejected, PlanError
from onnxprune.graphops.plan import PruningPlan
from onnxprune.workers import job_threads
from onnxprune.workers.capabilities import MissingCapability
from onnxprune.workers.html_report import PAGE_NAME
from onnxprune.workers.latency_cache import CACHE_ENV, OUTBOX, OUTBOX_ENV, LatencyCache, publish_tables
from onnxprune.workers.options import PruneOptions
from onnxprune.workers.report import PruneReport, SensitivityReport
from onnxprune.workers.sandbox import (
    RunnerError,
    SandboxKilled,
    SandboxOutOfMemory,
    SandboxStarved,
    SandboxTimeout,
    cpu_budget,
)
from onnxprune.workers.stages import Progress
from onnxprune.workers.verification import VerificationFailed

REQUEST = "request.json"
RESULT = "result.json"
REPORT = "report.json"
PLAN = "plan.json"
REPORT_HTML = PAGE_NAME
LOG = "sandbox.log"
_EXIT_GRACE_S = 30.0
# A job that reaches its wall-time limit having had less CPU than this share of one core was starved by
# an overloaded host (its pipeline is CPU-bound), not slow by itself: a machine fault, retried.
STARVED_CPU_SHARE = 0.1

# Environment the child inherits: what Python, the numeric libraries and our own non-secret switches
# read. Everything else (API tokens, the broker URL, cloud credentials) stays with the parent.
_ENV_ALLOWED = ("PATH", "LANG", "LANGUAGE", "PYTHONPATH", "PYTHONHASHSEED", "VIRTUAL_ENV", "TZ")
_ENV_PREFIXES = ("LC_", "OMP_", "MKL_", "OPENBLAS_")
_ENV_ONNXPRUNE = ("ONNXPRUNE_STRICT_ANALYSIS", "ONNXPRUNE_DEBUG", "ONNXPRUNE_CACHE_DIR")

# Errors that cross the process boundary by class; anything else is our fault (SandboxFailure).
_KNOWN_ERRORS: dict[str, type[Exception]] = {
    cls.__name__: cls
    for cls in (
        ModelRejected,
        PlanError,
        MissingCapability,
        RunnerError,
        SandboxTimeout,
        SandboxOutOfMemory,
        SandboxKilled,
        SandboxStarved,
        VerificationFailed,
        AnalysisBug,
    )
}


class SandboxFailure(RuntimeError):
    """The job's child failed in a way that is ours to fix (an internal error, retried by the service)."""


class JobStopped(Exception):
    """The caller's ``keep_going`` said stop (a cancelled or fenced job); the child was killed."""


@dataclass(frozen=True)
class JobLimits:
    """Limits of one job's sandbox. ``wall_s`` None: no wall-time limit (the CLI's default)."""

    memory_mib: int = 16384
    wall_s: float | None = None
    stop_poll_s: float = 1.0  # how often ``keep_going`` is asked
    # Added to the child's nice value: a service job yields the CPU to the API's request handlers
    # (polls stay fast while a job runs on the same cores); 0 for the CLI, whose user waits on the job.
    nice: int = 0
    # The job's threads (``workers.job_threads``): None, an equal share of the CPUs this process may use
    # among the ``jobs_at_once`` jobs its caller runs side by side.
    threads: int | None = None
    jobs_at_once: int = 1
    # The largest report or plan the job may leave (both grow with the model's node count and name
    # lengths, and the service serves them whole); None: no limit (the CLI's default).
    max_result_mib: float | None = None

    @classmethod
    def from_environment(cls) -> JobLimits:
        """``ONNXPRUNE_JOB_MEMORY_MIB``, ``ONNXPRUNE_JOB_TIME_LIMIT_S``, ``ONNXPRUNE_JOB_NICE`` and
        ``ONNXPRUNE_JOB_THREADS`` (else ``OMP_NUM_THREADS``, the usual way to ask) for the CLI and the
        Python API."""
        memory = os.environ.get("ONNXPRUNE_JOB_MEMORY_MIB")
        wall = os.environ.get("ONNXPRUNE_JOB_TIME_LIMIT_S")
        nice = os.environ.get("ONNXPRUNE_JOB_NICE")
        threads = os.environ.get(job_threads.THREADS_VARIABLE) or os.environ.get("OMP_NUM_THREADS")
        return cls(
            memory_mib=int(memory) if memory else cls.memory_mib,
            wall_s=float(wall) if wall else None,
            nice=int(nice) if nice else cls.nice,
            threads=int(threads) if threads and threads.isdigit() and int(threads) > 0 else None,
        )

    def thread_budget(self) -> job_threads.ThreadBudget:
        return job_threads.budget_for_job(self.jobs_at_once, self.threads)


@dataclass(frozen=True)
class JobRequest:
    """What one job prunes and where its model goes; plain paths and options, written as JSON."""

    model: Path
    output: Path
    options: PruneOptions
    data: Path | None = None
    plan: PruningPlan | None = None
    sensitivity: SensitivityReport | None = None
    # The title of the HTML report page the child draws beside the JSON report (None: no page). Drawn
    # here, in the sandbox, because its plots and tables carry the model's node names.
    report_page_title: str | None = None
    # When --time-budget began (``time.monotonic()``, one clock for the processes of a machine): the CLI's
    # start. None: when ``run_job_process`` is called. A busy machine takes seconds to start the child and
    # import what it needs (a fresh process importing torch, onnxruntime and the pipeline: 25 s at load 8),
    # which the budget must count.
    started: float | None = None


@dataclass(frozen=True)
class JobResult:
    report: PruneReport
    plan: PruningPlan
    report_path: Path  # the report and plan as written by the child, in the working directory
    plan_path: Path
    float_output: Path | None = None  # with --quantize: the float pruned model beside the output
    report_page_path: Path | None = None  # the HTML page, when the request asked for one


def run_job_process(
    request: JobRequest,
    workdir: Path,
    *,
    limits: JobLimits = JobLimits(),
    progress: Progress | None = None,
    keep_going: Callable[[], bool] | None = None,
    latency_cache: LatencyCache | None = None,
) -> JobResult:
    """Run ``request`` through the pipeline in a sandboxed child working in ``workdir`` (created if
    missing, left in place: ``report.json``, ``plan.json`` and ``sandbox.log`` are there after).

    ``latency_cache`` (default: the user's, ``ONNXPRUNE_CACHE_DIR``): the child reads its tables;
    the tables it measured are validated and published there here, once it has ended.

    ``progress`` gets the pipeline's ``(stage, fraction)``; an exception it raises stops the job.
    ``keep_going`` is asked every ``limits.stop_poll_s`` seconds; False kills the child within that
    time and raises ``JobStopped``.
    """
    workdir = Path(workdir).resolve()
    (workdir / "tmp").mkdir(parents=True, exist_ok=True)
    _write_request(request, workdir, limits)
    cache = latency_cache if latency_cache is not None else LatencyCache()
    environment = _child_environment(workdir, limits.thread_budget())
    environment.update({CACHE_ENV: str(cache.root), OUTBOX_ENV: str(workdir / OUTBOX)})
    receiver, sender = os.pipe()
    with open(workdir / LOG, "ab") as log:
        child = subprocess.Popen(
            [sys.executable, "-m", "onnxprune.workers.job_process", str(workdir / REQUEST), str(sender)],
            cwd=workdir,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            pass_fds=(sender,),
            start_new_session=True,  # its own process group: a kill reaches anything it starts
        )
    os.close(sender)
    try:
        ended_by = _follow(child, receiver, limits, progress, keep_going)
    finally:
        os.close(receiver)
        if child.poll() is None:
            _kill(child)
        _publish_latency_tables(workdir, cache)
    return _result(workdir, child.returncode, ended_by, limits)


def _publish_latency_tables(workdir: Path, cache: LatencyCache) -> None:
    """Tables the child measured (even in a job that then failed) into the cache, once validated; a
    cache that cannot be written costs a later job a measurement, never this job its result."""
    try:
        publish_tables(workdir / OUTBOX, cache)
    except OSError:  # a full disk or an unwritable cache dir: the job's own outcome stands
        logging.getLogger(__name__).warning("latency cache: tables not published", exc_info=True)


def _write_request(request: JobRequest, workdir: Path, limits: JobLimits) -> None:
    plan_path = sensitivity_path = None
    if request.plan is not None:
        plan_path = workdir / "plan_in.json"
        plan_path.write_text(request.plan.to_json())
    if request.sensitivity is not None:
        sensitivity_path = workdir / "sensitivity_in.json"
        sensitivity_path.write_text(request.sensitivity.model_dump_json())
    wall = limits.wall_s if limits.wall_s is not None else 7 * 24 * 3600.0
    document = {
        "model": str(Path(request.model).resolve()),
        "output": str(Path(request.output).resolve()),
        "options": request.options.model_dump(mode="json"),
        "data": str(Path(request.data).resolve()) if request.data is not None else None,
        "plan": str(plan_path) if plan_path else None,
        "sensitivity": str(sensitivity_path) if sensitivity_path else None,
        "memory_mib": limits.memory_mib,
        "cpu_seconds": cpu_budget(wall),
        "nice": limits.nice,
        "report_page_title": request.report_page_title,
        "started": request.started if request.started is not None else time.monotonic(),
    }
    (workdir / REQUEST).write_text(json.dumps(document))
    (workdir / RESULT).unlink(missing_ok=True)


def _child_environment(workdir: Path, budget: job_threads.ThreadBudget | None = None) -> dict[str, str]:
    """The job child's environment; ``budget`` None: ``JobLimits.from_environment``'s."""
    budget = budget if budget is not None else JobLimits.from_environment().thread_budget()
    environment = {
        name: value
        for name, value in os.environ.items()
        if name in _ENV_ALLOWED or name in _ENV_ONNXPRUNE or name.startswith(_ENV_PREFIXES)
    }
    environment.setdefault(CACHE_ENV, str(LatencyCache().root))
    environment.update(HOME=str(workdir), TMPDIR=str(workdir / "tmp"), PYTHONUNBUFFERED="1")
    # glibc (>= 2.35) asks for transparent huge pages for its large allocations: a job copies a big model's
    # weights a few times, and faulting them in 4 KiB pages took a quarter of its CPU (VGG-19, 575 MB).
    environment["GLIBC_TUNABLES"] = "glibc.malloc.hugetlb=1"
    # Threads sized to the job's CPU, passive waits: set before torch's OpenMP loads (it reads them once).
    environment.update(job_threads.environment(budget))
    return environment


def _follow(
    child: subprocess.Popen[bytes],
    receiver: int,
    limits: JobLimits,
    progress: Progress | None,
    keep_going: Callable[[], bool] | None,
) -> str | None:
    """Relay progress until the child ends; ``"timeout"`` (or ``"starved:<cpu s>"``) when the parent ended it."""
    deadline = None if limits.wall_s is None else time.monotonic() + limits.wall_s
    next_check = time.monotonic() + limits.stop_poll_s
    pending = b""
    while True:
        wait = limits.stop_poll_s if deadline is None else min(limits.stop_poll_s, deadline - time.monotonic())
        readable, _, _ = select.select([receiver], [], [], max(wait, 0.0))
        if readable:
            chunk = os.read(receiver, 65536)
            if not chunk:  # the child closed its end: it has finished (or died)
                try:
                    child.wait(timeout=_EXIT_GRACE_S)
                except subprocess.TimeoutExpired:  # stuck in its exit (native threads): its result is written
                    _kill(child)
                return None
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                message = json.loads(line)
                if progress is not None:
                    try:
                        progress(message["stage"], message["fraction"])
                    except BaseException:
                        _kill(child)
                        raise
        if deadline is not None and time.monotonic() >= deadline:
            used = _cpu_seconds(child.pid)
            _kill(child)
            starved = used is not None and limits.wall_s is not None and used < STARVED_CPU_SHARE * limits.wall_s
            return f"starved:{used:.1f}" if starved else "timeout"
        if keep_going is not None and time.monotonic() >= next_check:
            next_check = time.monotonic() + limits.stop_poll_s
            if not keep_going():
                _kill(child)
                raise JobStopped("the job was stopped")


def _cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) the process has used so far, from /proc (None elsewhere or once gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime: fields 14, 15


def _kill(child: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    child.wait()


def _result(workdir: Path, returncode: int | None, ended_by: str | None, limits: JobLimits) -> JobResult:
    if ended_by is not None and ended_by.startswith("starved:"):
        raise SandboxStarved(
            f"the job ran past its time limit of {limits.wall_s:g} s while the machine gave it "
            f"{ended_by.removeprefix('starved:')} s of CPU (less than {STARVED_CPU_SHARE:.0%} of a core): "
            "the host is overloaded"
        )
    if ended_by == "timeout":
        raise SandboxTimeout(f"the job ran past its time limit of {limits.wall_s:g} s and was stopped")
    result_path = workdir / RESULT
    if not result_path.exists():
        raise _death(returncode, _log_tail(workdir), limits)
    document = json.loads(result_path.read_text())
    error = document.get("error")
    if error is not None:
        raise _rebuild_error(error)
    _check_result_sizes(workdir, limits)
    return JobResult(
        report=PruneReport.model_validate_json((workdir / REPORT).read_bytes()),
        plan=PruningPlan.from_json((workdir / PLAN).read_text()),
        report_path=workdir / REPORT,
        plan_path=workdir / PLAN,
        float_output=Path(document["float_output"]) if document.get("float_output") else None,
        report_page_path=workdir / REPORT_HTML if (workdir / REPORT_HTML).is_file() else None,
    )


def _check_result_sizes(workdir: Path, limits: JobLimits) -> None:
    if limits.max_result_mib is None:
        return
    for name, what in ((REPORT, "report"), (PLAN, "plan")):
        size = (workdir / name).stat().st_size
        if size > limits.max_result_mib * 2**20:
            raise ModelRejected(
                f"the job's {what} would be {size / 2**20:.1f} MiB, over this server's limit of "
                f"{limits.max_result_mib:g} MiB (it grows with the model's node count and name lengths); "
                "shorten the node names or prune the model with the onnxprune CLI"
            )


def _death(returncode: int | None, log_tail: str, limits: JobLimits) -> Exception:
    """Why a child ended without a result: a signal (limits, crashes) or an exit of our own making."""
    if returncode is not None and returncode < 0:
        number = -returncode
        if number == signal.SIGXCPU:
            return SandboxTimeout("the job used up its CPU-time limit and was stopped")
        if number == signal.SIGKILL:  # not ours (we record our kills): the host's OOM killer or an operator
            return SandboxKilled(
                f"the job's process was killed (SIGKILL) from outside, below its own memory limit of "
                f"{limits.memory_mib} MiB: likely the machine ran short of memory"
            )
        name = signal.Signals(number).name if number in signal.valid_signals() else "unknown"
        if _mentions_allocation_failure(log_tail):
            return SandboxOutOfMemory(f"the job ran out of its memory limit of {limits.memory_mib} MiB")
        return RunnerError(f"the model crashed the runtime (signal {number}, {name})")
    last = log_tail.strip().splitlines()[-1] if log_tail.strip() else "no output"
    return SandboxFailure(f"the job's process exited with status {returncode} without a result: {last[:300]}")


def _mentions_allocation_failure(text: str) -> bool:
    lowered = text.lower()
    return any(marker in lowered for marker in ("bad_alloc", "failed to allocate", "memoryerror", "out of memory"))


def _log_tail(workdir: Path) -> str:
    try:
        with open(workdir / LOG, "rb") as log:
            log.seek(0, os.SEEK_END)
            log.seek(max(log.tell() - 4000, 0))
            return log.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _rebuild_error(error: dict[str, Any]) -> Exception:
    kind, message = str(error.get("type", "")), str(error.get("message", ""))
    if kind in _KNOWN_ERRORS:
        return _KNOWN_ERRORS[kind](message)
    if error.get("errno") is not None:  # e.g. a full disk (ENOSPC): the service reports it as such
        return OSError(int(error["errno"]), message)
    return SandboxFailure(f"{kind}: {message}")


# --- the child -------------------------------------------------------------------------------------


def _child_main(request_path: str, progress_fd: int) -> int:
    from onnxprune.workers.sandbox import enter_sandbox

    document = json.loads(Path(request_path).read_text())
    workdir = Path(request_path).parent
    budget = job_threads.from_environment()
    job_threads.use(budget)
    if budget is not None:
        print(f"cpu budget: {budget.describe()}", file=sys.stderr, flush=True)
    enter_sandbox(int(document["memory_mib"]), int(document["cpu_seconds"]))
    if document.get("nice"):
        os.nice(int(document["nice"]))
    channel = os.fdopen(progress_fd, "w", buffering=1)

    def progress(stage: str, fraction: float) -> None:
        channel.write(json.dumps({"stage": stage, "fraction": fraction}) + "\n")

    try:
        float_output = _run(document, workdir, progress)
    except BaseException as exc:  # every failure goes back as data; the traceback goes to the log
        import traceback

        traceback.print_exc()
        _write_json(workdir / RESULT, {"error": _error_document(exc)})
        return 0
    _write_json(workdir / RESULT, {"float_output": str(float_output) if float_output else None})
    return 0


def _run(document: dict[str, Any], workdir: Path, progress: Progress) -> Path | None:
    from onnxprune.workers.fileio import atomic_write_text
    from onnxprune.workers.pipeline import run_pipeline

    plan = PruningPlan.from_json(Path(document["plan"]).read_text()) if document["plan"] else None
    sensitivity = (
        SensitivityReport.model_validate_json(Path(document["sensitivity"]).read_text())
        if document["sensitivity"]
        else None
    )
    result = run_pipeline(
        Path(document["model"]),
        Path(document["output"]),
        PruneOptions.model_validate(document["options"]),
        plan=plan,
        progress=progress,
        data=Path(document["data"]) if document["data"] else None,
        sensitivity=sensitivity,
        started=document.get("started"),
    )
    atomic_write_text(workdir / PLAN, result.plan.to_json())
    atomic_write_text(workdir / REPORT, result.report.model_dump_json(indent=2))
    if document.get("report_page_title"):
        from onnxprune.workers.html_report import render_report_html

        page = render_report_html(result.report, title=str(document["report_page_title"]))
        atomic_write_text(workdir / REPORT_HTML, page)
    return result.float_output


def _error_document(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, MemoryError):
        return {"type": SandboxOutOfMemory.__name__, "message": "the job exceeded its memory limit"}
    kind = next((cls.__name__ for cls in type(exc).__mro__ if cls.__name__ in _KNOWN_ERRORS), type(exc).__name__)
    message = " ".join(str(exc).split()) or type(exc).__name__
    if kind == RunnerError.__name__ and _mentions_allocation_failure(message):
        kind = SandboxOutOfMemory.__name__
    document: dict[str, Any] = {"type": kind, "message": message[:2000]}
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        document["errno"] = exc.errno
    return document


def _write_json(path: Path, document: dict[str, Any]) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(document))
    os.replace(temporary, path)


if __name__ == "__main__":
    status = _child_main(sys.argv[1], int(sys.argv[2]))
    sys.stdout.flush()
    sys.stderr.flush()
    # The result is on disk: skip the interpreter's teardown (freeing a big model's objects one by one,
    # joining native thread pools), about 0.15 s on ResNet-50 and a place where a runtime can hang.
    os._exit(status)
