"""Torch-Pruning's side of ``bench_torch_pruning.py``, a script run as its own process, as a user runs it.

Loads a state dict into ``tests.support.zoo.resnet50``, removes 50% of the channels of every prunable group
by L1 norm (``MagnitudePruner``, residual-coupled groups included, the classifier's outputs kept)
and exports the pruned model to ONNX the way ``tests.support.zoo`` exports the original.

    python benchmarks/torch_pruning_resnet50.py STATE.pt OUT.onnx [--ratio 0.5]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch_pruning as tp  # noqa: E402

from tests.support.zoo import export_onnx, resnet50  # noqa: E402

INPUT_SHAPE = (1, 3, 224, 224)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("state", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--ratio", type=float, default=0.5)
    args = parser.parse_args()
    model = resnet50()
    model.load_state_dict(torch.load(args.state, weights_only=True))
    model.eval()
    pruner = tp.pruner.MagnitudePruner(
        model,
        torch.randn(*INPUT_SHAPE),
        importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=args.ratio,
        global_pruning=False,
        ignored_layers=[model.fc],
    )
    with torch.no_grad():
        pruner.step()
    export_onnx(model, INPUT_SHAPE, args.output)


if __name__ == "__main__":
    main()
