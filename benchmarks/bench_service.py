"""Service throughput and API latency, on 127.0.0.1 only, bounded in jobs and seconds.

Measures jobs/minute with one and with two Celery workers (each ``--concurrency=1``), and the
p50/p99 latency of ``GET /v1/jobs/{id}`` while jobs run. Needs a Redis at 127.0.0.1:6379 (uses
DB 14 under a private key prefix and deletes only its own keys).

    python benchmarks/bench_service.py --jobs 12 --out benchmarks/results/service.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import redis

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.service.svc_models import convnet, save  # noqa: E402  (the service tests' model and helpers)
from tests.service.svc_processes import free_port, spawn, stop  # noqa: E402
REDIS_URL = "redis://127.0.0.1:6379/14"
CONFIG = {"ratio": 0.5, "benchmark": False}


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(what)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def run_round(workdir: Path, model: Path, workers: int, jobs: int, latency_s: float) -> dict:
    env = {
        "ONNXPRUNE_REDIS_URL": REDIS_URL,
        "ONNXPRUNE_REDIS_PREFIX": f"onnxprune-bench-{uuid.uuid4().hex[:8]}:",
        "ONNXPRUNE_DATA_DIR": str(workdir / f"data-{workers}"),
        "ONNXPRUNE_QUEUE": f"bench-{uuid.uuid4().hex[:8]}",
    }
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    processes = [spawn([sys.executable, "-m", "uvicorn", "service.api:create_app", "--factory", "--host", "127.0.0.1",
                        "--port", str(port), "--log-level", "warning"], env, workdir / f"api-{workers}.log")]
    try:
        for i in range(workers):
            processes.append(spawn([sys.executable, "-m", "celery", "-A", "jobs.celery_app", "worker",
                                    "--pool=solo", "--loglevel=warning", "-n", f"bench{i}@%h",
                                    "--without-gossip", "--without-mingle"], env, workdir / f"worker-{workers}-{i}.log"))
        wait_for(lambda: httpx.get(f"{url}/readyz", timeout=3).status_code == 200, 90, "readyz")
        http = httpx.Client(base_url=url, timeout=30)

        def submit(_: int) -> str:
            with open(model, "rb") as f:
                response = http.post("/v1/jobs", files={"model": ("m.onnx", f)}, data={"config": json.dumps(CONFIG)})
            response.raise_for_status()
            return response.json()["id"]

        started = time.monotonic()
        with ThreadPoolExecutor(4) as pool:
            ids = list(pool.map(submit, range(jobs)))

        latencies: list[float] = []
        stop_polling = threading.Event()

        def poll(worker_index: int) -> None:
            # Bounded: at most latency_s seconds and 5000 requests per thread, on 127.0.0.1 only.
            with httpx.Client(base_url=url, timeout=10) as client:
                deadline = time.monotonic() + latency_s
                for n in range(5000):
                    if stop_polling.is_set() or time.monotonic() > deadline:
                        return
                    t0 = time.perf_counter()
                    client.get(f"/v1/jobs/{ids[(n + worker_index) % len(ids)]}").raise_for_status()
                    latencies.append((time.perf_counter() - t0) * 1000)

        pollers = [threading.Thread(target=poll, args=(i,)) for i in range(4)]
        for thread in pollers:
            thread.start()
        statuses: dict[str, str] = {}
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            statuses = {i: http.get(f"/v1/jobs/{i}").json()["status"] for i in ids}
            if all(s in ("succeeded", "failed", "cancelled") for s in statuses.values()):
                break
            time.sleep(0.25)
        elapsed = time.monotonic() - started
        stop_polling.set()
        for thread in pollers:
            thread.join()
        http.close()
        succeeded = sum(s == "succeeded" for s in statuses.values())
        return {
            "workers": workers,
            "jobs": jobs,
            "succeeded": succeeded,
            "seconds": round(elapsed, 2),
            "jobs_per_minute": round(60 * succeeded / elapsed, 1),
            "get_job_latency_ms": {
                "requests": len(latencies),
                "concurrency": 4,
                "p50": round(percentile(latencies, 50), 2),
                "p99": round(percentile(latencies, 99), 2),
                "mean": round(statistics.fmean(latencies), 2),
            },
        }
    finally:
        for process in reversed(processes):
            stop(process)
        prefix = env["ONNXPRUNE_REDIS_PREFIX"]
        connection = redis.Redis.from_url(REDIS_URL)
        for key in connection.scan_iter(match=f"{prefix}*", count=500):
            connection.delete(key)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=12, help="jobs per round (bounded to 50)")
    parser.add_argument("--latency-seconds", type=float, default=20.0)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/service.json")
    args = parser.parse_args()
    jobs = min(args.jobs, 50)
    with tempfile.TemporaryDirectory(prefix="onnxprune-bench-") as tmp:
        workdir = Path(tmp)
        model = save(convnet(c1=16, c2=32, size=32), workdir / "bench.onnx")
        rounds = [run_round(workdir, model, workers, jobs, args.latency_seconds) for workers in (1, 2)]
    result = {
        "benchmark": "service",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "model": "conv3->16->32, gap, gemm; input 1x3x32x32",
        "config": CONFIG,
        "rounds": rounds,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
