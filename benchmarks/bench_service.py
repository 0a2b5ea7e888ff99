"""Service throughput and API latency, on 127.0.0.1 only, bounded in jobs and seconds.

Measures jobs/minute with one and with two Celery workers (each ``--concurrency=1``), and the
p50/p99 latency of ``GET /v1/jobs/{id}`` while jobs run. Needs a Redis at 127.0.0.1:6379 (uses
DB 14 under a private key prefix and deletes only its own keys).

    python benchmarks/bench_service.py --jobs 12 --out benchmarks/results/service.json
    python benchmarks/bench_service.py --polling-only --pollers 50 --out benchmarks/results/service_polling.json

``--polling-only``: one worker runs a long job while ``--pollers`` clients poll ``GET /v1/jobs/{id}``
(half the running job, half a finished one with its report), each every ``--poll-interval`` seconds
like ``PruneClient.wait``; then the same clients poll back to back (no pause) for a saturation figure.
With ``--if-none-match`` each poller sends the last ETag back, as ``PruneClient`` does (304 while unchanged).
"""

from __future__ import annotations

import argparse
import asyncio
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

from tests.support.service_models import convnet, save  # noqa: E402  (the service tests' model and helpers)
from tests.support.service_processes import api_command, free_port, spawn, stop  # noqa: E402

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
    processes = [
        spawn(
            api_command(port),
            env,
            workdir / f"api-{workers}.log",
        )
    ]
    try:
        for i in range(workers):
            processes.append(
                spawn(
                    [
                        sys.executable,
                        "-m",
                        "celery",
                        "-A",
                        "onnxprune.jobs.celery_app",
                        "worker",
                        "--pool=solo",
                        "--loglevel=warning",
                        "-n",
                        f"bench{i}@%h",
                        "--without-gossip",
                        "--without-mingle",
                    ],
                    env,
                    workdir / f"worker-{workers}-{i}.log",
                )
            )
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


async def poll_concurrently(
    url: str, job_ids: list[str], pollers: int, pause: float, duration: float, if_none_match: bool
) -> list[float]:
    """Milliseconds of each ``GET /v1/jobs/{id}`` by ``pollers`` independent clients, alternating over
    ``job_ids``, each waiting ``pause`` between polls. The clients are asyncio tasks on one event loop,
    not threads: 50 Python threads fighting for one GIL would time the client's own queueing. Their
    first polls are spread over one pause, as independent clients' are, not fired all in the same instant."""
    latencies: list[float] = []

    async def poll(index: int, client: httpx.AsyncClient) -> None:
        job_id = job_ids[index % len(job_ids)]
        etag = None
        await asyncio.sleep(pause * index / pollers)
        deadline = time.monotonic() + duration
        async with client:
            while time.monotonic() < deadline:
                headers = {"If-None-Match": etag} if etag else None
                t0 = time.perf_counter()
                response = await client.get(f"/v1/jobs/{job_id}", headers=headers)
                took = time.perf_counter() - t0
                if response.status_code != 304:
                    response.raise_for_status()
                etag = response.headers.get("ETag") if if_none_match else None
                latencies.append(took * 1000)
                await asyncio.sleep(max(0.0, pause - took))

    # One connection per client, all made before the clock starts (making a client loads its TLS
    # context: tens of milliseconds that would stall the event loop mid-measurement).
    clients = [httpx.AsyncClient(base_url=url, timeout=10) for _ in range(pollers)]
    await asyncio.gather(*(poll(index, client) for index, client in enumerate(clients)))
    return latencies


def poll_round(workdir: Path, pollers: int, seconds: float, interval: float, if_none_match: bool = False) -> dict:
    env = {
        "ONNXPRUNE_REDIS_URL": REDIS_URL,
        "ONNXPRUNE_REDIS_PREFIX": f"onnxprune-bench-{uuid.uuid4().hex[:8]}:",
        "ONNXPRUNE_DATA_DIR": str(workdir / "data-poll"),
        "ONNXPRUNE_QUEUE": f"bench-{uuid.uuid4().hex[:8]}",
    }
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    fast_model = save(convnet(c1=16, c2=32, size=32), workdir / "fast.onnx")
    slow_model = save(convnet(c1=32, c2=96, size=224), workdir / "slow.onnx")
    processes = [
        spawn(
            api_command(port),
            env,
            workdir / "api-poll.log",
        ),
        spawn(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "onnxprune.jobs.celery_app",
                "worker",
                "--pool=solo",
                "--loglevel=warning",
                "-n",
                "poll@%h",
                "--without-gossip",
                "--without-mingle",
            ],
            env,
            workdir / "worker-poll.log",
        ),
    ]
    try:
        wait_for(lambda: httpx.get(f"{url}/readyz", timeout=3).status_code == 200, 90, "readyz")
        http = httpx.Client(base_url=url, timeout=30)

        def submit(path: Path, config: dict) -> str:
            with open(path, "rb") as f:
                response = http.post("/v1/jobs", files={"model": ("m.onnx", f)}, data={"config": json.dumps(config)})
            response.raise_for_status()
            return response.json()["id"]

        done_id = submit(fast_model, CONFIG)
        wait_for(lambda: http.get(f"/v1/jobs/{done_id}").json()["status"] == "succeeded", 120, "the finished job")
        running_id = submit(slow_model, {"ratio": 0.5, "benchmark": True, "benchmark_runs": 1000})
        wait_for(lambda: http.get(f"/v1/jobs/{running_id}").json()["status"] == "running", 60, "the long job")

        api_pid = processes[0].pid

        def api_cpu_s() -> float:
            """User + system CPU seconds of the API process so far (load-independent cost)."""
            fields = Path(f"/proc/{api_pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

        def measure(pause: float, duration: float) -> dict:
            cpu_before = api_cpu_s()
            latencies = asyncio.run(
                poll_concurrently(url, [running_id, done_id], pollers, pause, duration, if_none_match)
            )
            cpu_ms = (api_cpu_s() - cpu_before) * 1000
            return {
                "pollers": pollers,
                "if_none_match": if_none_match,
                "pause_s": pause,
                "seconds": duration,
                "requests": len(latencies),
                "api_cpu_ms_per_request": round(cpu_ms / max(1, len(latencies)), 3),
                "p50_ms": round(percentile(latencies, 50), 2),
                "p99_ms": round(percentile(latencies, 99), 2),
                "max_ms": round(max(latencies), 2),
            }

        load_before = os.getloadavg()
        paced = measure(interval, seconds)
        still_running = http.get(f"/v1/jobs/{running_id}").json()["status"] == "running"
        saturated = measure(0.0, min(seconds, 10.0))
        running_after = http.get(f"/v1/jobs/{running_id}").json()["status"] == "running"
        http.close()
        return {
            "paced": paced,
            "back_to_back": saturated,
            "job_running_throughout": still_running and running_after,
            "load_average_1_5_15_before": [round(x, 2) for x in load_before],
            "load_average_1_5_15_after": [round(x, 2) for x in os.getloadavg()],
        }
    finally:
        for process in reversed(processes):
            stop(process)
        connection = redis.Redis.from_url(REDIS_URL)
        for key in connection.scan_iter(match=f"{env['ONNXPRUNE_REDIS_PREFIX']}*", count=500):
            connection.delete(key)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=12, help="jobs per round (bounded to 50)")
    parser.add_argument("--latency-seconds", type=float, default=20.0)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/service.json")
    parser.add_argument("--polling-only", action="store_true", help="only the poll-latency round")
    parser.add_argument("--pollers", type=int, default=50)
    parser.add_argument("--poll-seconds", type=float, default=20.0)
    parser.add_argument("--poll-interval", type=float, default=0.5)
    parser.add_argument(
        "--if-none-match", action="store_true", help="pollers send the last ETag back, as PruneClient does (304s)"
    )
    args = parser.parse_args()
    if args.polling_only:
        with tempfile.TemporaryDirectory(prefix="onnxprune-bench-") as tmp:
            rounds = poll_round(
                Path(tmp), min(args.pollers, 200), args.poll_seconds, args.poll_interval, args.if_none_match
            )
        result = {
            "benchmark": "service-polling",
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
            "get_job_latency": rounds,
        }
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
        return
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
