"""Issue 33's load runs, on 127.0.0.1 only: hostile report renders, and Redis stalls with jobs queued.

renders: an embedded API runs jobs on models whose node names are mathtext traps (``$\\frac{a}{$``, a
1,000-character ``$...$``). Six clients then GET their ``report.html`` at once, twice: as published by
the jobs, and with the pages removed so that the API draws them again (the path of results published
before jobs drew their own pages: a sandboxed child, two at a time). Meanwhile one client probes
``/healthz`` every 50 ms and another fetches an unrelated user's report page.

stalls: a redis-server of our own, an API and one Celery worker; jobs are queued behind a running
one and Redis is stopped (SIGSTOP) for ``--stall-s`` seconds, ``--stalls`` times. Measured: how long
after Redis returns the last queued job leaves the queue.

    python benchmarks/bench_service_attacks.py --out benchmarks/results/service_attacks.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import onnx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "service"))

from onnxprune.jobs.files import JobFiles  # noqa: E402
from onnxprune.jobs.store import JobStore  # noqa: E402
from tests.support.own_redis import OwnRedis  # noqa: E402
from tests.support.service_models import convnet, save  # noqa: E402
from tests.support.service_processes import ApiServer, Worker  # noqa: E402

CONFIG = {"ratio": 0.5, "benchmark": False, "round_to": 1}
TRAPS = [r"$\frac{a}{$", "$" + r"\sqrt{x}" * 124 + "$"]  # a parse error; 994 characters of mathtext


def hostile(seed: int) -> onnx.ModelProto:
    model = convnet(seed=seed)
    for index, node in enumerate(model.graph.node):
        node.name = TRAPS[index % 2] + str(index)
    return model


def submit(url: str, model: onnx.ModelProto, folder: Path, seed: int) -> str:
    path = save(model, folder / f"m{seed}.onnx")
    with open(path, "rb") as handle:
        response = httpx.post(
            f"{url}/v1/jobs",
            files={"model": ("m.onnx", handle)},
            data={"config": json.dumps({**CONFIG, "seed": seed})},
            timeout=60,
        )
    response.raise_for_status()
    return str(response.json()["id"])


def wait_done(url: str, ids: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = [httpx.get(f"{url}/v1/jobs/{i}", timeout=30).json()["status"] for i in ids]
        if all(s in ("succeeded", "failed", "cancelled") for s in states):
            if any(s != "succeeded" for s in states):
                raise RuntimeError(f"jobs did not succeed: {states}")
            return
        time.sleep(0.3)
    raise TimeoutError("jobs")


def render_round(url: str, hostile_ids: list[str], other_id: str) -> dict[str, object]:
    health: list[float] = []
    other: list[float] = []
    renders: list[tuple[int, float]] = []
    done = threading.Event()

    def probe() -> None:
        with httpx.Client(base_url=url, timeout=60) as client:
            while not done.is_set():
                started = time.monotonic()
                client.get("/healthz").raise_for_status()
                health.append(time.monotonic() - started)
                time.sleep(0.05)

    def another_user() -> None:
        with httpx.Client(base_url=url, timeout=120) as client:
            while not done.is_set():
                started = time.monotonic()
                client.get(f"/v1/jobs/{other_id}/report.html").raise_for_status()
                other.append(time.monotonic() - started)
                time.sleep(0.2)

    def render(job_id: str) -> None:
        started = time.monotonic()
        response = httpx.get(f"{url}/v1/jobs/{job_id}/report.html", timeout=300)
        renders.append((response.status_code, time.monotonic() - started))

    background = [threading.Thread(target=probe), threading.Thread(target=another_user)]
    for thread in background:
        thread.start()
    time.sleep(0.5)
    clients = [threading.Thread(target=render, args=(job_id,)) for job_id in hostile_ids]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join()
    done.set()
    for thread in background:
        thread.join()
    return {
        "render_statuses": sorted({status for status, _ in renders}),
        "render_s_max": round(max(s for _, s in renders), 3),
        "healthz_ms_p50": round(1000 * float(np.percentile(health, 50)), 1),
        "healthz_ms_max": round(1000 * max(health), 1),
        "healthz_probes": len(health),
        "other_report_s_max": round(max(other), 3),
        "other_report_fetches": len(other),
    }


def renders(folder: Path) -> dict[str, object]:
    folder.mkdir(parents=True, exist_ok=True)
    env = {"ONNXPRUNE_DATA_DIR": str(folder / "data"), "ONNXPRUNE_REDIS_URL": "", "ONNXPRUNE_EMBEDDED_WORKERS": "2"}
    server = ApiServer(env, folder / "api.log").start()
    try:
        hostile_ids = [submit(server.url, hostile(seed), folder, seed) for seed in range(6)]
        other_id = submit(server.url, convnet(seed=99), folder, 99)
        wait_done(server.url, [*hostile_ids, other_id], 600)
        httpx.get(f"{server.url}/v1/jobs/{other_id}/report.html", timeout=60).raise_for_status()
        published = render_round(server.url, hostile_ids, other_id)
        for job_id in hostile_ids:  # as results published before jobs drew their pages: the API draws them
            (JobFiles.of(folder / "data" / "jobs", job_id).result / "report.html").unlink()
        drawn = render_round(server.url, hostile_ids, other_id)
    finally:
        server.stop()
    return {"published_pages": published, "pages_drawn_by_the_api": drawn}


def stalls(folder: Path, count: int, stall_s: float) -> list[dict[str, object]]:
    folder.mkdir(parents=True, exist_ok=True)
    broker = OwnRedis(folder / "redis", persistent=False).start()
    env = {
        "ONNXPRUNE_REDIS_URL": broker.url,
        "ONNXPRUNE_REDIS_PREFIX": "onnxprune-bench:",
        "ONNXPRUNE_QUEUE": f"q-{uuid.uuid4().hex[:8]}",
        "ONNXPRUNE_DATA_DIR": str(folder / "data"),
        "ONNXPRUNE_RETRY_DELAY_S": "0",
        "ONNXPRUNE_LEASE_TTL_S": "10",
    }
    server = ApiServer(env, folder / "api.log").start()
    worker = Worker(env, folder / "worker.log").start()
    store = JobStore(folder / "data" / "jobs.sqlite3")
    results = []
    try:
        for round_ in range(count):
            slow = save(convnet(c1=32, c2=64, size=160), folder / "slow.onnx")
            with open(slow, "rb") as handle:
                first = httpx.post(
                    f"{server.url}/v1/jobs",
                    files={"model": ("m.onnx", handle)},
                    data={"config": json.dumps({"ratio": 0.5, "benchmark_runs": 40, "round_to": 1})},
                    timeout=60,
                ).json()["id"]
            queued = [submit(server.url, convnet(seed=s), folder, 1000 * round_ + s) for s in range(3)]
            deadline = time.monotonic() + 120
            while store.get(first).status.value != "running" and time.monotonic() < deadline:
                time.sleep(0.1)
            broker.pause()
            time.sleep(stall_s)
            broker.resume()
            returned = time.monotonic()
            left_queue: dict[str, float] = {}
            while len(left_queue) < len(queued) and time.monotonic() - returned < 600:
                for job_id in queued:
                    if job_id not in left_queue and store.get(job_id).status.value != "queued":
                        left_queue[job_id] = time.monotonic() - returned
                time.sleep(0.2)
            wait_done(server.url, [first, *queued], 600)
            results.append(
                {
                    "stall_s": stall_s,
                    "last_job_left_the_queue_s_after_redis_returned": round(max(left_queue.values()), 1),
                    "jobs": 1 + len(queued),
                    "worker_restarted": worker.process is None or worker.process.poll() is not None,
                }
            )
    finally:
        worker.stop()
        server.stop()
        broker.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stalls", type=int, default=3)
    parser.add_argument("--stall-s", type=float, default=25.0)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "service_attacks.json")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="onnxprune-attacks-"))
    try:
        document = {
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, shared with other work",
            "renders": renders(folder / "renders"),
            "redis_stalls": stalls(folder / "stalls", args.stalls, args.stall_s),
        }
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    print(json.dumps(document, indent=2))


if __name__ == "__main__":
    main()
