"""The patterns issue 14 stopped refusing, measured as users meet them and against the oracle.

For every shared real model (``../shared/models``, no ``--input-shape``) and the built-in cases
(ShuffleNet v1/v2 blocks, a depthwise-multiplier net, a grouped ConvTranspose, float16 and
mixed-precision MobileNet-v2, a ZipMap classifier): ``onnxprune prune --ratio 0.3 --no-benchmark``
as a whole process (exit code, MACs before/after, probe-size notes), and in-process the masked-
original oracle's largest relative error over all outputs (l1 criterion, ratio 0.3).

    .venv/bin/python benchmarks/bench_refusals.py     # writes results/refusals.{json,md}
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onnxprune.graphops.masking import mask_removed_channels  # noqa: E402
from onnxprune.graphops.scoring import score_groups  # noqa: E402
from onnxprune.graphops.selection import select_by_ratio  # noqa: E402
from onnxprune.graphops.surgery import apply_plan  # noqa: E402
from onnxprune.workers.output_compare import numeric_values, relative_error  # noqa: E402
from tests.support import zoo  # noqa: E402
from tests.support.oracle import analyse, random_feeds, session  # noqa: E402
from tests.support.small_models import float16, zipmap_classifier  # noqa: E402

RATIO = 0.3
MODELS = ROOT.parent / "shared" / "models"
RESULTS = ROOT / "benchmarks" / "results"


def _built_cases(directory: Path) -> dict[str, Path]:
    import torch

    cases = {}
    modules = {
        "shufflenet_v2_block": (zoo.shufflenet_v2_block(), (1, 3, 16, 16)),
        "shufflenet_v1_block": (zoo.shufflenet_v1_block(), (1, 3, 16, 16)),
        "depthwise_multiplier": (zoo.depthwise_multiplier_net(), (1, 3, 16, 16)),
        "grouped_deconv": (zoo.grouped_deconv_net(), (1, 3, 16, 16)),
        "mobilenet_v2": (zoo.mobilenet_v2(width_multiplier=0.25), (1, 3, 16, 16)),
    }
    for name, (module, shape) in modules.items():
        torch.manual_seed(0)
        cases[name] = zoo.export_onnx(zoo.randomize_batchnorm(module, 1), shape, directory / f"{name}.onnx")
    mobilenet = onnx.load(cases.pop("mobilenet_v2"))
    for name, model in (
        ("mobilenet_v2_float16", float16(mobilenet)),
        ("mobilenet_v2_mixed_precision", float16(mobilenet, float32_interface=True)),
        ("zipmap_classifier", zipmap_classifier()),
    ):
        onnx.save(model, directory / f"{name}.onnx")
        cases[name] = directory / f"{name}.onnx"
    return cases


def _cli(path: Path, workdir: Path) -> dict:
    started = time.perf_counter()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "onnxprune.service.cli",
            "prune",
            str(path),
            "-o",
            str(workdir / "out.onnx"),
            "--ratio",
            str(RATIO),
            "--no-benchmark",
            "--report",
            str(workdir / "report.json"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    row: dict = {"exit": result.returncode, "seconds": round(time.perf_counter() - started, 1)}
    if result.returncode != 0:
        row["error"] = (result.stderr.strip().splitlines() or [""])[-1]
        return row
    report = json.loads((workdir / "report.json").read_text())
    row.update(
        macs_before=report["macs"]["before"],
        macs_after=report["macs"]["after"],
        groups_pruned=sum(g["channels_after"] < g["channels_before"] for g in report["groups"]),
        prunable=len(report["groups"]),
        frozen=len(report["frozen"]),
        notes=report["warnings"],
        input_shapes=report["input_shapes"],
    )
    row["macs_removed"] = round(1 - row["macs_after"] / row["macs_before"], 4)
    return row


def _oracle_error(path: Path) -> float:
    analysed = analyse(path)
    plan = select_by_ratio(analysed.dep, score_groups(analysed.dep, "l1"), RATIO)
    feeds = random_feeds(analysed.prepared, analysed.input_shapes)
    masked = session(mask_removed_channels(analysed.dep, plan)).run(None, feeds)
    pruned = session(apply_plan(analysed.dep, plan)).run(None, feeds)
    errors = [
        relative_error(numeric_values(a), numeric_values(b))
        for a, b in zip(masked, pruned)
        if numeric_values(a) is not None
    ]
    return max(errors, default=0.0)


def main() -> None:
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        cases = {path.stem: path for path in sorted(MODELS.glob("*.onnx"))}
        cases.update(_built_cases(directory))
        for name, path in cases.items():
            workdir = directory / name
            workdir.mkdir()
            row = _cli(path, workdir)
            row["oracle_max_relative_error"] = _oracle_error(path)
            rows[name] = row
            print(name, {k: v for k, v in row.items() if k != "notes"}, flush=True)
    meta = {
        "date": time.strftime("%Y-%m-%dT%H:%M"),
        "python": platform.python_version(),
        "onnxruntime": __import__("onnxruntime").__version__,
        "onnx": onnx.__version__,
        "load_average": os.getloadavg(),
        "ratio": RATIO,
        "criterion": "l1",
        "command": "python benchmarks/bench_refusals.py",
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "refusals.json").write_text(json.dumps({"meta": meta, "models": rows}, indent=1, default=float))
    lines = [
        f"# Issue 14 cases at ratio {RATIO} (l1), no --input-shape",
        "",
        f"`{meta['command']}` on {meta['date']} (onnxruntime {meta['onnxruntime']}, load {meta['load_average'][0]:.1f})",
        "",
        "| model | exit | groups pruned / prunable (frozen) | MACs removed | oracle max rel. error | probe |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name, row in rows.items():
        if row["exit"]:
            lines.append(
                f"| {name} | {row['exit']} | {row.get('error', '')} | | {row['oracle_max_relative_error']:.1e} | |"
            )
            continue
        probe = (
            "x".join(map(str, next(iter(row["input_shapes"].values()))))
            if row["notes"] and "symbolic" in row["notes"][0]
            else ""
        )
        lines.append(
            f"| {name} | 0 | {row['groups_pruned']} / {row['prunable']} ({row['frozen']}) | "
            f"{row['macs_removed']:.1%} | {row['oracle_max_relative_error']:.1e} | {probe} |"
        )
    (RESULTS / "refusals.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
