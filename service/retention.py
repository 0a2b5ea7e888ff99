"""Removing jobs past ``ONNXPRUNE_RETENTION_HOURS``: their records, files, and orphaned upload dirs;
and latency tables past the latency cache's retention."""

from __future__ import annotations

import logging
import time

from onnxprune.jobs.files import JobFiles
from onnxprune.jobs.settings import Settings
from onnxprune.jobs.store import JobStore
from onnxprune.workers.latency_cache import remove_stale

log = logging.getLogger(__name__)


def remove_expired(settings: Settings, store: JobStore, now: float | None = None) -> int:
    """Remove what is older than the retention period; return how many jobs went."""
    cutoff = (time.time() if now is None else now) - settings.retention_hours * 3600
    expired = store.expired_ids(cutoff)
    for job_id in expired:
        JobFiles.of(settings.jobs_dir, job_id).remove()
        store.delete(job_id)
    # A directory with no record is an upload interrupted by a crash before it was accepted.
    if settings.jobs_dir.is_dir():
        for path in settings.jobs_dir.iterdir():
            if path.is_dir() and path.stat().st_mtime < cutoff and store.get(path.name) is None:
                JobFiles(path).remove()
    remove_stale(settings.latency_cache(), now)
    if expired:
        log.info("retention: removed %d jobs", len(expired))
    return len(expired)
