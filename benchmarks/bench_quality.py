"""Held-out accuracy against MACs removed, on the shared real ResNet-20, as a user runs the CLI (issue 10).

Calibration: 2,000 labelled images of ``../shared/data/cifar10-test.npz``; held out: 2,000 others
(one fixed-seed permutation splits them). Each case is one whole process, then the written model is
evaluated on the held-out images in onnxruntime; nothing the tools see is used for the numbers.

Cases (``--cases``, run in this order whatever order they are given in):
- ``l1:T``, ``taylor:T``: ``onnxprune prune onnc_resnet20.onnx --flops-target T --criterion C --data
  calib.npz --time-budget B --no-benchmark --report r.json``;
- ``torch_pruning:T``: ``torch_pruning_resnet20.py`` (Torch-Pruning's Taylor importance on the same
  weights in a PyTorch ResNet-20, then cross-entropy fine-tuning on the same calibration images),
  pruned to the MACs our ``taylor:T`` row removed (else ``l1:T``'s, else T) and fine-tuned for that
  row's whole wall time (else B); its ratio search and pruning come on top;
- ``auto[:D]``: ``--ratio auto --max-drop D`` (taylor, default D 0.02);
- ``learned[:D]``: ``--criterion learned --max-drop D`` (default D 0.03).
Writes ``NAME.json`` (every row: command, MACs removed, held-out accuracy and drop, wall seconds, load),
``NAME.md`` (the table and the issue's targets, met or not) and ``NAME.png`` after every row.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_quality.py                   # the issue's whole table
    PYTHONPATH=. .venv/bin/python benchmarks/bench_quality.py --cases taylor:0.3 torch_pruning:0.3 auto
    PYTHONPATH=. .venv/bin/python benchmarks/bench_quality.py --smoke --results-dir /tmp/quality  # checks it
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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from background_load import BackgroundLoad  # noqa: E402  (beside this script)
from quality_table import markdown, plot, targets  # noqa: E402

from onnxprune.graphops.cost import measure_cost  # noqa: E402

SHARED = Path(os.environ.get("ONNXPRUNE_SHARED", ROOT.parent / "shared"))
MODEL = SHARED / "models" / "onnc_resnet20.onnx"
MEAN, STD = np.array([0.4914, 0.4822, 0.4465]), np.array([0.2023, 0.1994, 0.2010])
RESULTS = ROOT / "benchmarks" / "results"
CLI = [sys.executable, "-m", "onnxprune.service.cli"]
TORCH_PRUNING = ROOT / "benchmarks" / "torch_pruning_resnet20.py"
FLOPS_METHODS = ("l1", "taylor", "torch_pruning")  # per MACs target, in this order: Torch-Pruning matches ours
DROP_METHODS = {"auto": 0.02, "learned": 0.03}  # default --max-drop
DEFAULT_CASES = [f"{m}:{t}" for t in (0.3, 0.5, 0.7) for m in FLOPS_METHODS] + list(DROP_METHODS)
SMOKE_CASES = [f"{m}:0.3" for m in FLOPS_METHODS] + list(DROP_METHODS)
# The learned search ignores --time-budget (20 episodes x 8 samples per layer by default): cut for --smoke.
SMOKE_ARGS = {"learned": ["--learned-episodes", "2", "--learned-samples", "2"]}


@dataclass(frozen=True)
class Case:
    method: str  # l1, taylor, torch_pruning (value: MACs target) or auto, learned (value: max drop)
    value: float

    def __str__(self) -> str:
        return f"{self.method}:{self.value:g}"

    def prune_args(self) -> list[str]:
        if self.method == "auto":
            return ["--ratio", "auto", "--max-drop", str(self.value), "--criterion", "taylor"]
        if self.method == "learned":
            return ["--criterion", "learned", "--max-drop", str(self.value)]
        return ["--flops-target", str(self.value), "--criterion", self.method]


def parse_case(text: str) -> Case:
    method, _, value = text.partition(":")
    if method in DROP_METHODS:
        return Case(method, float(value) if value else DROP_METHODS[method])
    if method in FLOPS_METHODS and value:
        return Case(method, float(value))
    raise argparse.ArgumentTypeError(f"{text!r}: expected l1:T, taylor:T, torch_pruning:T, auto[:D] or learned[:D]")


def run_order(cases: list[Case]) -> list[Case]:
    """By MACs target, ours before Torch-Pruning (which matches our row's MACs and time); then auto, learned."""

    def key(case: Case) -> tuple:
        if case.method in FLOPS_METHODS:
            return (0, case.value, FLOPS_METHODS.index(case.method))
        return (1, list(DROP_METHODS).index(case.method), case.value)

    return sorted(dict.fromkeys(cases), key=key)


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


def macs(path: Path) -> int:
    model = onnx.load(path)
    return measure_cost(model, {model.graph.input[0].name: [1, 3, 32, 32]}).macs


def run(command: list[str], work: Path) -> tuple[subprocess.CompletedProcess, dict]:
    """One whole process, with its wall time and the load average around it."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    load_before = round(os.getloadavg()[0], 2)
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env)
    timing = {"wall_s": round(time.perf_counter() - started, 1), "load_before": load_before}
    timing["load_after"] = round(os.getloadavg()[0], 2)
    timing["command"] = shlex.join(command).replace(str(work), "$TMP").replace(shlex.join(CLI), "onnxprune")
    timing["command"] = timing["command"].replace(sys.executable, "python").replace(str(ROOT) + "/", "")
    return done, timing


def failed(row: dict, done: subprocess.CompletedProcess) -> dict:
    row["error"] = f"exit {done.returncode}: " + " | ".join(done.stderr.strip().splitlines()[-3:])[-400:]
    print(f"{row['case']}: FAILED {row['error']}", flush=True)
    return row


def evaluated(row: dict, output: Path, held: dict, baseline: float) -> dict:
    row["heldout_accuracy"] = accuracy(output, held)
    row["heldout_drop_points"] = round(100 * (baseline - row["heldout_accuracy"]), 2)
    print(
        f"{row['case']}: MACs -{row['macs_removed']:.1%}, held-out {row['heldout_accuracy']:.4f} "
        f"(drop {row['heldout_drop_points']} points), {row['wall_s']:.0f} s",
        flush=True,
    )
    return row


def ours(case: Case, work: Path, args: argparse.Namespace, held: dict, baseline: float) -> dict:
    output, report_path = work / f"{case}.onnx", work / f"{case}.json"
    command = [*CLI, "prune", str(MODEL), "-o", str(output), *case.prune_args(), "--data", str(work / "calib.npz")]
    command += ["--time-budget", f"{args.time_budget:g}", "--no-benchmark", "--report", str(report_path)]
    command += shlex.split(args.extra) + (SMOKE_ARGS.get(case.method, []) if args.smoke else [])
    done, timing = run(command, work)
    row = {"case": str(case), "method": case.method, "value": case.value, **timing}
    if done.returncode != 0:
        return failed(row, done)
    report = json.loads(report_path.read_text())
    evaluation = report.get("evaluation") or {}
    row["macs_removed"] = round(1 - report["macs"]["after"] / report["macs"]["before"], 4)
    row["tool_split"] = {
        key: evaluation.get(key)
        for key in ("samples", "before", "after_pruning", "after", "validation_drop", "missed_by")
    }
    row["warnings"] = report.get("warnings", [])
    row["stage_seconds"] = report.get("stage_seconds", {})  # where the budget went
    row["output_sha256"] = report.get("output_sha256")
    finetune = evaluation.get("finetune") or {}
    row["finetune"] = {
        key: finetune.get(key)
        for key in ("total_steps", "epochs", "samples_per_s", "train_seconds", "cpu_per_second", "threads")
    }
    return evaluated(row, output, held, baseline)


def torch_pruning(
    case: Case, rows: list[dict], work: Path, args: argparse.Namespace, held: dict, baseline: float
) -> dict:
    """Torch-Pruning at the MACs and wall time of our row at this target (taylor, else l1)."""
    matched = next(
        (r for m in ("taylor", "l1") for r in rows if r["case"] == str(Case(m, case.value)) and "error" not in r), None
    )
    macs_removed = matched["macs_removed"] if matched else case.value
    seconds = matched["wall_s"] if matched else args.time_budget
    output, report_path = work / f"{case}.onnx", work / f"{case}.json"
    command = [sys.executable, str(TORCH_PRUNING), str(MODEL), str(work / "calib.npz"), str(output)]
    command += ["--macs-removed", f"{macs_removed:g}", "--seconds", f"{seconds:g}", "--report", str(report_path)]
    done, timing = run(command, work)
    row = {"case": str(case), "method": case.method, "value": case.value, **timing}
    row["matched_to"] = matched["case"] if matched else None
    if done.returncode != 0:
        return failed(row, done)
    row["macs_removed"] = round(1 - macs(output) / macs(MODEL), 4)
    row["torch_pruning"] = json.loads(report_path.read_text())
    return evaluated(row, output, held, baseline)


def environment() -> dict:
    import importlib.metadata

    import torch

    try:  # only the torch_pruning:T cases need it
        torch_pruning_version = importlib.metadata.version("torch-pruning")
    except importlib.metadata.PackageNotFoundError:
        torch_pruning_version = "not installed"

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.machine(),
    )
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{cpu}, {os.cpu_count()} cores, {platform.platform()}",
        "versions": {
            "onnxruntime": ort.__version__,
            "torch": torch.__version__,
            "torch_pruning": torch_pruning_version,
        },
    }


def write(results: dict, folder: Path, name: str) -> None:
    results["targets"] = targets(results)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(results, indent=1) + "\n")
    (folder / f"{name}.md").write_text(markdown(results))
    plot(results, folder / f"{name}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--cases", nargs="+", type=parse_case, help=f"default: {' '.join(DEFAULT_CASES)}")
    parser.add_argument("--time-budget", type=float, default=600.0, help="--time-budget of every CLI run (s)")
    parser.add_argument("--samples", type=int, default=2000, help="calibration images, and as many held out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--extra", default="", help="more CLI options for every onnxprune run")
    parser.add_argument("--name", default="quality")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    parser.add_argument(
        "--background-load",
        type=int,
        default=0,
        metavar="N",
        help="N CPU-bound processes at this one's priority for the whole run (a busy machine)",
    )
    parser.add_argument("--smoke", action="store_true", help=f"200 images, --time-budget 20, {' '.join(SMOKE_CASES)}")
    args = parser.parse_args()
    if args.smoke:
        args.samples, args.time_budget = 200, 20.0
    cases = run_order(args.cases or [parse_case(c) for c in (SMOKE_CASES if args.smoke else DEFAULT_CASES)])
    calib, held = split(args.seed, args.samples)
    results = {
        "command": shlex.join(["python", *sys.argv]),
        **environment(),
        "model": MODEL.name,
        "calibration_samples": args.samples,
        "heldout_samples": args.samples,
        "seed": args.seed,
        "time_budget": args.time_budget,
        "extra": args.extra,
        "smoke": args.smoke,
        "background_load": args.background_load,
        "cases": [str(c) for c in cases],
        "load_average_start": [round(v, 2) for v in os.getloadavg()],
        "baseline_heldout_accuracy": accuracy(MODEL, held),
        "rows": [],
    }
    print(
        f"original: held-out accuracy {results['baseline_heldout_accuracy']:.4f}; cases {results['cases']}", flush=True
    )
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as folder, BackgroundLoad(args.background_load):
        work = Path(folder)
        os.environ["ONNXPRUNE_CACHE_DIR"] = str(work / "cache")  # latency tables: a first-time user's, not ours
        np.savez(work / "calib.npz", **{onnx.load(MODEL).graph.input[0].name: calib["x"], "labels": calib["labels"]})
        for case in cases:
            baseline = results["baseline_heldout_accuracy"]
            if case.method == "torch_pruning":
                row = torch_pruning(case, results["rows"], work, args, held, baseline)
            else:
                row = ours(case, work, args, held, baseline)
            results["rows"].append(row)
            results["seconds"] = round(time.perf_counter() - started, 1)
            results["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
            write(results, args.results_dir, args.name)
    print(markdown(results), flush=True)


if __name__ == "__main__":
    main()
