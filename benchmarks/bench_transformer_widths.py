"""Do MLP widths or head counts on particular steps run faster in onnxruntime (issue 27, item 6)?

Times, in onnxruntime on one thread with the deploy settings (``workers.ort_sessions.cpu_session``),
the two pieces of a transformer layer whose sizes pruning changes, at MiniLM's and ViT-S's shapes:

- the MLP: x [1, S, 384] -> MatMul [384, N] -> Add -> Gelu (Erf form, as exported) -> MatMul [N, 384] -> Add,
  for every width N in a window (default around 1536 * 0.7 = 1075);
- attention as exported (decomposed): Q, K, V MatMul [384, H * D] + Add -> Reshape [1, S, H, D] -> Transpose ->
  MatMul(Q, K^T) -> Softmax -> MatMul(., V) -> Transpose -> Reshape -> MatMul [H * D, 384], for every
  head count H of D = 32 (MiniLM) and D = 64 (ViT-S).

Every size is timed in rounds that visit all sizes in a random order (so a busy machine's load falls
on all of them alike); the fastest round per size is kept. A width step pays when widths on it run
faster than their neighbours: for each step the script gives, over its multiples, the time at a
multiple against its two neighbours and the jump just after it (a staircase); for heads, the time of
each count against a straight line through all counts.

    python benchmarks/bench_transformer_widths.py --json benchmarks/results/transformer_widths.json \
        --markdown benchmarks/results/transformer_widths.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxprune.workers.ort_sessions import cpu_session

HIDDEN = 384
OPSET = 17


def _init(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> onnx.TensorProto:
    return numpy_helper.from_array((rng.standard_normal(shape) * 0.05).astype(np.float32), name)


def _model(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], sequence: int) -> bytes:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, sequence, HIDDEN])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, sequence, HIDDEN])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    return model.SerializeToString()


def mlp_model(width: int, sequence: int, rng: np.random.Generator) -> bytes:
    """MatMul -> Add -> Gelu (Erf) -> MatMul -> Add, as BERT/ViT exports write the MLP."""
    half, root2, one = (
        numpy_helper.from_array(np.array(v, np.float32), n)
        for v, n in ((0.5, "half"), (np.sqrt(2.0), "root2"), (1.0, "one"))
    )
    inits = [
        _init("w1", (HIDDEN, width), rng),
        _init("b1", (width,), rng),
        _init("w2", (width, HIDDEN), rng),
        _init("b2", (HIDDEN,), rng),
        half,
        root2,
        one,
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h"]),
        helper.make_node("Div", ["h", "root2"], ["d"]),
        helper.make_node("Erf", ["d"], ["e"]),
        helper.make_node("Add", ["e", "one"], ["e1"]),
        helper.make_node("Mul", ["h", "e1"], ["m"]),
        helper.make_node("Mul", ["m", "half"], ["g"]),
        helper.make_node("MatMul", ["g", "w2"], ["y0"]),
        helper.make_node("Add", ["y0", "b2"], ["y"]),
    ]
    return _model(nodes, inits, sequence)


def attention_model(heads: int, head_dim: int, sequence: int, rng: np.random.Generator) -> bytes:
    """Decomposed self-attention with ``heads`` heads of ``head_dim``, as torch.onnx exports it."""
    width = heads * head_dim
    split = numpy_helper.from_array(np.array([1, sequence, heads, head_dim], np.int64), "split")
    merge = numpy_helper.from_array(np.array([1, sequence, width], np.int64), "merge")
    scale = numpy_helper.from_array(np.array(1.0 / np.sqrt(head_dim), np.float32), "scale")
    inits = [split, merge, scale, _init("wo", (width, HIDDEN), rng), _init("bo", (HIDDEN,), rng)]
    nodes = []
    for part in "qkv":
        inits += [_init(f"w{part}", (HIDDEN, width), rng), _init(f"b{part}", (width,), rng)]
        nodes += [
            helper.make_node("MatMul", ["x", f"w{part}"], [f"{part}0"]),
            helper.make_node("Add", [f"{part}0", f"b{part}"], [f"{part}1"]),
            helper.make_node("Reshape", [f"{part}1", "split"], [f"{part}2"]),
        ]
    nodes += [
        helper.make_node("Transpose", ["q2"], ["q"], perm=[0, 2, 1, 3]),
        helper.make_node("Transpose", ["k2"], ["k"], perm=[0, 2, 3, 1]),
        helper.make_node("Transpose", ["v2"], ["v"], perm=[0, 2, 1, 3]),
        helper.make_node("MatMul", ["q", "k"], ["s0"]),
        helper.make_node("Mul", ["s0", "scale"], ["s"]),
        helper.make_node("Softmax", ["s"], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "v"], ["c0"]),
        helper.make_node("Transpose", ["c0"], ["c1"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["c1", "merge"], ["c"]),
        helper.make_node("MatMul", ["c", "wo"], ["y0"]),
        helper.make_node("Add", ["y0", "bo"], ["y"]),
    ]
    return _model(nodes, inits, sequence)


def time_all(models: dict[str, bytes], sequence: int, rounds: int, runs: int, seed: int) -> dict[str, float]:
    """Fastest milliseconds per model over ``rounds`` rounds of ``runs`` runs, every round visiting
    every model in a fresh random order. The fastest round, not the median: on a shared machine other
    processes only ever add time to a CPU-bound kernel, and the median moved by 10% between
    neighbouring widths at load 7 on 2 cores."""
    x = {"x": np.random.default_rng(seed).standard_normal((1, sequence, HIDDEN)).astype(np.float32)}
    sessions = {name: cpu_session(data, threads=1, timing=True) for name, data in models.items()}
    for session in sessions.values():
        for _ in range(3):
            session.run(None, x)
    samples: dict[str, list[float]] = {name: [] for name in sessions}
    order = list(sessions)
    shuffle = random.Random(seed)
    for _ in range(rounds):
        shuffle.shuffle(order)
        for name in order:
            session = sessions[name]
            start = time.perf_counter()
            for _ in range(runs):
                session.run(None, x)
            samples[name].append((time.perf_counter() - start) * 1000.0 / runs)
    return {name: float(np.min(values)) for name, values in samples.items()}


def step_gains(ms: dict[int, float], steps: tuple[int, ...]) -> dict[int, dict[str, float]]:
    """For each step, over its multiples w: the median of ms(w) / mean(ms(w - 1), ms(w + 1)) (below 1:
    the multiple runs faster than its neighbours) and of ms(w + 1) / ms(w) against ms(w) / ms(w - 1)
    (a staircase: kernels that pad the width to the step run w - step + 1 .. w in the same time, and
    jump at w + 1), with how many multiples were compared."""
    out = {}
    for step in steps:
        at = [w for w in ms if w % step == 0 and w - 1 in ms and w + 1 in ms]
        if at:
            out[step] = {
                "median_ratio": float(np.median([ms[w] / ((ms[w - 1] + ms[w + 1]) / 2) for w in at])),
                "jump_after": float(np.median([ms[w + 1] / ms[w] for w in at])),
                "jump_before": float(np.median([ms[w] / ms[w - 1] for w in at])),
                "n": len(at),
            }
    return out


def head_line(ms: dict[int, float]) -> dict[int, float]:
    """Each head count's time over a least-squares line through all counts (below 1: faster than its share)."""
    counts = np.array(sorted(ms), dtype=np.float64)
    times = np.array([ms[int(c)] for c in counts])
    slope, intercept = np.polyfit(counts, times, 1)
    return {int(c): float(t / (slope * c + intercept)) for c, t in zip(counts, times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sequence", type=int, default=128)
    parser.add_argument(
        "--widths", default="33:113,737:802,1039:1106", help="MLP width windows, START:STOP[,START:STOP...]"
    )
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    load_before = os.getloadavg()
    began = time.time()
    mlp = []
    for window in args.widths.split(","):
        start, stop = (int(v) for v in window.split(":"))
        runs = max(args.runs, 4 * args.runs * 1000 // (stop * 10))  # narrow MLPs: more runs per round
        timed = time_all(
            {str(w): mlp_model(w, args.sequence, rng) for w in range(start, stop)},
            args.sequence,
            args.rounds,
            runs,
            args.seed,
        )
        ms = {int(k): v for k, v in timed.items()}
        mlp.append({"window": window, "runs": runs, "ms": ms, "step_gains": step_gains(ms, (2, 4, 8, 16, 32, 64))})
    heads: dict[int, dict[int, float]] = {}
    for head_dim, most in ((32, 12), (64, 6)):
        timed = time_all(
            {str(h): attention_model(h, head_dim, args.sequence, rng) for h in range(1, most + 1)},
            args.sequence,
            args.rounds * 2,
            args.runs,
            args.seed,
        )
        heads[head_dim] = {int(k): v for k, v in timed.items()}
    load_after = os.getloadavg()
    result = {
        "command": "python benchmarks/bench_transformer_widths.py "
        + " ".join(
            f"--{k.replace('_', '-')} {v}"
            for k, v in vars(args).items()
            if v is not None and k not in ("json", "markdown")
        ),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "load_before": load_before,
            "load_after": load_after,
        },
        "onnxruntime": __import__("onnxruntime").__version__,
        "seconds": round(time.time() - began, 1),
        "mlp": mlp,
        "heads_ms": heads,
        "heads_over_line": {d: head_line(ms) for d, ms in heads.items()},
    }
    text = json.dumps(result, indent=1)
    if args.json:
        args.json.write_text(text + "\n")
    if args.markdown:
        args.markdown.write_text(markdown(result))
    print(text if not args.json else markdown(result))


def markdown(result: dict) -> str:
    lines = [
        "# MLP widths and head counts in onnxruntime (1 thread)",
        "",
        f"`{result['command']}`, {result['date']}, onnxruntime {result['onnxruntime']}, "
        f"{result['machine']['cores']} cores, load average {result['machine']['load_before'][0]:.2f} before, "
        f"{result['machine']['load_after'][0]:.2f} after ({result['seconds']} s).",
        "",
        "## MLP width N: x [1, 128, 384] -> MatMul [384, N] -> Gelu -> MatMul [N, 384]",
        "",
        "Per window, medians over the multiples N of each step (fastest round of each width): a staircase",
        "of step s shows as ms(N+1) / ms(N) above 1 at the multiples of s, and ms(N) / ms(N-1) near 1.",
    ]
    for part in result["mlp"]:
        ms = part["ms"]
        lines += [
            "",
            f"### N in [{part['window'].replace(':', ', ')}), {part['runs']} runs per round",
            "",
            "| step | ms(N) / mean(ms(N-1), ms(N+1)) | ms(N+1) / ms(N) | ms(N) / ms(N-1) | multiples |",
            "|---|---|---|---|---|",
        ]
        for step, gain in part["step_gains"].items():
            lines.append(
                f"| {step} | {gain['median_ratio']:.3f} | {gain['jump_after']:.3f} | {gain['jump_before']:.3f} "
                f"| {gain['n']} |"
            )
        widths = sorted(ms)
        lines += ["", "| N | ms (N .. N+7) |", "|---|---|"]
        for first in range(0, len(widths), 8):
            row = widths[first : first + 8]
            lines.append(f"| {row[0]} | {' '.join(f'{ms[w]:.4f}' for w in row)} |")
    for head_dim, ms in result["heads_ms"].items():
        over = result["heads_over_line"][head_dim]
        lines += [
            "",
            f"## Attention, heads of {head_dim}: ms per head count, and over a straight line",
            "",
            "| heads | ms | ms / line |",
            "|---|---|---|",
        ]
        lines += [f"| {h} | {ms[h]:.3f} | {over[h]:.3f} |" for h in sorted(ms)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
