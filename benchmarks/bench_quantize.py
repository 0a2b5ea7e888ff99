"""Prune, then quantize: held-out accuracy and onnxruntime latency of each step, side by side.

Models, run as users run them (the ``onnxprune`` CLI as whole processes):
- the shared real ResNet-20 (``../shared/models/onnc_resnet20.onnx``) with real CIFAR-10 images:
  2,000 test images for calibration (and recovery, when asked), 2,000 others held out (fixed seed);
- the zoo ResNet-50 (``tests.zoo.resnet50``, random weights, BatchNorm statistics randomised),
  latency only (no data: int8 calibrates on generated inputs).
Rows: the original, pruned (``--flops-target``), quantized only (``--ratio 0 --quantize int8``), and
pruned + quantized (one run gives both: the float pruned model is kept beside the int8 one).
Latency: one onnxruntime session per model, 1 thread, warm-up, then rounds that run every model once
in turn (interleaved), medians with their interquartile range, and ratios to the original.

    python benchmarks/bench_quantize.py [--flops-target 0.5] [--recovery "--finetune-steps 300"]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ONNXPRUNE_SHARED", ROOT.parent / "shared"))
RESULTS = ROOT / "benchmarks" / "results"
MEAN = np.array([0.4914, 0.4822, 0.4465], np.float32)
STD = np.array([0.2023, 0.1994, 0.2010], np.float32)
CLI = [sys.executable, "-m", "service.cli"]


def cifar_splits(work: Path, input_name: str, count: int = 2000, seed: int = 0) -> tuple[Path, np.ndarray, np.ndarray]:
    """``count`` calibration images (as an .npz the CLI takes) and ``count`` held-out ones, disjoint."""
    data = np.load(SHARED / "data" / "cifar10-test.npz")
    order = np.random.default_rng(seed).permutation(len(data["labels"]))
    x = ((data["images"].astype(np.float32) / 255.0 - MEAN) / STD).transpose(0, 3, 1, 2).astype(np.float32)
    calib, held = order[:count], order[count : 2 * count]
    path = work / "calib.npz"
    np.savez(path, **{input_name: x[calib], "labels": data["labels"][calib]})
    return path, x[held], data["labels"][held]


def prune(source: Path, output: Path, *args: str) -> dict:
    report = output.with_suffix(".json")
    started = time.perf_counter()
    done = subprocess.run(
        [*CLI, "prune", str(source), "-o", str(output), "--no-benchmark", "--report", str(report), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"onnxprune prune failed: {done.stderr.strip().splitlines()[-1]}")
    return {"seconds": round(time.perf_counter() - started, 1), "report": json.loads(report.read_text())}


def accuracy(path: Path, x: np.ndarray, labels: np.ndarray) -> float:
    session = _session(path)
    name = session.get_inputs()[0].name
    batch = session.get_inputs()[0].shape[0]
    step = batch if isinstance(batch, int) and batch > 0 else 256
    logits = np.concatenate([session.run(None, {name: x[i : i + step]})[0] for i in range(0, len(x), step)])
    return float(np.mean(logits.argmax(1) == labels))


def interleaved_latency(paths: dict[str, Path], feed: np.ndarray, rounds: int, warmup: int = 20) -> dict:
    sessions = {label: _session(path) for label, path in paths.items()}
    names = {label: s.get_inputs()[0].name for label, s in sessions.items()}
    for label, session in sessions.items():
        for _ in range(warmup):
            session.run(None, {names[label]: feed})
    times: dict[str, list[float]] = {label: [] for label in sessions}
    for _ in range(rounds):
        for label, session in sessions.items():
            started = time.perf_counter()
            session.run(None, {names[label]: feed})
            times[label].append((time.perf_counter() - started) * 1000)
    base = float(np.median(times["original"]))
    return {
        label: {
            "p50_ms": round(float(np.median(t)), 4),
            "p25_ms": round(float(np.percentile(t, 25)), 4),
            "p75_ms": round(float(np.percentile(t, 75)), 4),
            "ratio": round(float(np.median(t)) / base, 3),
        }
        for label, t in times.items()
    }


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def resnet20(work: Path, flops_target: float, recovery: list[str], rounds: int) -> dict:
    source = SHARED / "models" / "onnc_resnet20.onnx"
    calib, x_held, y_held = cifar_splits(work, "input.1")
    data = ["--data", str(calib), *recovery]
    runs = {
        "pruned+int8": prune(
            source, work / "r20-pq.onnx", "--flops-target", str(flops_target), "--quantize", "int8", *data
        ),
        "int8": prune(source, work / "r20-q.onnx", "--ratio", "0", "--quantize", "int8", "--data", str(calib)),
    }
    paths = {
        "original": source,
        "pruned": work / "r20-pq.float.onnx",
        "int8": work / "r20-q.onnx",
        "pruned+int8": work / "r20-pq.onnx",
    }
    rows = {label: {"held_out_accuracy": round(accuracy(path, x_held, y_held), 4)} for label, path in paths.items()}
    for label, timing in interleaved_latency(paths, x_held[:1], rounds).items():
        rows[label].update(timing)
    rows["pruned"]["macs"] = runs["pruned+int8"]["report"]["macs"]
    return {
        "rows": rows,
        "cli_seconds": {k: v["seconds"] for k, v in runs.items()},
        "held_out_samples": len(y_held),
        "calibration_samples": 2000,
    }


def resnet50(work: Path, flops_target: float, rounds: int) -> dict:
    sys.path.insert(0, str(ROOT))
    from tests.zoo import export_onnx, randomize_batchnorm
    from tests.zoo import resnet50 as build

    source = work / "resnet50.onnx"
    export_onnx(randomize_batchnorm(build(), seed=0).eval(), (1, 3, 224, 224), source)
    runs = {
        "pruned+int8": prune(source, work / "r50-pq.onnx", "--flops-target", str(flops_target), "--quantize", "int8"),
        "int8": prune(source, work / "r50-q.onnx", "--ratio", "0", "--quantize", "int8"),
    }
    paths = {
        "original": source,
        "pruned": work / "r50-pq.float.onnx",
        "int8": work / "r50-q.onnx",
        "pruned+int8": work / "r50-pq.onnx",
    }
    feed = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    return {
        "rows": interleaved_latency(paths, feed, rounds, warmup=5),
        "cli_seconds": {k: v["seconds"] for k, v in runs.items()},
    }


def markdown(results: dict) -> str:
    lines = [
        f"# Prune, then quantize ({results['date']})",
        "",
        f"Command: `{results['command']}`. Machine: {results['machine']}; load average at start "
        f"{results['load_average']}. Latency: onnxruntime {results['onnxruntime']}, 1 thread, interleaved "
        "rounds, median (IQR) and ratio to the original.",
        "",
    ]
    r20 = results["resnet20"]
    lines += [
        "## ResNet-20 (real weights), CIFAR-10: 2,000 calibration / 2,000 held-out images",
        "",
        "| model | held-out accuracy | p50 ms (IQR) | latency ratio |",
        "|---|---|---|---|",
    ]
    for label, row in r20["rows"].items():
        lines.append(
            f"| {label} | {row['held_out_accuracy']:.4f} | {row['p50_ms']:.3f} "
            f"({row['p25_ms']:.3f}-{row['p75_ms']:.3f}) | {row['ratio']:.3f} |"
        )
    lines += [
        "",
        "## ResNet-50 (zoo, random weights), latency only",
        "",
        "| model | p50 ms (IQR) | latency ratio |",
        "|---|---|---|",
    ]
    for label, row in results["resnet50"]["rows"].items():
        lines.append(
            f"| {label} | {row['p50_ms']:.2f} ({row['p25_ms']:.2f}-{row['p75_ms']:.2f}) | {row['ratio']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flops-target", type=float, default=0.5)
    parser.add_argument("--recovery", default="", help="Extra prune flags for the pruned ResNet-20 (recovery).")
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--skip-resnet50", action="store_true")
    args = parser.parse_args()
    results = {
        "date": datetime.date.today().isoformat(),
        "command": " ".join(["python", *sys.argv]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "onnxruntime": ort.__version__,
        "flops_target": args.flops_target,
        "recovery": args.recovery,
    }
    with tempfile.TemporaryDirectory(prefix="bench-quantize-") as folder:
        work = Path(folder)
        results["resnet20"] = resnet20(work, args.flops_target, shlex.split(args.recovery), args.rounds)
        print(json.dumps(results["resnet20"]["rows"], indent=1), flush=True)
        if not args.skip_resnet50:
            results["resnet50"] = resnet50(work, args.flops_target, max(20, args.rounds // 10))
            print(json.dumps(results["resnet50"]["rows"], indent=1), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "quantize.json").write_text(json.dumps(results, indent=1) + "\n")
    if "resnet50" in results:
        (RESULTS / "quantize.md").write_text(markdown(results))


if __name__ == "__main__":
    main()
