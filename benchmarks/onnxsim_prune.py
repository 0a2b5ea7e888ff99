"""onnxsim 0.8.1's own pruning of a transformer export, for ``bench_transformers.py``'s side-by-side rows.

Run with the Python of a separate environment that holds onnxsim 0.8.1 (``/work/venv-onnxsim``: it is not
a dependency of onnxprune), never imported by onnxprune:

    /work/venv-onnxsim/bin/python benchmarks/onnxsim_prune.py MODEL OUT --sparsity 0.3 [--data calib.npz]

Attention heads first (``apply_attention_head_pruning``, its per-head L2 norm), then MLP widths and
other MatMul channels (``apply_structured_pruning``, L2; with ``--data``, ``apply_structured_wanda_pruning``
on the first 8 calibration samples, one at a time), each at ``--sparsity``, as its documentation
describes. Prints one JSON line: parameters before and after each pass, seconds.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import onnx
from onnxsim import pruning


def parameters(model: onnx.ModelProto) -> int:
    return sum(int(np.prod(init.dims)) for init in model.graph.initializer if init.data_type in (1, 10, 11, 16))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("output")
    parser.add_argument("--sparsity", type=float, required=True)
    parser.add_argument("--data", help=".npz with one array per model input (samples on axis 0)")
    args = parser.parse_args()
    model = onnx.load(args.model)
    report: dict = {"params_before": parameters(model)}
    started = time.perf_counter()
    heads = pruning.apply_attention_head_pruning(model, sparsity=args.sparsity)
    report["params_after_heads"] = parameters(heads)
    if args.data:
        with np.load(args.data) as archive:
            samples = [{name: archive[name][i : i + 1] for name in archive.files} for i in range(8)]
        pruned = pruning.apply_structured_wanda_pruning(heads, calibration_data=samples, sparsity=args.sparsity)
        report["mlp_pass"] = "apply_structured_wanda_pruning"
    else:
        pruned = pruning.apply_structured_pruning(heads, sparsity=args.sparsity)
        report["mlp_pass"] = "apply_structured_pruning"
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["params_after"] = parameters(pruned)
    shapes = {init.name: list(init.dims) for init in model.graph.initializer}
    report["changed_initializers"] = sum(
        1 for init in pruned.graph.initializer if init.name in shapes and shapes[init.name] != list(init.dims)
    )
    onnx.save(pruned, args.output)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
