"""Many hosts vs one disk: 100 jobs through two workers, on 127.0.0.1 only.

Rounds (each: one API, two Celery workers, ``--jobs`` jobs submitted at once, all polled to the end):

- ``shared-disk``: the default deployment, SQLite and the job files in one data dir every process shares
  (run first and again after the cluster rounds, as the load of a shared machine drifts);
- ``cluster``: PostgreSQL and S3 (moto's server), each process with a private data dir;
- ``cluster-pg-restart``: as ``cluster``, with PostgreSQL restarted (``pg_ctl restart -m fast``) once a
  third of the jobs have finished;
- ``s3-down``: the S3 endpoint stopped, then uploads: each must answer 503 with Retry-After and leave
  no record.

Counted per round: jobs lost (not succeeded), jobs run more than once (attempts > 1), throughput. The
PostgreSQL is a private one this script starts on a free port (``initdb`` as the ``postgres`` user when
run as root), so restarting it disturbs no one; Redis is 127.0.0.1:6379 DB 14 under a private prefix.

    python benchmarks/bench_cluster.py --jobs 100 --out benchmarks/results/cluster.json
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import redis

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.cluster_servers import S3_ENV, S3Server  # noqa: E402
from tests.support.service_models import convnet, save  # noqa: E402
from tests.support.service_processes import api_command, free_port, spawn, stop  # noqa: E402

REDIS_URL = "redis://127.0.0.1:6379/14"
CONFIG = {"ratio": 0.5, "benchmark": False}
TERMINAL = ("succeeded", "failed", "cancelled")


class PrivatePostgres:
    """A throwaway PostgreSQL cluster on a free port of 127.0.0.1 (trust auth)."""

    def __init__(self, root: Path) -> None:
        self.bin = sorted(glob.glob("/usr/lib/postgresql/*/bin"))[-1]
        self.data = root / "pgdata"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*prefix, *args], check=True, stdout=subprocess.DEVNULL)

    def start(self) -> PrivatePostgres:
        self.data.mkdir(parents=True)
        if os.geteuid() == 0:
            subprocess.run(["chown", "-R", "postgres", str(self.data.parent)], check=True)
        self._run(f"{self.bin}/initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust")
        self._ctl("start")
        return self

    def _ctl(self, action: str, *extra: str) -> None:
        options = f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.data}"
        self._run(f"{self.bin}/pg_ctl", "-D", str(self.data), "-l", str(self.data / "server.log"), "-w",
                  "-o", options, *extra, action)  # fmt: skip

    def restart(self) -> float:
        started = time.monotonic()
        self._ctl("restart", "-m", "fast")
        return time.monotonic() - started

    def stop(self) -> None:
        self._ctl("stop", "-m", "fast")


def _worker_command(name: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "onnxprune.jobs.celery_app", "worker", "--pool=solo",
            "--loglevel=warning", "-n", f"{name}@%h", "--without-gossip", "--without-mingle"]  # fmt: skip


def run_round(name: str, workdir: Path, model: Path, jobs: int, shared: dict[str, str], private_dirs: bool,
              midway=None) -> dict:  # fmt: skip
    """One API and two workers; ``midway`` is called once a third of the jobs have finished."""
    env = {
        **shared,
        "ONNXPRUNE_REDIS_URL": REDIS_URL,
        "ONNXPRUNE_REDIS_PREFIX": f"onnxprune-bench-{uuid.uuid4().hex[:8]}:",
        "ONNXPRUNE_QUEUE": f"bench-{uuid.uuid4().hex[:8]}",
        "ONNXPRUNE_MAX_ACTIVE_JOBS": str(jobs + 10),
        # Quick recovery of jobs whose worker lost the database mid-job (the reconciler re-sends them).
        "ONNXPRUNE_LEASE_TTL_S": "15",
        "ONNXPRUNE_RECONCILE_INTERVAL_S": "2",
        "ONNXPRUNE_RECONCILE_GRACE_S": "5",
    }

    def data_dir(host: str) -> dict[str, str]:
        return {**env, "ONNXPRUNE_DATA_DIR": str(workdir / name / (host if private_dirs else "shared"))}

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    (workdir / name).mkdir(parents=True)
    processes = [spawn(api_command(port), data_dir("api"), workdir / name / "api.log")]
    midway_result = None
    try:
        for i in range(2):
            processes.append(spawn(_worker_command(f"{name}{i}"), data_dir(f"worker{i}"), workdir / name / f"w{i}.log"))
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/readyz", timeout=3).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        http = httpx.Client(base_url=url, timeout=60)

        def submit(_: int) -> str:
            with open(model, "rb") as f:
                response = http.post("/v1/jobs", files={"model": ("m.onnx", f)}, data={"config": json.dumps(CONFIG)})
            response.raise_for_status()
            return str(response.json()["id"])

        started = time.monotonic()
        with ThreadPoolExecutor(4) as pool:
            ids = list(pool.map(submit, range(jobs)))
        submitted_s = time.monotonic() - started
        records: dict[str, dict] = {}
        deadline = time.monotonic() + 1800
        while time.monotonic() < deadline:
            for job_id in ids:
                if records.get(job_id, {}).get("status") in TERMINAL:
                    continue
                try:
                    answer = http.get(f"/v1/jobs/{job_id}")
                except httpx.HTTPError:
                    continue
                if answer.status_code == 200:
                    records[job_id] = answer.json()
            done = sum(r.get("status") in TERMINAL for r in records.values())
            if midway is not None and midway_result is None and done >= jobs // 3:
                midway_result = midway()
            if done == jobs:
                break
            time.sleep(0.5)
        elapsed = time.monotonic() - started
        http.close()
        statuses = [records.get(i, {}).get("status", "unknown") for i in ids]
        succeeded = statuses.count("succeeded")
        return {
            "round": name,
            "jobs": jobs,
            "succeeded": succeeded,
            "lost": jobs - succeeded,
            "retried": sum(records.get(i, {}).get("attempts", 0) > 1 for i in ids),
            **({"results_kept_per_job": _results_per_job(shared, ids)} if "ONNXPRUNE_ARTIFACTS_URL" in shared else {}),
            "submit_seconds": round(submitted_s, 2),
            "seconds": round(elapsed, 2),
            "jobs_per_minute": round(60 * succeeded / elapsed, 1),
            **({"midway": midway_result} if midway is not None else {}),
        }
    finally:
        for process in reversed(processes):
            stop(process)
        connection = redis.Redis.from_url(REDIS_URL)
        for key in connection.scan_iter(match=f"{env['ONNXPRUNE_REDIS_PREFIX']}*", count=500):
            connection.delete(key)


def _results_per_job(shared: dict[str, str], ids: list[str]) -> dict[str, int]:
    """How many jobs keep 0, 1, 2... attempts' results in the bucket (1 each: none ran twice to the end)."""
    import boto3

    bucket, prefix = shared["ONNXPRUNE_ARTIFACTS_URL"].removeprefix("s3://").split("/", 1)
    client = boto3.client("s3", endpoint_url=shared["ONNXPRUNE_S3_ENDPOINT_URL"])
    histogram: dict[str, int] = {}
    for job_id in ids:
        listing = client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/jobs/{job_id}/attempts/")
        count = sum(item["Key"].endswith("/model.onnx") for item in listing.get("Contents", []))
        histogram[str(count)] = histogram.get(str(count), 0) + 1
    return histogram


def s3_down_round(workdir: Path, model: Path, shared: dict[str, str], s3: S3Server, uploads: int) -> dict:
    env = {**shared, "ONNXPRUNE_REDIS_URL": REDIS_URL, "ONNXPRUNE_REDIS_PREFIX": f"onnxprune-bench-{uuid.uuid4().hex[:8]}:",
           "ONNXPRUNE_QUEUE": f"bench-{uuid.uuid4().hex[:8]}", "ONNXPRUNE_DATA_DIR": str(workdir / "s3-down")}  # fmt: skip
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    api = spawn(api_command(port), env, workdir / "s3-down.log")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/readyz", timeout=3).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        before = httpx.get(f"{url}/v1/queue").json()
        s3.stop()
        answers = []
        for _ in range(uploads):
            with open(model, "rb") as f:
                t0 = time.monotonic()
                response = httpx.post(
                    f"{url}/v1/jobs", files={"model": ("m.onnx", f)}, data={"config": "{}"}, timeout=60
                )
            answers.append((response.status_code, response.headers.get("Retry-After"), time.monotonic() - t0))
        after = httpx.get(f"{url}/v1/queue").json()
        staged = workdir / "s3-down" / "scratch" / "incoming"
        return {
            "round": "s3-down",
            "uploads": uploads,
            "answered_503_with_retry_after": sum(code == 503 and bool(retry) for code, retry, _ in answers),
            "max_answer_seconds": round(max(t for *_, t in answers), 2),
            "records_added": after["queued"] + after["running"] - before["queued"] - before["running"],
            "staged_files_left": len(list(staged.iterdir())) if staged.exists() else 0,
        }
    finally:
        stop(api)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    os.environ.update(S3_ENV)
    with tempfile.TemporaryDirectory(prefix="onnxprune-bench-cluster-") as tmp:
        workdir = Path(tmp)
        os.chmod(workdir, 0o755)
        model = save(convnet(c1=16, c2=32, size=32), workdir / "m.onnx")
        results = [run_round("shared-disk", workdir, model, args.jobs, {}, private_dirs=False)]
        print(json.dumps(results[-1]), flush=True)
        postgres = PrivatePostgres(workdir / "pg").start()
        s3 = S3Server(workdir / "moto.log").start()
        try:
            for name, midway in (("cluster", None), ("cluster-pg-restart", postgres.restart)):
                database = f"bench_{uuid.uuid4().hex[:8]}"
                subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(postgres.port), "-U", "postgres", "-qc",
                                f"CREATE DATABASE {database}"], check=True)  # fmt: skip
                shared = {
                    **S3_ENV,
                    "ONNXPRUNE_DATABASE_URL": postgres.url.rsplit("/", 1)[0] + f"/{database}",
                    "ONNXPRUNE_ARTIFACTS_URL": f"s3://{s3.create_bucket()}/bench",
                    "ONNXPRUNE_S3_ENDPOINT_URL": s3.url,
                }
                results.append(run_round(name, workdir, model, args.jobs, shared, private_dirs=True, midway=midway))
                print(json.dumps(results[-1]), flush=True)
            # Again after the cluster rounds: the machine is shared, so its load drifts during the run.
            results.append(run_round("shared-disk-again", workdir, model, args.jobs, {}, private_dirs=False))
            print(json.dumps(results[-1]), flush=True)
            results.append(s3_down_round(workdir, model, shared, s3, uploads=10))
        finally:
            s3.stop()
            postgres.stop()
    report = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "model": "convnet conv 3->16->32, 1x3x32x32",
        "config": CONFIG,
        "rounds": results,
        # The cluster round against the mean of the shared-disk rounds before and after it.
        "cluster_vs_shared_disk": round(
            results[1]["jobs_per_minute"] / ((results[0]["jobs_per_minute"] + results[3]["jobs_per_minute"]) / 2), 3
        ),
        "load_average_at_end": os.getloadavg(),
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
