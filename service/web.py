"""The browser side of the service: an upload page at ``/`` and each job's HTML report.

Both are thin: the page is static (``service/static``, plain JavaScript, nothing fetched from
elsewhere) and talks to the same ``/v1`` API as every other client; the report page renders the
job's stored JSON report with ``workers.html_report`` once, then serves the cached file.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse

from onnxprune.jobs.artifacts import ArtifactMissing
from onnxprune.jobs.files import REPORT
from onnxprune.jobs.store import JobStatus
from onnxprune.service.auth import Owner, may_access
from onnxprune.service.errors import ApiError
from onnxprune.workers.fileio import atomic_write_text

STATIC_DIR = Path(__file__).resolve().parent / "static"
_ASSETS = {"app.js": "text/javascript", "style.css": "text/css", "favicon.svg": "image/svg+xml"}
# The page loads only its own assets; the report only its inline styles and data: images.
_PAGE_CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
    "connect-src 'self'; frame-ancestors 'none'"
)
_REPORT_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; frame-ancestors 'none'"
REPORT_HTML = "report.html"

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
def report_page(job_id: str, owner: Owner, request: Request) -> HTMLResponse:
    """The job's report as one self-contained page: plots inlined, no script."""
    from onnxprune.workers.html_report import render_report_html
    from onnxprune.workers.report import PruneReport

    store, artifacts = request.app.state.store, request.app.state.artifacts
    job = store.get(job_id)
    if job is None or not may_access(request, job.owner, owner):
        raise ApiError(404, "not_found", f"no job {job_id!r}")
    if job.status is not JobStatus.succeeded:
        raise ApiError(409, "not_ready", f"job {job.id} is {job.status.value}; its report exists once it has succeeded")
    # Results are published once (``jobs.artifacts``), so a page rendered from them stays valid.
    page = artifacts.cache_dir(job.id) / REPORT_HTML
    if not page.is_file():
        try:
            raw = artifacts.read_result(job.id, job.result_key, REPORT)
        except ArtifactMissing:
            raise ApiError(404, "not_found", f"the report of job {job.id} has been removed") from None
        report = PruneReport.model_validate_json(raw)
        page.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(page, render_report_html(report, title=f"onnxprune job {job.id}"))
    return HTMLResponse(page.read_text(encoding="utf-8"), headers={"Content-Security-Policy": _REPORT_CSP})
