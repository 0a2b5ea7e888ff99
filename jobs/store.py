"""The SQLite job store: one database file in ``ONNXPRUNE_DATA_DIR`` (the default, one host).

Why SQLite: a single-host deployment then needs no database server; SQLite gives us, without extra
code, durable commits (the API and the workers can restart at any time), a UNIQUE constraint for
idempotency keys, conditional updates (``UPDATE ... WHERE status = 'running'``) that make
cancel/finish races safe, and ordered pagination. WAL mode lets one API and a few workers write
concurrently. SQLite on a network file system is not safe: for many hosts the same table lives in
PostgreSQL (``jobs.pg_store``), behind the same interface (``jobs.job_store``).
"""

from __future__ import annotations

import builtins
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from onnxprune.jobs.job_store import (
    ACTIVE,
    COLUMNS,
    Admission,
    IdempotencyConflict,
    JobRecord,
    JobStatus,
    StoreFull,
    StoreUnavailable,
    check_admission,
    record_values,
)

__all__ = ["ACTIVE", "IdempotencyConflict", "JobRecord", "JobStatus", "JobStore", "SqliteJobStore"]

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
# Columns added after the first release: (name, SQL type and default), added to older databases at open.
_LATER_COLUMNS = (
    ("lease_token", "TEXT"),  # the attempt that holds the job; only it may write progress and results
    ("lease_owner", "TEXT"),  # host:pid of that attempt, for operators
    ("lease_expires", "REAL"),  # renewed by the attempt's heartbeat; past it, the job may be claimed again
    ("sent_at", "REAL"),  # when the job id was last handed to the broker (or the embedded pool)
    ("resends", "INTEGER NOT NULL DEFAULT 0"),  # re-sends by the reconciler, bounded
    ("result_key", "TEXT"),  # where the result that counts lives (None: the ``result`` directory)
    ("input_bytes", "INTEGER NOT NULL DEFAULT 0"),  # byte budgets: the stored upload
    ("result_bytes", "INTEGER NOT NULL DEFAULT 0"),  # and the published results
    ("quota_key", "TEXT"),  # whom the quotas count the job against (None: its owner)
)
_STATUS_INDEX = "CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, created_at)"


class SqliteJobStore:
    """Every state change is one conditional UPDATE (``jobs.job_store`` says why); job creation with
    admission limits is one ``BEGIN IMMEDIATE`` transaction, which holds SQLite's write lock from the
    counts to the insert, across processes."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._local = threading.local()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
            present = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
            for name, kind in _LATER_COLUMNS:
                if name not in present:
                    db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind}")
            db.execute(_STATUS_INDEX)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection, opened once: a poll then costs one query, not a connect.

        Kept per process and thread (a forked worker or another thread never shares one); autocommit,
        so every statement is its own transaction, as the conditional updates need.
        """
        connections: dict[int, sqlite3.Connection] = self._local.__dict__.setdefault("by_pid", {})
        key = os.getpid()  # a forked child must not use its parent's connection
        db = connections.get(key)
        try:
            if db is None:
                db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
                db.execute("PRAGMA busy_timeout=30000")
                connections[key] = db
            yield db
        except sqlite3.IntegrityError:
            raise
        except sqlite3.DatabaseError as exc:
            connections.pop(key, None)  # a broken connection is not reused
            if db is not None:
                db.close()
            if isinstance(exc, sqlite3.OperationalError) and "disk is full" in str(exc):
                raise StoreFull(f"the job database is full: {exc}") from exc
            raise StoreUnavailable(f"the job database cannot be used: {exc}") from exc

    def _update(self, sql: str, *params: object) -> bool:
        with self._connect() as db:
            return db.execute(sql, params).rowcount == 1

    # -- reading -----------------------------------------------------------------------------

    def get(self, job_id: str) -> JobRecord | None:
        with self._connect() as db:
            row = db.execute(f"SELECT {COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else JobRecord.from_row(row)

    def list(self, owner: str, *, limit: int, offset: int) -> tuple[list[JobRecord], int]:
        """The owner's jobs, newest first, and how many there are in all."""
        with self._connect() as db:
            rows = db.execute(
                f"SELECT {COLUMNS} FROM jobs WHERE owner = ? ORDER BY created_at DESC, id LIMIT ? OFFSET ?",
                (owner, limit, offset),
            ).fetchall()
            total = db.execute("SELECT COUNT(*) FROM jobs WHERE owner = ?", (owner,)).fetchone()[0]
        return [JobRecord.from_row(r) for r in rows], total

    def active_ids(self) -> builtins.list[str]:
        with self._connect() as db:
            rows = db.execute("SELECT id FROM jobs WHERE status IN (?, ?) ORDER BY created_at", ACTIVE).fetchall()
        return [r[0] for r in rows]

    def active(self, limit: int = 10_000) -> builtins.list[JobRecord]:
        """Queued and running jobs, oldest first (what the reconciler looks at)."""
        with self._connect() as db:
            rows = db.execute(
                f"SELECT {COLUMNS} FROM jobs WHERE status IN (?, ?) ORDER BY created_at LIMIT ?", (*ACTIVE, limit)
            ).fetchall()
        return [JobRecord.from_row(r) for r in rows]

    def counts(self, owner: str | None = None) -> dict[str, int]:
        """How many jobs are queued and running (of one quota key, or of everyone)."""
        with self._connect() as db:
            found = _active_counts(db, owner)
        return {status: found.get(status, 0) for status in ACTIVE}

    def stored_bytes(self, owner: str | None = None) -> int:
        with self._connect() as db:
            return _stored_bytes(db, owner)

    def ping(self) -> None:
        """Raise if the database cannot be read."""
        with self._connect() as db:
            db.execute("SELECT 1 FROM jobs LIMIT 1").fetchall()

    def expired_ids(self, before: float) -> builtins.list[str]:
        with self._connect() as db:
            rows = db.execute("SELECT id FROM jobs WHERE COALESCE(finished_at, created_at) < ?", (before,)).fetchall()
        return [r[0] for r in rows]

    def with_stale_inputs(self, before: float) -> builtins.list[str]:
        with self._connect() as db:
            rows = db.execute(
                "SELECT id FROM jobs WHERE status IN ('failed', 'cancelled') AND input_bytes > 0 AND finished_at < ?",
                (before,),
            ).fetchall()
        return [r[0] for r in rows]

    # -- state changes -----------------------------------------------------------------------

    def create(self, job: JobRecord, admission: Admission | None = None) -> JobRecord:
        try:
            with self._connect() as db:
                db.execute("BEGIN IMMEDIATE")  # the write lock, from the counts to the insert
                try:
                    if admission is not None:
                        check_admission(
                            job,
                            admission,
                            lambda key: sum(_active_counts(db, key).values()),
                            lambda key: _stored_bytes(db, key),
                        )
                    db.execute(
                        "INSERT INTO jobs (id, owner, idempotency_key, fingerprint, status, config, has_data,"
                        " created_at, sent_at, input_bytes, quota_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            job.id,
                            job.owner,
                            job.idempotency_key,
                            job.fingerprint,
                            job.status.value,
                            job.config,
                            int(job.has_data),
                            job.created_at,
                            job.sent_at or job.created_at,
                            job.input_bytes,
                            job.quota_key,
                        ),
                    )
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
        except sqlite3.IntegrityError:
            with self._connect() as db:
                row = db.execute(
                    f"SELECT {COLUMNS} FROM jobs WHERE owner = ? AND idempotency_key = ?",
                    (job.owner, job.idempotency_key),
                ).fetchone()
            if row is None:
                raise
            raise IdempotencyConflict(JobRecord.from_row(row)) from None
        return job

    def claim(self, job_id: str, owner: str, ttl_s: float, *, max_attempts: int) -> str | None:
        """Start an attempt: the new lease's token, or None when the job is not claimable.

        Claimable: queued, or running under a lease that expired (its worker died or stalled), and
        fewer than ``max_attempts`` attempts made. A duplicate delivery of a job whose lease is live,
        or of a finished one, gets None: it must do nothing.
        """
        token = secrets.token_hex(12)
        now = time.time()
        claimed = self._update(
            "UPDATE jobs SET status = 'running', attempts = attempts + 1, stage = NULL,"
            " started_at = COALESCE(started_at, ?), lease_token = ?, lease_owner = ?, lease_expires = ?"
            " WHERE id = ? AND attempts < ? AND (status = 'queued'"
            "  OR (status = 'running' AND (lease_expires IS NULL OR lease_expires < ?)))",
            now,
            token,
            owner,
            now + ttl_s,
            job_id,
            max_attempts,
            now,
        )
        return token if claimed else None

    def renew(self, job_id: str, token: str, ttl_s: float) -> bool:
        """Extend the lease; False means the attempt lost it (cancelled, or expired and claimed again)."""
        return self._update(
            "UPDATE jobs SET lease_expires = ? WHERE id = ? AND status = 'running' AND lease_token = ?",
            time.time() + ttl_s,
            job_id,
            token,
        )

    def holds(self, job_id: str, token: str) -> bool:
        with self._connect() as db:
            row = db.execute(
                "SELECT 1 FROM jobs WHERE id = ? AND status = 'running' AND lease_token = ?", (job_id, token)
            ).fetchone()
        return row is not None

    def progress(self, job_id: str, token: str, stage: str, fraction: float) -> bool:
        """Record progress; False means this attempt no longer holds the job (cancelled, removed, fenced)."""
        fraction = min(max(float(fraction), 0.0), 1.0)
        return self._update(
            "UPDATE jobs SET stage = ?, progress = MAX(progress, ?)"
            " WHERE id = ? AND status = 'running' AND lease_token = ?",
            stage,
            fraction,
            job_id,
            token,
        )

    def requeue(self, job_id: str, token: str, message: str) -> bool:
        """Back to queued before a retry, lease released; the last error is kept for the curious."""
        return self._update(
            "UPDATE jobs SET status = 'queued', stage = NULL, error_message = ?, lease_token = NULL,"
            " lease_owner = NULL, lease_expires = NULL, sent_at = ? WHERE id = ? AND status = 'running'"
            " AND lease_token = ?",
            message,
            time.time(),
            job_id,
            token,
        )

    def succeed(
        self, job_id: str, token: str, output_sha256: str, *, result_key: str | None = None, result_bytes: int = 0
    ) -> bool:
        return self._update(
            "UPDATE jobs SET status = 'succeeded', stage = 'done', progress = 1.0, output_sha256 = ?,"
            " result_key = ?, result_bytes = ?, error_code = NULL, error_message = NULL, finished_at = ?,"
            " lease_token = NULL, lease_expires = NULL WHERE id = ? AND status = 'running' AND lease_token = ?",
            output_sha256,
            result_key,
            result_bytes,
            time.time(),
            job_id,
            token,
        )

    def fail(self, job_id: str, code: str, message: str, *, token: str | None = None) -> bool:
        """Fail the job: the attempt holding ``token``, or (no token: the API, the reconciler, a job
        given up before it was claimed) whatever active state it is in."""
        fence = " AND status = 'running' AND lease_token = ?" if token else " AND status IN (?, ?)"
        return self._update(
            "UPDATE jobs SET status = 'failed', error_code = ?, error_message = ?, finished_at = ?,"
            " lease_token = NULL, lease_expires = NULL WHERE id = ?" + fence,
            code,
            message,
            time.time(),
            job_id,
            *((token,) if token else ACTIVE),
        )

    def mark_resent(self, job_id: str) -> bool:
        """The reconciler handed the job to the broker again."""
        return self._update(
            "UPDATE jobs SET sent_at = ?, resends = resends + 1 WHERE id = ? AND status IN (?, ?)",
            time.time(),
            job_id,
            *ACTIVE,
        )

    def cancel(self, job_id: str) -> bool:
        return self._update(
            "UPDATE jobs SET status = 'cancelled', error_code = 'cancelled', error_message = 'cancelled by the user',"
            " finished_at = ?, input_bytes = 0 WHERE id = ? AND status IN (?, ?)",
            time.time(),
            job_id,
            *ACTIVE,
        )

    def release_inputs(self, job_id: str) -> bool:
        return self._update(
            "UPDATE jobs SET input_bytes = 0 WHERE id = ? AND status IN ('succeeded', 'failed', 'cancelled')", job_id
        )

    def delete(self, job_id: str) -> bool:
        return self._update("DELETE FROM jobs WHERE id = ?", job_id)

    def restore(self, job: JobRecord) -> bool:
        values = record_values(job)
        marks = ", ".join("?" for _ in values)
        return self._update(f"INSERT OR IGNORE INTO jobs ({COLUMNS}) VALUES ({marks})", *values.values())

    def all_records(self) -> builtins.list[JobRecord]:
        with self._connect() as db:
            rows = db.execute(f"SELECT {COLUMNS} FROM jobs ORDER BY created_at, id").fetchall()
        return [JobRecord.from_row(r) for r in rows]


JobStore = SqliteJobStore  # the name this class had before the interface (``jobs.job_store.JobStore``)

_QUOTA_KEY = "COALESCE(quota_key, owner)"


def _active_counts(db: sqlite3.Connection, owner: str | None) -> dict[str, int]:
    where, params = (f"AND {_QUOTA_KEY} = ?", (owner,)) if owner is not None else ("", ())
    rows = db.execute(
        f"SELECT status, COUNT(*) FROM jobs WHERE status IN (?, ?) {where} GROUP BY status", (*ACTIVE, *params)
    ).fetchall()
    return dict(rows)


def _stored_bytes(db: sqlite3.Connection, owner: str | None) -> int:
    where, params = (f"WHERE {_QUOTA_KEY} = ?", (owner,)) if owner is not None else ("", ())
    return int(
        db.execute(f"SELECT COALESCE(SUM(input_bytes + result_bytes), 0) FROM jobs {where}", params).fetchone()[0]
    )
