"""The job store as an interface: what the API, the workers and the reconciler may ask of it.

Two implementations keep the same semantics (one contract test suite runs over both,
``tests/jobs/test_job_store_contract.py``): SQLite in the data directory (``jobs.store``, the default,
one host) and PostgreSQL (``jobs.pg_store``, many hosts), chosen by ``ONNXPRUNE_DATABASE_URL``.
Every state change is one conditional write, so concurrent API and worker writes cannot resurrect a
cancelled job or finish it twice; the boolean results say whether it applied. Job creation checks
the admission limits and inserts in one transaction, so concurrent uploads cannot overshoot them.
Failures of the database itself surface as :class:`StoreUnavailable` or :class:`StoreFull`, never as
a driver's exception, so callers sort them without knowing which database runs.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable
from dataclasses import dataclass, fields
from enum import Enum
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from onnxprune.jobs.settings import Settings


class JobStatus(str, Enum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)


ACTIVE = (JobStatus.queued.value, JobStatus.running.value)


@dataclass(frozen=True)
class JobRecord:
    id: str
    owner: str
    fingerprint: str
    status: JobStatus
    config: str
    created_at: float
    idempotency_key: str | None = None
    stage: str | None = None
    progress: float = 0.0
    has_data: bool = False
    attempts: int = 0
    error_code: str | None = None
    error_message: str | None = None
    output_sha256: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    lease_token: str | None = None
    lease_owner: str | None = None
    lease_expires: float | None = None
    sent_at: float | None = None
    resends: int = 0
    # Where the result that counts lives in the artifact store (set with the success, by the store:
    # a late duplicate attempt can never change it); None: the local store's ``result`` directory.
    result_key: str | None = None
    input_bytes: int = 0  # the stored upload (model and data); 0 once removed
    result_bytes: int = 0  # the published results
    quota_key: str | None = None  # whom the quotas count this job against (None: its owner)

    @classmethod
    def from_row(cls, row: tuple[object, ...]) -> JobRecord:
        """A row of ``SELECT {COLUMNS}``: the fields in order, so no dict per row (every poll reads one)."""
        values = list(row)
        values[_STATUS] = JobStatus(values[_STATUS])
        values[_HAS_DATA] = bool(values[_HAS_DATA])
        return cls(*values)  # type: ignore[arg-type]  # the columns are the fields, in order


FIELD_NAMES = [f.name for f in fields(JobRecord)]
COLUMNS = ", ".join(FIELD_NAMES)
_STATUS, _HAS_DATA = FIELD_NAMES.index("status"), FIELD_NAMES.index("has_data")


class StoreError(Exception):
    """The base error of the job and artifact stores."""


class StoreUnavailable(StoreError):
    """The database or object store cannot be reached or is busy now: retry later (503, job retry)."""


class StoreFull(StoreError):
    """The database or object store has no room left (507; a job fails as ``storage_full``)."""


class IdempotencyConflict(StoreError):
    """The idempotency key was used before; ``existing`` is the job it created."""

    def __init__(self, existing: JobRecord) -> None:
        super().__init__(existing.id)
        self.existing = existing


class AdmissionRefused(StoreError):
    """A limit of :class:`Admission` would be passed by the new job; ``reason`` names which.

    ``queue_full`` and ``quota_exceeded`` count active jobs; ``owner_bytes`` and ``total_bytes``
    count stored bytes (uploads and results)."""

    def __init__(self, reason: str, limit: int) -> None:
        super().__init__(f"{reason}: limit {limit}")
        self.reason, self.limit = reason, limit


@dataclass(frozen=True)
class Admission:
    """Limits checked atomically with the insert of a new job (0: no limit)."""

    max_active: int = 0
    max_active_per_owner: int = 0
    max_bytes_per_owner: int = 0
    max_bytes_total: int = 0


def check_admission(
    job: JobRecord, admission: Admission, active: Callable[[str | None], int], stored: Callable[[str | None], int]
) -> None:
    """Raise :class:`AdmissionRefused` if ``job`` would pass a limit. ``active`` and ``stored`` count
    active jobs and stored bytes (of a quota key, or of everyone) inside the caller's transaction."""
    key = job.quota_key or job.owner
    if admission.max_active and active(None) >= admission.max_active:
        raise AdmissionRefused("queue_full", admission.max_active)
    if admission.max_active_per_owner and active(key) >= admission.max_active_per_owner:
        raise AdmissionRefused("quota_exceeded", admission.max_active_per_owner)
    if admission.max_bytes_per_owner and stored(key) + job.input_bytes > admission.max_bytes_per_owner:
        raise AdmissionRefused("owner_bytes", admission.max_bytes_per_owner)
    if admission.max_bytes_total and stored(None) + job.input_bytes > admission.max_bytes_total:
        raise AdmissionRefused("total_bytes", admission.max_bytes_total)


class JobStore(Protocol):
    # -- reading
    def get(self, job_id: str) -> JobRecord | None: ...
    def list(self, owner: str, *, limit: int, offset: int) -> tuple[builtins.list[JobRecord], int]:
        """The owner's jobs, newest first (then by id), and how many there are in all."""

    def active_ids(self) -> builtins.list[str]: ...
    def active(self, limit: int = 10_000) -> builtins.list[JobRecord]:
        """Queued and running jobs, oldest first (what the reconciler looks at)."""

    def counts(self, owner: str | None = None) -> dict[str, int]:
        """How many jobs are queued and running (of one quota key, or of everyone)."""

    def stored_bytes(self, owner: str | None = None) -> int:
        """Bytes of uploads and results kept (of one quota key, or of everyone)."""

    def ping(self) -> None:
        """Raise :class:`StoreError` if the database cannot be read."""

    def expired_ids(self, before: float) -> builtins.list[str]: ...
    def with_stale_inputs(self, before: float) -> builtins.list[str]:
        """Failed or cancelled jobs, finished before ``before``, whose upload is still counted."""

    # -- state changes
    def create(self, job: JobRecord, admission: Admission | None = None) -> JobRecord:
        """Insert a queued job: :class:`IdempotencyConflict` if its key was used before,
        :class:`AdmissionRefused` if a limit would be passed (checked in the same transaction)."""

    def claim(self, job_id: str, owner: str, ttl_s: float, *, max_attempts: int) -> str | None:
        """Start an attempt: the new lease's token, or None when the job is not claimable
        (finished, held by a live lease, or out of attempts)."""

    def renew(self, job_id: str, token: str, ttl_s: float) -> bool: ...
    def holds(self, job_id: str, token: str) -> bool: ...
    def progress(self, job_id: str, token: str, stage: str, fraction: float) -> bool: ...
    def requeue(self, job_id: str, token: str, message: str) -> bool: ...
    def succeed(
        self, job_id: str, token: str, output_sha256: str, *, result_key: str | None = None, result_bytes: int = 0
    ) -> bool: ...
    def fail(self, job_id: str, code: str, message: str, *, token: str | None = None) -> bool: ...
    def mark_resent(self, job_id: str) -> bool: ...
    def cancel(self, job_id: str) -> bool:
        """Cancel an active job; its upload no longer counts against the byte budgets."""

    def release_inputs(self, job_id: str) -> bool:
        """The upload of a finished job was removed: stop counting it."""

    def delete(self, job_id: str) -> bool: ...
    def restore(self, job: JobRecord) -> bool:
        """Insert a record as it is, every field (moving a deployment: ``jobs.copy_deployment``);
        False if a job with its id or idempotency key is there already."""

    def all_records(self) -> builtins.list[JobRecord]:
        """Every job, oldest first (moving a deployment)."""


def record_values(job: JobRecord) -> dict[str, object]:
    """A record's fields as column values (the status by name, flags as integers)."""
    values: dict[str, object] = dict(job.__dict__)
    values["status"], values["has_data"] = job.status.value, int(job.has_data)
    return values


def open_job_store(settings: Settings) -> JobStore:
    """The store ``settings`` name: PostgreSQL for a ``postgresql://`` URL, else SQLite in the data dir."""
    if settings.database_url:
        from onnxprune.jobs.pg_store import PostgresJobStore

        return PostgresJobStore(settings.database_url)
    from onnxprune.jobs.store import SqliteJobStore

    return SqliteJobStore(settings.database_path)
