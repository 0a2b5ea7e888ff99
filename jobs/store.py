"""The job store: one SQLite database next to the job files in ``ONNXPRUNE_DATA_DIR``.

Why SQLite and not Redis: a job is its record *and* its files (upload, pruned model, plan, report),
and the files already need a directory that the API and every worker share. Keeping the record in
that same directory means one thing to back up, mount and clean, and a job can never outlive its
files or the other way round. SQLite gives us, without extra code: durable commits (the API and the
workers can restart at any time), a UNIQUE constraint for idempotency keys, conditional updates
(``UPDATE ... WHERE status = 'running'``) that make cancel/finish races safe, and ordered pagination.
Redis stays the Celery broker only. WAL mode lets one API and a few workers write concurrently; for
many hosts without a shared local disk, the same table moves to PostgreSQL (see docs/SERVICE.md).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path


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

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id              TEXT PRIMARY KEY,
    owner           TEXT NOT NULL,
    idempotency_key TEXT,
    fingerprint     TEXT NOT NULL,
    status          TEXT NOT NULL,
    stage           TEXT,
    progress        REAL NOT NULL DEFAULT 0,
    config          TEXT NOT NULL,
    has_data        INTEGER NOT NULL DEFAULT 0,
    attempts        INTEGER NOT NULL DEFAULT 0,
    error_code      TEXT,
    error_message   TEXT,
    output_sha256   TEXT,
    created_at      REAL NOT NULL,
    started_at      REAL,
    finished_at     REAL,
    UNIQUE (owner, idempotency_key)
);
CREATE INDEX IF NOT EXISTS jobs_by_owner ON jobs (owner, created_at);
"""


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

    @classmethod
    def _from_row(cls, row: sqlite3.Row) -> "JobRecord":
        values = dict(row)
        values["status"] = JobStatus(values["status"])
        values["has_data"] = bool(values["has_data"])
        return cls(**values)


class IdempotencyConflict(Exception):
    """The idempotency key was used before; ``existing`` is the job it created."""

    def __init__(self, existing: JobRecord) -> None:
        super().__init__(existing.id)
        self.existing = existing


class JobStore:
    """Every state change is one conditional UPDATE, so concurrent API and worker writes cannot
    resurrect a cancelled job or finish a job twice; the boolean results say whether it applied."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # A connection per call: cheap for SQLite, and safe from any thread or forked worker.
        db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        db.row_factory = sqlite3.Row
        try:
            db.execute("PRAGMA busy_timeout=30000")
            yield db
        finally:
            db.close()

    def _update(self, sql: str, *params: object) -> bool:
        with self._connect() as db:
            return db.execute(sql, params).rowcount == 1

    # -- reading -----------------------------------------------------------------------------

    def get(self, job_id: str) -> JobRecord | None:
        with self._connect() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else JobRecord._from_row(row)

    def list(self, owner: str, *, limit: int, offset: int) -> tuple[list[JobRecord], int]:
        """The owner's jobs, newest first, and how many there are in all."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT * FROM jobs WHERE owner = ? ORDER BY created_at DESC, id LIMIT ? OFFSET ?",
                (owner, limit, offset),
            ).fetchall()
            total = db.execute("SELECT COUNT(*) FROM jobs WHERE owner = ?", (owner,)).fetchone()[0]
        return [JobRecord._from_row(r) for r in rows], total

    def active_ids(self) -> list[str]:
        with self._connect() as db:
            rows = db.execute(
                "SELECT id FROM jobs WHERE status IN (?, ?) ORDER BY created_at", ACTIVE
            ).fetchall()
        return [r[0] for r in rows]

    def expired_ids(self, before: float) -> list[str]:
        with self._connect() as db:
            rows = db.execute(
                "SELECT id FROM jobs WHERE COALESCE(finished_at, created_at) < ?", (before,)
            ).fetchall()
        return [r[0] for r in rows]

    # -- state changes -----------------------------------------------------------------------

    def create(self, job: JobRecord) -> JobRecord:
        """Insert a queued job; raise :class:`IdempotencyConflict` if its key was used before."""
        try:
            with self._connect() as db:
                db.execute(
                    "INSERT INTO jobs (id, owner, idempotency_key, fingerprint, status, config,"
                    " has_data, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (job.id, job.owner, job.idempotency_key, job.fingerprint, job.status.value,
                     job.config, int(job.has_data), job.created_at),
                )
        except sqlite3.IntegrityError:
            with self._connect() as db:
                row = db.execute(
                    "SELECT * FROM jobs WHERE owner = ? AND idempotency_key = ?",
                    (job.owner, job.idempotency_key),
                ).fetchone()
            if row is None:
                raise
            raise IdempotencyConflict(JobRecord._from_row(row)) from None
        return job

    def start(self, job_id: str) -> bool:
        """Claim a queued job, or re-claim a running one whose worker died (redelivery)."""
        return self._update(
            "UPDATE jobs SET status = 'running', attempts = attempts + 1, stage = NULL,"
            " started_at = COALESCE(started_at, ?) WHERE id = ? AND status IN (?, ?)",
            time.time(), job_id, *ACTIVE,
        )

    def progress(self, job_id: str, stage: str, fraction: float) -> bool:
        """Record progress; False means the job is no longer running (cancelled or removed)."""
        fraction = min(max(float(fraction), 0.0), 1.0)
        return self._update(
            "UPDATE jobs SET stage = ?, progress = MAX(progress, ?) WHERE id = ? AND status = 'running'",
            stage, fraction, job_id,
        )

    def requeue(self, job_id: str, message: str) -> bool:
        """Back to queued before a retry; the last error is kept for the curious."""
        return self._update(
            "UPDATE jobs SET status = 'queued', stage = NULL, error_message = ?"
            " WHERE id = ? AND status = 'running'",
            message, job_id,
        )

    def succeed(self, job_id: str, output_sha256: str) -> bool:
        return self._update(
            "UPDATE jobs SET status = 'succeeded', stage = 'done', progress = 1.0, output_sha256 = ?,"
            " error_code = NULL, error_message = NULL, finished_at = ? WHERE id = ? AND status = 'running'",
            output_sha256, time.time(), job_id,
        )

    def fail(self, job_id: str, code: str, message: str) -> bool:
        return self._update(
            "UPDATE jobs SET status = 'failed', error_code = ?, error_message = ?, finished_at = ?"
            " WHERE id = ? AND status IN (?, ?)",
            code, message, time.time(), job_id, *ACTIVE,
        )

    def cancel(self, job_id: str) -> bool:
        return self._update(
            "UPDATE jobs SET status = 'cancelled', error_code = 'cancelled',"
            " error_message = 'cancelled by the user', finished_at = ? WHERE id = ? AND status IN (?, ?)",
            time.time(), job_id, *ACTIVE,
        )

    def delete(self, job_id: str) -> bool:
        return self._update("DELETE FROM jobs WHERE id = ?", job_id)
