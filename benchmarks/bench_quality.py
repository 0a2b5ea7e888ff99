"""Held-out accuracy against MACs removed, on the shared real ResNet-20, as a user runs the CLI.

Calibration: 2,000 labelled images of ``../shared/data/cifar10-test.npz``; held out: 2,000 others
(one fixed-seed permutation splits them). For every (criterion, MACs target) the benchmark runs
``onnxprune prune MODEL --flops-target T --criterion C --data calib.npz --report r.json`` as a whole
process (the default recovery with data: layer-wise reconstruction), then evaluates the written
model on the 2,000 held-out images in onnxruntime. Nothing the tool sees is used for the numbers.

    .venv/bin/python benchmarks/bench_quality.py                       # l1, taylor at 0.3 and 0.5
    .venv/bin/python benchmarks/bench_quality.py --targets 0.3 0.5 0.7 --extra "--finetune-steps 100"
"""

from __future__ import annotations

import argparse
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
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ONNXPRUNE_SHARED", ROOT.parent / "shared"))
MODEL = SHARED / "models" / "onnc_resnet20.onnx"
MEAN, STD = np.array([0.4914, 0.4822, 0.4465]), np.array([0.2023, 0.1994, 0.2010])
RESULTS = ROOT / "benchmarks" / "results"


def split(seed: int, count: int) -> tuple[dict, dict]:
    data = np.load(SHARED / "data" / "cifar10-test.npz")
    order = np.random.default_rng(seed).permutation(len(data["labels"]))

    def take(index):
        x = ((data["images"][index].astype(np.float32) / 255.0 - MEAN) / STD).transpose(0, 3, 1, 2)
        return {"x": x.astype(np.float32), "labels": data["labels"][index].astype(np.int64)}

    return take(order[:count]), take(order[count : 2 * count])


def accuracy(model_path: Path, held: dict) -> float:
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    batch = session.get_inputs()[0].shape[0]
    step = batch if isinstance(batch, int) and batch > 0 else 256
    logits = np.concatenate(
        [session.run(None, {name: held["x"][i : i + step]})[0] for i in range(0, len(held["x"]), step)]
    )
    return float((logits.argmax(1) == held["labels"]).mean())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--criteria", nargs="+", default=["l1", "taylor"])
    parser.add_argument("--targets", nargs="+", type=float, default=[0.3, 0.5])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--extra", default="", help="more CLI options for every run, e.g. '--time-budget 150'")
    parser.add_argument("--name", default="quality")
    args = parser.parse_args()
    cli = [sys.executable, "-m", "onnxprune.service.cli"]
    calib, held = split(args.seed, args.samples)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        input_name = onnx.load(MODEL).graph.input[0].name
        np.savez(tmp / "calib.npz", **{input_name: calib["x"], "labels": calib["labels"]})
        baseline = accuracy(MODEL, held)
        print(f"original: held-out accuracy {baseline:.4f}", flush=True)
        for target in args.targets:
            for criterion in args.criteria:
                out, report_path = tmp / "out.onnx", tmp / "report.json"
                command = [
                    *cli,
                    "prune",
                    str(MODEL),
                    "-o",
                    str(out),
                    "--flops-target",
                    str(target),
                    "--criterion",
                    criterion,
                    "--data",
                    str(tmp / "calib.npz"),
                    "--no-benchmark",
                    "--report",
                    str(report_path),
                    *shlex.split(args.extra),
                ]
                started = time.perf_counter()
                result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
                seconds = time.perf_counter() - started
                if result.returncode != 0:
                    rows.append({"criterion": criterion, "flops_target": target, "error": result.stderr.strip()[-300:]})
                    print(f"{criterion} {target}: FAILED {result.stderr.strip()[-200:]}", flush=True)
                    continue
                report = json.loads(report_path.read_text())
                evaluation = report.get("evaluation") or {}
                row = {
                    "criterion": criterion,
                    "flops_target": target,
                    "wall_s": round(seconds, 1),
                    "macs_removed": round(1 - report["macs"]["after"] / report["macs"]["before"], 4),
                    "heldout_accuracy": accuracy(out, held),
                    "heldout_drop_points": None,
                    "tool_heldout_after_pruning": evaluation.get("after_pruning"),
                    "tool_heldout_after_recovery": evaluation.get("after"),
                    "warnings": report.get("warnings", []),
                    "command": " ".join(shlex.quote(c) for c in command[2:]).replace(str(tmp), "$TMP"),
                }
                row["heldout_drop_points"] = round(100 * (baseline - row["heldout_accuracy"]), 2)
                rows.append(row)
                print(
                    f"{criterion} {target}: MACs -{row['macs_removed']:.1%}, held-out {row['heldout_accuracy']:.4f} "
                    f"(drop {row['heldout_drop_points']} points), {seconds:.0f} s",
                    flush=True,
                )
    results = {
        "model": MODEL.name,
        "baseline_heldout_accuracy": baseline,
        "calibration_samples": args.samples,
        "heldout_samples": args.samples,
        "seed": args.seed,
        "extra": args.extra,
        "rows": rows,
        "machine": platform.platform(),
        "command": " ".join(sys.argv),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(results, indent=1))
    plot(results, RESULTS / f"{args.name}.png")


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    for criterion in sorted({r["criterion"] for r in results["rows"] if "error" not in r}):
        points = sorted(
            (r["macs_removed"], r["heldout_accuracy"])
            for r in results["rows"]
            if r["criterion"] == criterion and "error" not in r
        )
        axes.plot([100 * p[0] for p in points], [100 * p[1] for p in points], "o-", label=criterion)
    axes.axhline(100 * results["baseline_heldout_accuracy"], color="grey", linestyle="--", label="original")
    axes.set_xlabel("MACs removed (%)")
    axes.set_ylabel("held-out accuracy (%)")
    axes.set_title(f"{results['model']}: {results['calibration_samples']} calibration images {results['extra']}")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
