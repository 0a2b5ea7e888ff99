"""A quantized (QDQ) detector pruned as users prune it: the shared YOLOv8n, onnxruntime's quantizer, the CLI.

1. The shared YOLOv8n (``../shared/models/nudenet_yolov8n_320.onnx``, input fixed at 1x3x320x320) is
   quantized by ``quantize_static`` (QDQ, per-channel int8 weights, uint8 activations) on 16 of the
   shared photos (``tests.support.qdq_models.quantize_detector``).
2. In its own precision: ``onnxprune prune qdq.onnx --flops-target 0.3`` (the CLI checks the oracle
   and writes nothing that fails it), and ``--latency-target 0.8``.
3. Prune, then requantize: ``onnxprune prune yolov8n.onnx --flops-target 0.3 --quantize int8`` with the
   photos as ``--data`` (``--recovery none``), against the unpruned model quantized by the same command
   (``--ratio 0 --quantize int8``).

Each pair is timed by ``onnxprune bench A B`` (whole processes, 1 thread, interleaved runs) and by the
sum over nodes of onnxruntime's kernel time, each node's fastest of 30 runs of the two models run in
turn (profiling): on a machine shared with other work the second is the steadier number.

4. Why the int8 grid is 16 (``workers.latency.channel_step``) and Split sections keep to it
   (``graphops.selection.choose_kept``): one conv, QDQ (fused to QLinearConv) and float, over channel
   counts, all sessions run in turn, each count's fastest kernel time.

    python benchmarks/bench_qdq_detector.py
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("ONNXPRUNE_SHARED", ROOT.parent / "shared"))
RESULTS = ROOT / "benchmarks" / "results"
MODEL = SHARED / "models" / "nudenet_yolov8n_320.onnx"
PHOTOS = SHARED / "data" / "imagenet-sample-500"

from onnxprune.workers.latency import cpu_model  # noqa: E402
from tests.support.qdq_models import photo_batches, quantize_detector  # noqa: E402


def cli(*args: str | Path) -> tuple[float, subprocess.CompletedProcess]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "onnxprune.service.cli", *map(str, args)], env=env,
                            capture_output=True, text=True)  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"onnxprune {' '.join(map(str, args))} failed: {result.stderr[-2000:]}")
    return time.perf_counter() - start, result


def kernel_ms(paths: list[Path], runs: int = 30) -> list[dict[str, float]]:
    """Per model and op type, the sum over its nodes of each node's fastest kernel time (ms) in ``runs``
    runs, the models run in turn so that a busy neighbour disturbs them alike."""
    sessions = []
    for path in paths:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.enable_profiling = True
        options.profile_file_prefix = str(path.with_suffix(""))
        sessions.append(ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]))
    image = np.random.default_rng(0).random((1, 3, 320, 320)).astype(np.float32)
    for _ in range(runs):
        for session in sessions:
            session.run(None, {session.get_inputs()[0].name: image})
    return [_fastest_by_kind(Path(session.end_profiling())) for session in sessions]


def _fastest_by_kind(trace: Path) -> dict[str, float]:
    """Per op type, the sum over its nodes of each node's fastest kernel time (ms) in a profile (deleted)."""
    fastest: dict[str, float] = {}
    kinds: dict[str, str] = {}
    for event in json.loads(trace.read_text()):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            name = event["name"]
            fastest[name] = min(fastest.get(name, float("inf")), event["dur"] / 1000)
            kinds[name] = event["args"].get("op_name", "?")
    trace.unlink()
    by_kind: dict[str, float] = defaultdict(float)
    for name, ms in fastest.items():
        by_kind[kinds[name]] += ms
    return dict(by_kind)


def conv_model(cin: int, cout: int, *, int8: bool, side: int = 40, kernel: int = 3) -> onnx.ModelProto:
    """One conv, float or QDQ as onnxruntime's quantizer writes it (per-channel int8 weights, uint8
    activations), which onnxruntime fuses into QLinearConv."""
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((cout, cin, kernel, kernel)) * 0.1).astype(np.float32)
    bias = (rng.standard_normal(cout) * 0.1).astype(np.float32)
    pads = [kernel // 2] * 4
    if not int8:
        nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=pads)]
        constants = {"w": weight, "b": bias}
    else:
        w_scale = (np.abs(weight).reshape(cout, -1).max(1) / 127).astype(np.float32)
        x_scale = np.float32(1 / 255)
        constants = {
            "wq": np.round(weight / w_scale[:, None, None, None]).astype(np.int8),
            "ws": w_scale,
            "wz": np.zeros(cout, np.int8),
            "bq": np.round(bias / (w_scale * x_scale)).astype(np.int32),
            "bs": w_scale * x_scale,
            "bz": np.zeros(cout, np.int32),
            "xs": np.array(x_scale),
            "ys": np.array(np.float32(0.05)),
            "z": np.array(128, np.uint8),
        }
        nodes = [
            helper.make_node("QuantizeLinear", ["x", "xs", "z"], ["xq"]),
            helper.make_node("DequantizeLinear", ["xq", "xs", "z"], ["xd"]),
            helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], axis=0),
            helper.make_node("DequantizeLinear", ["bq", "bs", "bz"], ["b"], axis=0),
            helper.make_node("Conv", ["xd", "w", "b"], ["c"], pads=pads),
            helper.make_node("QuantizeLinear", ["c", "ys", "z"], ["cq"]),
            helper.make_node("DequantizeLinear", ["cq", "ys", "z"], ["y"]),
        ]
    graph = helper.make_graph(
        nodes,
        "conv",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, cin, side, side])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, cout, side, side])],
        [numpy_helper.from_array(value, name) for name, value in constants.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def channel_sweep(work: Path, runs: int = 30) -> list[dict]:
    """Kernel time of one 3x3 conv at 40x40 over output counts (64 inputs) and input counts (64 outputs),
    int8 and float, every session run in turn."""
    cases = [("out", n, 64, n) for n in (8, 16, 24, 32, 40, 48, 56, 64)]
    cases += [("in", n, n, 64) for n in (16, 20, 22, 24, 32, 40, 46, 48, 56, 64)]
    sessions = []
    for index, (_, _, cin, cout) in enumerate(cases):
        for int8 in (True, False):
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            options.enable_profiling = True
            options.profile_file_prefix = str(work / f"sweep_{index}_{int(int8)}")
            model = conv_model(cin, cout, int8=int8).SerializeToString()
            feed = {"x": np.random.default_rng(1).random((1, cin, 40, 40)).astype(np.float32)}
            sessions.append((ort.InferenceSession(model, options, providers=["CPUExecutionProvider"]), feed))
    for _ in range(runs):
        for session, feed in sessions:
            session.run(None, feed)
    times = [_fastest_by_kind(Path(session.end_profiling())) for session, _ in sessions]
    rows = []
    for index, (axis, count, _, _) in enumerate(cases):
        int8, fp32 = times[2 * index], times[2 * index + 1]
        if "QLinearConv" not in int8:
            raise RuntimeError(f"onnxruntime did not fuse the QDQ conv into QLinearConv: it ran {sorted(int8)}")
        rows.append({"axis": axis, "channels": count, "int8_ms": int8["QLinearConv"], "float_ms": fp32["Conv"]})
    return rows


def compare(name: str, before: Path, after: Path, report: Path | None) -> dict:
    _, result = cli("bench", before, after, "--runs", "200", "--json")
    bench = json.loads(result.stdout)
    kernels_before, kernels_after = kernel_ms([before, after])
    total_before, total_after = sum(kernels_before.values()), sum(kernels_after.values())
    macs = json.loads(report.read_text())["macs"] if report is not None else None
    return {
        "name": name,
        "macs": macs,
        "bench_p50_ratio": bench["latency_ms"]["change"]["ratio"],
        "bench_band": bench["latency_ms"]["change"]["band"],
        "bench_p50_ms": [bench["latency_ms"]["before"]["p50"], bench["latency_ms"]["after"]["p50"]],
        "kernel_ms": [total_before, total_after],
        "kernel_ratio": total_after / total_before,
        "conv_kernel_ratio": kernels_after.get("QLinearConv", 0) / max(kernels_before.get("QLinearConv", 0), 1e-9),
        "kernel_ms_by_op": {
            kind: [kernels_before.get(kind, 0.0), kernels_after.get(kind, 0.0)]
            for kind in sorted({*kernels_before, *kernels_after})
        },  # fmt: skip
        "cosine": bench["fidelity"]["cosine_similarity"],
    }


def main() -> None:
    load_start = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="bench_qdq_detector_"))
    qdq = quantize_detector(MODEL, PHOTOS, work, count=16)
    photos = np.concatenate(photo_batches(PHOTOS, 64, 320))
    np.savez(work / "photos.npz", images=photos)
    seconds = {}
    runs = []
    seconds["qdq -30% MACs"], _ = cli("prune", qdq, "-o", work / "qdq_p30.onnx", "--flops-target", "0.3",
                                      "--report", work / "qdq_p30.json")  # fmt: skip
    runs.append(compare("QDQ, pruned in its own precision, --flops-target 0.3", qdq, work / "qdq_p30.onnx",
                        work / "qdq_p30.json"))  # fmt: skip
    seconds["qdq latency 0.8"], _ = cli("prune", qdq, "-o", work / "qdq_l80.onnx", "--latency-target", "0.8",
                                        "--report", work / "qdq_l80.json")  # fmt: skip
    runs.append(compare("QDQ, pruned in its own precision, --latency-target 0.8", qdq, work / "qdq_l80.onnx",
                        work / "qdq_l80.json"))  # fmt: skip
    common = ["--quantize", "int8", "--data", work / "photos.npz", "--recovery", "none"]
    seconds["int8 unpruned"], _ = cli("prune", MODEL, "-o", work / "int8.onnx", "--ratio", "0", *common)
    seconds["-30% MACs then int8"], _ = cli("prune", MODEL, "-o", work / "p30_int8.onnx", "--flops-target", "0.3",
                                            "--report", work / "p30_int8.json", *common)  # fmt: skip
    runs.append(compare("float pruned --flops-target 0.3 --quantize int8, against --ratio 0 --quantize int8",
                        work / "int8.onnx", work / "p30_int8.onnx", work / "p30_int8.json"))  # fmt: skip
    sweep = channel_sweep(work)
    result = {
        "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{cpu_model()}, {platform.machine()}, {os.cpu_count()} cores, onnxruntime {ort.__version__}",
        "load_average": [load_start, os.getloadavg()[0]],
        "cli_seconds": seconds,
        "runs": runs,
        "channel_sweep": sweep,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "qdq_detector.json").write_text(json.dumps(result, indent=1))
    (RESULTS / "qdq_detector.md").write_text(markdown(result))
    print(markdown(result))


def markdown(result: dict) -> str:
    lines = [
        "# A QDQ YOLOv8n pruned with the CLI",
        "",
        f"`python benchmarks/bench_qdq_detector.py` ({result['when']}, {result['machine']}). Load average "
        f"{result['load_average'][0]:.1f} at the start, {result['load_average'][1]:.1f} at the end. Every pruned "
        "model passed the CLI's oracle (a failing one is never written). Latency ratios are pruned / unpruned "
        "int8: `bench` p50 (whole processes, 200 interleaved runs, 1 thread) and the sum of per-node kernel "
        "times (each node's fastest of 30 runs, the two models in turn). Channel counts: `--round-to auto`, "
        "16 for int8 models on x86 (`workers.latency.channel_step`), Split sections on it too.",
        "",
        "| run | MACs before | MACs after | bench p50 ratio (95% band) | kernel-time ratio | QLinearConv ratio | cosine |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in result["runs"]:
        macs = run["macs"] or {"before": 0, "after": 0}
        lines.append(
            f"| {run['name']} | {macs['before']:,} | {macs['after']:,} | {run['bench_p50_ratio']:.3f} "
            f"({run['bench_band']}) | {run['kernel_ratio']:.3f} ({run['kernel_ms'][0]:.2f} -> "
            f"{run['kernel_ms'][1]:.2f} ms) | {run['conv_kernel_ratio']:.3f} | {run['cosine']:.4f} |"
        )
    first = result["runs"][0]
    lines += [
        "",
        f"## Where the int8 time goes: {first['name']}",
        "",
        "Kernel time per op type (ms, each node's fastest of 30 runs, the two models in turn). The convs "
        "follow MACs; the elementwise ops (SiLU as QLinearSigmoid and QLinearMul, Concat, Add) follow the "
        "activations, which a MACs cut shrinks less.",
        "",
        "| op | unpruned | pruned | ratio |",
        "|---|---|---|---|",
    ]
    by_op = sorted(first["kernel_ms_by_op"].items(), key=lambda item: -item[1][0])
    for kind, (before, after) in by_op:
        if before >= 0.05:
            lines.append(f"| {kind} | {before:.3f} | {after:.3f} | {after / before:.3f} |")
    lines += [
        "",
        "## One conv over channel counts",
        "",
        "A 3x3 conv at 40x40, QDQ (fused to QLinearConv) and float, 1 thread, every session run in turn, "
        "each count's fastest kernel time of 30 runs (ms). Output counts with 64 inputs, input counts with "
        "64 outputs.",
        "",
        "| channels | output: int8 | output: float | input: int8 | input: float |",
        "|---|---|---|---|---|",
    ]
    rows: dict[int, dict[str, str]] = defaultdict(dict)
    for row in result["channel_sweep"]:
        rows[row["channels"]][row["axis"]] = f"{row['int8_ms']:.3f} | {row['float_ms']:.3f}"
    for count in sorted(rows):
        lines.append(f"| {count} | {rows[count].get('out', '- | -')} | {rows[count].get('in', '- | -')} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
