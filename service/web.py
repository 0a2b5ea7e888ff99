"""The browser side of the service: an upload page at ``/`` and each job's HTML report.

Both are thin: the page is static (``service/static``, plain JavaScript, nothing fetched from
elsewhere) and talks to the same ``/v1`` API as every other client; the report page is a file the
job drew in its sandbox and published with its results.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from pathlib import Path

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse, HTMLResponse

from onnxprune.jobs.artifacts import ArtifactMissing, ArtifactStore
from onnxprune.jobs.files import REPORT
from onnxprune.jobs.store import JobStatus
from onnxprune.service.auth import Owner, may_access
from onnxprune.service.errors import ApiError
from onnxprune.service.file_responses import open_file_response
from onnxprune.workers.fileio import atomic_write_bytes, atomic_write_text
from onnxprune.workers.html_report import PAGE_NAME as REPORT_HTML

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
_ASSETS = {"app.js": "text/javascript", "style.css": "text/css", "favicon.svg": "image/svg+xml"}
# The page loads only its own assets; the report only its inline styles and data: images.
_PAGE_CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
    "connect-src 'self'; frame-ancestors 'none'"
)
_REPORT_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; frame-ancestors 'none'"
RENDER_FAILED = "report.html.failed"
# Pages drawn by the API (jobs published before jobs drew their own): a few at a time, each in a child
# with these limits, so that no number of requests can take the API's CPU or memory with them.
_DRAWING = threading.BoundedSemaphore(2)
DRAW_QUEUE_S = 30.0
DRAW_TIMEOUT_S = 60.0
DRAW_MEMORY_MIB = 2048

router = APIRouter(include_in_schema=False)


@router.get("/", response_class=HTMLResponse)
def upload_page() -> HTMLResponse:
    return HTMLResponse(
        (STATIC_DIR / "index.html").read_text(encoding="utf-8"),
        headers={"Content-Security-Policy": _PAGE_CSP, "Cache-Control": "no-cache"},
    )


@router.get("/static/{name}")
def static_asset(name: str) -> FileResponse:
    if name not in _ASSETS:  # a fixed list: no path from the URL ever reaches the file system
        raise ApiError(404, "not_found", f"no asset {name!r}")
    return FileResponse(STATIC_DIR / name, media_type=_ASSETS[name], headers={"Cache-Control": "no-cache"})


@router.get("/v1/jobs/{job_id}/report.html", response_class=HTMLResponse, tags=["results"])
def report_page(job_id: str, owner: Owner, request: Request) -> Response:
    """The job's report as one self-contained page: plots inlined, no script.

    The job draws it in its sandbox and publishes it with its results (node names, which the plots
    and tables show, come from the user's model). A job published without one (before pages were
    drawn by jobs) gets it drawn once here, in a sandboxed child with limits, a few at a time; a
    failed drawing is recorded and answered from the record, never retried per request.
    """
    store, artifacts = request.app.state.store, request.app.state.artifacts
    job = store.get(job_id)
    if job is None or not may_access(request, job.owner, owner):
        raise ApiError(404, "not_found", f"no job {job_id!r}")
    if job.status is not JobStatus.succeeded:
        raise ApiError(409, "not_ready", f"job {job.id} is {job.status.value}; its report exists once it has succeeded")
    headers = {"Content-Security-Policy": _REPORT_CSP}
    try:
        published = artifacts.local_path(job.id, job.result_key, REPORT_HTML)
        if published is not None:
            return open_file_response(published, "text/html; charset=utf-8", headers)
        return HTMLResponse(artifacts.read_result(job.id, job.result_key, REPORT_HTML), headers=headers)
    except ArtifactMissing:
        pass  # published before jobs drew their own pages: drawn here, once
    page = _page_drawn_here(artifacts, job.id, job.result_key)
    return open_file_response(page, "text/html; charset=utf-8", headers)


def _page_drawn_here(artifacts: ArtifactStore, job_id: str, result_key: str | None) -> Path:
    cache = artifacts.cache_dir(job_id)
    page, failed = cache / REPORT_HTML, cache / RENDER_FAILED
    if failed.is_file():
        raise ApiError(500, "report_page_failed", f"the report page of job {job_id} could not be drawn")
    if page.is_file():
        return page
    if not _DRAWING.acquire(timeout=DRAW_QUEUE_S):
        raise ApiError(503, "busy", "report pages are being drawn; try again shortly", headers={"Retry-After": "5"})
    try:
        if not page.is_file():
            _draw_in_sandbox(artifacts, job_id, result_key, page, failed)
    finally:
        _DRAWING.release()
    if failed.is_file() or not page.is_file():
        raise ApiError(500, "report_page_failed", f"the report page of job {job_id} could not be drawn")
    return page


def _draw_in_sandbox(artifacts: ArtifactStore, job_id: str, result_key: str | None, page: Path, failed: Path) -> None:
    from onnxprune.workers.html_report import write_report_page
    from onnxprune.workers.sandbox import RunnerError, RunnerLimits, run_in_child

    try:
        raw = artifacts.read_result(job_id, result_key, REPORT)
    except ArtifactMissing:
        raise ApiError(404, "not_found", f"the report of job {job_id} has been removed") from None
    page.parent.mkdir(parents=True, exist_ok=True)
    report = page.parent / f"{REPORT}.drawing"  # the child reads a file of this host
    atomic_write_bytes(report, raw)
    try:
        run_in_child(
            write_report_page,
            (str(report), str(page), f"onnxprune job {job_id}"),
            limits=RunnerLimits(memory_mib=DRAW_MEMORY_MIB, timeout_s=DRAW_TIMEOUT_S, max_result_mib=1),
        )
    except RunnerError as exc:  # RunnerError covers every way the child can fail, limits included
        log.error("job %s: drawing its report page failed: %s", job_id, exc)
        with contextlib.suppress(OSError):  # the job may have been removed meanwhile
            atomic_write_text(failed, str(exc))
    finally:
        report.unlink(missing_ok=True)
