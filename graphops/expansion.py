"""How big a model is once its local functions are inlined, and how deeply its scopes nest.

onnxruntime, onnx's checker and shape inference all expand a call to a model-local function into
the function's body. A chain of functions that each call the previous one twice is a few hundred
kilobytes on disk and 2**3000 nodes once expanded, so the expanded size is computed by memoised
recursion over call sites (each function summarised once, its size saturating just above the
limit), never by expanding. Every walk is iterative: a chain of thousands of functions or deeply
nested subgraphs cannot exhaust Python's stack.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import onnx

from onnxprune.graphops.errors import ModelRejected

FunctionKey = tuple[str, str, str]  # (domain, name, overload)


@dataclass(frozen=True)
class Expansion:
    """Node count with every function call inlined, and the deepest nesting of scopes (a subgraph of
    If/Loop/Scan or a function body is one level below its caller). Both saturate at their caps."""

    nodes: int
    depth: int


@dataclass
class _Body:
    """One scope's own nodes (subgraphs included) and the local functions it calls, with the
    nesting level of each call (0: directly in the body)."""

    nodes: int = 0
    levels: int = 0
    calls: list[tuple[FunctionKey, int]] = field(default_factory=list)


def measure_expansion(model: onnx.ModelProto, max_nodes: int, max_depth: int) -> Expansion:
    """The main graph's expanded size and depth; raise ``ModelRejected`` naming the function at
    fault if a local function calls itself or alone expands beyond ``max_nodes`` or ``max_depth``."""
    functions = {_function_key(function): function for function in model.functions}
    summaries = {key: _summarise(function.node, functions) for key, function in functions.items()}
    sizes: dict[FunctionKey, Expansion] = {}
    for key in functions:
        _expand(key, summaries, sizes, max_nodes, max_depth)
    for key, size in sizes.items():
        name = key[1] if not key[0] else f"{key[0]}.{key[1]}"
        if size.nodes > max_nodes:
            raise ModelRejected(
                f"model-local function {name!r} expands to more than {max_nodes} nodes once its calls "
                f"are inlined (the limit is {max_nodes} nodes)"
            )
        if size.depth > max_depth:
            raise ModelRejected(
                f"model-local function {name!r} nests calls and subgraphs more than {max_depth} levels deep "
                f"(the limit is {max_depth})"
            )
    return _combine(_summarise(model.graph.node, functions), sizes, max_nodes, max_depth)


def _function_key(function: onnx.FunctionProto) -> FunctionKey:
    return (_domain(function.domain), function.name, function.overload)


def _domain(domain: str) -> str:
    return "" if domain == "ai.onnx" else domain


def _summarise(nodes: Iterable[onnx.NodeProto], functions: dict[FunctionKey, onnx.FunctionProto]) -> _Body:
    body = _Body()
    for node, level in _nodes_with_levels(nodes):
        body.nodes += 1
        body.levels = max(body.levels, level)
        key = (_domain(node.domain), node.op_type, node.overload)
        if key in functions:
            body.calls.append((key, level))
    return body


def _nodes_with_levels(nodes: Iterable[onnx.NodeProto]) -> Iterator[tuple[onnx.NodeProto, int]]:
    pending: list[tuple[Iterable[onnx.NodeProto], int]] = [(nodes, 0)]
    while pending:
        current, level = pending.pop()
        for node in current:
            yield node, level
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    pending.append((attr.g.node, level + 1))
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    pending.extend((graph.node, level + 1) for graph in attr.graphs)


def _expand(
    root: FunctionKey,
    summaries: dict[FunctionKey, _Body],
    sizes: dict[FunctionKey, Expansion],
    max_nodes: int,
    max_depth: int,
) -> None:
    """Post-order over the call graph from ``root``, filling ``sizes`` (memoised across roots)."""
    on_path: list[FunctionKey] = []
    stack: list[tuple[FunctionKey, Iterator[tuple[FunctionKey, int]]]] = []
    if root in sizes:
        return
    stack.append((root, iter(summaries[root].calls)))
    on_path.append(root)
    while stack:
        key, callees = stack[-1]
        for callee, _ in callees:
            if callee in sizes:
                continue
            if callee in on_path:
                cycle = " -> ".join(k[1] for k in on_path[on_path.index(callee) :] + [callee])
                raise ModelRejected(f"model-local functions call themselves recursively ({cycle})")
            stack.append((callee, iter(summaries[callee].calls)))
            on_path.append(callee)
            break
        else:
            stack.pop()
            on_path.pop()
            sizes[key] = _combine(summaries[key], sizes, max_nodes, max_depth)


def _combine(body: _Body, sizes: dict[FunctionKey, Expansion], max_nodes: int, max_depth: int) -> Expansion:
    nodes, depth = body.nodes, body.levels
    for callee, level in body.calls:
        inlined = sizes[callee]
        nodes = min(nodes + inlined.nodes, max_nodes + 1)  # saturate: the exact count can have 900 digits
        depth = min(max(depth, level + 1 + inlined.depth), max_depth + 1)
    return Expansion(nodes, depth)


__all__ = ["Expansion", "measure_expansion"]
