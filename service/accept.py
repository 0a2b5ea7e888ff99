"""Accepting a job: stream the upload, validate config, model and data, then queue it -- or leave nothing."""

from __future__ import annotations

import hashlib
import secrets
import time

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from service.errors import ApiError
from service.files import JobFiles
from service.runners import Runner
from service.settings import Settings
from service.store import IdempotencyConflict, JobRecord, JobStatus, JobStore
from service.uploads import check_data, check_model, parse_config, receive_upload
from workers.capabilities import missing_capability
from workers.fileio import file_sha256

MAX_IDEMPOTENCY_KEY = 200


def new_job_id() -> str:
    return secrets.token_urlsafe(18)  # 144 random bits: ids double as capabilities when auth is off


async def accept_job(
    request: Request,
    *,
    settings: Settings,
    store: JobStore,
    runner: Runner,
    owner: str,
    idempotency_key: str | None,
) -> tuple[JobRecord, bool]:
    """The queued job and whether it was created now (False: an idempotent replay of an earlier upload)."""
    if idempotency_key is not None and not 0 < len(idempotency_key) <= MAX_IDEMPOTENCY_KEY:
        raise ApiError(400, "bad_request", f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} characters")
    job_id = new_job_id()
    files = JobFiles.of(settings.jobs_dir, job_id)
    try:
        upload = await receive_upload(request, files, settings.max_upload_bytes)
        options = parse_config(upload.config_text)
        needs_data = options.data_requirement() if upload.data_bytes is None else None
        if needs_data:
            raise ApiError(422, "invalid_config", f"{needs_data}: add a 'data' part (.npz)")
        capabilities = runner.capabilities()
        missing = None if capabilities is None else missing_capability(options, capabilities)
        if missing:
            raise ApiError(422, "missing_capability", f"this server cannot run the job: {missing}")
        await run_in_threadpool(check_model, files.upload, options, settings.max_upload_bytes)
        if upload.data_bytes is not None:
            await run_in_threadpool(check_data, files.data, settings.max_upload_bytes)
        config = options.model_dump_json()
        fingerprint = await run_in_threadpool(_fingerprint, files, config, upload.data_bytes is not None)
        record = JobRecord(
            id=job_id, owner=owner, idempotency_key=idempotency_key, fingerprint=fingerprint,
            status=JobStatus.queued, config=config, has_data=upload.data_bytes is not None,
            created_at=time.time(),
        )
        try:
            store.create(record)
        except IdempotencyConflict as conflict:
            files.remove()
            if conflict.existing.fingerprint != fingerprint:
                raise ApiError(409, "idempotency_conflict",
                               "Idempotency-Key was already used for a different upload") from None
            return conflict.existing, False
    except BaseException:
        files.remove()  # a refused upload leaves no job and no file behind
        raise
    runner.submit(job_id)
    return record, True


def _fingerprint(files: JobFiles, config: str, has_data: bool) -> str:
    parts = [file_sha256(files.upload), file_sha256(files.data) if has_data else "", config]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()
