"""Filter criteria against the oracle and against each other, on real CIFAR-10 images (CPU only).

1. Train a small CIFAR ResNet (ResNet-8: 3 stages of one basic block, widths 16/32/64, BatchNorm
   kept) from scratch on ``../shared/data/cifar10-train-20k.npz`` for a few minutes, export it to
   ONNX. Nothing is downloaded.
2. (a) Oracle, as in Molchanov et al. 2017, Table 1: for the internal group of every block (conv1 ->
   BN -> ReLU -> conv2), remove each filter alone (``apply_plan`` with one channel gone) and measure
   the cross-entropy change on held-out test images. Report each criterion's Spearman rank
   correlation with that change (signed "oracle-loss") and with its magnitude ("oracle-abs"),
   within each layer, and their mean.
3. (b) Prune to MACs reductions of 30/50/70% (``select_by_flops``) with random, l1, taylor, apoz and
   mean-activation; report test accuracy after pruning (raw, and with BatchNorm statistics
   re-estimated) and, at 50%, after the same fine-tuning budget for every criterion (one-shot), plus
   Taylor iterative (Molchanov: 5 steps of one fifth of the budget each).

Criteria score on training images with labels; accuracy is measured on the CIFAR-10 test images
(every fourth, 2,500), which nothing trains or scores on.

    .venv/bin/python benchmarks/bench_criteria.py            # ~12 min idle, 28 min on a loaded 2-core machine
    .venv/bin/python benchmarks/bench_criteria.py --quick    # a smoke run (~1 min), results not written
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
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onnxprune.graphops.cost import measure_cost  # noqa: E402
from onnxprune.graphops.dependency import analyze  # noqa: E402
from onnxprune.graphops.masking import mask_removed_channels  # noqa: E402
from onnxprune.graphops.plan import PruningPlan  # noqa: E402
from onnxprune.graphops.prepare import prepare_model  # noqa: E402
from onnxprune.graphops.scoring import score_groups  # noqa: E402
from onnxprune.graphops.selection import select_by_flops  # noqa: E402
from onnxprune.graphops.surgery import apply_plan  # noqa: E402
from onnxprune.roundtrip.context import DataContext  # noqa: E402
from onnxprune.roundtrip.data import Dataset  # noqa: E402
from onnxprune.roundtrip.executor import OnnxModule  # noqa: E402
from onnxprune.roundtrip.objective import make_objective  # noqa: E402
from onnxprune.roundtrip.training import evaluate, finetune, recalibrate_batchnorm  # noqa: E402
from onnxprune.workers.analysis import analyse_model  # noqa: E402
from onnxprune.workers.options import PruneOptions  # noqa: E402
from onnxprune.workers.stages import Stages  # noqa: E402
from onnxprune.workers.strategies import Job  # noqa: E402
from onnxprune.workers.strategies.finetune import FineTune  # noqa: E402
from onnxprune.workers.strategies.ranked import RankedByMacs  # noqa: E402
from onnxprune.workers.strategies.stepwise import Stepwise  # noqa: E402
from tests.support import zoo  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"
MEAN = np.array([0.4914, 0.4822, 0.4465], np.float32).reshape(1, 3, 1, 1)
STD = np.array([0.2023, 0.1994, 0.2010], np.float32).reshape(1, 3, 1, 1)
CRITERIA = ["random", "l1", "taylor", "apoz", "mean-activation"]
ORACLE_CRITERIA = ["random", "l1", "l2", "bn-gamma", "mean-activation", "apoz", "taylor"]
TARGETS = [0.3, 0.5, 0.7]
FINETUNE_TARGET = 0.5


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = (
            None
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.shortcut is None else self.shortcut(x)))


class CifarResNet(nn.Module):
    """conv3x3(16)-BN-ReLU -> [block 16] -> [block 32, /2] -> [block 64, /2] -> GAP -> Linear(10)."""

    def __init__(self, widths=(16, 32, 64)) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU())
        blocks, cin = [], widths[0]
        for index, width in enumerate(widths):
            blocks.append(Block(cin, width, 1 if index == 0 else 2))
            cin = width
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, 10)

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1), 1))


def load_cifar(name: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(DATA / name, allow_pickle=False) as archive:
        images, labels = archive["images"], archive["labels"]
    x = (images.astype(np.float32) / 255.0).transpose(0, 3, 1, 2)
    return np.ascontiguousarray((x - MEAN) / STD), labels.astype(np.int64)


def augment(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random crop with 4-pixel padding and horizontal flip."""
    padded = np.pad(x, ((0, 0), (0, 0), (4, 4), (4, 4)), mode="reflect")
    out = np.empty_like(x)
    for i in range(len(x)):
        dy, dx = rng.integers(0, 9, 2)
        crop = padded[i, :, dy : dy + 32, dx : dx + 32]
        out[i] = crop[:, :, ::-1] if rng.random() < 0.5 else crop
    return out


def train(x, y, seconds: float, seed: int = 0) -> tuple[nn.Module, dict]:
    """SGD with a cosine learning rate over wall time (the machine is shared: steps vary in cost)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = CifarResNet()
    batch, started = 128, time.perf_counter()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    step, losses = 0, []
    model.train()
    while (elapsed := time.perf_counter() - started) < seconds:
        index = rng.integers(0, len(x), batch)
        for group in optimizer.param_groups:
            group["lr"] = 0.1 * 0.5 * (1 + np.cos(np.pi * elapsed / seconds))
        loss = F.cross_entropy(model(torch.from_numpy(augment(x[index], rng))), torch.from_numpy(y[index]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        step += 1
    return model.eval(), {
        "steps": step,
        "batch": batch,
        "epochs": round(step * batch / len(x), 2),
        "seconds": round(time.perf_counter() - started, 1),
        "final_loss": round(float(np.mean(losses[-50:])), 4),
    }


def export(model: nn.Module, path: Path) -> onnx.ModelProto:
    zoo.export_onnx(model, (1, 3, 32, 32), path, dynamic_batch=True, keep_batchnorm=True)
    return prepare_model(onnx.load(path))


def ranks(values: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank), for Spearman's rho."""
    order = np.argsort(values, kind="stable")
    ranked = np.empty(len(values))
    ranked[order] = np.arange(len(values), dtype=np.float64)
    for value in np.unique(values):
        tie = values == value
        ranked[tie] = ranked[tie].mean()
    return ranked


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = ranks(np.asarray(a, np.float64)), ranks(np.asarray(b, np.float64))
    if ra.std() == 0 or rb.std() == 0:
        return 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


def held_out_loss(model: onnx.ModelProto, x: np.ndarray, y: np.ndarray) -> float:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"input": x})[0]
    return float(F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(y)))


def oracle_study(prepared, context: DataContext, x_oracle, y_oracle, seed: int) -> dict:
    """Per internal group: the held-out loss change of removing each filter alone, vs each criterion."""
    dep = analyze(prepared, {"input": [1, 3, 32, 32]})
    layers = [g for g in dep.prunable if len(g.filter_producers) == 1 and len(g.producers) == 1]
    base = held_out_loss(prepared, x_oracle, y_oracle)
    scores = {name: score_groups(dep, name, seed=seed, data=context) for name in ORACLE_CRITERIA}
    rows = []
    for group in layers:
        change = np.zeros(group.channels)
        for channel in range(group.channels):
            plan = PruningPlan.from_keep(dep, {group.id: [c for c in range(group.channels) if c != channel]})
            change[channel] = held_out_loss(apply_plan(dep, plan), x_oracle, y_oracle) - base
        row = {
            "group": group.id,
            "channels": group.channels,
            "oracle_mean_change": float(change.mean()),
            "oracle_loss": {},
            "oracle_abs": {},
        }
        for name in ORACLE_CRITERIA:
            row["oracle_loss"][name] = spearman(scores[name][group.id], change)
            row["oracle_abs"][name] = spearman(scores[name][group.id], np.abs(change))
        rows.append(row)
    mean = {
        kind: {name: float(np.mean([r[kind][name] for r in rows])) for name in ORACLE_CRITERIA}
        for kind in ("oracle_loss", "oracle_abs")
    }
    return {"baseline_loss": base, "samples": len(x_oracle), "layers": rows, "mean": mean}


def verify_in_process(dep, plan, pruned) -> None:
    """The oracle the pipeline runs (pruned vs masked original), in this process."""
    feeds = {"input": np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)}
    want = ort.InferenceSession(
        mask_removed_channels(dep, plan).SerializeToString(), providers=["CPUExecutionProvider"]
    ).run(None, feeds)[0]
    got = ort.InferenceSession(pruned.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    error = np.abs(got - want).max() / max(np.abs(want).max(), 1e-12)
    if error > 1e-3:
        raise RuntimeError(f"surgery deviates from the oracle: {error:.2e}")


def iterative_schedule(prepared, context: DataContext, *, steps: int, finetune_steps: int, lr: float, seed: int):
    """Taylor pruning to FINETUNE_TARGET in ``steps`` prune / fine-tune steps (``workers.strategies.stepwise``),
    every step's surgery checked by the sandboxed oracle as in a job."""
    with tempfile.TemporaryDirectory(prefix="bench-criteria-") as workdir:
        path = Path(workdir) / "model.onnx"
        onnx.save(prepared, path)
        options = PruneOptions(
            criterion="taylor",
            flops_target=FINETUNE_TARGET,
            seed=seed,
            iterative_steps=steps,
            finetune_steps=finetune_steps,
            lr=lr,
            batch_size=64,
            benchmark=False,
        )
        job = Job(
            analyse_model(path, {"input": [1, 3, 32, 32]}), options, Stages(), Path(workdir), data_context=context
        )
        return Stepwise(RankedByMacs(FINETUNE_TARGET), FineTune(finetune_steps, lr), steps).run(job)


def accuracy(module: OnnxModule, context: DataContext) -> float:
    return evaluate(module, context.objective, context.holdout, 256).accuracy


def pruning_study(prepared, context: DataContext, finetune_steps: int, lr: float, seed: int) -> dict:
    dep = analyze(prepared, {"input": [1, 3, 32, 32]})
    macs = measure_cost(prepared, {"input": [1, 3, 32, 32]}).macs
    rows = []
    for name in CRITERIA:
        scores = score_groups(dep, name, seed=seed, data=context)
        for target in TARGETS:
            plan = select_by_flops(dep, scores, target)
            pruned = apply_plan(dep, plan)
            verify_in_process(dep, plan, pruned)
            module = OnnxModule(pruned)
            row = {
                "criterion": name,
                "schedule": "one-shot",
                "target": target,
                "macs": measure_cost(pruned, {"input": [1, 3, 32, 32]}).macs,
                "accuracy_pruned": accuracy(module, context),
            }
            recalibrate_batchnorm(module, context.train, 128, 20, seed)
            row["accuracy_bn_recalibrated"] = accuracy(module, context)
            if target == FINETUNE_TARGET:
                started = time.perf_counter()
                finetune(
                    module, context.objective, context.train, steps=finetune_steps, lr=lr, batch_size=64, seed=seed
                )
                recalibrate_batchnorm(module, context.train, 128, 20, seed)
                row["accuracy_finetuned"] = accuracy(module, context)
                row["finetune_seconds"] = round(time.perf_counter() - started, 1)
            rows.append(row)
            print(f"  {name:16s} -{target:.0%} MACs: {row}", flush=True)
    # Taylor, iterative: the same total budget in 5 prune / fine-tune steps, through the pipeline's schedule.
    steps = 5
    started = time.perf_counter()
    result = iterative_schedule(
        prepared, context, steps=steps, finetune_steps=finetune_steps // steps, lr=lr, seed=seed
    )
    module = OnnxModule(result.model)
    pruned_only = OnnxModule(result.pruned_only)
    row = {
        "criterion": "taylor",
        "schedule": f"iterative x{steps}",
        "target": FINETUNE_TARGET,
        "macs": measure_cost(result.model, {"input": [1, 3, 32, 32]}).macs,
        "accuracy_pruned": accuracy(pruned_only, context),
    }
    recalibrate_batchnorm(pruned_only, context.train, 128, 20, seed)
    row["accuracy_bn_recalibrated"] = accuracy(pruned_only, context)
    row["accuracy_finetuned"] = accuracy(module, context)
    row["finetune_seconds"] = round(time.perf_counter() - started, 1)
    rows.append(row)
    print(f"  taylor iterative: {row}", flush=True)
    return {"macs_original": macs, "finetune_steps": finetune_steps, "batch_size": 64, "lr": lr, "rows": rows}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    study = results["pruning"]
    base = results["model"]["test_accuracy"]
    figure, axis = plt.subplots(figsize=(7, 4.5))
    colors = {}
    for name in CRITERIA:
        rows = [r for r in study["rows"] if r["criterion"] == name and r["schedule"] == "one-shot"]
        macs = [r["macs"] / study["macs_original"] for r in rows]
        (line,) = axis.plot(
            macs, [r["accuracy_bn_recalibrated"] for r in rows], "o--", label=f"{name} (pruned, BN re-estimated)"
        )
        colors[name] = line.get_color()
        tuned = [r for r in rows if "accuracy_finetuned" in r]
        axis.plot(
            [r["macs"] / study["macs_original"] for r in tuned],
            [r["accuracy_finetuned"] for r in tuned],
            "*",
            markersize=14,
            color=line.get_color(),
            label=f"{name} fine-tuned",
        )
    for r in study["rows"]:
        if r["schedule"] != "one-shot":
            axis.plot(
                [r["macs"] / study["macs_original"]],
                [r["accuracy_finetuned"]],
                "P",
                markersize=12,
                color=colors["taylor"],
                markeredgecolor="black",
                label=f"taylor {r['schedule']} fine-tuned",
            )
    axis.axhline(base, color="gray", linestyle=":", label=f"unpruned {base:.3f}")
    axis.set_xlabel("MACs kept (fraction of the original)")
    axis.set_ylabel("CIFAR-10 test accuracy (2,500 images)")
    axis.set_title("ResNet-8 on CIFAR-10: criteria at equal MACs")
    axis.legend(fontsize=7, loc="lower right")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def markdown(results: dict) -> str:
    m, o, p = results["model"], results["oracle"], results["pruning"]
    lines = [
        "# Criteria on CIFAR-10 (ResNet-8, CPU)",
        "",
        f"Trained from scratch for {m['training']['seconds']} s ({m['training']['epochs']} epochs of 20k images): "
        f"test accuracy {m['test_accuracy']:.4f} (2,500 test images), {p['macs_original']:,} MACs. "
        f"Date {results['date']}, torch {results['versions']['torch']}, {results['machine']}.",
        "",
        f"## (a) Spearman rank correlation with the oracle, within layers ({o['samples']} held-out test images)",
        "",
        "oracle-loss: the held-out cross-entropy change when the filter alone is removed; oracle-abs: its magnitude.",
        "",
        "| layer | channels | " + " | ".join(ORACLE_CRITERIA) + " |",
        "|---|---|" + "---|" * len(ORACLE_CRITERIA),
    ]
    for kind in ("oracle_loss", "oracle_abs"):
        for row in o["layers"]:
            lines.append(
                f"| {row['group']} ({kind.replace('_', '-')}) | {row['channels']} | "
                + " | ".join(f"{row[kind][c]:.2f}" for c in ORACLE_CRITERIA)
                + " |"
            )
        lines.append(
            f"| **mean ({kind.replace('_', '-')})** | | "
            + " | ".join(f"**{o['mean'][kind][c]:.2f}**" for c in ORACLE_CRITERIA)
            + " |"
        )
    lines += [
        "",
        f"## (b) Accuracy at equal MACs (fine-tuning: {p['finetune_steps']} SGD steps, batch {p['batch_size']}, "
        f"lr {p['lr']}, labels)",
        "",
        "| criterion | schedule | MACs removed | pruned | pruned, BN re-estimated | fine-tuned |",
        "|---|---|---|---|---|---|",
    ]
    for r in p["rows"]:
        tuned = f"{r['accuracy_finetuned']:.4f}" if "accuracy_finetuned" in r else ""
        lines.append(
            f"| {r['criterion']} | {r['schedule']} | {1 - r['macs'] / p['macs_original']:.1%} | "
            f"{r['accuracy_pruned']:.4f} | {r['accuracy_bn_recalibrated']:.4f} | {tuned} |"
        )
    lines += ["", "![accuracy vs MACs](criteria.png)", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny budgets, results not written")
    parser.add_argument("--train-seconds", type=float, default=180.0)
    parser.add_argument("--finetune-steps", type=int, default=100)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    started = time.perf_counter()
    x_train, y_train = load_cifar("cifar10-train-20k.npz")
    x_test, y_test = load_cifar("cifar10-test.npz")
    x_eval, y_eval = x_test[::4], y_test[::4]  # 2,500 test images, every class (the file is sorted)
    x_oracle, y_oracle = x_test[1::10], y_test[1::10]  # 1,000 other test images for the oracle
    if args.quick:
        args.train_seconds, args.finetune_steps = 10.0, 10
        x_eval, y_eval, x_oracle, y_oracle = x_eval[::10], y_eval[::10], x_oracle[::5], y_oracle[::5]
    print(f"training ResNet-8 for ~{args.train_seconds:.0f} s ...", flush=True)
    model, training = train(x_train, y_train, args.train_seconds, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = export(model, Path(tmp) / "resnet8.onnx")
    train_set, test_set = Dataset({"input": x_train}, y_train), Dataset({"input": x_eval}, y_eval)
    objective = make_objective(prepared, next(test_set.batches(2)), use_labels=True)
    context = DataContext(train_set, test_set, objective, batch_size=64, score_batches=4 if args.quick else 20)
    test_accuracy = accuracy(objective.teacher, context)
    print(f"trained: {training}, test accuracy {test_accuracy:.4f}", flush=True)
    print("oracle study ...", flush=True)
    oracle = oracle_study(prepared, context, x_oracle, y_oracle, args.seed)
    print(json.dumps(oracle["mean"], indent=1), flush=True)
    print("pruning study ...", flush=True)
    pruning = pruning_study(prepared, context, args.finetune_steps, args.lr, args.seed)
    results = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__},
        "model": {
            "architecture": "ResNet-8 (16/32/64, BatchNorm kept)",
            "training": training,
            "test_accuracy": test_accuracy,
        },
        "oracle": oracle,
        "pruning": pruning,
        "seconds": round(time.perf_counter() - started, 1),
    }
    summary = markdown(results)
    print(summary)
    if not args.quick:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "criteria.json").write_text(json.dumps(results, indent=1))
        (RESULTS / "criteria.md").write_text(summary)
        plot(results, RESULTS / "criteria.png")


if __name__ == "__main__":
    main()
