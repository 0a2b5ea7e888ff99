"""What passive waits cost and buy (issue 29): fine-tuning steps/s and onnxruntime latency of the shared
ResNet-20, with threads that spin while they wait (OpenMP's and onnxruntime's default) and with
passive waits (``OMP_WAIT_POLICY=PASSIVE``, ``session.intra_op.allow_spinning=0``).

Each variant runs in a fresh process (OpenMP reads its environment when torch loads). Fine-tuning:
SGD steps of the shared ResNet-20 in our PyTorch executor, batch 32 of 3x32x32 (the recovery's
default batch). Latency: onnxruntime p50 of one image. ``--background-load N`` starts N CPU-bound
processes at the same priority for the whole run (a busy machine); the 1-minute load average is
recorded before and after each variant.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_passive_waits.py --seconds 20
    PYTHONPATH=. .venv/bin/python benchmarks/bench_passive_waits.py --background-load 2 --name passive_waits_load
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from background_load import BackgroundLoad  # noqa: E402  (beside this script)

SHARED = Path(os.environ.get("ONNXPRUNE_SHARED", ROOT.parent / "shared"))
MODEL = SHARED / "models" / "onnc_resnet20.onnx"
RESULTS = ROOT / "benchmarks" / "results"
VARIANTS = [(2, "spinning"), (2, "passive"), (1, "one thread")]


def probe(threads: int, passive: bool, seconds: float) -> dict:
    """In this (fresh) process: steps/s of fine-tuning and onnxruntime's p50 latency of one image."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch

    from onnxprune.graphops.prepare import prepare_model
    from onnxprune.roundtrip.executor import OnnxModule

    torch.set_num_threads(threads)
    model = onnx.load(MODEL)
    module = OnnxModule(prepare_model(model))  # the graph the pruner trains (constant shapes folded)
    name = model.graph.input[0].name
    rng = np.random.default_rng(0)
    images = rng.standard_normal((32, 3, 32, 32)).astype(np.float32)
    labels = torch.from_numpy(rng.integers(0, 10, 32))
    optimizer = torch.optim.SGD(list(module.named_trainable().values()), lr=0.01, momentum=0.9)
    module.train()

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(module.run({name: images})[0], labels)
        optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)
        optimizer.step()

    for _ in range(5):  # allocator and oneDNN warm-up
        step()
    steps, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        step()
        steps += 1
    rate = steps / (time.perf_counter() - started)

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0" if passive else "1")
    session = ort.InferenceSession(str(MODEL), options, providers=["CPUExecutionProvider"])
    one = images[:1]
    for _ in range(20):
        session.run(None, {name: one})
    timings, started = [], time.perf_counter()
    while time.perf_counter() - started < seconds / 2:
        begin = time.perf_counter()
        session.run(None, {name: one})
        timings.append(time.perf_counter() - begin)
    return {"steps_per_s": round(rate, 2), "ort_p50_ms": round(1000 * float(np.median(timings)), 3)}


def run_variant(threads: int, label: str, seconds: float) -> dict:
    passive = label == "passive"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads)}
    env["OMP_WAIT_POLICY"] = "PASSIVE" if passive else "ACTIVE"
    code = (
        "import json, sys; sys.path.insert(0, 'benchmarks'); import bench_passive_waits as b; "
        f"print(json.dumps(b.probe({threads}, {passive}, {seconds})))"
    )
    load_before = round(os.getloadavg()[0], 2)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, check=True)
    row = {"threads": threads, "waits": label, **json.loads(done.stdout.strip().splitlines()[-1])}
    row.update(load_before=load_before, load_after=round(os.getloadavg()[0], 2))
    print(row, flush=True)
    return row


def markdown(results: dict) -> str:
    """The rows as a table, with the load they ran under."""
    lines = [
        f"# Spinning vs passive waits: shared ResNet-20 ({results['date']})",
        "",
        f"Command: `{results['command']}`; {results['cpus']} CPUs; {results['background_load']} background "
        f"processes; load average at the start {results['load_average_start']}, at the end "
        f"{results['load_average_end']}.",
        "",
        "| threads | waits | fine-tuning steps/s (batch 32) | onnxruntime p50, 1 image (ms) | load before -> after |",
        "|---|---|---|---|---|",
        *(
            f"| {r['threads']} | {r['waits']} | {r['steps_per_s']} | {r['ort_p50_ms']} | "
            f"{r['load_before']} -> {r['load_after']} |"
            for r in results["rows"]
        ),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="fine-tuning seconds per variant (latency: half)")
    parser.add_argument("--repeats", type=int, default=2, help="rounds over the variants (interleaved)")
    parser.add_argument("--background-load", type=int, default=0, metavar="N", help="CPU-bound processes beside it")
    parser.add_argument("--name", default="passive_waits")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    results = {
        "command": " ".join(["python", *sys.argv]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpus": len(os.sched_getaffinity(0)),
        "background_load": args.background_load,
        "load_average_start": [round(v, 2) for v in os.getloadavg()],
        "rows": [],
    }
    with BackgroundLoad(args.background_load):
        for _ in range(args.repeats):
            for threads, label in VARIANTS:
                results["rows"].append(run_variant(threads, label, args.seconds))
    results["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / f"{args.name}.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.results_dir / f"{args.name}.md").write_text(markdown(results))


if __name__ == "__main__":
    main()
