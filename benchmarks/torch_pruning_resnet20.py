"""Torch-Pruning's row of ``bench_quality.py``, a script run as its own process, as a user runs it.

A PyTorch ResNet-20 (plain ``torch.nn``, written here) takes the weights of the shared
``onnc_resnet20.onnx``: the ONNX graph keeps BatchNorm apart from its bias-free convs, so the module
names below are the ONNX initializer names and the weights load as a state dict. Before pruning,
its logits are checked against onnxruntime's on calibration images.

Pruning: ``MetaPruner`` with ``TaylorImportance`` (Molchanov et al. 2019), every group pruned by the
same ratio (``global_pruning=False``), the classifier's outputs kept, reached in
``--iterative-steps`` steps with fresh gradients (cross-entropy on calibration batches) before each.
The ratio is found by bisection on copies until the MACs removed (``tp.utils.count_ops_and_params``)
are within ``--tolerance`` of ``--macs-removed``; with uniform ratios the channel counts do not
depend on the importance, so the copies use the cheaper magnitude importance.

Recovery: cross-entropy fine-tuning on all calibration images (SGD, momentum 0.9, weight decay 5e-4,
cosine decay over the wall time), with onnxprune's own augmentation (random crop with padding,
horizontal flip), for ``--seconds`` of wall time; the last weights are kept. The result is exported
to ONNX (BatchNorm folded), and a JSON report is written beside it.

    python benchmarks/torch_pruning_resnet20.py MODEL.onnx CALIB.npz OUT.onnx --macs-removed 0.3 \
        --seconds 600 --report OUT.json
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
import torch_pruning as tp  # noqa: E402
from onnx import numpy_helper  # noqa: E402
from torch import nn  # noqa: E402

from onnxprune.roundtrip.augment import augment_images  # noqa: E402
from tests.support.zoo import export_onnx  # noqa: E402

INPUT_SHAPE = (1, 3, 32, 32)
PARITY_SAMPLES = 16
PARITY_TOLERANCE = 1e-3  # max abs difference of the logits, PyTorch against onnxruntime


class BasicBlock(nn.Module):
    def __init__(self, inputs: int, outputs: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, outputs, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(outputs)
        self.conv2 = nn.Conv2d(outputs, outputs, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(outputs)
        self.relu = nn.ReLU()
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or inputs != outputs:
            self.downsample = nn.Sequential(nn.Conv2d(inputs, outputs, 1, stride, bias=False), nn.BatchNorm2d(outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.downsample(x))


class ResNet20(nn.Module):
    """He et al.'s CIFAR ResNet-20 with 1x1 projection shortcuts, named as ``onnc_resnet20.onnx``."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.ResBlock1 = self._stage(16, 16, 1)
        self.ResBlock2 = self._stage(16, 32, 2)
        self.ResBlock3 = self._stage(32, 64, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, classes)

    @staticmethod
    def _stage(inputs: int, outputs: int, stride: int) -> nn.Sequential:
        return nn.Sequential(
            BasicBlock(inputs, outputs, stride), BasicBlock(outputs, outputs, 1), BasicBlock(outputs, outputs, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.ResBlock3(self.ResBlock2(self.ResBlock1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def load_onnx_weights(model: nn.Module, path: Path) -> nn.Module:
    """The ONNX initializers as the module's state dict; every parameter and buffer must be found."""
    weights = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in onnx.load(path).graph.initializer}
    state = {name: weights[name] for name in model.state_dict() if not name.endswith("num_batches_tracked")}
    missing = [name for name in model.state_dict() if name not in state and not name.endswith("num_batches_tracked")]
    if missing:
        raise ValueError(f"{path.name} has no initializer for {missing}")
    model.load_state_dict(state, strict=False)
    return model


def check_parity(model: nn.Module, path: Path, images: np.ndarray) -> float:
    """Max abs difference of the logits against onnxruntime's on ``images``; raises above tolerance."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    theirs = np.concatenate([session.run(None, {name: image[None]})[0] for image in images])
    with torch.no_grad():
        ours = model.eval()(torch.from_numpy(images)).numpy()
    diff = float(np.abs(ours - theirs).max())
    if diff > PARITY_TOLERANCE:
        raise RuntimeError(f"PyTorch ResNet-20 differs from {path.name}: max abs logit diff {diff:.3g}")
    return diff


def batches(x: np.ndarray, y: np.ndarray, size: int, rng: np.random.Generator):
    """Endless shuffled epochs of (images, labels) batches."""
    while True:
        order = rng.permutation(len(x))
        for start in range(0, len(x) - size + 1, size):
            index = order[start : start + size]
            yield x[index], y[index]


def macs(model: nn.Module) -> int:
    return int(tp.utils.count_ops_and_params(model, torch.randn(*INPUT_SHAPE))[0])


def prune(model: nn.Module, ratio: float, steps: int, importance, before_step: Callable[[], None]) -> nn.Module:
    pruner = tp.pruner.MetaPruner(
        model,
        torch.randn(*INPUT_SHAPE),
        importance=importance,
        pruning_ratio=ratio,
        iterative_steps=steps,
        global_pruning=False,
        ignored_layers=[model.fc],
    )
    for _ in range(steps):
        before_step()
        pruner.step()
    return model


def find_ratio(model: nn.Module, target: float, steps: int, tolerance: float) -> tuple[float, float, int]:
    """The uniform ratio whose pruning removes ``target`` of the MACs (bisection on copies)."""
    base, low, high = macs(model), 0.0, 0.95
    best = (0.0, 0.0, 0)
    for trial in range(1, 21):
        ratio = (low + high) / 2
        removed = (
            1
            - macs(prune(copy.deepcopy(model), ratio, steps, tp.importance.MagnitudeImportance(p=1), lambda: None))
            / base
        )
        if abs(removed - target) < abs(best[1] - target):
            best = (ratio, removed, trial)
        if abs(removed - target) <= tolerance:
            break
        low, high = (ratio, high) if removed < target else (low, ratio)
    return best


def taylor_gradients(model: nn.Module, x: np.ndarray, y: np.ndarray, batch_size: int, count: int) -> None:
    """Cross-entropy gradients over ``count`` calibration batches, accumulated (what Taylor reads)."""
    model.eval()
    model.zero_grad()
    loss = nn.CrossEntropyLoss()
    for start in range(0, min(len(x), count * batch_size), batch_size):
        images, labels = (
            torch.from_numpy(x[start : start + batch_size]),
            torch.from_numpy(y[start : start + batch_size]),
        )
        loss(model(images), labels).backward()


def finetune(
    model: nn.Module, x: np.ndarray, y: np.ndarray, seconds: float, lr: float, batch_size: int, seed: int
) -> dict:
    rng = np.random.default_rng(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    loss_fn, steps, losses = nn.CrossEntropyLoss(), 0, []
    model.train()
    started = time.perf_counter()
    for images, labels in batches(x, y, min(batch_size, len(x)), rng):
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            break
        for group in optimizer.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * elapsed / seconds))
        loss = loss_fn(model(torch.from_numpy(augment_images(images, rng))), torch.from_numpy(labels))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        steps += 1
        losses.append(loss.item())
    model.eval()
    return {
        "seconds": round(time.perf_counter() - started, 1),
        "steps": steps,
        "epochs": round(steps * batch_size / len(x), 2),
        "first_loss": round(float(np.mean(losses[:10])), 4) if losses else None,
        "last_loss": round(float(np.mean(losses[-10:])), 4) if losses else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("model", type=Path, help="onnc_resnet20.onnx")
    parser.add_argument("data", type=Path, help="calibration .npz: the model's input and 'labels'")
    parser.add_argument("output", type=Path)
    parser.add_argument("--macs-removed", type=float, required=True, help="fraction of MACs to remove")
    parser.add_argument("--seconds", type=float, required=True, help="wall time of the fine-tuning")
    parser.add_argument("--report", type=Path, required=True)
    parser.add_argument("--tolerance", type=float, default=0.005, help="on the MACs removed")
    parser.add_argument("--iterative-steps", type=int, default=5)
    parser.add_argument("--taylor-batches", type=int, default=8)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    data = np.load(args.data)
    x = data[onnx.load(args.model).graph.input[0].name].astype(np.float32)
    y = data["labels"].astype(np.int64)
    model = load_onnx_weights(ResNet20(), args.model)
    parity = check_parity(model, args.model, x[:PARITY_SAMPLES])
    base = macs(model)
    ratio, _, trials = find_ratio(model, args.macs_removed, args.iterative_steps, args.tolerance)
    searched = time.perf_counter()
    prune(
        model,
        ratio,
        args.iterative_steps,
        tp.importance.TaylorImportance(),
        lambda: taylor_gradients(model, x, y, args.batch_size, args.taylor_batches),
    )
    model.zero_grad()
    pruned = time.perf_counter()
    removed = 1 - macs(model) / base
    training = finetune(model, x, y, args.seconds, args.lr, args.batch_size, args.seed)
    export_onnx(model, INPUT_SHAPE, args.output, opset=13, dynamic_batch=True)
    report = {
        "torch": torch.__version__,
        "torch_pruning": getattr(tp, "__version__", "unknown"),
        "parity_max_abs_diff": parity,
        "pruning_ratio": round(ratio, 4),
        "bisection_trials": trials,
        "macs_removed_tp": round(removed, 4),
        "macs": {"before": base, "after": macs(model)},
        "widths": [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)],
        "iterative_steps": args.iterative_steps,
        "search_seconds": round(searched - started, 1),
        "prune_seconds": round(pruned - searched, 1),
        "finetune": {**training, "lr": args.lr, "batch_size": args.batch_size, "samples": len(x)},
        "threads": args.threads,
    }
    args.report.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
