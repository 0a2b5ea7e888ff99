"""MobileNetV2 pruned by Torch-Pruning and by onnxprune at the same MACs, timed side by side in onnxruntime.

``bench_latency.py --torch-pruning-mobilenet`` runs it:

    the network  tests.support.zoo.mobilenet_v2 at full width, 1000 classes, 224x224 (the zoo's MobileNetV2, the
                 one ``zoo_mobilenet_v2`` in the latency table is exported from), torch.manual_seed(0),
                 BatchNorm statistics randomised (seed 0); exported unpruned with tests.support.zoo.export_onnx
    theirs       torch-pruning: MagnitudePruner, MagnitudeImportance(p=1) (L1, as onnxprune's default
                 criterion), ratio 0.5 in every group, the classifier ignored; exported the same way
    ours         ``python -m onnxprune.service.cli prune original.onnx --flops-target F --no-benchmark``
                 (a CLI process, default --round-to auto), F = the MACs fraction Torch-Pruning removed
                 (both measured on the ONNX files with onnxprune's cost model)
    timing       onnxruntime, 1 intra-op thread, sequential, all graph optimisations (``onnxprune bench``'s
                 settings), the same seeded input; warm-up, then R rounds, each running the three models once
                 in a rotating order; per model median and IQR of its runs; ratios to the original per round
                 (median and IQR) and of the fastest runs

The issue's target: ours at most 0.35x the original's latency (Torch-Pruning's MobileNetV2: 0.42x).
"""

from __future__ import annotations

import importlib.metadata
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

INPUT_SHAPE = (1, 3, 224, 224)
INPUT_SHAPES = {"input": list(INPUT_SHAPE)}
TP_RATIO = 0.5
TARGET_RATIO = 0.35
SIDES = ("original", "torch_pruning", "onnxprune")

CliRun = Callable[[list[str]], tuple[int, str, float]]


def build_models(folder: Path) -> tuple[Path, Path]:
    """The unpruned MobileNetV2 and Torch-Pruning's cut of it, both exported to ONNX."""
    import torch
    import torch_pruning as tp

    from tests.support import zoo

    torch.manual_seed(0)
    model = zoo.mobilenet_v2(num_classes=1000, width_multiplier=1.0)
    zoo.randomize_batchnorm(model, seed=0)
    model.eval()
    original = zoo.export_onnx(model, INPUT_SHAPE, folder / "original.onnx")
    classifier = model[-1]  # Linear(1280, 1000): its outputs are the classes
    pruner = tp.pruner.MagnitudePruner(
        model,
        torch.randn(*INPUT_SHAPE),
        importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=TP_RATIO,
        global_pruning=False,
        ignored_layers=[classifier],
    )
    with torch.no_grad():
        pruner.step()
    theirs = zoo.export_onnx(model, INPUT_SHAPE, folder / "torch_pruning.onnx")
    return original, theirs


def macs_of(path: Path) -> int:
    import onnx

    from onnxprune.graphops.cost import measure_cost

    return measure_cost(onnx.load(path), INPUT_SHAPES).macs


def conv_widths(path: Path) -> list[int]:
    """Output channels of every Conv, in graph order."""
    import onnx

    model = onnx.load(path)
    dims = {init.name: list(init.dims) for init in model.graph.initializer}
    return [dims[n.input[1]][0] for n in model.graph.node if n.op_type == "Conv" and n.input[1] in dims]


def interleaved_latency(paths: dict[str, Path], rounds: int, warmup: int) -> dict[str, list[float]]:
    """Milliseconds per run of each model: ``warmup`` untimed runs each, then ``rounds`` rounds in which
    every model runs once, the order rotating by one each round (no model always first after another)."""
    import onnx

    from onnxprune.workers.benchmark import make_inputs
    from onnxprune.workers.ort_sessions import cpu_session

    inputs = make_inputs(onnx.load(paths["original"]), INPUT_SHAPES, 0)
    sessions = {name: cpu_session(path.read_bytes(), threads=1, optimization="all") for name, path in paths.items()}
    names = list(sessions)
    for session in sessions.values():
        for _ in range(warmup):
            session.run(None, inputs)
    runs: dict[str, list[float]] = {name: [] for name in names}
    for index in range(rounds):
        for name in names[index % len(names) :] + names[: index % len(names)]:
            start = time.perf_counter_ns()
            sessions[name].run(None, inputs)
            runs[name].append((time.perf_counter_ns() - start) / 1e6)
    return runs


def quartiles(values: list[float]) -> dict[str, float]:
    low, median, high = np.percentile(values, [25, 50, 75])
    return {"median": round(float(median), 4), "q1": round(float(low), 4), "q3": round(float(high), 4)}


def summarise(runs: dict[str, list[float]]) -> dict[str, dict]:
    """Per model: median and IQR of its runs; the ratio to the original per round (median, IQR), and
    the ratio of the fastest runs."""
    base = np.asarray(runs["original"])
    result = {}
    for name, values in runs.items():
        entry: dict = {"ms": quartiles(values), "fastest_ms": round(min(values), 4)}
        if name != "original":
            entry["ratio"] = quartiles(list(np.asarray(values) / base))
            entry["ratio_of_medians"] = round(float(np.median(values) / np.median(base)), 4)
            entry["fastest_ratio"] = round(min(values) / float(base.min()), 4)
        result[name] = entry
    return result


def mobilenet_case(folder: Path, rounds: int, warmup: int, cli: CliRun) -> dict:
    """Both sides pruned, then timed; what the results JSON keeps of it."""
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    original, theirs = build_models(folder)
    tp_seconds = time.perf_counter() - started
    macs = {"original": macs_of(original), "torch_pruning": macs_of(theirs)}
    fraction = round(1.0 - macs["torch_pruning"] / macs["original"], 4)
    ours, report = folder / "onnxprune.onnx", folder / "onnxprune.json"
    args = ["prune", str(original), "-o", str(ours), "--flops-target", str(fraction), "--no-benchmark"]
    code, text, seconds = cli([*args, "--report", str(report)])
    if code != 0:
        return {"error": text.strip().splitlines()[-1] if text.strip() else f"exit {code}"}
    data = json.loads(report.read_text())
    macs["onnxprune"] = data["macs"]["after"]
    paths = {"original": original, "torch_pruning": theirs, "onnxprune": ours}
    timing = summarise(interleaved_latency(paths, rounds, warmup))
    cut = data.get("fastest_cut")
    return {
        "torch_pruning": importlib.metadata.version("torch-pruning"),
        "tp_ratio": TP_RATIO,
        "flops_target": fraction,
        "ours_command": "python -m onnxprune.service.cli prune original.onnx -o onnxprune.onnx " + " ".join(args[4:]),
        "round_to": data.get("round_to"),
        "round_to_source": data.get("round_to_source"),
        "fastest_cut": None if cut is None else {"chosen": cut["chosen"], "predicted_ratio": cut["predicted_ratio"]},
        "prune_seconds": round(seconds, 1),
        "tp_seconds": round(tp_seconds, 1),
        "rounds": rounds,
        "warmup": warmup,
        "macs_ratio": {name: round(value / macs["original"], 4) for name, value in macs.items()},
        "conv_widths": {name: conv_widths(path) for name, path in paths.items()},
        "latency": timing,
    }


def markdown(entry: dict | None) -> list[str]:
    """The section of latency.md: one row per side, and the target."""
    if not entry:
        return []
    lines = ["## MobileNetV2 side by side with Torch-Pruning", ""]
    if "error" in entry:
        return lines + [f"error: {entry['error']}", ""]
    lines += [
        f"tests.support.zoo MobileNetV2 (1.0x, 224x224, random weights, BatchNorm randomised), pruned by torch-pruning "
        f"{entry['torch_pruning']} (MagnitudePruner, L1, ratio {entry['tp_ratio']}, classifier ignored) and by "
        f"`{entry['ours_command']}` (round-to {entry['round_to']}: {entry['round_to_source']}"
        + (
            f"; equal-MACs cut '{entry['fastest_cut']['chosen']}', predicted {entry['fastest_cut']['predicted_ratio']}"
            if entry.get("fastest_cut")
            else ""
        )
        + f"). onnxruntime 1 thread, {entry['rounds']} interleaved rounds after {entry['warmup']} warm-up run(s) each; "
        "median [IQR]; ratios to the original per round. Load before: "
        f"{entry.get('load_before', '-')}.",
        "",
        "| side | MACs | latency ms | ratio to original | ratio of fastest runs |",
        "|---|---|---|---|---|",
    ]
    for name in SIDES:
        timing = entry["latency"][name]
        ms = timing["ms"]
        ratio = timing.get("ratio")
        lines.append(
            f"| {name} | {entry['macs_ratio'][name]:.3f} | {ms['median']:.3f} [{ms['q1']:.3f}, {ms['q3']:.3f}] | "
            + ("1" if ratio is None else f"{ratio['median']:.3f} [{ratio['q1']:.3f}, {ratio['q3']:.3f}]")
            + f" | {timing.get('fastest_ratio', 1):.3f} |"
        )
    ours = entry["latency"]["onnxprune"]["ratio"]["median"]
    theirs = entry["latency"]["torch_pruning"]["ratio"]["median"]
    lines += [
        "",
        f"- Target: onnxprune at most {TARGET_RATIO}x the original's latency: {ours:.3f}x "
        f"({'met' if ours <= TARGET_RATIO else 'NOT met'}); Torch-Pruning {theirs:.3f}x.",
        "",
    ]
    return lines
