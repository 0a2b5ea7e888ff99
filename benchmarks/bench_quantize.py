"""Prune, then quantize: held-out accuracy and onnxruntime latency of each step, side by side.

Models, run as users run them (the ``onnxprune`` CLI as whole processes):
- the shared real ResNet-20 (``../shared/models/onnc_resnet20.onnx``) with real CIFAR-10 test images:
  2,000 for calibration and recovery (the CLI's ``--data``), 2,000 others held out (fixed seed);
- the zoo ResNet-50 (``tests.support.zoo.resnet50``, random weights, BatchNorm statistics randomised),
  latency only (no data: int8 calibrates on generated inputs).
Rows: the original; pruned (``--flops-target``, with recovery on ResNet-20: ``--recovery``'s flags);
quantized only (``--ratio 0 --quantize int8``); pruned + quantized. One CLI run gives the last two
rows' models: the pruned, recovered float model is kept beside the int8 one made from it, so
"quantization beyond pruning" compares exactly those two.
Accuracy: the written models in onnxruntime on the 2,000 held-out images. Latency: one onnxruntime
session per model, 1 thread, warm-up, then rounds that run every model once in turn (interleaved),
medians with their interquartile range, and ratios to the original.

Targets (issue 16): int8 costs at most 0.5 points of held-out accuracy beyond pruning (ResNet-20);
pruned + int8 ResNet-50 runs in at most 0.3x the float original's latency (1 thread).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_quantize.py                      # the issue's table
    PYTHONPATH=. .venv/bin/python benchmarks/bench_quantize.py --smoke --results-dir /tmp/q   # checks the script
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
CLI = [sys.executable, "-m", "onnxprune.service.cli"]
RECOVERY = "--criterion taylor --time-budget 300"  # bench_quality's best recipe (taylor, fine-tuning under a budget)
MAX_INT8_COST_POINTS = 0.5
MAX_R50_RATIO = 0.3


def cifar_splits(work: Path, input_name: str, count: int, seed: int = 0) -> tuple[Path, np.ndarray, np.ndarray]:
    """``count`` calibration images (as an .npz the CLI takes) and ``count`` held-out ones, disjoint."""
    data = np.load(SHARED / "data" / "cifar10-test.npz")
    order = np.random.default_rng(seed).permutation(len(data["labels"]))
    x = ((data["images"].astype(np.float32) / 255.0 - MEAN) / STD).transpose(0, 3, 1, 2).astype(np.float32)
    calib, held = order[:count], order[count : 2 * count]
    path = work / "calib.npz"
    np.savez(path, **{input_name: x[calib], "labels": data["labels"][calib]})
    return path, x[held], data["labels"][held]


def prune(source: Path, output: Path, *args: str) -> dict:
    """One ``onnxprune prune`` process; its wall time, report and command."""
    report = output.with_suffix(".json")
    command = [*CLI, "prune", str(source), "-o", str(output), "--no-benchmark", "--report", str(report), *args]
    started = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise SystemExit(f"onnxprune prune failed ({done.returncode}): {last}\n  command: {shlex.join(command)}")
    return {
        "seconds": round(time.perf_counter() - started, 1),
        "report": json.loads(report.read_text()),
        "command": shlex.join(["onnxprune", *command[3:]]),
    }


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


def resnet20(work: Path, flops_target: float, recovery: list[str], rounds: int, samples: int) -> dict:
    source = SHARED / "models" / "onnc_resnet20.onnx"
    calib, x_held, y_held = cifar_splits(work, "input.1", samples)
    data = ["--data", str(calib)]
    runs = {
        "pruned+int8": prune(
            source, work / "r20-pq.onnx", "--flops-target", str(flops_target), "--quantize", "int8", *data, *recovery
        ),
        # nothing pruned, so nothing to recover: int8 of the original, calibrated on the same images
        "int8": prune(source, work / "r20-q.onnx", "--ratio", "0", "--recovery", "none", "--quantize", "int8", *data),
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
    report = runs["pruned+int8"]["report"]
    rows["pruned"]["macs"] = rows["pruned+int8"]["macs"] = report["macs"]
    cost = round(100 * (rows["pruned"]["held_out_accuracy"] - rows["pruned+int8"]["held_out_accuracy"]), 2)
    return {
        "rows": rows,
        "int8_cost_beyond_pruning_points": cost,
        "target_int8_cost_met": cost <= MAX_INT8_COST_POINTS,
        "tool_evaluation": report.get("evaluation"),
        "quantization": report.get("quantization"),
        "warnings": report.get("warnings", []),
        "cli": {k: {"seconds": v["seconds"], "command": v["command"]} for k, v in runs.items()},
        "held_out_samples": len(y_held),
        "calibration_samples": samples,
    }


def resnet50(work: Path, flops_target: float, rounds: int, size: int) -> dict:
    sys.path.insert(0, str(ROOT))
    from tests.support.zoo import export_onnx, randomize_batchnorm
    from tests.support.zoo import resnet50 as build

    source = work / "resnet50.onnx"
    export_onnx(randomize_batchnorm(build(), seed=0).eval(), (1, 3, size, size), source)
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
    feed = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    rows = interleaved_latency(paths, feed, rounds, warmup=5)
    rows["pruned"]["macs"] = rows["pruned+int8"]["macs"] = runs["pruned+int8"]["report"]["macs"]
    return {
        "rows": rows,
        "input_size": size,
        "target_ratio_met": rows["pruned+int8"]["ratio"] <= MAX_R50_RATIO,
        "cli": {k: {"seconds": v["seconds"], "command": v["command"]} for k, v in runs.items()},
    }


def markdown(results: dict) -> str:
    lines = [
        f"# Prune, then quantize ({results['date']})",
        "",
        f"Command: `{results['command']}` ({results['seconds']:.0f} s). Machine: {results['machine']}; load "
        f"average at start {results['load_average']}, at end {results['load_average_end']}. Latency: "
        f"onnxruntime {results['onnxruntime']}, 1 thread, interleaved rounds, median (IQR) and ratio to the "
        f"original. Pruned rows: `--flops-target {results['flops_target']}`.",
        "",
    ]
    r20 = results["resnet20"]
    lines += [
        f"## ResNet-20 (real weights), CIFAR-10: {r20['calibration_samples']:,} calibration / "
        f"{r20['held_out_samples']:,} held-out images",
        "",
        f"Recovery of the pruned model: `{results['recovery'] or 'none'}`. The pruned and pruned+int8 rows come "
        "from one CLI run: the recovered float model, and the int8 model made from it.",
        "",
        "| model | held-out accuracy | p50 ms (IQR) | latency ratio |",
        "|---|---|---|---|",
    ]
    for label, row in r20["rows"].items():
        lines.append(
            f"| {label} | {row['held_out_accuracy']:.4f} | {row['p50_ms']:.3f} "
            f"({row['p25_ms']:.3f}-{row['p75_ms']:.3f}) | {row['ratio']:.3f} |"
        )
    verdict = "met" if r20["target_int8_cost_met"] else "NOT met"
    lines += [
        "",
        f"int8 beyond pruning costs {r20['int8_cost_beyond_pruning_points']:.2f} points of held-out accuracy "
        f"(pruned minus pruned+int8; target <= {MAX_INT8_COST_POINTS}: {verdict}).",
        "",
        *(f"- CLI `{k}`: {v['seconds']} s, `{v['command']}`" for k, v in r20["cli"].items()),
    ]
    if "resnet50" in results:
        r50 = results["resnet50"]
        lines += [
            "",
            f"## ResNet-50 (zoo, random weights, {r50['input_size']}x{r50['input_size']}), latency only",
            "",
            "| model | p50 ms (IQR) | latency ratio |",
            "|---|---|---|",
        ]
        for label, row in r50["rows"].items():
            lines.append(
                f"| {label} | {row['p50_ms']:.2f} ({row['p25_ms']:.2f}-{row['p75_ms']:.2f}) | {row['ratio']:.3f} |"
            )
        verdict = "met" if r50["target_ratio_met"] else "NOT met"
        lines += [
            "",
            f"pruned + int8: {r50['rows']['pruned+int8']['ratio']:.3f}x the float original's latency "
            f"(target <= {MAX_R50_RATIO}: {verdict}).",
            "",
            *(f"- CLI `{k}`: {v['seconds']} s, `{v['command']}`" for k, v in r50["cli"].items()),
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--flops-target", type=float, default=0.5)
    parser.add_argument("--recovery", default=RECOVERY, help="Extra prune flags for the pruned ResNet-20.")
    parser.add_argument("--samples", type=int, default=2000, help="Calibration images, and as many held out.")
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--skip-resnet50", action="store_true")
    parser.add_argument("--resnet50-size", type=int, default=224)
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="Check the script in minutes: 200 images, no recovery, ResNet-50 at 64x64, 20 rounds.",
    )
    args = parser.parse_args()
    if args.smoke:
        args.samples, args.recovery, args.resnet50_size, args.rounds = 200, "--recovery none", 64, 20
    started = time.perf_counter()
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
        recovery = shlex.split(args.recovery)
        results["resnet20"] = resnet20(work, args.flops_target, recovery, args.rounds, args.samples)
        print(json.dumps(results["resnet20"]["rows"], indent=1), flush=True)
        if not args.skip_resnet50:
            results["resnet50"] = resnet50(work, args.flops_target, max(20, args.rounds // 10), args.resnet50_size)
            print(json.dumps(results["resnet50"]["rows"], indent=1), flush=True)
    results["seconds"] = round(time.perf_counter() - started, 1)
    results["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "quantize.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.results_dir / "quantize.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
