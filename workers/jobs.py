"""Run one stored job through ``run_pipeline``: shared by the embedded runner and the Celery task.

The runner is idempotent so a redelivered message (a worker killed mid-job) is safe: a finished job
is skipped, an interrupted one is rerun from its upload and its results are overwritten atomically
(the pipeline is deterministic for a given config, so the rerun writes the same bytes).
"""

from __future__ import annotations

import logging
from enum import Enum
from pathlib import Path

from graphops.errors import ModelRejected
from service.files import JobFiles
from service.store import JobStatus, JobStore
from workers.fileio import atomic_write_text, file_sha256
from workers.options import PruneOptions
from workers.pipeline import run_pipeline

log = logging.getLogger(__name__)


class JobCancelled(Exception):
    """Raised from the progress callback to stop a job whose record is no longer running."""


class Outcome(str, Enum):
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"
    skipped = "skipped"


def run_job(job_id: str, store: JobStore, jobs_dir: Path, *, max_attempts: int = 3) -> Outcome:
    """Run the job; user errors fail it here, infrastructure errors propagate for the caller to retry.

    ``max_attempts`` also bounds redeliveries: a job whose worker died that often (a model that
    crashes or exhausts the worker every time) is failed instead of being handed on forever.
    """
    job = store.get(job_id)
    if job is None or job.status.terminal:
        log.info("job %s: nothing to do (%s)", job_id, "gone" if job is None else job.status.value)
        return Outcome.skipped
    if job.attempts >= max_attempts:
        store.fail(job_id, "internal_error", f"the job was interrupted {job.attempts} times; giving up")
        return Outcome.failed
    if not store.start(job_id):
        return Outcome.skipped
    files = JobFiles.of(jobs_dir, job_id)
    options = PruneOptions.model_validate_json(job.config)

    def progress(stage: str, fraction: float) -> None:
        if not store.progress(job_id, stage, fraction):
            raise JobCancelled(job_id)

    try:
        files.clear_for_run()  # a redelivered job starts clean, whatever the killed attempt left
        data = files.data if files.data.exists() else None
        result = run_pipeline(files.upload, files.model, options, progress=progress, data=data)
        atomic_write_text(files.plan, result.plan.to_json())
        atomic_write_text(files.report, result.report.model_dump_json(indent=2))
        output_sha256 = file_sha256(files.model)
    except ModelRejected as exc:
        files.discard_results()
        store.fail(job_id, "model_rejected", str(exc))
        return Outcome.failed
    except Exception:
        files.discard_results()
        current = store.get(job_id)
        if current is None or current.status is not JobStatus.running:
            return Outcome.cancelled  # JobCancelled, or the job's files removed under it
        raise
    if not store.succeed(job_id, output_sha256):
        files.discard_results()  # cancelled while the last step ran
        return Outcome.cancelled
    return Outcome.succeeded
