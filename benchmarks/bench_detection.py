"""A detector pruned as a user prunes it, judged by its detections: the shared YOLOv8n on real photos.

``../shared/models/nudenet_yolov8n_320.onnx`` (Ultralytics YOLOv8n, 18 classes, output [1, 22, 2100] at
320x320) is pruned by the ``onnxprune`` CLI, each run a whole process, ``--flops-target`` 0.3 and 0.5,
with and without data, ``--time-budget 300``. The 500 shared ImageNet photos (``imagenet-sample-500/``,
sorted by name) are split in two: the even positions (250) are the calibration folder given as
``--data`` (the CLI letterboxes them to 320, /255, RGB NCHW, and splits them 150 / 50 / 50), the odd
positions (250) are held out here and never seen by any run. On those 250, each pruned model is judged
against the original: mAP50 and mAP50-95 with the original's detections as ground truth
(``workers.detection``: class-wise NMS at IoU 0.7, COCO AP), at ground-truth confidence 0.1 (the
photos are ImageNet, not nudenet's domain: the original finds few boxes, counted in the table) and
0.25; the output cosine beside it. Latency: onnxruntime, 1 thread, original and pruned interleaved
(``workers.benchmark``), re-measured here after all runs with 200 runs each.

    python benchmarks/bench_detection.py [--time-budget 300] [--ablation]

``--ablation`` adds a run at -30% with data and ``--detector none``: recovery as for any model (the raw
output distilled with a variance-normalised MSE, reconstruction of the layers that lost inputs only, on
the photos that fit its memory budget), to show what the detector-specific recovery changes.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("ONNXPRUNE_SHARED", ROOT.parent / "shared"))
RESULTS = ROOT / "benchmarks" / "results"
MODEL = SHARED / "models" / "nudenet_yolov8n_320.onnx"
PHOTOS = SHARED / "data" / "imagenet-sample-500"
SIZE = (320, 320)
CONFIDENCES = (0.1, 0.25)
TARGETS = {0.3: (0.90, 1.3), 0.5: (0.80, 1.6)}  # MACs fraction removed: (mAP50 at least, speed-up at least)

from onnxprune.roundtrip.data import Dataset  # noqa: E402
from onnxprune.roundtrip.images import IMAGE_SUFFIXES, read_folder  # noqa: E402
from onnxprune.workers.benchmark import benchmark  # noqa: E402
from onnxprune.workers.evaluation import make_evaluator  # noqa: E402
from onnxprune.workers.sandbox import RunnerLimits  # noqa: E402


def split_photos(work: Path) -> tuple[Path, Path]:
    photos = sorted(p for p in PHOTOS.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    folders = {"calibration": photos[0::2], "held_out": photos[1::2]}
    for name, files in folders.items():
        (work / name).mkdir()
        for file in files:
            (work / name / file.name).symlink_to(file.resolve())
    return work / "calibration", work / "held_out"


def run_cli(work: Path, name: str, fraction: float, data: Path | None, budget: float, extra: list[str]) -> dict:
    output, report = work / f"{name}.onnx", work / f"{name}.json"
    cli = Path(sys.executable).parent / "onnxprune"
    command = [str(cli), "prune", str(MODEL), "-o", str(output), "--flops-target", str(fraction)]
    command += ["--time-budget", str(budget), "--report", str(report), "--detection-confidence", "0.1", *extra]
    if data is not None:
        command += ["--data", str(data)]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    seconds = time.perf_counter() - start
    print(f"{name}: exit {done.returncode} in {seconds:.0f} s", flush=True)
    if done.returncode != 0:
        return {"name": name, "error": done.stderr.strip().splitlines()[-1:], "seconds": seconds}
    return {"name": name, "output": str(output), "report": json.loads(report.read_text()), "seconds": seconds}


def judge(run: dict, evaluator, limits: RunnerLimits) -> dict:
    report = run["report"]
    path = Path(run["output"])
    row = {
        "macs_before": report["macs"]["before"],
        "macs_after": report["macs"]["after"],
        "macs_change": report["macs"]["after"] / report["macs"]["before"] - 1,
        "cli_seconds": round(run["seconds"], 1),
        "cli_speed": report["latency_ms"]["change"] if report.get("latency_ms") else None,
        "cli_held_out": {k: v for k, v in (report.get("evaluation") or {}).items() if k != "finetune"},
        "held_out_cosine": evaluator.score([path])[0],
        "detections": {str(c): evaluator.detections(path, "yolo", c) for c in CONFIDENCES},
    }
    timing = benchmark(MODEL, path, {"images": [1, 3, *SIZE]}, runs=200, warmup=10, threads=1, limits=limits)
    change = timing.latency.change
    row["latency"] = {
        "before_p50_ms": timing.latency.before.p50,
        "after_p50_ms": timing.latency.after.p50 if timing.latency.after else None,
        "p50_ratio": change.ratio if change else None,
        "min_ratio": change.min_ratio if change else None,
        "band": change.band if change else None,
    }
    return row


def markdown(result: dict) -> str:
    lines = [
        "# Detection: the shared YOLOv8n pruned, judged by its detections",
        "",
        f"Generated by `benchmarks/bench_detection.py` on {result['date']} ({result['machine']}).",
        f"Model `{MODEL.name}`; calibration: {result['calibration']} photos as `--data` (folder); held out: "
        f"{result['held_out']} other photos; `--time-budget {result['time_budget']:g}`; every run a whole CLI process.",
        f"The original's boxes on the held-out photos (after NMS): {result['original_boxes']['0.1']} at confidence "
        f"0.1, {result['original_boxes']['0.25']} at 0.25, of {result['held_out']} photos (ImageNet, not nudenet's "
        "domain).",
        "",
        "| run | data | MACs | speed-up (p50 / fastest) | mAP50 @0.1 | mAP50-95 @0.1 | mAP50 @0.25 | boxes @0.1 "
        "orig / pruned | cosine | target | CLI s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        if "error" in row:
            lines.append(f"| {row['name']} | {row['data']} | failed: {row['error']} | | | | | | | | |")
            continue
        d1, d25, lat = row["detections"]["0.1"], row["detections"]["0.25"], row["latency"]
        speed = f"{1 / lat['p50_ratio']:.2f}x / {1 / lat['min_ratio']:.2f}x" if lat["p50_ratio"] else "-"
        target = row.get("target") or "-"
        lines.append(
            f"| {row['name']} | {row['data']} | {row['macs_change']:+.1%} | {speed} | {d1['map50']:.3f} | "
            f"{d1['map50_95']:.3f} | {d25['map50']:.3f} | {d1['reference_boxes']} / {d1['candidate_boxes']} | "
            f"{row['held_out_cosine']:.4f} | {target} | {row['cli_seconds']:.0f} |"
        )
    lines += [
        "",
        "mAP: the pruned model's detections (class-wise NMS, IoU 0.7, down to confidence 0.001, ranked by score) "
        "against the original's boxes at the stated confidence as ground truth; COCO AP (101-point), averaged over "
        "the classes the original detected. Speed-up: original over pruned latency, onnxruntime 1 thread, 200 "
        "interleaved runs each, re-measured after all runs (p50, and fastest runs when the machine is busy). "
        "Targets (issue 31): -30% MACs: mAP50 >= 0.90 and >= 1.3x; -50%: >= 0.80 and >= 1.6x, with data; "
        "without data the same figures, no target.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time-budget", type=float, default=300.0)
    parser.add_argument("--ablation", action="store_true")
    parser.add_argument("--name", default="detection")
    args = parser.parse_args()
    limits = RunnerLimits(memory_mib=8192, timeout_s=1800)
    with tempfile.TemporaryDirectory(prefix="onnxprune-bench-detection-") as tmp:
        work = Path(tmp)
        calibration, held_out = split_photos(work)
        plan = [(f"-{f:.0%} {'data' if d else 'no data'}", f, d, []) for f in (0.3, 0.5) for d in (True, False)]
        if args.ablation:
            plan.append(("-30% data, --detector none", 0.3, True, ["--detector", "none"]))
        runs = []
        for name, fraction, with_data, extra in plan:
            slug = name.replace(" ", "_").replace("%", "").replace(",", "").replace("--", "")
            run = run_cli(work, slug, fraction, calibration if with_data else None, args.time_budget, extra)
            runs.append((name, fraction, with_data, run))
        data = Dataset({"images": read_folder(held_out, SIZE)}, None)
        evaluator = make_evaluator(MODEL, data, limits=limits)
        original = {str(c): evaluator.detections(MODEL, "yolo", c)["reference_boxes"] for c in CONFIDENCES}
        rows = []
        for name, fraction, with_data, run in runs:
            row = {"name": name, "data": "250 photos" if with_data else "none", "fraction": fraction}
            if "error" in run:
                rows.append({**row, "error": run["error"], "cli_seconds": run["seconds"]})
                continue
            row.update(judge(run, evaluator, limits))
            floor, speed = TARGETS[fraction]
            if with_data and not row["name"].endswith("none"):
                map50, ratio = row["detections"]["0.1"]["map50"], row["latency"]["p50_ratio"]
                met = map50 >= floor and ratio is not None and 1 / ratio >= speed
                row["target"] = f"{'met' if met else 'missed'} (>= {floor:g}, >= {speed:g}x)"
            rows.append(row)
            print(json.dumps({k: row[k] for k in ("name", "macs_change", "held_out_cosine", "latency")}), flush=True)
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.machine(),
    )
    result = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{cpu}, {os.cpu_count()} cores, shared with other work",
        "model": MODEL.name,
        "calibration": 250,
        "held_out": len(data),
        "time_budget": args.time_budget,
        "original_boxes": original,
        "rows": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=1, default=float))
    (RESULTS / f"{args.name}.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
