"""onnxprune as users run it, whole processes: against Torch-Pruning on ResNet-50, and against the
load+save floor on a VGG-19-size model.

    resnet50  ours    python -m onnxprune prune resnet50.onnx --ratio 0.5 --criterion l1 --no-benchmark -o ours.onnx
              theirs  python benchmarks/torch_pruning_resnet50.py resnet50.pt theirs.onnx
                      (load the state dict, MagnitudePruner with L1 at 0.5, export to ONNX)
              floor   python -c "onnx.save(onnx.load(resnet50.onnx), floor.onnx)"
    vgg19     ours    python -m onnxprune prune vgg19.onnx --ratio 0.3 --criterion l1 --no-benchmark -o ours.onnx
              floor   the same load + save, on the ~575 MB model (random weights, built in code here)

Both ResNet-50 sides start from the same weights (``tests.support.zoo.resnet50``, BatchNorm statistics
randomised). Verification stays on: every onnxprune run checks its result with onnx.checker and the
masked-original oracle (the warm-up run's report shows the verify stage and the fidelity).

Each case runs one untimed warm-up of every side, then ``--reps`` rounds with every side once per
round in turn, so drift in machine load hits all sides alike. Per run: wall time, CPU time (user +
system of the whole process tree) and peak RSS (the largest process of the tree, from ``os.wait4``);
reported as medians with the fastest and slowest run. The two pruned ResNet-50s are then compared
(MACs, layer widths) and timed in one interleaved onnxruntime benchmark. Files live in /dev/shm
where it exists, so disk noise stays out.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_torch_pruning.py [--reps 7] [--cases resnet50 vgg19]

Writes benchmarks/results/torch_pruning.{json,md}. Needs the ``bench`` extra (torch, torch-pruning);
about 5.5 minutes on a loaded 2-core machine (less idle), 3 GB of memory for the VGG-19 case.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402

from onnxprune.graphops.cost import measure_cost  # noqa: E402

RESNET_RATIO = 0.5
VGG_RATIO = 0.3
INPUT_SHAPE = (1, 3, 224, 224)
INPUT_SHAPES = {"input": list(INPUT_SHAPE)}
DEFAULT_TMPDIR = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
TARGETS = {"resnet50_time_ours_over_theirs": 0.8, "vgg19_time_ours_over_floor": 3.0, "vgg19_rss_ours_over_floor": 2.0}
# Layers whose widths the report quotes (ONNX node names of the TorchScript export).
QUOTED_LAYERS = (
    "/stem/stem.0/Conv",
    "/stages/stages.0/stages.0.0/conv1/Conv",
    "/stages/stages.0/stages.0.0/conv3/Conv",
    "/stages/stages.2/stages.2.3/conv2/Conv",
    "/stages/stages.3/stages.3.2/conv3/Conv",
    "/fc/Gemm",
)
FLOOR_CODE = "import sys, onnx; onnx.save(onnx.load(sys.argv[1]), sys.argv[2])"
# VGG-19 (configuration E): 16 3x3 convs, 5 max-pools, three fully connected layers; 143.7 M parameters.
VGG19_LAYERS = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]


# ---- running whole processes ----------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    wall_s: float
    cpu_s: float  # user + system time of the process and every child it waited for
    peak_rss_mb: float  # the largest resident set of any process in the tree


# Runs the command and reports its rusage as JSON. A fresh small process does the waiting: a child
# forked from this one would count this process's memory (the models, torch) in its peak RSS, since
# the kernel keeps the high-water mark across exec.
LAUNCHER = """
import json, os, subprocess, sys, time
start = time.perf_counter()
process = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(process.pid, 0)
wall = time.perf_counter() - start
code = os.waitstatus_to_exitcode(status)
with open(sys.argv[1], "w") as out:
    json.dump({"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mb": usage.ru_maxrss / 1024}, out)
sys.exit(code)
"""


def run_process(command: list[str], log: Path) -> Run:
    """Run ``command`` to completion: its wall time, and its CPU time and peak RSS from the kernel's
    accounting (``wait4``: the process and every child it waited for)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    measured = log.with_suffix(".run.json")
    with log.open("ab") as out:
        code = subprocess.call(
            [sys.executable, "-c", LAUNCHER, str(measured), *command],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
        )
    if code != 0:
        raise RuntimeError(f"{' '.join(command)} exited with {code}; see {log}")
    return Run(**json.loads(measured.read_text()))


def interleaved(sides: dict[str, list[str]], warmups: dict[str, list[str]], reps: int, log: Path) -> dict:
    """One untimed warm-up of each side, then ``reps`` rounds of every side in turn."""
    first = {name: run_process(warmups.get(name, command), log) for name, command in sides.items()}
    runs: dict[str, list[Run]] = {name: [] for name in sides}
    for _ in range(reps):
        for name, command in sides.items():
            runs[name].append(run_process(command, log))
    return {name: summary(first[name], runs[name]) for name in sides}


def summary(first: Run, runs: list[Run]) -> dict:
    result: dict = {"runs": [asdict(run) for run in runs], "first_run": asdict(first)}
    for metric in ("wall_s", "cpu_s", "peak_rss_mb"):
        values = [getattr(run, metric) for run in runs]
        result[metric] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    return result


def onnxprune_command() -> list[str]:
    """The CLI of this checkout, as ``python -m onnxprune`` (what the ``onnxprune`` script runs; an
    installed script may belong to another checkout)."""
    return [sys.executable, "-m", "onnxprune"]


def prune_command(model: Path, output: Path, ratio: float, report: Path | None = None) -> list[str]:
    command = [*onnxprune_command(), "prune", str(model), "--ratio", str(ratio), "--criterion", "l1"]
    command += ["--no-benchmark", "-o", str(output)]
    return command + (["--report", str(report)] if report is not None else [])


def shown(sides: dict[str, list[str]]) -> dict[str, str]:
    """The commands as a shell would read them, file names without their temporary directory."""
    return {
        name: shlex.join(Path(part).name if "/" in part else part for part in command)
        for name, command in sides.items()
    }


def floor_command(model: Path, output: Path) -> list[str]:
    return [sys.executable, "-c", FLOOR_CODE, str(model), str(output)]


def verification(report_path: Path) -> dict:
    """What the warm-up run's report says about the checks: the verify stage ran, the fidelity found."""
    report = json.loads(report_path.read_text())
    stages = report["stage_seconds"]
    return {
        "verified": stages.get("verify", 0.0) > 0.0,
        "stage_seconds": stages,
        "fidelity": {key: report["fidelity"][key] for key in ("cosine_similarity", "max_abs_diff")},
        "macs": report["macs"],
    }


# ---- the models ---------------------------------------------------------------------------------------


def vgg19_model(seed: int = 0) -> onnx.ModelProto:
    """VGG-19 for 1x3x224x224 inputs with He-initialised random weights (float32, ~575 MB)."""
    rng = np.random.default_rng(seed)
    graph = helper.make_graph([], "vgg19", [helper.make_tensor_value_info("input", TensorProto.FLOAT, INPUT_SHAPE)], [])

    def weight(name: str, shape: tuple[int, ...], fan_in: int) -> str:
        values = rng.standard_normal(shape, dtype=np.float32)
        values *= np.float32(np.sqrt(2.0 / fan_in))
        tensor = graph.initializer.add()
        tensor.name, tensor.data_type, tensor.raw_data = name, TensorProto.FLOAT, values.tobytes()
        tensor.dims.extend(shape)
        return name

    def node(op: str, inputs: list[str], **attrs: object) -> str:
        name = f"{op.lower()}{len(graph.node)}"
        graph.node.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    x, channels = "input", 3
    for item in VGG19_LAYERS:
        if item == "M":
            x = node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
            continue
        index, filters = len(graph.node), int(item)
        w = weight(f"conv{index}.weight", (filters, channels, 3, 3), channels * 9)
        b = weight(f"conv{index}.bias", (filters,), 10**6)
        x = node("Relu", [node("Conv", [x, w, b], kernel_shape=[3, 3], pads=[1, 1, 1, 1])])
        channels = filters
    x = node("Flatten", [x], axis=1)
    widths = [channels * 7 * 7, 4096, 4096, 1000]
    for index, (fan_in, fan_out) in enumerate(zip(widths, widths[1:])):
        x = node(
            "Gemm",
            [x, weight(f"fc{index}.weight", (fan_out, fan_in), fan_in), weight(f"fc{index}.bias", (fan_out,), 10**6)],
            transB=1,
        )
        if index < 2:
            x = node("Relu", [x])
    graph.output.append(helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, 1000]))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="bench_torch_pruning")
    model.ir_version = 8
    return model


def layer_widths(model: onnx.ModelProto) -> dict[str, list[int]]:
    """[out, in] channels of every Conv and Gemm weight, by node name."""
    dims = {init.name: list(init.dims) for init in model.graph.initializer}
    return {
        node.name: dims[node.input[1]][:2]
        for node in model.graph.node
        if node.op_type in ("Conv", "Gemm") and node.input[1] in dims
    }


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
        "op_counts": {
            "ours": dict(sorted(collections.Counter(n.op_type for n in mine.graph.node).items())),
            "theirs": dict(sorted(collections.Counter(n.op_type for n in other.graph.node).items())),
        },
        "cost": {
            name: {"macs": cost.macs, "params": cost.params}
            for name, cost in zip(
                ("original", "ours", "theirs"), (measure_cost(m, INPUT_SHAPES) for m in (original, mine, other))
            )
        },
    }


def latency(ours: Path, theirs: Path, runs: int, warmup: int) -> dict:
    """onnxruntime latency of both pruned models, interleaved, by thread count."""
    from onnxprune.workers.benchmark import benchmark

    by_threads = {}
    for threads in (1, 2):
        result = benchmark(ours, theirs, INPUT_SHAPES, runs=runs, warmup=warmup, threads=threads)
        after = result.latency.after
        assert after is not None
        by_threads[str(threads)] = {
            "ours": result.latency.before.model_dump(),
            "theirs": after.model_dump(),
            "ratio_p50": result.latency.before.p50 / after.p50,
        }
    return by_threads


# ---- the cases ----------------------------------------------------------------------------------------


def resnet50_case(work: Path, reps: int, runs: int, warmup: int) -> dict:
    import torch

    from tests.support.zoo import export_onnx, randomize_batchnorm, resnet50

    torch.manual_seed(0)
    model = randomize_batchnorm(resnet50(), seed=0).eval()
    state, source = work / "resnet50.pt", work / "resnet50.onnx"
    torch.save(model.state_dict(), state)
    export_onnx(model, INPUT_SHAPE, source)
    del model
    ours, theirs, report = work / "ours.onnx", work / "theirs.onnx", work / "ours.report.json"
    sides = {
        "floor": floor_command(source, work / "floor.onnx"),
        "ours": prune_command(source, ours, RESNET_RATIO),
        "theirs": [sys.executable, str(REPO / "benchmarks" / "torch_pruning_resnet50.py"), str(state), str(theirs)],
    }
    warmups = {"ours": prune_command(source, ours, RESNET_RATIO, report)}
    timings = interleaved(sides, warmups, reps, work / "resnet50.log")
    return {
        "model": "tests.support.zoo.resnet50(num_classes=1000), BN statistics randomised, TorchScript export (BN folded), "
        f"{source.stat().st_size / 1e6:.0f} MB",
        "commands": shown(sides),
        "timings": timings,
        "verification": verification(report),
        **compare_structure(source, ours, theirs),
        "latency_ms": latency(ours, theirs, runs, warmup),
    }


def vgg19_case(work: Path, reps: int) -> dict:
    source, ours, report = work / "vgg19.onnx", work / "vgg19.ours.onnx", work / "vgg19.report.json"
    onnx.save(vgg19_model(), source)
    sides = {"floor": floor_command(source, work / "vgg19.floor.onnx"), "ours": prune_command(source, ours, VGG_RATIO)}
    warmups = {"ours": prune_command(source, ours, VGG_RATIO, report)}
    timings = interleaved(sides, warmups, reps, work / "vgg19.log")
    return {
        "model": f"VGG-19 (configuration E, no BN), random weights built in code, {source.stat().st_size / 1e6:.0f} MB",
        "commands": shown(sides),
        "timings": timings,
        "verification": verification(report),
    }


# ---- results ------------------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict:
    import torch
    import torch_pruning as tp

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
        "platform": platform.platform(),
        "load_average_at_start": list(os.getloadavg()),
    }


def ratios(result: dict) -> dict:
    out: dict = {}
    if "resnet50" in result:
        t = result["resnet50"]["timings"]
        for metric in ("wall_s", "cpu_s", "peak_rss_mb"):
            out[f"resnet50_{metric}_ours_over_theirs"] = t["ours"][metric]["median"] / t["theirs"][metric]["median"]
        out["resnet50_wall_s_ours_over_floor"] = t["ours"]["wall_s"]["median"] / t["floor"]["wall_s"]["median"]
    if "vgg19" in result:
        t = result["vgg19"]["timings"]
        for metric in ("wall_s", "cpu_s", "peak_rss_mb"):
            out[f"vgg19_{metric}_ours_over_floor"] = t["ours"][metric]["median"] / t["floor"][metric]["median"]
    return out


def targets_met(result: dict) -> dict:
    r, met = result["ratios"], {}
    if "resnet50" in result:
        met["resnet50_time_ours_over_theirs"] = (
            r["resnet50_wall_s_ours_over_theirs"] <= TARGETS["resnet50_time_ours_over_theirs"]
        )
    if "vgg19" in result:
        met["vgg19_time_ours_over_floor"] = r["vgg19_wall_s_ours_over_floor"] <= TARGETS["vgg19_time_ours_over_floor"]
        met["vgg19_rss_ours_over_floor"] = (
            r["vgg19_peak_rss_mb_ours_over_floor"] <= TARGETS["vgg19_rss_ours_over_floor"]
        )
    for case in ("resnet50", "vgg19"):
        if case in result:
            met[f"{case}_verified"] = result[case]["verification"]["verified"]
    return met


def reading(result: dict) -> str:
    """The paragraph under the tables, from the numbers alone, so that a rerun cannot leave it stale."""
    r, text = result["ratios"], []
    if "resnet50" in result:
        case = result["resnet50"]
        t, v = case["timings"], case["verification"]
        slowest = sorted(v["stage_seconds"].items(), key=lambda kv: -kv[1])[:3]
        text.append(
            f"ResNet-50: the whole `onnxprune prune` process took {t['ours']['wall_s']['median']:.2f} s (median) "
            f"against {t['theirs']['wall_s']['median']:.2f} s for the Torch-Pruning script, ratio "
            f"{r['resnet50_wall_s_ours_over_theirs']:.2f} (target <= {TARGETS['resnet50_time_ours_over_theirs']}: "
            f"{'met' if result['targets_met']['resnet50_time_ours_over_theirs'] else 'missed'}); in CPU time "
            f"{r['resnet50_cpu_s_ours_over_theirs']:.2f}. Loading and saving the file alone takes "
            f"{t['floor']['wall_s']['median']:.2f} s. The oracle verified the result (cosine "
            f"{v['fidelity']['cosine_similarity']:.3f} with the original on random inputs); inside the job the "
            "slowest stages were " + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in slowest) + "."
        )
        cost = case["cost"]
        text.append(
            f"MACs after: {cost['ours']['macs'] / 1e9:.3f} G (ours) and {cost['theirs']['macs'] / 1e9:.3f} G (theirs); "
            f"{case['layers_total'] - len(case['layers_differing'])} of {case['layers_total']} Conv/Gemm layers "
            "have the same widths in both."
        )
    if "vgg19" in result:
        t = result["vgg19"]["timings"]
        text.append(
            f"VGG-19 size: `onnxprune prune --ratio {VGG_RATIO}` took {t['ours']['wall_s']['median']:.2f} s and peaked "
            f"at {t['ours']['peak_rss_mb']['median']:.0f} MB against {t['floor']['wall_s']['median']:.2f} s and "
            f"{t['floor']['peak_rss_mb']['median']:.0f} MB for onnx.load + onnx.save: "
            f"{r['vgg19_wall_s_ours_over_floor']:.2f}x the floor's time (target <= "
            f"{TARGETS['vgg19_time_ours_over_floor']}) and {r['vgg19_peak_rss_mb_ours_over_floor']:.2f}x its memory "
            f"(target <= {TARGETS['vgg19_rss_ours_over_floor']}), the oracle on."
        )
    env = result["environment"]
    busiest = max(env["load_average_at_start"][0], env["load_average_at_end"][0])
    if busiest > 0.5 * (env["cpu_count"] or 1):
        text.append(
            f"Caution: the 1-minute load average reached {busiest:.1f} on {env['cpu_count']} cores during this run; "
            "other processes competed for the CPU and the wall-time ratios are not to be trusted. Re-run on an "
            "idle machine."
        )
    return " ".join(text)


def _stat(metric: dict, digits: int = 2) -> str:
    return f"{metric['median']:.{digits}f} ({metric['min']:.{digits}f}-{metric['max']:.{digits}f})"


def render_markdown(result: dict) -> str:
    env, r, met = result["environment"], result["ratios"], result["targets_met"]

    def tick(key: str) -> str:
        return "met" if met[key] else "**missed**"

    lines = [
        "# onnxprune as users run it: against Torch-Pruning (ResNet-50) and the load+save floor (VGG-19 size)",
        "",
        f"Generated by `benchmarks/bench_torch_pruning.py` on {env['date']}: {env['cpu']}, {env['cpu_count']} cores; "
        f"torch {env['torch']}, torch-pruning {env['torch_pruning']}, onnx {env['onnx']}, onnxruntime {env['onnxruntime']}. "
        f"Whole processes, one untimed warm-up each, then {result['reps']} interleaved rounds; median (fastest-slowest). "
        f"Load average (1 min) {env['load_average_at_start'][0]:.2f} at the start, "
        f"{env['load_average_at_end'][0]:.2f} at the end.",
    ]
    if "resnet50" in result:
        case = result["resnet50"]
        t, cost = case["timings"], case["cost"]
        lines += [
            "",
            f"## ResNet-50, ratio {RESNET_RATIO}",
            "",
            *(f"- {name}: `{command}`" for name, command in case["commands"].items()),
            "",
            "| | onnxprune | Torch-Pruning | load + save | ours / theirs | target |",
            "|---|---:|---:|---:|---:|---|",
            f"| wall time (s) | {_stat(t['ours']['wall_s'])} | {_stat(t['theirs']['wall_s'])} | {_stat(t['floor']['wall_s'])} | "
            f"{r['resnet50_wall_s_ours_over_theirs']:.2f} | <= {TARGETS['resnet50_time_ours_over_theirs']}: "
            f"{tick('resnet50_time_ours_over_theirs')} |",
            f"| CPU time (s) | {_stat(t['ours']['cpu_s'])} | {_stat(t['theirs']['cpu_s'])} | {_stat(t['floor']['cpu_s'])} | "
            f"{r['resnet50_cpu_s_ours_over_theirs']:.2f} | |",
            f"| peak RSS (MB) | {_stat(t['ours']['peak_rss_mb'], 0)} | {_stat(t['theirs']['peak_rss_mb'], 0)} | "
            f"{_stat(t['floor']['peak_rss_mb'], 0)} | {r['resnet50_peak_rss_mb_ours_over_theirs']:.2f} | |",
            f"| MACs after (G; original {cost['original']['macs'] / 1e9:.3f}) | {cost['ours']['macs'] / 1e9:.3f} | "
            f"{cost['theirs']['macs'] / 1e9:.3f} | | {cost['ours']['macs'] / cost['theirs']['macs']:.3f} | |",
            f"| parameters after (M; original {cost['original']['params'] / 1e6:.2f}) | {cost['ours']['params'] / 1e6:.2f} | "
            f"{cost['theirs']['params'] / 1e6:.2f} | | {cost['ours']['params'] / cost['theirs']['params']:.3f} | |",
        ]
        for threads, stats in case["latency_ms"].items():
            lines.append(
                f"| onnxruntime p50, {threads} thread(s) (ms) | {stats['ours']['p50']:.2f} | {stats['theirs']['p50']:.2f} | "
                f"| {stats['ratio_p50']:.3f} | |"
            )
        stages = ", ".join(f"{k} {v:.2f}" for k, v in case["verification"]["stage_seconds"].items())
        lines += ["", f"Stages inside the onnxprune job (warm-up run, s): {stages}."]
        lines += ["", "| layer | original | onnxprune | Torch-Pruning |", "|---|---|---|---|"]
        for name, widths in case["layers"].items():
            lines.append(
                f"| `{name}` | {_widths(widths['original'])} | {_widths(widths['ours'])} | {_widths(widths['theirs'])} |"
            )
    if "vgg19" in result:
        case = result["vgg19"]
        t = case["timings"]
        lines += [
            "",
            f"## {case['model']}, ratio {VGG_RATIO}",
            "",
            *(f"- {name}: `{command}`" for name, command in case["commands"].items()),
            "",
            "| | onnxprune | load + save | ours / floor | target |",
            "|---|---:|---:|---:|---|",
            f"| wall time (s) | {_stat(t['ours']['wall_s'])} | {_stat(t['floor']['wall_s'])} | "
            f"{r['vgg19_wall_s_ours_over_floor']:.2f} | <= {TARGETS['vgg19_time_ours_over_floor']}: {tick('vgg19_time_ours_over_floor')} |",
            f"| CPU time (s) | {_stat(t['ours']['cpu_s'])} | {_stat(t['floor']['cpu_s'])} | {r['vgg19_cpu_s_ours_over_floor']:.2f} | |",
            f"| peak RSS (MB) | {_stat(t['ours']['peak_rss_mb'], 0)} | {_stat(t['floor']['peak_rss_mb'], 0)} | "
            f"{r['vgg19_peak_rss_mb_ours_over_floor']:.2f} | <= {TARGETS['vgg19_rss_ours_over_floor']}: {tick('vgg19_rss_ours_over_floor')} |",
        ]
        stages = ", ".join(f"{k} {v:.2f}" for k, v in case["verification"]["stage_seconds"].items())
        lines += ["", f"Stages inside the onnxprune job (warm-up run, s): {stages}."]
    lines += ["", "## Reading", "", result["reading"]]
    return "\n".join(lines) + "\n"


def _widths(widths: list[int] | None) -> str:
    return "-" if widths is None else f"{widths[0]}x{widths[1]}"


def run(cases: list[str], reps: int, runs: int, warmup: int, tmpdir: Path | None) -> dict:
    result: dict = {"benchmark": "onnxprune whole processes vs Torch-Pruning and the load+save floor"}
    result["environment"] = environment()
    result["reps"] = reps
    with tempfile.TemporaryDirectory(prefix="bench-torch-pruning-", dir=tmpdir) as tmp:
        if "resnet50" in cases:
            result["resnet50"] = resnet50_case(Path(tmp), reps, runs, warmup)
        if "vgg19" in cases:
            result["vgg19"] = vgg19_case(Path(tmp), reps)
    result["environment"]["load_average_at_end"] = list(os.getloadavg())
    result["ratios"] = ratios(result)
    result["targets_met"] = targets_met(result)
    result["reading"] = reading(result)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", choices=("resnet50", "vgg19"), default=["resnet50", "vgg19"])
    parser.add_argument("--reps", type=int, default=7, help="timed interleaved rounds of each case")
    parser.add_argument("--runs", type=int, default=50, help="timed onnxruntime runs per model and thread count")
    parser.add_argument("--warmup", type=int, default=10, help="onnxruntime warm-up runs per model")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument(
        "--tmpdir",
        type=Path,
        default=DEFAULT_TMPDIR,
        help="where the model files are written (default /dev/shm where it exists, so disk noise stays out)",
    )
    args = parser.parse_args()
    result = run(args.cases, args.reps, args.runs, args.warmup, args.tmpdir)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "torch_pruning.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "torch_pruning.md").write_text(render_markdown(result))
    print(render_markdown(result))


if __name__ == "__main__":
    main()
