"""Issue 33's admission load run, on 127.0.0.1 only: 100 concurrent uploads against a queue limit of 30.

A real API server in Celery mode with no worker (every accepted job stays queued, so the limit is what
decides), a namespace of its own in the local Redis, and one client thread per upload, all released at
once, each with a self-chosen client key. Counted: the answers (202 / 429), and the jobs queued after.

    python benchmarks/bench_admission.py --out benchmarks/results/admission.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import uuid
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "service"))

from tests.support.service_models import convnet  # noqa: E402
from tests.support.service_processes import ApiServer  # noqa: E402


def burst(url: str, uploads: int, model: bytes) -> dict[int, int]:
    """``uploads`` uploads released at once; how many got each status code."""
    start = threading.Barrier(uploads)
    codes: dict[int, int] = {}
    lock = threading.Lock()

    def upload() -> None:
        headers = {"Authorization": f"Bearer {uuid.uuid4().hex}"}
        start.wait()
        answer = httpx.post(
            f"{url}/v1/jobs", files={"model": ("m.onnx", model)}, data={"config": '{"benchmark": false}'},
            headers=headers, timeout=300,
        )  # fmt: skip
        with lock:
            codes[answer.status_code] = codes.get(answer.status_code, 0) + 1

    threads = [threading.Thread(target=upload) for _ in range(uploads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return codes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uploads", type=int, default=100)
    parser.add_argument("--limit", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    model = convnet().SerializeToString()
    rounds = []
    for _ in range(args.rounds):
        folder = Path(tempfile.mkdtemp(prefix="onnxprune-admission-"))
        env = {
            "ONNXPRUNE_REDIS_URL": "redis://127.0.0.1:6379/13",
            "ONNXPRUNE_REDIS_PREFIX": f"onnxprune-admission-{uuid.uuid4().hex[:8]}:",
            "ONNXPRUNE_QUEUE": f"q-{uuid.uuid4().hex[:8]}",
            "ONNXPRUNE_DATA_DIR": str(folder / "data"),
            "ONNXPRUNE_MAX_ACTIVE_JOBS": str(args.limit),
        }
        server = ApiServer(env, folder / "api.log").start()
        try:
            codes = burst(server.url, args.uploads, model)
            queued = httpx.get(f"{server.url}/v1/queue", timeout=30).json()["queued"]
        finally:
            server.stop()
        rounds.append({"uploads": args.uploads, "limit": args.limit, "answers": codes, "queued_after": queued})
        print(rounds[-1], flush=True)
    result = {"rounds": rounds, "never_above_the_limit": all(r["queued_after"] <= args.limit for r in rounds)}
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
