"""onnxprune against Torch-Pruning on ResNet-50 at ratio 0.5, side by side in one run.

Both tools start from the same weights (random, BatchNorm statistics randomised) and remove 50% of
the channels of every prunable group with an L1 criterion, residual-coupled groups included, the
final Linear's outputs kept. Each is timed file to file:

    ours    model.onnx -> load_model, prepare_model, analyze, score_groups(l1), select_by_ratio,
                          apply_plan, onnx.save -> ours.onnx
    theirs  state.pt   -> build ResNet-50, load_state_dict, MagnitudePruner(p=1).step(),
                          torch.onnx.export -> theirs.onnx
    floor   model.onnx -> onnx.load, onnx.save (the least any file -> file tool can take)

The three run alternately in this one process (floor, ours, theirs, floor, ours, theirs, ...),
after one untimed warm-up of each, so lazy imports and first-call costs are not counted for either
(the first runs are reported apart). Files live in /dev/shm where it exists, so disk noise stays out.
Both pruned files are then measured with the same MACs counter (``graphops.cost.measure_cost``)
and timed in one interleaved onnxruntime benchmark (``workers.benchmark.benchmark``).

    .venv/bin/python benchmarks/bench_torch_pruning.py             # writes benchmarks/results/torch_pruning.{json,md}
    .venv/bin/python benchmarks/bench_torch_pruning.py --profile   # and prints a pyinstrument profile of ours

Needs the ``bench`` extra (torch, torch-pruning) and pyinstrument for ``--profile``; about 40 s on 2 cores.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime  # noqa: E402
import torch  # noqa: E402
import torch_pruning as tp  # noqa: E402

from graphops.cost import measure_cost  # noqa: E402
from graphops.dependency import analyze  # noqa: E402
from graphops.loading import load_model  # noqa: E402
from graphops.prepare import prepare_model  # noqa: E402
from graphops.scoring import score_groups  # noqa: E402
from graphops.selection import select_by_ratio  # noqa: E402
from graphops.surgery import apply_plan  # noqa: E402
from tests.zoo import export_onnx, randomize_batchnorm, resnet50  # noqa: E402
from workers.benchmark import benchmark  # noqa: E402

RATIO = 0.5
INPUT_SHAPE = (1, 3, 224, 224)
INPUT_SHAPES = {"input": list(INPUT_SHAPE)}
DEFAULT_TMPDIR = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
# Layers whose widths the report quotes (ONNX node names of the TorchScript export).
QUOTED_LAYERS = (
    "/stem/stem.0/Conv",
    "/stages/stages.0/stages.0.0/conv1/Conv",
    "/stages/stages.0/stages.0.0/conv3/Conv",
    "/stages/stages.0/stages.0.0/downsample/downsample.0/Conv",
    "/stages/stages.2/stages.2.3/conv2/Conv",
    "/stages/stages.3/stages.3.2/conv3/Conv",
    "/fc/Gemm",
)


class Laps:
    """Wall seconds per named stage, and wall and CPU seconds in total, of one timed run.

    CPU time (all threads of this process) is less sensitive than wall time to other processes on
    a shared machine, so both are reported.
    """

    def __init__(self) -> None:
        self.stages: dict[str, float] = {}
        self._start = self._last = time.perf_counter()
        self._cpu_start = self._cpu_last = time.process_time()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.stages[stage] = now - self._last
        self._last = now
        self._cpu_last = time.process_time()

    @property
    def total(self) -> float:
        return self._last - self._start

    @property
    def cpu(self) -> float:
        return self._cpu_last - self._cpu_start


def prune_ours(source: Path, target: Path) -> Laps:
    laps = Laps()
    model = load_model(source)
    laps.lap("load")
    prepared = prepare_model(model, INPUT_SHAPES)
    laps.lap("prepare")
    dep = analyze(prepared, INPUT_SHAPES)
    laps.lap("analyze")
    scores = score_groups(dep, "l1")
    laps.lap("score")
    plan = select_by_ratio(dep, scores, RATIO)
    laps.lap("select")
    pruned = apply_plan(dep, plan)
    laps.lap("apply")
    onnx.save(pruned, target)
    laps.lap("save")
    return laps


def prune_theirs(state_path: Path, target: Path) -> Laps:
    laps = Laps()
    model = resnet50()
    model.load_state_dict(torch.load(state_path, weights_only=True))
    model.eval()
    laps.lap("load")
    pruner = tp.pruner.MagnitudePruner(
        model,
        torch.randn(*INPUT_SHAPE),
        importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=RATIO,
        global_pruning=False,
        ignored_layers=[model.fc],
    )
    laps.lap("dependency graph")
    with torch.no_grad():
        pruner.step()
    laps.lap("prune")
    export_onnx(model, INPUT_SHAPE, target)
    laps.lap("export")
    return laps


def load_and_save(source: Path, target: Path) -> Laps:
    laps = Laps()
    model = onnx.load(source)
    laps.lap("load")
    onnx.save(model, target)
    laps.lap("save")
    return laps


def time_alternately(jobs: dict[str, Callable[[], Laps]], reps: int) -> dict[str, tuple[Laps, list[Laps]]]:
    """(untimed-for-the-median first run, timed runs) of each job, the jobs run in turn."""
    first = {name: job() for name, job in jobs.items()}  # lazy imports, first-call caches
    runs: dict[str, list[Laps]] = {name: [] for name in jobs}
    for _ in range(reps):
        for name, job in jobs.items():
            gc.collect()
            runs[name].append(job())
    return {name: (first[name], runs[name]) for name in jobs}


def timing_summary(first: Laps, runs: list[Laps]) -> dict:
    return {
        "median_s": statistics.median(r.total for r in runs),
        "min_s": min(r.total for r in runs),
        "runs_s": [round(r.total, 4) for r in runs],
        "cpu_median_s": statistics.median(r.cpu for r in runs),
        "first_run_s": round(first.total, 4),
        "stages_median_s": {stage: statistics.median(r.stages[stage] for r in runs) for stage in runs[0].stages},
    }


def layer_widths(model: onnx.ModelProto) -> dict[str, list[int]]:
    """[out, in] channels of every Conv and Gemm weight, by node name."""
    dims = {init.name: list(init.dims) for init in model.graph.initializer}
    return {
        node.name: dims[node.input[1]][:2]
        for node in model.graph.node
        if node.op_type in ("Conv", "Gemm") and node.input[1] in dims
    }


def structure(model: onnx.ModelProto) -> list[tuple]:
    """Each node's op, name, attributes and weight shapes: everything but the weight values."""
    dims = {init.name: tuple(init.dims) for init in model.graph.initializer}
    return [
        (
            node.op_type,
            node.name,
            tuple(dims.get(name) for name in node.input),
            tuple(sorted((a.name, str(onnx.helper.get_attribute_value(a))) for a in node.attribute)),
        )
        for node in model.graph.node
    ]


def compare_structure(source: Path, ours: Path, theirs: Path) -> dict:
    original, mine, other = (onnx.load(path) for path in (source, ours, theirs))
    widths = [layer_widths(model) for model in (original, mine, other)]
    return {
        "layers": {
            name: {"original": widths[0][name], "ours": widths[1].get(name), "theirs": widths[2].get(name)}
            for name in QUOTED_LAYERS
            if name in widths[0]
        },
        "layers_total": len(widths[0]),
        "layers_differing": sorted(name for name in widths[0] if widths[1].get(name) != widths[2].get(name)),
        "same_graph_but_weights": structure(mine) == structure(other),
        "op_counts": {
            "ours": dict(sorted(collections.Counter(n.op_type for n in mine.graph.node).items())),
            "theirs": dict(sorted(collections.Counter(n.op_type for n in other.graph.node).items())),
        },
    }


def cost(path: Path) -> dict[str, int]:
    measured = measure_cost(onnx.load(path), INPUT_SHAPES)
    return {"macs": measured.macs, "params": measured.params}


def latency(ours: Path, theirs: Path, runs: int, warmup: int) -> tuple[dict, dict]:
    """Latency of both models by thread count, and how far their outputs agree (on the same input)."""
    by_threads, agreement = {}, {}
    for threads in (1, 2):
        result = benchmark(ours, theirs, INPUT_SHAPES, runs=runs, warmup=warmup, threads=threads)
        by_threads[str(threads)] = {
            "ours": result.latency.before.model_dump(),
            "theirs": result.latency.after.model_dump(),
            "ratio_p50": result.latency.before.p50 / result.latency.after.p50,
            "ratio_p90": result.latency.before.p90 / result.latency.after.p90,
        }
        agreement = {
            "max_abs_diff": result.fidelity.max_abs_diff,
            "cosine_similarity": result.fidelity.cosine_similarity,
        }
    return by_threads, agreement


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict:
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_pruning": getattr(tp, "__version__", "unknown"),
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "load_average_at_start": list(os.getloadavg()),
    }


def profile_ours(source: Path, target: Path) -> str:
    from pyinstrument import Profiler

    profiler = Profiler(interval=0.001)
    profiler.start()
    prune_ours(source, target)
    profiler.stop()
    return profiler.output_text(unicode=False, color=False, show_all=False)


def run(reps: int, runs: int, warmup: int, profile: bool, tmpdir: Path | None) -> dict:
    env = environment()
    with tempfile.TemporaryDirectory(prefix="bench-torch-pruning-", dir=tmpdir) as tmp:
        work = Path(tmp)
        torch.manual_seed(0)
        model = randomize_batchnorm(resnet50(), seed=0).eval()
        state_path, source = work / "resnet50.pt", work / "resnet50.onnx"
        torch.save(model.state_dict(), state_path)
        export_onnx(model, INPUT_SHAPE, source)
        del model
        ours, theirs, floor = work / "ours.onnx", work / "theirs.onnx", work / "floor.onnx"
        timings = time_alternately(
            {
                "floor": lambda: load_and_save(source, floor),
                "ours": lambda: prune_ours(source, ours),
                "theirs": lambda: prune_theirs(state_path, theirs),
            },
            reps,
        )
        profile_text = profile_ours(source, ours) if profile else None
        latency_ms, agreement = latency(ours, theirs, runs, warmup)
        structure_ = compare_structure(source, ours, theirs)
        result = {
            "benchmark": "onnxprune vs Torch-Pruning, ResNet-50 (random weights, BN stats randomised), ratio 0.5",
            "environment": env,
            "config": {
                "model": "tests.zoo.resnet50(num_classes=1000), input 1x3x224x224, TorchScript export, BN folded",
                "ratio": RATIO,
                "ours": "load_model, prepare_model, analyze, score_groups('l1'), select_by_ratio(0.5), apply_plan, onnx.save",
                "theirs": "MagnitudePruner(MagnitudeImportance(p=1), pruning_ratio=0.5, global_pruning=False, "
                "ignored_layers=[fc]).step(), then tests.zoo.export_onnx",
                "timing": f"one process, floor/ours/theirs alternately, 1 untimed warm-up each then {reps} timed "
                "repetitions; imports not timed",
                "files": f"temporary directory under {tmpdir or tempfile.gettempdir()}",
                "latency": f"workers.benchmark.benchmark(ours, theirs): one child process, interleaved, "
                f"{warmup} warm-up + {runs} timed runs per model, threads 1 and 2",
            },
            "end_to_end": {name: timing_summary(*laps) for name, laps in timings.items()},
            "cost": {"original": cost(source), "ours": cost(ours), "theirs": cost(theirs)},
            "latency_ms": latency_ms,
            # Not a fidelity figure: how alike the two pruned models' outputs are, i.e. whether the two
            # L1 criteria kept the same channels (Torch-Pruning also scores BN and consumer weights).
            "outputs_ours_vs_theirs": agreement,
            **structure_,
        }
    e2e, macs = result["end_to_end"], result["cost"]
    result["ratios"] = {
        "end_to_end_ours_over_theirs": e2e["ours"]["median_s"] / e2e["theirs"]["median_s"],
        "end_to_end_cpu_ours_over_theirs": e2e["ours"]["cpu_median_s"] / e2e["theirs"]["cpu_median_s"],
        "end_to_end_ours_over_floor": e2e["ours"]["median_s"] / e2e["floor"]["median_s"],
        "macs_ours_over_theirs": macs["ours"]["macs"] / macs["theirs"]["macs"],
        "params_ours_over_theirs": macs["ours"]["params"] / macs["theirs"]["params"],
        "latency_p50_ours_over_theirs": {t: v["ratio_p50"] for t, v in result["latency_ms"].items()},
    }
    result["targets_met"] = {
        "end_to_end_no_slower": result["ratios"]["end_to_end_ours_over_theirs"] <= 1.0,
        "macs_same_or_fewer": macs["ours"]["macs"] <= macs["theirs"]["macs"],
        "latency_within_5pct": all(v <= 1.05 for v in result["ratios"]["latency_p50_ours_over_theirs"].values()),
    }
    result["environment"]["load_average_at_end"] = list(os.getloadavg())
    result["reading"] = reading(result)
    if profile_text is not None:
        result["profile_text"] = profile_text
    return result


def reading(result: dict) -> str:
    """The paragraph under the table, from the numbers alone, so that a rerun cannot leave it stale."""
    e2e, cost_, lat, ratios = (result[k] for k in ("end_to_end", "cost", "latency_ms", "ratios"))
    same_graph = result["same_graph_but_weights"]
    ours_stages = sorted(e2e["ours"]["stages_median_s"].items(), key=lambda kv: -kv[1])
    above_floor = e2e["ours"]["median_s"] - e2e["floor"]["median_s"]
    lat_ratios = ", ".join(f"{v['ratio_p50']:.3f} at {t} thread(s)" for t, v in lat.items())
    text = [
        f"Both tools removed half the channels of every prunable group, the residual-coupled ones included "
        f"({result['layers_total'] - len(result['layers_differing'])} of {result['layers_total']} Conv/Gemm layers "
        f"end with the same widths), so MACs ({cost_['ours']['macs'] / 1e9:.3f} G vs {cost_['theirs']['macs'] / 1e9:.3f} G) "
        f"and parameters ({cost_['ours']['params'] / 1e6:.2f} M vs {cost_['theirs']['params'] / 1e6:.2f} M) "
        f"{'are identical' if cost_['ours'] == cost_['theirs'] else 'differ as shown'}.",
        (
            "The two pruned graphs are the same node for node (ops, names, attributes, weight shapes; only "
            "the weight values differ, since the two L1 criteria keep different channels), so their onnxruntime "
            f"latencies can differ only by noise: the measured p50 ratios are {lat_ratios}, and a ratio away "
            "from 1 measures the load other processes put on this shared machine during the run."
            if same_graph
            else f"The two pruned graphs differ in structure (op counts in the JSON); the p50 latency ratios are "
            f"{lat_ratios}."
        ),
        f"End to end, onnxprune took {e2e['ours']['median_s']:.2f} s against {e2e['theirs']['median_s']:.2f} s "
        f"for Torch-Pruning (ratio {ratios['end_to_end_ours_over_theirs']:.2f}; target <= 1.00 "
        f"{'met' if result['targets_met']['end_to_end_no_slower'] else 'missed'}); loading and saving the file alone "
        f"takes {e2e['floor']['median_s']:.2f} s, so {above_floor:.2f} s is ours above the floor, most of it in "
        + ", ".join(f"{name} ({seconds:.2f} s)" for name, seconds in ours_stages[:3])
        + ". Both sides' first runs in the process, which pay for lazy imports and caches, took "
        f"{e2e['ours']['first_run_s']:.2f} s (ours) and {e2e['theirs']['first_run_s']:.2f} s (theirs).",
    ]
    env = result["environment"]
    busiest = max(env["load_average_at_start"][0], env["load_average_at_end"][0])
    if busiest > 0.5 * (env["cpu_count"] or 1):
        text.append(
            f"Caution: the 1-minute load average reached {busiest:.1f} on {env['cpu_count']} cores during this run, "
            "so other processes competed for the CPU; torch's intra-op threads lose more to that than our "
            "single-threaded pipeline, which flatters our end-to-end ratio. Re-run on an idle machine before "
            "trusting the timings."
        )
    return " ".join(text)


def _fmt_widths(widths: list[int] | None) -> str:
    return "-" if widths is None else f"{widths[0]}x{widths[1]}"


def render_markdown(result: dict) -> str:
    env, e2e, cost_, lat, ratios = (result[k] for k in ("environment", "end_to_end", "cost", "latency_ms", "ratios"))
    met = result["targets_met"]

    def tick(ok: bool) -> str:
        return "met" if ok else "**missed**"

    lines = [
        "# onnxprune vs Torch-Pruning: ResNet-50, ratio 0.5",
        "",
        f"Generated by `benchmarks/bench_torch_pruning.py` on {env['date']}: {env['cpu']}, {env['cpu_count']} cores; "
        f"torch {env['torch']}, torch-pruning {env['torch_pruning']}, onnx {env['onnx']}, onnxruntime {env['onnxruntime']}.",
        f"Timing: {result['config']['timing']}. Latency: {result['config']['latency']}. "
        f"Load average (1 min) {env['load_average_at_start'][0]:.2f} at the start, "
        f"{env['load_average_at_end'][0]:.2f} at the end.",
        "",
        "| | onnxprune | Torch-Pruning | ours / theirs | target |",
        "|---|---:|---:|---:|---|",
        f"| end to end, file -> file (median s) | {e2e['ours']['median_s']:.2f} | {e2e['theirs']['median_s']:.2f} | "
        f"{ratios['end_to_end_ours_over_theirs']:.2f} | <= 1.00: {tick(met['end_to_end_no_slower'])} |",
        f"| end to end, CPU time of this process (median s) | {e2e['ours']['cpu_median_s']:.2f} | "
        f"{e2e['theirs']['cpu_median_s']:.2f} | {e2e['ours']['cpu_median_s'] / e2e['theirs']['cpu_median_s']:.2f} | |",
        f"| end to end, fastest of {len(e2e['ours']['runs_s'])} (s) | {e2e['ours']['min_s']:.2f} | {e2e['theirs']['min_s']:.2f} | "
        f"{e2e['ours']['min_s'] / e2e['theirs']['min_s']:.2f} | |",
        f"| floor: onnx.load + onnx.save (median s) | {e2e['floor']['median_s']:.2f} | | "
        f"{ratios['end_to_end_ours_over_floor']:.2f} (ours / floor) | |",
        f"| MACs after (G; original {cost_['original']['macs'] / 1e9:.3f}) | {cost_['ours']['macs'] / 1e9:.3f} | "
        f"{cost_['theirs']['macs'] / 1e9:.3f} | {ratios['macs_ours_over_theirs']:.3f} | <= 1.00: {tick(met['macs_same_or_fewer'])} |",
        f"| parameters after (M; original {cost_['original']['params'] / 1e6:.2f}) | {cost_['ours']['params'] / 1e6:.2f} | "
        f"{cost_['theirs']['params'] / 1e6:.2f} | {ratios['params_ours_over_theirs']:.3f} | |",
    ]
    for threads, stats in lat.items():
        for q in ("p50", "p90"):
            target = f"<= 1.05: {tick(stats['ratio_p50'] <= 1.05)}" if q == "p50" else ""
            lines.append(
                f"| onnxruntime {q}, {threads} thread(s) (ms) | {stats['ours'][q]:.2f} | {stats['theirs'][q]:.2f} | "
                f"{stats['ours'][q] / stats['theirs'][q]:.3f} | {target} |"
            )
    lines += ["", "Stages (median s): "]
    for name in ("ours", "theirs"):
        stages = ", ".join(f"{k} {v:.2f}" for k, v in e2e[name]["stages_median_s"].items())
        lines.append(f"- {name}: {stages}")
    lines += [
        "",
        "Widths (out x in channels) of a few layers:",
        "",
        "| layer | original | onnxprune | Torch-Pruning |",
        "|---|---|---|---|",
    ]
    for name, widths in result["layers"].items():
        lines.append(
            f"| `{name}` | {_fmt_widths(widths['original'])} | {_fmt_widths(widths['ours'])} | {_fmt_widths(widths['theirs'])} |"
        )
    differing = result["layers_differing"]
    lines += [
        "",
        f"{result['layers_total'] - len(differing)} of {result['layers_total']} Conv/Gemm layers have the same widths "
        f"in both pruned models"
        + (f"; differing: {', '.join(f'`{n}`' for n in differing)}." if differing else ".")
        + (
            " The two pruned graphs are identical apart from weight values." if result["same_graph_but_weights"] else ""
        ),
    ]
    lines += ["", "## Reading", "", result["reading"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7, help="timed end-to-end repetitions of each side")
    parser.add_argument("--runs", type=int, default=100, help="timed onnxruntime runs per model and thread count")
    parser.add_argument("--warmup", type=int, default=10, help="onnxruntime warm-up runs per model")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument(
        "--tmpdir",
        type=Path,
        default=DEFAULT_TMPDIR,
        help="where the model files are written (default /dev/shm where it exists, so disk noise stays out)",
    )
    parser.add_argument("--profile", action="store_true", help="print a pyinstrument profile of one run of ours")
    args = parser.parse_args()
    result = run(args.reps, args.runs, args.warmup, args.profile, args.tmpdir)
    profile_text = result.pop("profile_text", None)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "torch_pruning.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "torch_pruning.md").write_text(render_markdown(result))
    print(render_markdown(result))
    if profile_text:
        print(profile_text)


if __name__ == "__main__":
    main()
