"""S3-compatible object storage for job files (``ONNXPRUNE_ARTIFACTS_URL=s3://bucket/prefix``).

Only the generic S3 API (put, get with Range, head, list, delete), through boto3, with the endpoint
from ``ONNXPRUNE_S3_ENDPOINT_URL`` and credentials and region from the standard ``AWS_*`` variables:
AWS, Ceph, SeaweedFS, Garage or any other server speaking it. Keys under the prefix:

    jobs/<id>/input.onnx, jobs/<id>/data.npz     the upload, put once by the API after its checks
    jobs/<id>/attempts/<lease token>/<name>      one attempt's results

Object storage has no atomic rename, so attempts never overwrite each other: each publishes under
its own token, and the job store's conditional ``succeed`` records the one ``result_key`` that
counts. A late duplicate's ``succeed`` finds the lease gone, and its objects are deleted.
Connection failures and 5xx answers become :class:`StoreUnavailable` (503 + Retry-After, a job
retry); short timeouts keep an unreachable endpoint from holding a request for long.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from onnxprune.jobs.artifacts import (
    RESULT_NAMES,
    ArtifactMissing,
    AttemptSpace,
    Published,
    remove_tree,
    stale_scratch,
)
from onnxprune.jobs.files import JobFiles
from onnxprune.jobs.job_store import StoreFull, StoreUnavailable

_MISSING = {"NoSuchKey", "404", "NotFound"}
_FULL = {"XMinioStorageFull", "QuotaExceeded", "InsufficientStorage"}
_CHUNK = 1 << 20
_SMALL = 16 << 20
# Scratch space older than this is a dead attempt's (a SIGKILLed worker): no job runs this long, as the
# job time limit must stay below the broker's visibility timeout (``jobs.settings``).
STALE_SCRATCH_S = 24 * 3600
# Readiness asks the endpoint once, with these timeouts, no retry: /readyz must answer within its own 2 s.
PING_TIMEOUT_S = 1.0
# Objects one orphan sweep lists at most (one page of list_objects_v2 each): the sweep goes on from
# there next time, so that a bucket of many jobs is swept in bounded steps, not listed whole each time.
ORPHAN_KEYS_PER_SWEEP = 5000
_PAGE_KEYS = 1000


@contextmanager
def s3_errors(what: str) -> Iterator[None]:
    """Translate botocore's exceptions into the stores' errors."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in _MISSING:
            raise ArtifactMissing(what) from None
        if code in _FULL:
            raise StoreFull(f"object storage full ({what}): {code}") from exc
        raise StoreUnavailable(f"object storage refused {what}: {code or exc}") from exc
    except BotoCoreError as exc:  # connection refused, timeouts, closed connections
        raise StoreUnavailable(f"object storage unreachable ({what}): {exc}") from exc


class S3Artifacts:
    def __init__(self, client: Any, bucket: str, prefix: str, scratch_dir: Path, *, ping_client: Any = None) -> None:
        self.client, self.bucket = client, bucket
        self.ping_client = ping_client if ping_client is not None else client
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.scratch_dir = Path(scratch_dir)
        self._sweep_from = ""  # the key the next orphan sweep lists after ("": from the first job)

    @classmethod
    def from_url(cls, url: str, scratch_dir: Path, *, endpoint_url: str | None = None) -> S3Artifacts:
        import boto3
        from botocore.config import Config

        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ValueError(f"ONNXPRUNE_ARTIFACTS_URL must be s3://bucket[/prefix], got {url!r}")
        config = Config(
            connect_timeout=2,
            read_timeout=30,
            retries={"max_attempts": 2, "mode": "standard"},
            s3={"addressing_style": "path"},  # works with every S3-compatible server
        )
        client = boto3.client("s3", endpoint_url=endpoint_url or None, config=config)
        quick = config.merge(
            Config(connect_timeout=PING_TIMEOUT_S, read_timeout=PING_TIMEOUT_S, retries={"total_max_attempts": 1})
        )
        ping_client = boto3.client("s3", endpoint_url=endpoint_url or None, config=quick)
        return cls(client, parsed.netloc, parsed.path, scratch_dir, ping_client=ping_client)

    # -- keys and scratch --------------------------------------------------------------------

    def _job_prefix(self, job_id: str) -> str:
        return f"{self.prefix}jobs/{job_id}/"

    def _result_key(self, job_id: str, result_key: str | None, name: str) -> str:
        if name not in RESULT_NAMES:
            raise ValueError(f"not a result name: {name!r}")
        if not result_key:  # a job without a recorded result: nothing to read
            raise ArtifactMissing(f"{name} of job {job_id}")
        return f"{self._job_prefix(job_id)}{result_key}/{name}"

    def _put(self, path: Path, key: str) -> None:
        with s3_errors(f"put {key}"):
            if path.stat().st_size <= _SMALL:  # one request, no transfer manager and its threads
                with path.open("rb") as body:
                    self.client.put_object(Bucket=self.bucket, Key=key, Body=body)
            else:  # multipart, in parallel parts
                self.client.upload_file(str(path), self.bucket, key)

    def _get(self, key: str, path: Path) -> None:
        with s3_errors(f"get {key}"):
            answer = self.client.get_object(Bucket=self.bucket, Key=key)
            with path.open("wb") as out:
                for chunk in answer["Body"].iter_chunks(_CHUNK):
                    out.write(chunk)

    def _delete_prefix(self, prefix: str) -> None:
        with s3_errors(f"delete {prefix}"):
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
                if keys:
                    self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True})

    # -- the API's side ----------------------------------------------------------------------

    def staging(self, job_id: str) -> JobFiles:
        files = JobFiles.of(self.scratch_dir / "incoming", job_id)
        files.root.mkdir(parents=True, exist_ok=False)
        return files

    def commit_inputs(self, job_id: str) -> int:
        files = JobFiles.of(self.scratch_dir / "incoming", job_id)
        size = 0
        try:
            for path in (files.upload, files.data, files.plan_in):
                if path.is_file():
                    self._put(path, self._job_prefix(job_id) + path.name)
                    size += path.stat().st_size
        except BaseException:
            try:  # an upload that failed halfway leaves no object behind (retention catches what this misses)
                self._delete_prefix(self._job_prefix(job_id))
            except StoreUnavailable:
                pass
            raise
        finally:
            remove_tree(files.root)
        return size

    # -- the worker's side -------------------------------------------------------------------

    def checkout(self, job_id: str, token: str) -> AttemptSpace:
        for stale in stale_scratch(self.scratch_dir / "attempts", time.time() - STALE_SCRATCH_S):
            remove_tree(stale)
        root = self.scratch_dir / "attempts" / f"{job_id}-{token}"
        inputs, work = root / "in", root / "out"
        inputs.mkdir(parents=True, exist_ok=True)
        work.mkdir()
        files = JobFiles(inputs)
        try:
            uploaded = self._inputs(job_id)
            if files.upload.name not in uploaded:
                raise ArtifactMissing(files.upload.name)
            for path in (files.upload, files.data, files.plan_in):
                if path.name in uploaded:
                    self._get(self._job_prefix(job_id) + path.name, path)
        except ArtifactMissing:
            remove_tree(root)
            raise FileNotFoundError(f"the upload of job {job_id} is gone") from None
        except BaseException:
            remove_tree(root)
            raise
        present = {path for path in (files.data, files.plan_in) if path.name in uploaded}
        return AttemptSpace(
            files.upload,
            files.data if files.data in present else None,
            work,
            plan=files.plan_in if files.plan_in in present else None,
        )

    def _inputs(self, job_id: str) -> set[str]:
        """Names of the job's uploaded inputs: one listing of its folder (the attempts' objects are a
        level below), instead of a GET answered 404 for each optional input not uploaded."""
        with s3_errors(f"list the inputs of job {job_id}"):
            page = self.client.list_objects_v2(Bucket=self.bucket, Prefix=self._job_prefix(job_id), Delimiter="/")
        return {item["Key"].rsplit("/", 1)[1] for item in page.get("Contents", [])}

    def publish(self, job_id: str, token: str, space: AttemptSpace) -> Published:
        result_key = f"attempts/{token}"
        model = space.work / RESULT_NAMES[0]
        digest = hashlib.sha256()
        with model.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
        paths = [space.work / name for name in RESULT_NAMES if (space.work / name).is_file()]
        with ThreadPoolExecutor(len(paths)) as pool:  # one round trip's wait for all of them
            puts = [pool.submit(self._put, p, f"{self._job_prefix(job_id)}{result_key}/{p.name}") for p in paths]
            for put in puts:
                put.result()
        return Published(result_key, digest.hexdigest(), sum(p.stat().st_size for p in paths))

    def discard(self, job_id: str, space: AttemptSpace, published: Published | None = None) -> None:
        remove_tree(space.work.parent)
        if published is not None and published.result_key:
            self._delete_prefix(f"{self._job_prefix(job_id)}{published.result_key}/")

    # -- readers -----------------------------------------------------------------------------

    def size(self, job_id: str, result_key: str | None, name: str) -> int:
        key = self._result_key(job_id, result_key, name)
        with s3_errors(f"{name} of job {job_id}"):
            return int(self.client.head_object(Bucket=self.bucket, Key=key)["ContentLength"])

    def local_path(self, job_id: str, result_key: str | None, name: str) -> Path | None:
        return None

    def stream(self, job_id: str, result_key: str | None, name: str, first: int, last: int) -> Iterator[bytes]:
        key = self._result_key(job_id, result_key, name)
        with s3_errors(f"{name} of job {job_id}"):
            body = self.client.get_object(Bucket=self.bucket, Key=key, Range=f"bytes={first}-{last}")["Body"]
        try:
            with s3_errors(f"{name} of job {job_id}"):
                yield from body.iter_chunks(_CHUNK)
        finally:
            body.close()

    def read_result(self, job_id: str, result_key: str | None, name: str) -> bytes:
        key = self._result_key(job_id, result_key, name)
        with s3_errors(f"{name} of job {job_id}"):
            data: bytes = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        return data

    def cache_dir(self, job_id: str) -> Path:
        return self.scratch_dir / "cache" / job_id

    # -- cleanup -----------------------------------------------------------------------------

    def remove_inputs(self, job_id: str) -> None:
        with s3_errors(f"delete the upload of job {job_id}"):
            self.client.delete_objects(
                Bucket=self.bucket,
                Delete={
                    "Objects": [
                        {"Key": self._job_prefix(job_id) + n} for n in ("input.onnx", "data.npz", "plan_in.json")
                    ],
                    "Quiet": True,
                },
            )

    def remove(self, job_id: str) -> None:
        remove_tree(self.cache_dir(job_id))
        remove_tree(self.scratch_dir / "incoming" / job_id)
        self._delete_prefix(self._job_prefix(job_id))

    def orphans(self, before: float) -> list[str]:
        """Jobs whose newest object is older than ``before``, among at most ``ORPHAN_KEYS_PER_SWEEP``
        objects listed from where the last sweep stopped (from the first job again once it reached the
        end). A job cut by the bound is judged next time, whole, unless it is the only one listed."""
        jobs = f"{self.prefix}jobs/"
        newest: dict[str, float] = {}
        after, listed, truncated = self._sweep_from, 0, True
        with s3_errors("list jobs"):
            while truncated and listed < ORPHAN_KEYS_PER_SWEEP:
                page = self.client.list_objects_v2(
                    Bucket=self.bucket,
                    Prefix=jobs,
                    StartAfter=after or jobs,
                    MaxKeys=min(_PAGE_KEYS, ORPHAN_KEYS_PER_SWEEP - listed),
                )
                for item in page.get("Contents", []):
                    job_id = item["Key"][len(jobs) :].split("/", 1)[0]
                    newest[job_id] = max(item["LastModified"].timestamp(), newest.get(job_id, 0.0))
                    after = item["Key"]
                    listed += 1
                truncated = bool(page.get("IsTruncated"))
        if truncated and len(newest) > 1:  # the last job may have more objects past the bound: next sweep
            cut = list(newest)[-1]
            del newest[cut]
            after = f"{jobs}{cut}"  # sorts before the job's keys ("<id>/..."), after the previous job's
        self._sweep_from = after if truncated else ""
        return [job_id for job_id, stamp in newest.items() if stamp < before]

    def ping(self) -> None:
        with s3_errors(f"bucket {self.bucket}"):
            self.ping_client.head_bucket(Bucket=self.bucket)
