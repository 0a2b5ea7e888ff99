"""Accepting a job: stream the upload, validate config, model and data, then queue it -- or leave nothing."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import threading
import time
from concurrent.futures import Executor

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from onnxprune.jobs.artifacts import ArtifactStore, remove_tree
from onnxprune.jobs.files import JobFiles
from onnxprune.jobs.job_store import (
    Admission,
    AdmissionRefused,
    IdempotencyConflict,
    JobRecord,
    JobStatus,
    JobStore,
)
from onnxprune.jobs.settings import Settings
from onnxprune.service.errors import ApiError
from onnxprune.service.runners import Runner
from onnxprune.service.upload_checks import UploadChecks
from onnxprune.service.uploads import check_data, parse_config, parse_plan, receive_upload
from onnxprune.workers.capabilities import TORCH, local_capabilities, missing_capability
from onnxprune.workers.fileio import file_sha256
from onnxprune.workers.options import PruneOptions, with_data_defaults

MAX_IDEMPOTENCY_KEY = 200
BROKER_RETRY_AFTER_S = 10
QUEUE_RETRY_AFTER_S = 30

log = logging.getLogger(__name__)


def new_job_id() -> str:
    return secrets.token_urlsafe(18)  # 144 random bits: ids double as capabilities when auth is off


async def accept_job(
    request: Request,
    *,
    settings: Settings,
    store: JobStore,
    runner: Runner,
    publisher: Executor,
    owner: str,
    idempotency_key: str | None,
    artifacts: ArtifactStore,
    quota_key: str | None = None,
) -> tuple[JobRecord, bool]:
    """The queued job and whether it was created now (False: an idempotent replay of an earlier upload).

    ``quota_key`` is whom the quotas count the job against (``service.auth.quota_key``; None: ``owner``).
    The limits are checked twice: cheaply before the upload is received (most refusals cost nothing),
    and atomically when the record is created (``JobStore.create``), which concurrent uploads cannot pass.
    """
    if idempotency_key is not None and not 0 < len(idempotency_key) <= MAX_IDEMPOTENCY_KEY:
        raise ApiError(400, "bad_request", f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} characters")
    await run_in_threadpool(refuse_when_full, store, settings, quota_key or owner)
    # Ask the broker while the upload is received and checked: a broker that is down or stalled is
    # then known by the time the job would be queued, so the 503 costs max(checks, timeout), not both.
    loop = asyncio.get_running_loop()
    probe_deadline = loop.time() + settings.publish_timeout_s
    probe = loop.run_in_executor(publisher, runner.probe, settings.publish_timeout_s)
    probe.add_done_callback(lambda done: done.cancelled() or done.exception())  # never "unretrieved"
    job_id = new_job_id()
    files = await run_in_threadpool(artifacts.staging, job_id)
    committed = False
    try:
        upload = await receive_upload(request, files, settings.max_upload_bytes)
        options = parse_config(upload.config_text)
        if upload.plan_bytes is not None:
            plan = parse_plan(upload.plan_bytes)
            await run_in_threadpool(files.plan_in.write_text, plan.to_json())
        refuse_over_time_limit(options, settings)
        has_data = upload.data_bytes is not None
        plan_given = upload.plan_bytes is not None
        needs_data = None if has_data else options.data_requirement(plan_given=plan_given)
        if needs_data:
            raise ApiError(422, "invalid_config", f"{needs_data}: add a 'data' part (.npz)")
        # Checked with the options as given: a model the data defaults do not fit (a quantized one:
        # taylor runs the graph in PyTorch) is refused for what the user asked, not for a default.
        checks: UploadChecks = request.app.state.upload_checks  # starlette's State is untyped
        await checks.check_model(
            files.upload, options, settings.max_upload_bytes, has_data=upload.data_bytes is not None
        )
        capabilities = await run_in_threadpool(runner.capabilities)  # may ask Redis: never on the event loop
        options, _ = with_data_defaults(
            options,
            data_given=has_data,
            torch_available=TORCH in (local_capabilities() if capabilities is None else capabilities),
        )
        missing = (
            None
            if capabilities is None
            else missing_capability(options, capabilities, has_data=has_data, plan_given=plan_given)
        )
        if missing:
            raise ApiError(422, "missing_capability", f"this server cannot run the job: {missing}")
        if upload.data_bytes is not None:
            await run_in_threadpool(check_data, files.data, upload.data_bytes, settings.max_upload_bytes)
        config = options.model_dump_json()
        fingerprint = await run_in_threadpool(_fingerprint, files, config, upload.data_bytes is not None)
        input_bytes = await run_in_threadpool(artifacts.commit_inputs, job_id)  # S3: the upload is put here
        committed = True
        record = JobRecord(
            id=job_id,
            owner=owner,
            idempotency_key=idempotency_key,
            fingerprint=fingerprint,
            status=JobStatus.queued,
            config=config,
            has_data=upload.data_bytes is not None,
            created_at=time.time(),
            input_bytes=input_bytes,
            quota_key=quota_key if quota_key != owner else None,
        )
        try:
            await run_in_threadpool(store.create, record, admission(settings))
        except IdempotencyConflict as conflict:
            if conflict.existing.fingerprint != fingerprint:
                raise ApiError(
                    409, "idempotency_conflict", "Idempotency-Key was already used for a different upload"
                ) from None
            _forget(artifacts, job_id, committed, files)
            return conflict.existing, False
        except AdmissionRefused as refused:
            raise _refusal(refused, settings) from None
    except BaseException:
        _forget(artifacts, job_id, committed, files)  # a refused upload leaves no job and no file behind
        raise
    if not await _answered(probe, max(0.05, probe_deadline - loop.time())) or not await hand_over(
        runner, job_id, publisher, settings.publish_timeout_s
    ):
        await run_in_threadpool(store.delete, job_id)  # a worker that still gets the message finds no record
        _forget(artifacts, job_id, committed, files)
        raise ApiError(
            503,
            "broker_unavailable",
            "the job queue is unreachable; nothing was kept, try again later",
            headers={"Retry-After": str(BROKER_RETRY_AFTER_S)},
        )
    return record, True


def refuse_over_time_limit(options: PruneOptions, settings: Settings) -> None:
    """A time budget the server would cut short: the job would be killed as ``timeout`` and lose its work."""
    if options.time_budget is not None and options.time_budget > settings.soft_time_limit_s:
        raise ApiError(
            422,
            "invalid_config",
            f"config.time_budget: {options.time_budget:g} s is more than this server's job time limit of "
            f"{settings.soft_time_limit_s} s (ONNXPRUNE_SOFT_TIME_LIMIT_S); ask for at most that",
        )


def admission(settings: Settings) -> Admission:
    """The limits ``JobStore.create`` checks atomically with the insert."""
    mib = 1024 * 1024
    return Admission(
        max_active=settings.max_active_jobs,
        max_active_per_owner=settings.max_active_per_owner,
        max_bytes_per_owner=int(settings.max_stored_mb_per_owner * mib),
        max_bytes_total=int(settings.max_stored_mb * mib),
    )


def refuse_when_full(store: JobStore, settings: Settings, owner: str) -> None:
    """Backpressure before the upload is read: a bounded queue per deployment and optionally per caller
    (429 + Retry-After), and byte budgets (507 for the deployment's, 429 for a caller's)."""
    if sum(store.counts().values()) >= settings.max_active_jobs:
        raise _refusal(AdmissionRefused("queue_full", settings.max_active_jobs), settings)
    limit = settings.max_active_per_owner
    if limit and sum(store.counts(owner).values()) >= limit:
        raise _refusal(AdmissionRefused("quota_exceeded", limit), settings)
    budgets = admission(settings)
    if budgets.max_bytes_total and store.stored_bytes() >= budgets.max_bytes_total:
        raise _refusal(AdmissionRefused("total_bytes", budgets.max_bytes_total), settings)
    if budgets.max_bytes_per_owner and store.stored_bytes(owner) >= budgets.max_bytes_per_owner:
        raise _refusal(AdmissionRefused("owner_bytes", budgets.max_bytes_per_owner), settings)


def _refusal(refused: AdmissionRefused, settings: Settings) -> ApiError:
    retry = {"Retry-After": str(QUEUE_RETRY_AFTER_S)}
    limit = refused.limit
    if refused.reason == "queue_full":
        message = f"the service has {limit} jobs queued or running; try again later"
        return ApiError(429, "queue_full", message, headers=retry)
    if refused.reason == "quota_exceeded":
        return ApiError(
            429, "quota_exceeded", f"you have {limit} jobs queued or running; wait for one to finish", headers=retry
        )
    if refused.reason == "owner_bytes":
        message = (
            f"your jobs keep {limit / 2**20:g} MB of uploads and results, your storage quota; "
            "delete finished jobs or wait for them to expire"
        )
        return ApiError(429, "storage_quota_exceeded", message, headers=retry)
    message = f"the service's storage budget of {limit / 2**20:g} MB is used up; try again later"
    return ApiError(507, "storage_full", message, headers=retry)


def _forget(artifacts: ArtifactStore, job_id: str, committed: bool, staged: JobFiles) -> None:
    """Remove what an upload left that no record will own: the staging directory now (local: the
    job's own directory), committed objects in the background (an object store may be slow or away;
    the retention sweep removes what this misses)."""
    remove_tree(staged.root)
    if committed:
        threading.Thread(target=_remove_quietly, args=(artifacts, job_id), daemon=True).start()


def _remove_quietly(artifacts: ArtifactStore, job_id: str) -> None:
    try:
        artifacts.remove(job_id)
    except Exception as exc:  # the retention sweep removes orphaned objects later
        log.warning("job %s: cannot remove the refused upload yet: %s", job_id, exc)


async def _answered(probe: asyncio.Future[None], timeout_s: float) -> bool:
    try:
        await asyncio.wait_for(probe, timeout_s)
    except Exception as exc:  # refused, timed out: the broker is not taking jobs now
        log.warning("broker probe failed: %s", f"{type(exc).__name__}: {exc}")
        return False
    return True


async def hand_over(runner: Runner, job_id: str, publisher: Executor, timeout_s: float) -> bool:
    """Publish the job id off the event loop, waiting at most ``timeout_s``; False if that failed.

    A publish stuck on a stalled broker keeps one publisher thread, never the event loop, so
    /healthz and every GET keep answering.
    """
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait_for(loop.run_in_executor(publisher, runner.submit, job_id), timeout_s)
    except Exception as exc:  # refused, timed out, or any broker error: the caller answers 503
        log.warning("job %s: cannot hand it to the queue: %s", job_id, f"{type(exc).__name__}: {exc}")
        return False
    return True


def _fingerprint(files: JobFiles, config: str, has_data: bool) -> str:
    parts = [file_sha256(files.upload), file_sha256(files.data) if has_data else "", config]
    if files.plan_in.exists():  # appended, so the fingerprints of jobs without a plan stay as they were
        parts.append(file_sha256(files.plan_in))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()
