"""Helpers of the lowering that read the traced graph or tidy the fusion graph (no ATen op knowledge)."""

from __future__ import annotations

from kernelgen.codegen.graph import FusionGraph, Node
from kernelgen.codegen.lower_ops import LoweringError


def renumbered(g: FusionGraph) -> FusionGraph:
    """h1, h2, ... in order again after folded nodes (a decomposed norm's x ** 2) left gaps."""
    from dataclasses import replace

    new = {n.out: f"h{k}" for k, n in enumerate(g.nodes(), 1)}

    def ren(v):
        return new.get(v, v) if isinstance(v, str) else v

    def node(n: Node) -> Node:
        return Node(ren(n.out), n.op, tuple(ren(a) for a in n.args), n.params)

    g.prologue = [node(n) for n in g.prologue]
    g.epilogue = [node(n) for n in g.epilogue]
    if g.reduction:
        g.reduction = replace(g.reduction, arg=ren(g.reduction.arg))
    g.outputs = [ren(v) for v in g.outputs]
    return g


def viewable_as_rows(shape: tuple[str, ...], row: tuple[str, ...]) -> bool:
    """Whether a tensor of `shape` expanded to `row` can be seen as [rows, N] through views only: it must
    broadcast, and among the leading dims the broadcast ones must all come before the real ones."""
    if len(shape) > len(row):
        return False
    padded = ("1",) * (len(row) - len(shape)) + tuple(shape)
    for s, r in zip(padded, row):
        if s != r and s != "1":
            return False
    broadcast = [s == "1" and r != "1" for s, r in zip(padded[:-1], row[:-1])]
    return broadcast == sorted(broadcast, reverse=True)


def float32(v) -> float:
    import torch

    return float(torch.tensor(float(v), dtype=torch.float32))


def is_tensor_node(node) -> bool:
    import torch

    val = node.meta.get("val")
    if isinstance(val, (tuple, list)):
        return any(isinstance(v, torch.Tensor) for v in val)
    return isinstance(val, torch.Tensor)


def flatten(x) -> list:
    if isinstance(x, (list, tuple)):
        return [e for item in x for e in flatten(item)]
    return [x]


def live_nodes(outputs: list) -> set:
    seen, stack = set(), list(outputs)
    while stack:
        n = stack.pop()
        if n in seen or not hasattr(n, "op"):
            continue
        seen.add(n)
        stack.extend(n.all_input_nodes)
    return seen


def fresh(name: str, taken: set[str]) -> str:
    while name in taken:
        name += "_"
    taken.add(name)
    return name


def literal(value, scalar_names: dict | None = None) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise LoweringError(f"constant {value!r} of type {type(value).__name__}: no template")
    if scalar_names and float(value) in scalar_names:
        return scalar_names[float(value)]
    v = float(value)
    if v != v:
        return 'float("nan")'
    if v in (float("inf"), float("-inf")):
        return 'float("inf")' if v > 0 else 'float("-inf")'
    return repr(v)


def no_template(name: str) -> str:
    family = [("convolution", "convolution"), ("pool", "pooling"), ("bmm", "batched matmul"),
              ("group_norm", "group norm"), ("batch_norm", "batch norm"), ("cumsum", "scan"), ("cumprod", "scan"),
              ("view", "reshape"), ("permute", "permute"), ("squeeze", "reshape"), ("unsqueeze", "reshape"),
              ("loss", "loss"), ("attention", "attention"), ("argm", "arg-reduction")]
    for key, what in family:
        if key in name:
            return f"no {what} template yet"
    return "no template yet"
