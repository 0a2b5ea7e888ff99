"""A job's result file as a response that a concurrent DELETE cannot turn into a 500 or a cut body.

Starlette's ``FileResponse`` stats the path, sends the headers, then opens it: a job removed in
between gives a 500, or a ``Content-Length`` the body never reaches. Here the file is opened first
(a missing file is a 404 before anything is sent) and the body is read from that open descriptor,
which the file's removal does not affect (POSIX keeps an unlinked file's data while it is open).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from fastapi.responses import StreamingResponse

from onnxprune.service.errors import ApiError

_CHUNK = 1 << 20


def open_file_response(
    path: Path, media_type: str, headers: dict[str, str] | None = None, *, filename: str | None = None
) -> StreamingResponse:
    """``path`` streamed from a descriptor opened now; 404 ``not_found`` if it is already gone."""
    try:
        handle = open(path, "rb")  # noqa: SIM115 -- closed by the body's generator when it ends
    except FileNotFoundError:
        raise ApiError(404, "not_found", f"{path.name} has been removed (the job was deleted)") from None
    size = os.fstat(handle.fileno()).st_size
    all_headers = {"Content-Length": str(size), **(headers or {})}
    if filename is not None:
        all_headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    return StreamingResponse(_chunks(handle, size), media_type=media_type, headers=all_headers)


def _chunks(handle: BinaryIO, size: int) -> Iterator[bytes]:
    with handle:
        left = size
        while left > 0:
            chunk = handle.read(min(_CHUNK, left))
            if not chunk:  # truncated under us: never happens to our files (published by rename)
                break
            left -= len(chunk)
            yield chunk
