"""The artifact store as an interface: where a job's upload and results live, apart from its record.

Two implementations with one contract (``tests/jobs/test_artifact_store_contract.py``): the local
directory (``LocalArtifacts``, the default: ``ONNXPRUNE_DATA_DIR/jobs``, shared by the API and its
workers on one host) and S3-compatible object storage (``jobs.s3_artifacts``, many hosts: every
process keeps only private scratch space in its data dir), chosen by ``ONNXPRUNE_ARTIFACTS_URL``.

The life of a job's files, the same in both:

    API      staging(id) -> stream and check the upload there -> commit_inputs(id) -> record created
    worker   checkout(id, token) -> its own copy (or view) of the inputs and an empty work dir
             -> the pipeline writes MODEL, PLAN, REPORT there -> publish(id, token, space)
             -> ``JobStore.succeed(result_key=...)``: the store decides which attempt's result counts
    readers  size/stream/read_result(id, result_key, name), never a path a user chose
    cleanup  remove(id), remove_inputs(id) (failed jobs), orphans(before) (a crash between steps)
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from onnxprune.jobs.files import FLOAT_MODEL, MODEL, PLAN, REPORT, REPORT_HTML, JobFiles
from onnxprune.jobs.job_store import StoreError, StoreUnavailable
from onnxprune.workers.fileio import file_sha256

if TYPE_CHECKING:
    from onnxprune.jobs.settings import Settings

# What an attempt may publish: FLOAT_MODEL only if quantized, REPORT_HTML when the job drew its page.
RESULT_NAMES = (MODEL, PLAN, REPORT, FLOAT_MODEL, REPORT_HTML)


class ArtifactMissing(StoreError, FileNotFoundError):
    """The named artifact is not stored (removed by retention or a cancel, or never published)."""


@dataclass(frozen=True)
class AttemptSpace:
    """One attempt's view of its job: the inputs to read and the directory to write results into."""

    model: Path
    data: Path | None
    work: Path
    plan: Path | None = None  # a plan uploaded to apply instead of scoring (``submit --plan-in``)


@dataclass(frozen=True)
class Published:
    """What an attempt published: where (for ``JobStore.succeed``), the model's hash, and its size."""

    result_key: str | None
    sha256: str
    size: int


class ArtifactStore(Protocol):
    def staging(self, job_id: str) -> JobFiles:
        """Where the API writes an upload while it is checked (a new directory of this process)."""

    def commit_inputs(self, job_id: str) -> int:
        """Keep the checked upload from ``staging``; its size in bytes. Leaves nothing on failure."""

    def checkout(self, job_id: str, token: str) -> AttemptSpace:
        """The inputs of the job and an empty work directory for the attempt holding ``token``."""

    def publish(self, job_id: str, token: str, space: AttemptSpace) -> Published:
        """Store the attempt's results. Until ``JobStore.succeed`` records ``result_key``, they count for nothing."""

    def discard(self, job_id: str, space: AttemptSpace, published: Published | None = None) -> None:
        """Remove an attempt's scratch space and, if given, results that did not count."""

    def size(self, job_id: str, result_key: str | None, name: str) -> int:
        """The size of a published result; :class:`ArtifactMissing` if it is gone."""

    def local_path(self, job_id: str, result_key: str | None, name: str) -> Path | None:
        """The result as a file of this host, when it is one (then served with ``FileResponse``)."""

    def stream(self, job_id: str, result_key: str | None, name: str, first: int, last: int) -> Iterator[bytes]:
        """Bytes ``first`` to ``last`` (inclusive) of a published result, in chunks."""

    def read_result(self, job_id: str, result_key: str | None, name: str) -> bytes: ...

    def cache_dir(self, job_id: str) -> Path:
        """A directory of this process for files derived from the job's results (removed with it)."""

    def remove_inputs(self, job_id: str) -> None: ...
    def remove(self, job_id: str) -> None: ...
    def orphans(self, before: float) -> list[str]:
        """Ids of jobs with files untouched since ``before`` (the caller keeps those with a record); a
        store of many jobs may answer for a bounded part of them per call, the next call going on."""

    def ping(self) -> None:
        """Raise :class:`StoreUnavailable` if the store cannot be reached now (readiness), quickly."""


class LocalArtifacts:
    """``ONNXPRUNE_DATA_DIR/jobs/<id>/`` (``jobs.files``): an attempt works beside the upload and publishes
    by renaming its directory to ``result``, first one wins, so ``result_key`` is always None."""

    def __init__(self, jobs_dir: Path) -> None:
        self.jobs_dir = Path(jobs_dir)

    def _files(self, job_id: str) -> JobFiles:
        return JobFiles.of(self.jobs_dir, job_id)

    def staging(self, job_id: str) -> JobFiles:
        files = self._files(job_id)
        files.root.mkdir(parents=True, exist_ok=False)
        return files

    def commit_inputs(self, job_id: str) -> int:
        files = self._files(job_id)
        return sum(path.stat().st_size for path in (files.upload, files.data) if path.is_file())

    def checkout(self, job_id: str, token: str) -> AttemptSpace:
        files = self._files(job_id)
        work = files.new_attempt(token)
        return AttemptSpace(
            files.upload,
            files.data if files.data.exists() else None,
            work,
            plan=files.plan_in if files.plan_in.exists() else None,
        )

    def publish(self, job_id: str, token: str, space: AttemptSpace) -> Published:
        files = self._files(job_id)
        files.publish(space.work)  # False: another attempt's result is there; the pipeline is deterministic
        size = sum(path.stat().st_size for path in files.result.iterdir() if path.is_file())
        return Published(None, file_sha256(files.model), size)

    def discard(self, job_id: str, space: AttemptSpace, published: Published | None = None) -> None:
        if space.work.exists():
            self._files(job_id).discard_attempt(space.work)

    def _path(self, job_id: str, name: str) -> Path:
        if name not in RESULT_NAMES:
            raise ValueError(f"not a result name: {name!r}")
        return self._files(job_id).result / name

    def size(self, job_id: str, result_key: str | None, name: str) -> int:
        try:
            return self._path(job_id, name).stat().st_size
        except FileNotFoundError:
            raise ArtifactMissing(f"{name} of job {job_id}") from None

    def local_path(self, job_id: str, result_key: str | None, name: str) -> Path | None:
        path = self._path(job_id, name)
        return path if path.is_file() else None

    def stream(self, job_id: str, result_key: str | None, name: str, first: int, last: int) -> Iterator[bytes]:
        try:
            handle = self._path(job_id, name).open("rb")
        except FileNotFoundError:
            raise ArtifactMissing(f"{name} of job {job_id}") from None
        with handle:
            handle.seek(first)
            left = last - first + 1
            while left > 0 and (chunk := handle.read(min(left, 1 << 20))):
                left -= len(chunk)
                yield chunk

    def read_result(self, job_id: str, result_key: str | None, name: str) -> bytes:
        try:
            return self._path(job_id, name).read_bytes()
        except FileNotFoundError:
            raise ArtifactMissing(f"{name} of job {job_id}") from None

    def cache_dir(self, job_id: str) -> Path:
        return self._files(job_id).root

    def remove_inputs(self, job_id: str) -> None:
        files = self._files(job_id)
        files.upload.unlink(missing_ok=True)
        files.data.unlink(missing_ok=True)
        files.plan_in.unlink(missing_ok=True)

    def remove(self, job_id: str) -> None:
        self._files(job_id).remove()

    def orphans(self, before: float) -> list[str]:
        if not self.jobs_dir.is_dir():
            return []
        return [p.name for p in self.jobs_dir.iterdir() if p.is_dir() and p.stat().st_mtime < before]

    def ping(self) -> None:
        folder = self.jobs_dir
        while not folder.exists() and folder != folder.parent:  # made (parents too) on the first upload
            folder = folder.parent
        if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
            raise StoreUnavailable(f"{folder} is not a writable directory (the jobs' files go there)")


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def stale_scratch(root: Path, before: float) -> Iterator[Path]:
    """Entries of a scratch directory older than ``before`` (left by a crash)."""
    if root.is_dir():
        for path in root.iterdir():
            try:
                if path.stat().st_mtime < before:
                    yield path
            except FileNotFoundError:
                continue


def open_artifact_store(settings: Settings) -> ArtifactStore:
    """The store ``settings`` name: S3 for an ``s3://`` URL, else the local jobs directory."""
    if settings.artifacts_url:
        from onnxprune.jobs.s3_artifacts import S3Artifacts

        return S3Artifacts.from_url(settings.artifacts_url, settings.scratch_dir, endpoint_url=settings.s3_endpoint_url)
    return LocalArtifacts(settings.jobs_dir)
