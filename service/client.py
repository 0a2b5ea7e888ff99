"""A Python client of the onnxprune service (httpx): submit, wait, download.

client = PruneClient("http://127.0.0.1:8000", token=None)
job = client.submit("resnet.onnx", {"criterion": "l1", "ratio": 0.3})
job = client.wait(job["id"], on_progress=lambda job: print(job["stage"], job["progress"]))
client.download_model(job["id"], "resnet.pruned.onnx")
client.download_model(job["id"], "resnet.pruned.float.onnx", variant="float")  # a job with quantize
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast

import httpx

from onnxprune.workers.options import PruneOptions

Job = dict[str, Any]
TERMINAL = ("succeeded", "failed", "cancelled")


class ServiceError(Exception):
    """The server refused or failed a request; ``str(error)`` is the server's one-line message."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class JobFailed(ServiceError):
    """The job ended failed or cancelled; ``job`` is its last state."""

    def __init__(self, job: Job) -> None:
        error = job.get("error") or {}
        super().__init__(error.get("message") or f"job {job['status']}", code=error.get("code"))
        self.job = job


class PruneClient:
    def __init__(
        self,
        server: str,
        *,
        token: str | None = None,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=server.rstrip("/"), headers=headers, timeout=timeout, transport=transport)
        self._last_seen: tuple[str, str, bytes] | None = None  # (job id, ETag, body) of the last get()

    def __enter__(self) -> PruneClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def submit(
        self,
        model: str | Path,
        options: PruneOptions | Mapping[str, Any] | None = None,
        *,
        data: str | Path | None = None,
        idempotency_key: str | None = None,
        plan: str | None = None,
    ) -> Job:
        """Upload and queue a job. A key is always sent, so a retried call cannot create two jobs.

        ``options``: a ``PruneOptions`` or a config mapping, flat or nested by strategy (``{"strategies":
        {"recovery": {"finetune": {"lr": 0.01}}}}``), sent as it is. ``plan``: a saved plan's JSON (``prune --plan-out``, ``GET /v1/jobs/{id}/plan``) to apply instead of scoring."""
        if isinstance(options, PruneOptions):
            config = options.model_dump_json(exclude_defaults=True)
        else:
            config = json.dumps(dict(options or {}))
        key = idempotency_key or uuid.uuid4().hex
        with open(model, "rb") as model_file:
            files: dict[str, Any] = {"model": (Path(model).name, model_file, "application/octet-stream")}
            data_file = open(data, "rb") if data is not None else None  # noqa: SIM115
            try:
                if data is not None and data_file is not None:
                    files["data"] = (Path(data).name, data_file, "application/octet-stream")
                if plan is not None:
                    files["plan"] = ("plan.json", plan.encode(), "application/json")
                response = self._http.post(
                    "/v1/jobs", files=files, data={"config": config}, headers={"Idempotency-Key": key}
                )
            finally:
                if data_file is not None:
                    data_file.close()
        return self._object(response)

    def get(self, job_id: str) -> Job:
        """The job's state. Polling one job sends the last ETag, so an unchanged job costs the server
        a 304 and no body; the body seen with that ETag is parsed again (callers get a fresh dict)."""
        seen = self._last_seen if self._last_seen is not None and self._last_seen[0] == job_id else None
        headers = {"If-None-Match": seen[1]} if seen is not None else None
        response = self._http.get(f"/v1/jobs/{job_id}", headers=headers)
        if response.status_code == 304 and seen is not None:
            return cast(Job, json.loads(seen[2]))
        job = self._object(response)
        etag = response.headers.get("ETag")
        self._last_seen = (job_id, etag, response.content) if etag else None
        return job

    def list(self, *, limit: int = 20, offset: int = 0) -> dict[str, Any]:
        return self._object(self._http.get("/v1/jobs", params={"limit": limit, "offset": offset}))

    def cancel(self, job_id: str) -> Job | None:
        response = self._http.delete(f"/v1/jobs/{job_id}")
        return None if response.status_code == 204 else self._object(response)

    def wait(
        self,
        job_id: str,
        *,
        on_progress: Callable[[Job], None] | None = None,
        poll_s: float = 0.5,
        timeout: float | None = None,
    ) -> Job:
        """Poll until the job ends; return it if it succeeded, else raise :class:`JobFailed`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.get(job_id)
            if on_progress is not None:
                on_progress(job)
            if job["status"] == "succeeded":
                return job
            if job["status"] in TERMINAL:
                raise JobFailed(job)
            if deadline is not None and time.monotonic() > deadline:
                raise ServiceError(f"job {job_id} still {job['status']} after {timeout:g} s")
            time.sleep(poll_s)

    def download_model(self, job_id: str, path: str | Path, *, variant: str = "final") -> Path:
        """Stream the pruned model to ``path`` (tmp + rename), checking the server's SHA-256.

        ``variant``: 'final', the job's model (quantized when the job asked for quantize), or 'float',
        the float pruned model a quantized job keeps beside it."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.part")
        digest = hashlib.sha256()
        with self._http.stream("GET", f"/v1/jobs/{job_id}/model", params={"variant": variant}) as response:
            if response.status_code != 200:
                response.read()
                self._json(response)
            expected = response.headers.get("X-Content-SHA256")
            with open(tmp, "wb") as out:
                for chunk in response.iter_bytes():
                    digest.update(chunk)
                    out.write(chunk)
        if expected and digest.hexdigest() != expected:
            tmp.unlink(missing_ok=True)
            raise ServiceError(f"downloaded model has SHA-256 {digest.hexdigest()}, the server said {expected}")
        tmp.replace(path)
        return path

    def report(self, job_id: str) -> dict[str, Any]:
        return self._object(self._http.get(f"/v1/jobs/{job_id}/report"))

    def plan(self, job_id: str) -> str:
        response = self._http.get(f"/v1/jobs/{job_id}/plan")
        if response.status_code != 200:
            self._json(response)
        return response.text

    @staticmethod
    def _object(response: httpx.Response) -> dict[str, Any]:
        """The body of a JSON-object endpoint (every job, list and report route returns an object)."""
        return cast(dict[str, Any], PruneClient._json(response))

    @staticmethod
    def _json(response: httpx.Response) -> Any:
        try:
            body = response.json() if response.content else None
        except ValueError:
            body = None
        if response.is_success:
            return body
        error = (body or {}).get("error") if isinstance(body, dict) else None
        if error:
            raise ServiceError(error.get("message", ""), status=response.status_code, code=error.get("code"))
        raise ServiceError(f"HTTP {response.status_code} from {response.request.url}", status=response.status_code)
