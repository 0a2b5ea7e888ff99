"""Learned pruning (Huang et al. 2018) against l1 and taylor at the same MACs, on CIFAR-10 (CPU only).

1. Train the ResNet-8 of ``bench_criteria.py`` from scratch on ``../shared/data/cifar10-train-20k.npz``
   and export it to ONNX. Nothing is downloaded.
2. For each bound b: ``roundtrip.learned.search`` prunes layer by layer; each sampled pruning is
   tried on 400 held-out *training* images (the reward; never trained on), the network is fine-tuned for
   ``--finetune-steps`` SGD steps after each pruned layer.
3. At the MACs the learned search reached, prune one-shot with ``l1`` and ``taylor``
   (``select_by_flops``), re-estimate BatchNorm statistics and fine-tune with the same total number
   of steps the search spent (layers pruned x steps per layer).
4. Report accuracy on 2,500 CIFAR-10 test images (every fourth), which nothing trains, scores or
   rewards on.

    .venv/bin/python benchmarks/bench_learned.py          # ~15 min on 2 shared cores; writes results/learned.*
    .venv/bin/python benchmarks/bench_learned.py --quick  # a smoke run, results not written
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_criteria import export, load_cifar, train, verify_in_process  # noqa: E402

from onnxprune.graphops.cost import measure_cost  # noqa: E402
from onnxprune.graphops.dependency import analyze  # noqa: E402
from onnxprune.graphops.scoring import score_groups  # noqa: E402
from onnxprune.graphops.selection import select_by_flops  # noqa: E402
from onnxprune.graphops.surgery import apply_plan  # noqa: E402
from onnxprune.roundtrip.context import DataContext  # noqa: E402
from onnxprune.roundtrip.data import Dataset  # noqa: E402
from onnxprune.roundtrip.executor import OnnxModule  # noqa: E402
from onnxprune.roundtrip.learned import SearchSettings, search  # noqa: E402
from onnxprune.roundtrip.objective import make_objective  # noqa: E402
from onnxprune.roundtrip.training import evaluate, finetune, recalibrate_batchnorm  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
SHAPES = {"input": [1, 3, 32, 32]}


def test_accuracy(module: OnnxModule, objective, test_set: Dataset) -> float:
    return evaluate(module, objective, test_set, 256).accuracy


def learned_row(dep, context, test_set, bound: float, args) -> dict:
    settings = SearchSettings(
        max_drop=bound,
        episodes=args.episodes,
        samples=args.samples,
        finetune_steps=args.finetune_steps,
        lr=args.lr,
        batch_size=64,
        seed=args.seed,
        reward_samples=len(context.holdout),
    )
    started = time.perf_counter()

    def progress(label: str, fraction: float) -> None:
        if "episode" not in label or f"episode {args.episodes}/" in label or "episode 1/" in label:
            print(f"    b={bound}: {label}", flush=True)

    result = search(dep, settings, context, verify=verify_in_process, progress=progress)
    seconds = round(time.perf_counter() - started, 1)
    pruned_layers = sum(1 for layer in result.layers if layer.kept < layer.channels)
    return {
        "method": "learned",
        "bound": bound,
        "macs": measure_cost(result.recovery.model, SHAPES).macs,
        "test_accuracy": test_accuracy(OnnxModule(result.recovery.model), context.objective, test_set),
        "test_accuracy_pruned": test_accuracy(OnnxModule(result.recovery.pruned_only), context.objective, test_set),
        "finetune_steps_total": pruned_layers * args.finetune_steps,
        "seconds": seconds,
        "reward_baseline": result.baseline,
        "reward_samples": result.reward_samples,
        "layers": [
            {
                "group": layer.group,
                "channels": layer.channels,
                "kept": layer.kept,
                "reward": round(layer.reward, 4),
                "drop": round(layer.drop, 4),
                "drop_finetuned": None if layer.drop_finetuned is None else round(layer.drop_finetuned, 4),
                "rewards": layer.rewards,
            }
            for layer in result.layers
        ],
    }


def baseline_row(
    dep, context, test_set, criterion: str, macs_target: int, macs_original: int, steps: int, args
) -> dict:
    scores = score_groups(dep, criterion, seed=args.seed, data=context)
    plan = select_by_flops(dep, scores, 1.0 - macs_target / macs_original)
    pruned = apply_plan(dep, plan)
    verify_in_process(dep, plan, pruned)
    module = OnnxModule(pruned)
    row = {
        "method": criterion,
        "macs": measure_cost(pruned, SHAPES).macs,
        "test_accuracy_pruned": test_accuracy(module, context.objective, test_set),
        "finetune_steps_total": steps,
    }
    started = time.perf_counter()
    recalibrate_batchnorm(module, context.train, 64, 20, args.seed)
    finetune(module, context.objective, context.train, steps=steps, lr=args.lr, batch_size=64, seed=args.seed)
    recalibrate_batchnorm(module, context.train, 64, 20, args.seed)
    row["test_accuracy"] = test_accuracy(module, context.objective, test_set)
    row["seconds"] = round(time.perf_counter() - started, 1)
    return row


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base, macs0 = results["model"]["test_accuracy"], results["macs_original"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    markers = {"learned": "o", "l1": "s", "taylor": "^"}
    for method in ("learned", "l1", "taylor"):
        rows = sorted((r for r in results["rows"] if r["method"] == method), key=lambda r: r["macs"])
        macs = [r["macs"] / macs0 for r in rows]
        (line,) = left.plot(
            macs, [r["test_accuracy"] for r in rows], markers[method] + "-", label=f"{method} fine-tuned"
        )
        left.plot(
            macs,
            [r["test_accuracy_pruned"] for r in rows],
            markers[method] + "--",
            color=line.get_color(),
            markerfacecolor="none",
            alpha=0.6,
            label=f"{method} pruned, before fine-tuning",
        )
    for r in results["rows"]:
        if r["method"] == "learned":
            left.annotate(
                f"b={r['bound']}",
                (r["macs"] / macs0, r["test_accuracy"]),
                fontsize=8,
                textcoords="offset points",
                xytext=(4, -10),
            )
    left.axhline(base, color="gray", linestyle=":", label=f"unpruned {base:.3f}")
    left.set_xlabel("MACs kept (fraction of the original)")
    left.set_ylabel("CIFAR-10 test accuracy (2,500 images)")
    left.set_title("ResNet-8: learned vs l1 / taylor at equal MACs")
    left.legend(fontsize=7)
    left.grid(alpha=0.3)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    learned_rows = [r for r in results["rows"] if r["method"] == "learned"]
    for color, r in zip(colors, learned_rows):
        for number, layer in enumerate(r["layers"]):
            right.plot(
                layer["rewards"],
                color=color,
                alpha=0.35 + 0.1 * number,
                label=f"b={r['bound']} (one line per layer)" if number == 0 else None,
            )
    right.set_xlabel("episode")
    right.set_ylabel("mean sampled reward R = psi * phi")
    right.set_title("Agent reward curves, per layer")
    right.legend(fontsize=8)
    right.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def markdown(results: dict) -> str:
    m = results["model"]
    s = results["settings"]
    lines = [
        "# Learned pruning on CIFAR-10 (ResNet-8, CPU)",
        "",
        f"ResNet-8 trained from scratch for {m['training']['seconds']} s ({m['training']['epochs']} epochs of 20k "
        f"images): test accuracy {m['test_accuracy']:.4f} (2,500 test images), {results['macs_original']:,} MACs. "
        f"Search: {s['episodes']} episodes x {s['samples']} samples per layer, reward on {s['reward_samples']} "
        f"held-out training images; {s['finetune_steps']} fine-tuning steps (batch 64, lr {s['lr']}) after each "
        f"pruned layer; l1 and taylor one-shot at the same MACs with the same total steps. "
        f"Date {results['date']}, torch {results['versions']['torch']}, {results['machine']}, "
        f"{results['seconds']} s in all.",
        "",
        "| method | b | MACs kept | test acc. pruned | test acc. fine-tuned | fine-tuning steps | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        lines.append(
            f"| {r['method']} | {r.get('bound', '')} | {r['macs'] / results['macs_original']:.1%} | "
            f"{r['test_accuracy_pruned']:.4f} | {r['test_accuracy']:.4f} | {r['finetune_steps_total']} | "
            f"{r['seconds']} |"
        )
    lines += [
        "",
        "Per layer (learned): filters kept / channels, final reward, drop on the reward images before and "
        "after that layer's fine-tuning.",
        "",
    ]
    for r in results["rows"]:
        if r["method"] == "learned":
            lines.append(
                f"* b={r['bound']}: "
                + "; ".join(
                    f"{layer['group']} {layer['kept']}/{layer['channels']} (R {layer['reward']}, drop {layer['drop']}"
                    + (f" -> {layer['drop_finetuned']}" if layer["drop_finetuned"] is not None else "")
                    + ")"
                    for layer in r["layers"]
                )
            )
    lines += ["", "![learned vs l1/taylor](learned.png)", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny budgets, results not written")
    parser.add_argument("--train-seconds", type=float, default=120.0)
    parser.add_argument("--bounds", type=float, nargs="+", default=[0.05, 0.1, 0.2])
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--finetune-steps", type=int, default=40)
    parser.add_argument("--reward-samples", type=int, default=400)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    x_train, y_train = load_cifar("cifar10-train-20k.npz")
    x_test, y_test = load_cifar("cifar10-test.npz")
    x_eval, y_eval = x_test[::4], y_test[::4]
    if args.quick:
        args.train_seconds, args.episodes, args.samples, args.finetune_steps, args.reward_samples = 10.0, 3, 3, 5, 200
        x_eval, y_eval = x_eval[::10], y_eval[::10]
    print(f"training ResNet-8 for ~{args.train_seconds:.0f} s ...", flush=True)
    model, training = train(x_train, y_train, args.train_seconds, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = export(model, Path(tmp) / "resnet8.onnx")
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(x_train))
    val, rest = order[: args.reward_samples], order[args.reward_samples :]
    train_set = Dataset({"input": x_train[rest]}, y_train[rest])
    val_set = Dataset({"input": x_train[val]}, y_train[val])
    test_set = Dataset({"input": x_eval}, y_eval)
    objective = make_objective(prepared, next(test_set.batches(2)), use_labels=True)
    context = DataContext(train_set, val_set, objective, batch_size=64, score_batches=20)
    base = test_accuracy(objective.teacher, objective, test_set)
    print(f"trained: {training}, test accuracy {base:.4f}", flush=True)
    dep = analyze(prepared, SHAPES)
    macs_original = measure_cost(prepared, SHAPES).macs
    rows = []
    for bound in args.bounds:
        row = learned_row(dep, context, test_set, bound, args)
        rows.append(row)
        print(
            f"  learned b={bound}: macs {row['macs'] / macs_original:.3f}, acc {row['test_accuracy']:.4f}", flush=True
        )
        for criterion in ("l1", "taylor"):
            other = baseline_row(
                dep,
                context,
                test_set,
                criterion,
                row["macs"],
                macs_original,
                max(row["finetune_steps_total"], args.finetune_steps),
                args,
            )
            other["matched_bound"] = bound
            rows.append(other)
            print(
                f"  {criterion} at the same MACs: macs {other['macs'] / macs_original:.3f}, "
                f"acc {other['test_accuracy']:.4f}",
                flush=True,
            )
    results = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads {args.threads}",
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__},
        "model": {"architecture": "ResNet-8 (16/32/64, BatchNorm kept)", "training": training, "test_accuracy": base},
        "macs_original": macs_original,
        "settings": {
            "episodes": args.episodes,
            "samples": args.samples,
            "finetune_steps": args.finetune_steps,
            "lr": args.lr,
            "reward_samples": len(val_set),
            "bounds": args.bounds,
        },
        "rows": rows,
        "seconds": round(time.perf_counter() - started, 1),
    }
    summary = markdown(results)
    print(summary)
    if not args.quick:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "learned.json").write_text(json.dumps(results, indent=1))
        (RESULTS / "learned.md").write_text(summary)
        plot(results, RESULTS / "learned.png")


if __name__ == "__main__":
    main()
