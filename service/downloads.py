"""Serve a job's published result from whichever artifact store holds it, with HTTP ranges.

A result that is a file of this host goes out as Starlette's ``FileResponse`` (sendfile, ranges).
One in object storage is streamed through in chunks, never held whole in memory; a single
``Range: bytes=a-b`` (the form download managers and ``curl -C -`` send to resume) is answered with
206 and only those bytes, fetched with a ranged GET. Several ranges in one request get the whole
body (200), which RFC 9110 allows, rather than a hand-written multipart/byteranges encoder.
"""

from __future__ import annotations

import re

from fastapi import Request, Response
from fastapi.responses import FileResponse, StreamingResponse

from onnxprune.jobs.artifacts import ArtifactMissing, ArtifactStore
from onnxprune.jobs.job_store import JobRecord
from onnxprune.service.errors import ApiError
from onnxprune.service.file_responses import open_file_response

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def result_response(
    artifacts: ArtifactStore,
    job: JobRecord,
    name: str,
    request: Request,
    *,
    media_type: str,
    filename: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """The result ``name`` of a succeeded ``job``; 404 if it has been removed."""
    what = name.rsplit(".", 1)[0].replace(".", " ")
    try:
        path = artifacts.local_path(job.id, job.result_key, name)
        if path is not None and not request.headers.get("range"):  # opened now: a racing DELETE cannot cut it
            return open_file_response(path, media_type, headers, filename=filename)
        if path is not None:
            return FileResponse(path, media_type=media_type, filename=filename, headers=headers)
        size = artifacts.size(job.id, job.result_key, name)
    except ArtifactMissing:
        raise ApiError(404, "not_found", f"the {what} of job {job.id} has been removed") from None
    extra = dict(headers or {})
    extra["Accept-Ranges"] = "bytes"
    if filename:
        extra["Content-Disposition"] = f'attachment; filename="{filename}"'
    first, last = 0, size - 1
    status = 200
    wanted = _single_range(request.headers.get("range"), size)
    if wanted == "unsatisfiable":
        return Response(status_code=416, headers={"Content-Range": f"bytes */{size}"})
    if isinstance(wanted, tuple):
        (first, last), status = wanted, 206
        extra["Content-Range"] = f"bytes {first}-{last}/{size}"
    extra["Content-Length"] = str(last - first + 1)
    if size == 0:
        return Response(b"", media_type=media_type, headers=extra)
    body = artifacts.stream(job.id, job.result_key, name, first, last)
    return StreamingResponse(body, status_code=status, media_type=media_type, headers=extra)


def _single_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """``(first, last)`` of a one-range ``Range`` header, ``"unsatisfiable"``, or None (send it all)."""
    if not header:
        return None
    match = _RANGE.match(header.strip())
    if match is None:  # several ranges, other units, or malformed: the whole body (RFC 9110 14.2)
        return None
    start, end = match.groups()
    if not start and not end:
        return None
    if not start:  # the last N bytes
        suffix = int(end)
        if suffix == 0:
            return "unsatisfiable"
        return max(0, size - suffix), size - 1
    first = int(start)
    last = min(int(end), size - 1) if end else size - 1
    if first >= size or last < first:
        return "unsatisfiable"
    return first, last
