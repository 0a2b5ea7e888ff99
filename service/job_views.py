"""``GET /v1/jobs/{id}`` rendered once per state: the JobPublic JSON of a job and its ETag, cached.

Clients poll a job every half second while it changes a few times a minute, so each rendering is
kept (one per job, LRU) with the record it was rendered from; a poll whose record is equal to it
gets the same bytes without building models or serialising again. A succeeded job's report file is
read and validated once, when its final state is first rendered (results are published once, see
``jobs.files``). The ETag is a hash of the bytes: a client that sends it back in ``If-None-Match``
gets ``304 Not Modified`` until the job changes (``service.client`` does).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from onnxprune.jobs.store import JobRecord, JobStatus
from onnxprune.service.schemas import JobPublic
from onnxprune.workers.report import PruneReport

_NO_REPORT = ',"report":null}'


@dataclass(frozen=True)
class RenderedJob:
    record: JobRecord
    body: bytes
    etag: str

    def matches(self, if_none_match: str | None) -> bool:
        """Whether an ``If-None-Match`` header names this rendering (weak comparison, RFC 9110 13.1.2)."""
        if not if_none_match:
            return False
        # Our ETags are quoted hex, so splitting on commas is exact; "W/" marks a weak tag, same value.
        return if_none_match.strip() == "*" or any(
            tag.strip().removeprefix("W/") == self.etag for tag in if_none_match.split(",")
        )


class JobViews:
    """At most ``size`` renderings and ``max_bytes`` of bodies; a body over ``max_item_bytes`` is served
    but not kept (a few large reports would otherwise hold the API's memory)."""

    def __init__(self, size: int = 512, max_bytes: int = 64 << 20, max_item_bytes: int = 8 << 20) -> None:
        self._size, self._max_bytes, self._max_item_bytes = size, max_bytes, max_item_bytes
        self._items: OrderedDict[str, RenderedJob] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def kept_bytes(self) -> int:
        with self._lock:
            return self._bytes

    def cached(self, job: JobRecord) -> RenderedJob | None:
        """The rendering of exactly this record, if it is kept."""
        with self._lock:
            rendered = self._items.get(job.id)
            if rendered is None or rendered.record != job:
                return None
            self._items.move_to_end(job.id)
            return rendered

    def render(self, job: JobRecord, report_path: Path | bytes | None) -> RenderedJob:
        """Render ``job`` (with its report once it has succeeded: its file or bytes given) and keep it.

        With a report this reads and validates it: callers on the event loop run it in a thread."""
        data = _job_json(job, report_path).encode()
        rendered = RenderedJob(job, data, f'"{hashlib.blake2b(data, digest_size=16).hexdigest()}"')
        with self._lock:
            self._drop(job.id)
            if len(data) <= self._max_item_bytes:
                self._items[job.id] = rendered
                self._bytes += len(data)
            while self._items and (len(self._items) > self._size or self._bytes > self._max_bytes):
                self._drop(next(iter(self._items)))
        return rendered

    def forget(self, job_id: str) -> None:
        with self._lock:
            self._drop(job_id)

    def _drop(self, job_id: str) -> None:
        dropped = self._items.pop(job_id, None)
        if dropped is not None:
            self._bytes -= len(dropped.body)


def _job_json(job: JobRecord, report_path: Path | bytes | None) -> str:
    if job.status is not JobStatus.succeeded or report_path is None:
        return JobPublic.of(job).model_dump_json()
    raw = report_path.read_bytes() if isinstance(report_path, Path) else report_path
    report = PruneReport.model_validate_json(raw)  # validated once per rendering
    body = JobPublic.of(job, options=report.options).model_dump_json()  # the options as the report echoes them
    if not body.endswith(_NO_REPORT):  # the report is JobPublic's last field; never splice blind
        return JobPublic.of(job, report).model_dump_json()
    return f'{body[: -len(_NO_REPORT)]},"report":{report.model_dump_json()}}}'
