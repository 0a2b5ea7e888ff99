"""Removing jobs past ``ONNXPRUNE_RETENTION_HOURS`` (records and files), failed jobs' uploads past
``ONNXPRUNE_FAILED_UPLOAD_RETENTION_S``, files that no record owns (a crash between steps), and latency
tables past the latency cache's retention."""

from __future__ import annotations

import logging
import time

from onnxprune.jobs.artifacts import ArtifactStore, open_artifact_store, remove_tree, stale_scratch
from onnxprune.jobs.job_store import JobStore
from onnxprune.jobs.settings import Settings
from onnxprune.workers.latency_cache import remove_stale

log = logging.getLogger(__name__)


def remove_expired(
    settings: Settings, store: JobStore, now: float | None = None, *, artifacts: ArtifactStore | None = None
) -> int:
    """Remove what is older than the retention period; return how many jobs went."""
    now = time.time() if now is None else now
    artifacts = artifacts or open_artifact_store(settings)
    cutoff = now - settings.retention_hours * 3600
    expired = store.expired_ids(cutoff)
    for job_id in expired:
        artifacts.remove(job_id)  # files first: should this stop halfway, the next sweep finds the record
        store.delete(job_id)
    # Uploads of failed or cancelled jobs are of no more use: they stop counting against the byte budgets.
    for job_id in store.with_stale_inputs(now - settings.failed_upload_retention_s):
        artifacts.remove_inputs(job_id)
        store.release_inputs(job_id)
    # Files with no record: an upload interrupted by a crash before it was accepted, or removed objects'
    # leftovers; and this process's own scratch space left by a crash.
    for job_id in artifacts.orphans(cutoff):
        if store.get(job_id) is None:
            artifacts.remove(job_id)
    for path in stale_scratch(settings.scratch_dir / "incoming", cutoff):
        remove_tree(path)
    remove_stale(settings.latency_cache(), now)
    if expired:
        log.info("retention: removed %d jobs", len(expired))
    return len(expired)
