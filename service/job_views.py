"""``GET /v1/jobs/{id}`` rendered fast: the job's stored status, plus its report read and validated once.

A succeeded job's report never changes (results are published once, see ``jobs.files``), so its JSON
is kept in a small LRU keyed by job id and output hash; polls then cost one SQLite read and a small
serialisation instead of re-reading and re-validating the report file each time.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

from jobs.store import JobRecord, JobStatus
from service.schemas import JobPublic
from workers.report import PruneReport

_NO_REPORT = ',"report":null}'


class ReportCache:
    def __init__(self, size: int = 512) -> None:
        self._size = size
        self._items: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._lock = threading.Lock()

    def has(self, job: JobRecord) -> bool:
        with self._lock:
            return (job.id, job.output_sha256 or "") in self._items

    def report_json(self, job: JobRecord, path: Path) -> str:
        key = (job.id, job.output_sha256 or "")
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        text = PruneReport.model_validate_json(path.read_text()).model_dump_json()  # validated once
        with self._lock:
            self._items[key] = text
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return text

    def forget(self, job_id: str) -> None:
        with self._lock:
            for key in [k for k in self._items if k[0] == job_id]:
                del self._items[key]


def job_json(job: JobRecord, report_path: Path | None, cache: ReportCache) -> str:
    """The JobPublic JSON of ``job``; with its report once it has succeeded (``report_path`` given)."""
    body = JobPublic.of(job).model_dump_json()
    if job.status is not JobStatus.succeeded or report_path is None:
        return body
    if not body.endswith(_NO_REPORT):  # the report is JobPublic's last field; never splice blind
        report = PruneReport.model_validate_json(cache.report_json(job, report_path))
        return JobPublic.of(job, report).model_dump_json()
    return f'{body[: -len(_NO_REPORT)]},"report":{cache.report_json(job, report_path)}}}'
