"""``--latency-target`` on transformers, heads and MLP neurons together against neurons only (issue 27, item 6).

Each row is whole CLI processes, as a user runs them: ``onnxprune prune MODEL --latency-target T
[--prune-kinds neuron] [--data sts.npz --time-budget B] --no-benchmark --report R``, then
``onnxprune bench ORIGINAL PRUNED --runs 200`` (interleaved, 1 thread). MiniLM-L3 at batch 1,
sequence 128, judged by the STS dev Spearman (x100; calibration and tokens as ``bench_transformers.py``
builds them, whose code this reuses) and the report's output cosine; ViT-S/14 (``--exclude
'/decoder/*'``) by the report's output cosine. Rows run one after another (the latency table is
cached between rows of one model: every row of a model prices its groups from the same table).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_latency_heads.py [--cases minilm:l1:0.7:all ...]
        [--time-budget 120] [--name latency_heads]

Cases: ``MODEL:MODE:TARGET:KINDS``, MODE ``l1`` (no data) or ``data``, KINDS ``all`` (heads and
neurons) or ``neuron`` (``--prune-kinds neuron``). Writes ``results/NAME.json`` and ``.md`` after every row.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_quality import CLI, run  # noqa: E402  (one whole process, its wall time and load)
from bench_transformers import SEQUENCE, VOCABULARY, Sts, macs_and_params, sts_calibration  # noqa: E402
from wordpiece import WordPiece  # noqa: E402

from onnxprune.workers.latency import cpu_model  # noqa: E402
from tests.support.transformer_models import minilm_path, vit_path  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_CASES = [
    f"minilm:{mode}:{target}:{kinds}" for mode in ("l1", "data") for target in (0.7, 0.5) for kinds in ("all", "neuron")
] + ["vit:l1:0.7:all"]
SHAPES = {
    "minilm": ["--input-shape", f"input_ids:1x{SEQUENCE}", "--input-shape", f"attention_mask:1x{SEQUENCE}"],
    "vit": [],
}


def pad_calibration(path: Path, length: int) -> None:
    """The calibration sentences padded from ``length`` to the timed sequence (a job with data takes
    its input shapes from the data, and the latency target is of the model at sequence 128)."""
    data = np.load(path)
    width = ((0, 0), (0, SEQUENCE - length))
    np.savez(
        path,
        input_ids=np.pad(data["input_ids"], width, constant_values=0),  # [PAD] is 0 in BERT's vocabulary
        attention_mask=np.pad(data["attention_mask"], width, constant_values=0),
    )


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args, self.work = args, work
        self.models = {"minilm": minilm_path(), "vit": vit_path()}
        self.sts = Sts(WordPiece(VOCABULARY))
        pad_calibration(work / "sts.npz", sts_calibration(self.sts.tokenizer, work / "sts.npz"))
        self.original_spearman = round(self.sts.spearman_x100(self.models["minilm"]), 2)

    def case(self, text: str) -> dict:
        model, mode, target, kinds = text.split(":")
        stem = text.replace(":", "-")
        output, report = self.work / f"{stem}.onnx", self.work / f"{stem}.json"
        command = [*CLI, "prune", str(self.models[model]), "-o", str(output), "--no-benchmark", "--report", str(report)]
        command += ["--latency-target", target, *SHAPES[model]]
        if model == "vit":
            command += ["--exclude", "/decoder/*"]
        if kinds != "all":
            command += ["--prune-kinds", kinds]
        if mode == "data":
            command += ["--data", str(self.work / "sts.npz"), "--time-budget", f"{self.args.time_budget:g}"]
        command += shlex.split(self.args.prune_args)
        done, timing = run(command, self.work)
        row: dict = {"case": text, "model": model, "mode": mode, "target": float(target), "kinds": kinds, **timing}
        print(f"{text}: exit {done.returncode} in {timing['wall_s']:.0f} s (load {timing['load_before']})", flush=True)
        if done.returncode != 0:
            row["error"] = f"exit {done.returncode}: " + " | ".join(done.stderr.strip().splitlines()[-3:])[-400:]
            return row
        tool = json.loads(report.read_text())
        chosen = tool.get("latency_target") or {}
        row["passes"] = [
            {"asked": i["asked"], "predicted": i["predicted"], "measured": round(i["measured"]["ratio"], 3)}
            for i in chosen.get("iterations", [])
        ]
        row["predicted"] = chosen.get("predicted")
        row["kept"] = {k["kind"]: [k["units_before"], k["units_after"]] for k in tool.get("kinds") or []}
        row["cosine"] = (tool.get("fidelity") or {}).get("cosine_similarity")
        row["warnings"] = tool.get("warnings")
        vit_input = onnx.load(self.models["vit"], load_external_data=False).graph.input[0].name
        shapes = {
            "minilm": {"input_ids": [1, SEQUENCE], "attention_mask": [1, SEQUENCE]},
            "vit": {vit_input: [1, 3, 224, 224]},
        }[model]
        prefix = "/backbone/" if model == "vit" else ""
        macs_before, _ = macs_and_params(self.models[model], shapes, prefix)
        macs_after, _ = macs_and_params(output, shapes, prefix)
        row["macs_removed"] = round(1 - macs_after / macs_before, 4)
        if model == "minilm":
            row["spearman_x100"] = round(self.sts.spearman_x100(output), 2)
            row["drop_points"] = round(self.original_spearman - row["spearman_x100"], 2)
        sizes = [f"--input-shape={name}:{'x'.join(map(str, dims))}" for name, dims in shapes.items()]
        bench = [*CLI, "bench", str(self.models[model]), str(output), *sizes, "--runs", str(self.args.runs)]
        done, bench_timing = run([*bench, "--json"], self.work)
        row["bench_command"] = bench_timing["command"]
        row["bench_load"] = [bench_timing["load_before"], bench_timing["load_after"]]
        if done.returncode != 0:
            row["error"] = f"bench exit {done.returncode}: {done.stderr.strip()[-300:]}"
            return row
        change = json.loads(done.stdout)["latency_ms"]["change"]
        row["measured"] = {
            "p50_ratio": round(change["ratio"], 3),
            "interval": [round(change["low"], 3), round(change["high"], 3)],
            "min_ratio": round(change["min_ratio"], 3) if change.get("min_ratio") else None,
        }
        print(json.dumps({k: row.get(k) for k in ("kept", "spearman_x100", "cosine", "predicted", "measured")}))
        return row


def markdown(result: dict) -> str:
    lines = [
        "# `--latency-target` on transformers: heads and neurons together, against neurons only",
        "",
        f"Generated by `benchmarks/bench_latency_heads.py` on {result['started']} ({result['cpu']}, 2 cores shared "
        f"with other work). MiniLM-L3 original: STS dev Spearman x100 {result['original_spearman']}. "
        f"Latency: `onnxprune bench ORIGINAL PRUNED --runs {result['runs']}` (interleaved, 1 thread, batch 1, "
        "sequence 128 / 224x224): p50 ratio [95%] / fastest-run ratio. Cosine: the report's output cosine on "
        f"generated inputs. With data: `--time-budget {result['time_budget']:g}`.",
        "",
        "| case | heads kept | neurons kept | MACs removed | Spearman (drop) | cosine | passes asked/predicted/measured "
        "| bench p50 [95%] / fastest | met, overshoot | wall s | load prune / bench |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        if "error" in row:
            lines.append(f"| {row['case']} | {row['error']} |" + " |" * 9)
            continue
        kept = row["kept"]
        heads = "{1} of {0}".format(*kept["head"]) if "head" in kept else "-"
        neurons = "{1:,} of {0:,}".format(*kept["neuron"]) if "neuron" in kept else "-"
        quality = f"{row['spearman_x100']:.2f} ({-row['drop_points']:+.2f})" if "spearman_x100" in row else "-"
        cosine = f"{row['cosine']:.4f}" if row.get("cosine") is not None else "-"
        passes = "; ".join(f"{p['asked']}/{p['predicted']}/{p['measured']}" for p in row["passes"])
        m = row["measured"]
        ratio = m["p50_ratio"]
        verdict = "met" if ratio <= row["target"] else f"missed by {ratio - row['target']:.3f}"
        if (1 - ratio) > 1.5 * (1 - row["target"]):
            verdict += ", overshot"
        lines.append(
            f"| {row['case']} | {heads} | {neurons} | {row['macs_removed']:.1%} | {quality} | {cosine} | {passes} | "
            f"{ratio}x [{m['interval'][0]}, {m['interval'][1]}] / {m['min_ratio']}x | {verdict} | {row['wall_s']:.0f} "
            f"| {row['load_before']} / {row['bench_load'][0]} |"
        )
    lines += ["", "Commands (`$TMP`: the run's scratch folder):", ""]
    lines += [f"- `{row['case']}`: `{row['command']}`; `{row.get('bench_command', '')}`" for row in result["rows"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=DEFAULT_CASES)
    parser.add_argument("--time-budget", type=float, default=120.0)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--name", default="latency_heads")
    parser.add_argument(
        "--prune-args", default="", help="more flags for every prune: --prune-args='--latency-iterations 5'"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="onnxprune-latency-heads-") as folder:
        work = Path(folder)
        bench = Bench(args, work)
        result = {
            "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "cpu": cpu_model(),
            "original_spearman": bench.original_spearman,
            "runs": args.runs,
            "time_budget": args.time_budget,
            "load_at_start": os.getloadavg(),
            "rows": [],
        }
        for case in args.cases:
            result["rows"].append(bench.case(case))
            (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=1))
            (RESULTS / f"{args.name}.md").write_text(markdown(result))


if __name__ == "__main__":
    main()
