"""Pruning a model that arrives already quantized (QDQ), as a user would: the CLI on the real ResNet-20.

The shared ResNet-20 (``../shared/models/onnc_resnet20.onnx``, opset 9) is converted to opset 13
(``onnx.version_converter``: per-channel DequantizeLinear needs it) and quantized by onnxruntime's
static quantizer in the QDQ format (uint8 activations, int8 weights, per-channel and per-tensor),
calibrated on 256 CIFAR-10 training images. Each QDQ model is pruned by the ``onnxprune`` CLI (a whole
process, ``--flops-target``), then checked here:
- the oracle: the plan the CLI wrote is applied again to the QDQ model, and the masked original (removed
  input columns set to their zero point) is run against the pruned model on 200 real test images;
- it stays QDQ: QuantizeLinear / DequantizeLinear counts and the dtypes of the weights before and after;
- held-out accuracy (2,000 test images) of the float, QDQ and pruned QDQ models (no recovery), and
  onnxruntime latency of the QDQ and pruned QDQ models (1 thread, interleaved rounds, medians with IQR).

    python benchmarks/bench_qdq_prune.py [--flops-target 0.3]
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
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper, version_converter

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("ONNXPRUNE_SHARED", ROOT.parent / "shared"))
RESULTS = ROOT / "benchmarks" / "results"
MEAN = np.array([0.4914, 0.4822, 0.4465], np.float32)
STD = np.array([0.2023, 0.1994, 0.2010], np.float32)

from onnxprune.graphops.dependency import analyze  # noqa: E402
from onnxprune.graphops.masking import mask_removed_channels  # noqa: E402
from onnxprune.graphops.plan import PruningPlan  # noqa: E402
from onnxprune.graphops.prepare import prepare_model  # noqa: E402
from onnxprune.graphops.shapes import resolve_input_shapes  # noqa: E402
from onnxprune.graphops.surgery import apply_plan  # noqa: E402


def images(split: str, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    data = np.load(SHARED / "data" / f"cifar10-{split}.npz")
    order = np.random.default_rng(seed).permutation(len(data["labels"]))[:count]
    x = ((data["images"][order].astype(np.float32) / 255.0 - MEAN) / STD).transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x, np.float32), data["labels"][order]


def quantize(float13: Path, target: Path, per_channel: bool, calibration: np.ndarray, input_name: str) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._feeds = iter([{input_name: calibration[i : i + 1]} for i in range(len(calibration))])

        def get_next(self):
            return next(self._feeds, None)

    quantize_static(
        str(float13),
        str(target),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=per_channel,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )


def session(model: onnx.ModelProto | Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def outputs(sess: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))])


def qdq_summary(model: onnx.ModelProto) -> dict:
    kinds = Counter(node.op_type for node in model.graph.node)
    dequantized = {node.input[0] for node in model.graph.node if node.op_type == "DequantizeLinear"}
    weights = [numpy_helper.to_array(init) for init in model.graph.initializer if init.name in dequantized]
    return {
        "nodes": len(model.graph.node),
        "QuantizeLinear": kinds["QuantizeLinear"],
        "DequantizeLinear": kinds["DequantizeLinear"],
        "quantized_weights": dict(Counter(str(w.dtype) for w in weights if w.ndim >= 2)),
        "float_weights_2d_plus": sum(
            1 for init in model.graph.initializer if init.data_type == onnx.TensorProto.FLOAT and len(init.dims) >= 2
        ),
    }


def latency(models: dict[str, Path], x: np.ndarray, rounds: int = 200) -> dict:
    sessions = {name: session(path) for name, path in models.items()}
    feeds = {name: {s.get_inputs()[0].name: x[:1]} for name, s in sessions.items()}
    for name, s in sessions.items():
        for _ in range(20):
            s.run(None, feeds[name])
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(rounds):
        for name, s in sessions.items():
            started = time.perf_counter()
            s.run(None, feeds[name])
            times[name].append((time.perf_counter() - started) * 1e3)
    return {
        name: {
            "median_ms": round(float(np.median(t)), 4),
            "iqr_ms": [round(float(np.percentile(t, 25)), 4), round(float(np.percentile(t, 75)), 4)],
        }
        for name, t in times.items()
    }


def prune_with_cli(source: Path, output: Path, plan: Path, report: Path, target: float) -> float:
    """Runs ``onnxprune prune`` as a whole process; returns its wall time in seconds."""
    started = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "onnxprune.service.cli",
            "prune",
            str(source),
            "-o",
            str(output),
            "--flops-target",
            str(target),
            "--plan-out",
            str(plan),
            "--no-benchmark",
            "--report",
            str(report),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    if done.returncode != 0:
        raise SystemExit(f"onnxprune prune failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return time.perf_counter() - started


def run_case(work: Path, float13: Path, per_channel: bool, target: float, data: dict) -> dict:
    name = "per-channel" if per_channel else "per-tensor"
    qdq, pruned_path, plan_path = work / f"{name}.onnx", work / f"{name}.pruned.onnx", work / f"{name}.plan.json"
    quantize(float13, qdq, per_channel, data["calibration"], data["input"])
    cli_seconds = prune_with_cli(qdq, pruned_path, plan_path, work / f"{name}.report.json", target)
    report = json.loads((work / f"{name}.report.json").read_text())

    original = onnx.load(qdq)
    pruned = onnx.load(pruned_path)
    shapes = resolve_input_shapes(original, None)
    dep = analyze(prepare_model(original, shapes), shapes)
    plan = PruningPlan.from_json(plan_path.read_text())
    again = apply_plan(dep, plan)
    masked = mask_removed_channels(dep, plan)
    oracle_x = data["test"][:200]
    masked_out, pruned_out = outputs(session(masked), oracle_x), outputs(session(pruned_path), oracle_x)
    again_out = outputs(session(again), oracle_x)
    scale = float(np.max(np.abs(masked_out)))
    accuracy = {
        "qdq": float(np.mean(outputs(session(qdq), data["test"]).argmax(1) == data["labels"])),
        "qdq_pruned": float(np.mean(outputs(session(pruned_path), data["test"]).argmax(1) == data["labels"])),
    }
    return {
        "case": name,
        "cli_seconds": round(cli_seconds, 1),
        "macs": report["macs"],
        "params": report["params"],
        "groups_pruned": sum(1 for g in plan.groups.values() if len(g.keep) < g.channels),
        "frozen": report["frozen"],
        "oracle_relative_error": float(np.max(np.abs(masked_out - pruned_out)) / scale),
        "cli_output_equals_replayed_plan": bool(np.array_equal(again_out, pruned_out)),
        "qdq_before": qdq_summary(original),
        "qdq_after": qdq_summary(pruned),
        "accuracy_held_out": accuracy,
        "latency_1_thread": latency({"qdq": qdq, "qdq_pruned": pruned_path}, data["test"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flops-target", type=float, default=0.3)
    args = parser.parse_args()
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        float13 = work / "resnet20_opset13.onnx"
        model = version_converter.convert_version(onnx.load(SHARED / "models" / "onnc_resnet20.onnx"), 13)
        onnx.save(model, float13)
        input_name = model.graph.input[0].name
        calibration, _ = images("train-20k", 256, seed=1)
        test, labels = images("test", 2000, seed=2)
        data = {"input": input_name, "calibration": calibration, "test": test, "labels": labels}
        float_accuracy = float(np.mean(outputs(session(float13), test).argmax(1) == labels))
        # The float model pruned the same way: the reference for the accuracy the QDQ model keeps.
        float_pruned = work / "float.pruned.onnx"
        prune_with_cli(float13, float_pruned, work / "float.plan.json", work / "float.report.json", args.flops_target)
        float_pruned_accuracy = float(np.mean(outputs(session(float_pruned), test).argmax(1) == labels))
        float_plan = json.loads((work / "float.plan.json").read_text())
        cases = [run_case(work, float13, per_channel, args.flops_target, data) for per_channel in (True, False)]
        for case in cases:
            qdq_plan = json.loads((work / f"{case['case']}.plan.json").read_text())
            case["same_channels_as_float_plan"] = (
                sum(a["keep"] == b["keep"] for a, b in zip(float_plan["groups"], qdq_plan["groups"])),
                len(float_plan["groups"]),
            )
    result = {
        "command": f"python benchmarks/bench_qdq_prune.py --flops-target {args.flops_target}",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, onnxruntime {ort.__version__}",
        "load_average": {"start": round(load_start, 2), "end": round(os.getloadavg()[0], 2)},
        "float_accuracy_held_out": float_accuracy,
        "float_pruned_accuracy_held_out": float_pruned_accuracy,
        "cases": cases,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "qdq_prune.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / "qdq_prune.md").write_text(markdown(result))
    print(markdown(result))


def markdown(result: dict) -> str:
    lines = [
        "# Pruning an already-quantized (QDQ) ResNet-20 with the CLI",
        "",
        f"`{result['command']}` ({result['date']}, {result['machine']}). Float model held-out accuracy "
        f"{result['float_accuracy_held_out']:.4f} (2,000 CIFAR-10 test images); the float model pruned by the "
        f"same CLI command: {result['float_pruned_accuracy_held_out']:.4f}. No recovery after pruning. "
        f"Load average {result['load_average']['start']} at the start, {result['load_average']['end']} at the end: "
        "latencies measured under a load far above the core count are noise, not a comparison.",
        "",
        "| QDQ weights | MACs before | MACs after | oracle rel. error | Q / DQ before | Q / DQ after | "
        "int8 weights after | float weights after | acc. QDQ | acc. pruned QDQ | latency QDQ (ms, IQR) | "
        "latency pruned (ms, IQR) | groups with the float plan's channels |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case in result["cases"]:
        before, after = case["qdq_before"], case["qdq_after"]
        lat = case["latency_1_thread"]
        lines.append(
            f"| {case['case']} | {case['macs']['before']:,} | {case['macs']['after']:,} | "
            f"{case['oracle_relative_error']:.2e} | {before['QuantizeLinear']} / {before['DequantizeLinear']} | "
            f"{after['QuantizeLinear']} / {after['DequantizeLinear']} | {after['quantized_weights']} | "
            f"{after['float_weights_2d_plus']} | {case['accuracy_held_out']['qdq']:.4f} | "
            f"{case['accuracy_held_out']['qdq_pruned']:.4f} | {lat['qdq']['median_ms']} {lat['qdq']['iqr_ms']} | "
            f"{lat['qdq_pruned']['median_ms']} {lat['qdq_pruned']['iqr_ms']} | "
            f"{case['same_channels_as_float_plan'][0]} of {case['same_channels_as_float_plan'][1]} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
