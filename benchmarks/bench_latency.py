"""Does pruning make models faster in onnxruntime? Latency ratios as users see them, whole CLI processes.

For every model (the shared real models, and zoo MobileNetV2 / ResNet-18 at 224x224), at 1 thread
(``--threads N``: N onnxruntime threads for every prune and bench, results in ``latency_Nthreads.*``):

    onnxprune prune M --flops-target 0.5 --no-benchmark            (default --round-to auto)
    onnxprune prune M --flops-target 0.5 --no-benchmark --round-to 1 (exact counts, the old default)
    onnxprune bench M pruned.onnx --runs R --json                   (interleaved, p50 ratio, 95% interval)
    onnxprune prune M --latency-target 0.5 / 0.7 --runs R           (its own closing benchmark is the result)
    yolox_nano also at --flops-target 0.4

With ``--torch-pruning-mobilenet``, MobileNetV2 pruned by Torch-Pruning (ratio 0.5) and by onnxprune at
the MACs it removed, timed side by side (``benchmarks/mobilenet_vs_torch_pruning.py``); only that, unless
``--models`` names models too.

The machine load (``/proc/loadavg``) is recorded before each model: the 2 cores are shared with other
jobs, and ratios of interleaved runs are what stays meaningful under load.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_latency.py [--models NAME ...] [--runs 20]
    PYTHONPATH=. .venv/bin/python benchmarks/bench_latency.py --torch-pruning-mobilenet --runs 30
    PYTHONPATH=. .venv/bin/python benchmarks/bench_latency.py --threads 2 --cases flops
    # writes benchmarks/results/latency.json and latency.md (results merge by model name; --name NAME: NAME.*)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared" / "models" if (REPO.parent / "shared").exists() else Path("/work/shared/models")
RESULTS = REPO / "benchmarks" / "results"
CLI = [sys.executable, "-m", "onnxprune.service.cli"]
THREADS = ["--threads", "1"]  # set from --threads in main(): every prune and bench runs with it
CODE = os.environ.get("BENCH_COMMIT", "")  # the onnxprune commit measured (set when run from a snapshot)
# Symbolic dims other than batch need a shape (batch resolves to 1 as in the CLI): the OCR direction
# classifier's own input size (PaddleOCR cls_image_shape 3x48x192).
SHAPES = {"paddle_ch_ppocr_mobile_v2.0_cls_infer": ["x:1x3x48x192"]}


def zoo_models(folder: Path) -> dict[str, Path]:
    """MobileNetV2 and ResNet-18 at full width, 224x224, BatchNorm statistics randomised, exported."""
    import torch

    from tests.support import zoo

    torch.manual_seed(0)
    models = {}
    for name, module in (
        ("zoo_mobilenet_v2", zoo.mobilenet_v2(num_classes=1000, width_multiplier=1.0)),
        ("zoo_resnet18", zoo.resnet18(num_classes=1000)),
    ):
        zoo.randomize_batchnorm(module, seed=0)
        models[name] = zoo.export_onnx(module, (1, 3, 224, 224), folder / f"{name}.onnx")
    return models


def run(args: list[str], timeout: float = 900.0) -> tuple[int, str, float]:
    started = time.perf_counter()
    try:
        done = subprocess.run(
            CLI + args, capture_output=True, text=True, timeout=timeout, env={**os.environ, "PYTHONPATH": str(REPO)}
        )
        return done.returncode, done.stdout + done.stderr, time.perf_counter() - started
    except subprocess.TimeoutExpired:
        return 124, "timeout", time.perf_counter() - started


def cpu_name() -> str:
    from onnxprune.workers.latency import cpu_model

    return cpu_model() or platform.machine()


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def bench_pair(model: Path, pruned: Path, shapes: list[str], runs: int) -> dict:
    code, out, seconds = run(["bench", str(model), str(pruned), "--runs", str(runs), "--json", *THREADS, *shapes])
    if code != 0:
        return {"error": out.strip().splitlines()[-1] if out.strip() else f"exit {code}"}
    data = json.loads(out[out.index("{") :])
    change = data["latency_ms"]["change"]
    return {
        "ratio": change["ratio"],
        "low": change["low"],
        "high": change["high"],
        "p90_ratio": change["p90_ratio"],
        "summary": change["summary"],
        "within_noise": change["within_noise"],
        "p50_before_ms": data["latency_ms"]["before"]["p50"],
        "p50_after_ms": data["latency_ms"]["after"]["p50"],
        "min_ratio": round(data["latency_ms"]["after"]["min"] / data["latency_ms"]["before"]["min"], 5),
        "bench_seconds": round(seconds, 1),
    }


def flops_case(model: Path, shapes: list[str], folder: Path, target: float, round_to: str, runs: int) -> dict:
    out, report = folder / f"f{target}_{round_to}.onnx", folder / f"f{target}_{round_to}.json"
    args = [
        "prune",
        str(model),
        "-o",
        str(out),
        "--flops-target",
        str(target),
        "--no-benchmark",
        "--report",
        str(report),
        *THREADS,
        *shapes,
    ] + ([] if round_to == "auto" else ["--round-to", round_to])
    code, text, seconds = run(args)
    if code != 0:
        return {"error": text.strip().splitlines()[-1] if text.strip() else f"exit {code}"}
    data = json.loads(report.read_text())
    result = {
        "macs_ratio": round(data["macs"]["after"] / data["macs"]["before"], 4),
        "round_to": data.get("round_to"),
        "prune_seconds": round(seconds, 1),
    }
    return {**result, **bench_pair(model, out, shapes, runs)}


def latency_case(model: Path, shapes: list[str], folder: Path, target: float, runs: int, budget: float) -> dict:
    out, report = folder / f"l{target}.onnx", folder / f"l{target}.json"
    code, text, seconds = run(
        [
            "prune",
            str(model),
            "-o",
            str(out),
            "--latency-target",
            str(target),
            "--runs",
            str(runs),
            "--latency-budget",
            str(budget),
            "--latency-iterations",
            "2",
            "--report",
            str(report),
            *THREADS,
            *shapes,
        ]
    )
    if code != 0:
        return {"error": text.strip().splitlines()[-1] if text.strip() else f"exit {code}"}
    data = json.loads(report.read_text())
    final, loop = data["latency_ms"]["change"], data["latency_target"]
    stats = data["latency_ms"]
    return {
        "ratio": final["ratio"],
        "low": final["low"],
        "high": final["high"],
        "p90_ratio": final["p90_ratio"],
        "min_ratio": round(stats["after"]["min"] / stats["before"]["min"], 5),
        "summary": final["summary"],
        "loop_ratio": min(i["measured"]["ratio"] for i in loop["iterations"]),  # the best pass
        "predicted": loop["predicted"],
        "met_in_loop": any(i["measured"]["ratio"] <= target for i in loop["iterations"]),
        "passes": len(loop["iterations"]),
        "step": loop["step"],
        "measured_groups": loop["measured_groups"],
        "groups": len(loop["groups"]),
        "table_seconds": loop["table_seconds"],
        "macs_ratio": round(data["macs"]["after"] / data["macs"]["before"], 4),
        "prune_seconds": round(seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", help="model names (file stems); default: all")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--budget", type=float, default=20.0, help="--latency-budget per model (s)")
    parser.add_argument("--cases", nargs="*", default=["flops", "latency"], help="flops and/or latency")
    parser.add_argument("--summarise-only", action="store_true", help="rewrite latency.md from latency.json")
    parser.add_argument(
        "--torch-pruning-mobilenet",
        action="store_true",
        help="MobileNetV2: Torch-Pruning at ratio 0.5 against onnxprune at the same MACs (--runs rounds)",
    )
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads of every prune and bench")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs per model (--torch-pruning-mobilenet)")
    parser.add_argument(
        "--name", help="results file stem (another machine's run beside the committed one); default: latency[_Nthreads]"
    )
    options = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    THREADS[1] = str(options.threads)
    stem = options.name or ("latency" if options.threads == 1 else f"latency_{options.threads}threads")
    path = RESULTS / f"{stem}.json"
    results = json.loads(path.read_text()) if path.exists() else {"models": {}}
    if options.summarise_only:
        (RESULTS / f"{stem}.md").write_text(markdown(results))
        return
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
        if options.torch_pruning_mobilenet:
            side_by_side(results, Path(tmp) / "tp_mobilenet_v2", options.runs, options.warmup)
            path.write_text(json.dumps(results, indent=1))
        wanted = options.models or ([] if options.torch_pruning_mobilenet else None)  # None: every model
        models = {p.stem: p for p in sorted(SHARED.glob("*.onnx"))}
        if wanted is None or any(name.startswith("zoo_") for name in wanted):
            models.update(zoo_models(Path(tmp)))
        for name in list(models) if wanted is None else wanted:
            model = models.get(name)
            if model is None:
                print(f"{name}: no such model", file=sys.stderr)
                continue
            folder = Path(tmp) / name
            folder.mkdir()
            # A first-time user's cache: no table from an earlier run changes what --flops-target chooses.
            os.environ["ONNXPRUNE_CACHE_DIR"] = str(folder / "cache")
            shapes = [f"--input-shape={s}" for s in SHAPES.get(name, [])]
            entry: dict = results["models"].get(name, {})
            now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
            if "flops" in options.cases:
                entry.update(load_before=load(), started=now, flops_code=CODE)
                entry["flops_0.5_auto"] = flops_case(model, shapes, folder, 0.5, "auto", options.runs)
                entry["flops_0.5_round1"] = flops_case(model, shapes, folder, 0.5, "1", options.runs)
                if name == "yolox_nano":
                    entry["flops_0.4_auto"] = flops_case(model, shapes, folder, 0.4, "auto", options.runs)
                entry["load_after"] = load()
            if "latency" in options.cases:
                entry.update(latency_load_before=load(), latency_started=now, latency_code=CODE)
                for target in (0.5, 0.7):
                    entry[f"latency_{target}"] = latency_case(
                        model, shapes, folder, target, options.runs, options.budget
                    )
                entry["latency_load_after"] = load()
            results["models"][name] = entry
            print(name, json.dumps(entry), flush=True)
            command = "PYTHONPATH=. python benchmarks/bench_latency.py " + " ".join(sys.argv[1:])
            results.update(
                machine=cpu_name(),
                threads=options.threads,
                runs=options.runs,
                commands=sorted(set(results.get("commands", [])) | {command}),
            )
            path.write_text(json.dumps(results, indent=1))
    (RESULTS / f"{stem}.md").write_text(markdown(results))


def side_by_side(results: dict, folder: Path, rounds: int, warmup: int) -> None:
    """MobileNetV2 against Torch-Pruning (``mobilenet_vs_torch_pruning``), into ``results``."""
    from mobilenet_vs_torch_pruning import mobilenet_case

    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    before = load()
    entry = mobilenet_case(folder, rounds, warmup, run)
    entry.update(load_before=before, load_after=load(), started=now, code=CODE, machine=cpu_name())
    entry["command"] = "PYTHONPATH=. python benchmarks/bench_latency.py " + " ".join(sys.argv[1:])
    results["torch_pruning_mobilenet_v2"] = entry
    print("torch_pruning_mobilenet_v2", json.dumps(entry), flush=True)


def markdown(results: dict) -> str:
    """The table and the issue's targets, met or not."""
    rows = [
        "| model | load | MACs (auto) | latency (auto) | MACs (round 1) | latency (round 1) | "
        "latency target 0.5 | latency target 0.7 |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def cell(case: dict | None, key: str = "ratio") -> str:
        if not case:
            return "-"
        if "error" in case:
            return f"error: {case['error'][:60]}"
        band = f" [{case['low']:.2f}, {case['high']:.2f}]" if "low" in case and key == "ratio" else ""
        fastest = f"; fastest {case['min_ratio']:.2f}" if key == "ratio" and case.get("min_ratio") else ""
        macs = f"; MACs {case['macs_ratio']:.2f}" if key == "ratio" and "predicted" in case else ""
        return f"{case[key]:.3f}{band}{fastest}{macs}"

    auto_ratios, one_ratios, target_ratios = [], [], []
    auto_fastest, target_fastest = [], []
    for name, entry in sorted(results["models"].items()):
        rows.append(
            f"| {name} | {entry.get('load_before', '-')} | {cell(entry.get('flops_0.5_auto'), 'macs_ratio')} | "
            f"{cell(entry.get('flops_0.5_auto'))} | {cell(entry.get('flops_0.5_round1'), 'macs_ratio')} | "
            f"{cell(entry.get('flops_0.5_round1'))} | {cell(entry.get('latency_0.5'))} | "
            f"{cell(entry.get('latency_0.7'))} |"
        )
        for key, bucket in (
            ("flops_0.5_auto", auto_ratios),
            ("flops_0.5_round1", one_ratios),
            ("latency_0.5", target_ratios),
        ):
            if "ratio" in entry.get(key, {}):
                bucket.append(entry[key]["ratio"])
        for key, bucket in (("flops_0.5_auto", auto_fastest), ("latency_0.5", target_fastest)):
            if entry.get(key, {}).get("min_ratio"):
                bucket.append(entry[key]["min_ratio"])
    lines = [
        f"# Latency after pruning, onnxruntime CPU, {results.get('threads', 1)} thread(s)",
        "",
        "Commands: "
        + "; ".join(f"`{c}`" for c in results.get("commands", []))
        + f" ({results.get('runs')} interleaved runs per comparison, {results.get('machine')}). "
        "Ratios are pruned p50 / original p50 (below 1: faster) with the 95% bootstrap interval over "
        "interleaved pairs, and 'fastest' the ratio of the fastest runs (a CPU-bound run is never faster than its "
        "undisturbed time; under load the p50 intervals are wide); 'load' is /proc/loadavg before the model "
        "(2 cores shared with other jobs).",
        "",
        *rows,
        "",
    ]

    def median(values: list[float]) -> float:
        return sorted(values)[len(values) // 2] if values else float("nan")

    if results.get("notes"):
        lines += ["## Notes", "", *[f"- {note}" for note in results["notes"]], ""]
    lines += ["## Targets of issue 11", ""]
    if auto_ratios:
        worst = max(auto_ratios)
        lines.append(
            f"- `--flops-target 0.5` (default round-to auto): median latency ratio {median(auto_ratios):.3f} "
            f"(target <= 0.6: {'met' if median(auto_ratios) <= 0.6 else 'NOT met'}), worst {worst:.3f} "
            f"(target <= 0.95: {'met' if worst <= 0.95 else 'NOT met'}), over {len(auto_ratios)} models; "
            f"with `--round-to 1`: median {median(one_ratios):.3f}, worst {max(one_ratios or [float('nan')]):.3f}."
        )
    if target_ratios:
        share = sum(r <= 0.55 for r in target_ratios) / len(target_ratios)
        lines.append(
            f"- `--latency-target 0.5`: {share:.0%} of {len(target_ratios)} models at <= 0.55 "
            f"(target >= 80%: {'met' if share >= 0.8 else 'NOT met'})."
        )
    if auto_fastest:
        lines.append(
            f"- The same from the fastest runs (robust to preemption on the loaded machine; models measured "
            f"with it only): `--flops-target 0.5` median {median(auto_fastest):.3f}, worst "
            f"{max(auto_fastest):.3f} over {len(auto_fastest)} models; `--latency-target 0.5` "
            f"{sum(r <= 0.55 for r in target_fastest)} of {len(target_fastest)} at <= 0.55."
        )
    yolox = results["models"].get("yolox_nano", {}).get("flops_0.4_auto", {})
    if "ratio" in yolox:
        speedup = 1.0 / yolox["ratio"]
        lines.append(
            f"- `yolox_nano` at `--flops-target 0.4`: MACs x{yolox['macs_ratio']:.3f}, {speedup:.2f}x faster "
            f"(target >= 1.4x: {'met' if speedup >= 1.4 else 'NOT met'})."
        )
    from mobilenet_vs_torch_pruning import markdown as side_by_side_markdown

    side = side_by_side_markdown(results.get("torch_pruning_mobilenet_v2"))
    return "\n".join(lines + ([""] + side if side else [])).rstrip() + "\n"


if __name__ == "__main__":
    main()
