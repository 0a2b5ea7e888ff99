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
sum over nodes of onnxruntime's kernel time, each node's fastest of 30 runs (profiling): on a machine
shared with other work the second is the steadier number.

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
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("ONNXPRUNE_SHARED", ROOT.parent / "shared"))
RESULTS = ROOT / "benchmarks" / "results"
MODEL = SHARED / "models" / "nudenet_yolov8n_320.onnx"
PHOTOS = SHARED / "data" / "imagenet-sample-500"

from tests.support.qdq_models import photo_batches, quantize_detector  # noqa: E402


def cli(*args: str | Path) -> tuple[float, subprocess.CompletedProcess]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "onnxprune.service.cli", *map(str, args)], env=env,
                            capture_output=True, text=True)  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"onnxprune {' '.join(map(str, args))} failed: {result.stderr[-2000:]}")
    return time.perf_counter() - start, result


def kernel_ms(path: Path, runs: int = 30) -> dict[str, float]:
    """Per op type, the sum over its nodes of each node's fastest kernel time (ms) in ``runs`` runs."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.enable_profiling = True
    options.profile_file_prefix = str(path.with_suffix(""))
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    image = np.random.default_rng(0).random((1, 3, 320, 320)).astype(np.float32)
    for _ in range(runs):
        session.run(None, {session.get_inputs()[0].name: image})
    trace = Path(session.end_profiling())
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


def compare(name: str, before: Path, after: Path, report: Path | None) -> dict:
    _, result = cli("bench", before, after, "--runs", "200", "--json")
    bench = json.loads(result.stdout)
    kernels_before, kernels_after = kernel_ms(before), kernel_ms(after)
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
    result = {
        "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, onnxruntime {ort.__version__}",
        "load_average": [load_start, os.getloadavg()[0]],
        "cli_seconds": seconds,
        "runs": runs,
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
        "times (each node's fastest of 30 runs).",
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
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
