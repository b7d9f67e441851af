"""A `Reference` -> an ATen-level graph, traced with PyTorch's own tracer (`make_fx`).

The reference runs once on example inputs of its first test shape whose sizes are all different (so that
PyTorch's symbolic shapes, which give equal sizes one symbol, tell the dims apart). Tracing tries symbolic
sizes first, then fake tensors of fixed sizes, then real tensors: a reference that branches on a size or
reads a value still traces, with those sizes fixed. Every node carries its output's fake value
(`node.meta["val"]`: shape and dtype), which is what the lowering reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kernelgen.errors import KernelgenError
from kernelgen.frontends.reference import Reference

MODES = ("symbolic", "fake", "real")


class TraceError(KernelgenError, ValueError):
    """The reference could not be traced in any mode; the message gives the first mode's error."""


@dataclass
class Trace:
    module: Any  # torch.fx.GraphModule
    mode: str  # the tracing mode that worked: symbolic | fake | real
    dims: dict[str, int]  # the test shape the example inputs were made at
    example: list[Any] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # why the earlier modes did not work

    @property
    def graph(self):
        return self.module.graph

    def ops(self) -> list[str]:
        """The ATen ops the reference computes, in order, each once (views and shape queries included)."""
        seen: list[str] = []
        for node in self.graph.nodes:
            if node.op == "call_function":
                name = op_name(node.target)
                if name not in seen:
                    seen.append(name)
        return seen


def op_name(target) -> str:
    """`aten.add.Tensor` for an ATen overload, the function's name otherwise (e.g. getitem)."""
    name = str(target)
    return name if name.startswith("aten.") else getattr(target, "__name__", name)


def example_inputs(ref: Reference, dims: dict[str, int], seed: int = 0) -> list[Any]:
    import torch

    from kernelgen.verify.inputs import TORCH_DTYPES

    gen = torch.Generator().manual_seed(seed)
    args: list[Any] = []
    for inp in ref.inputs:
        if inp.kind != "tensor":
            args.append(inp.value)
            continue
        shape = [int(d) if d.isdigit() else dims[d] for d in inp.shape]
        dtype = torch.float32 if inp.dtype == "input" else TORCH_DTYPES[inp.dtype]
        if dtype == torch.bool:
            args.append(torch.rand(shape, generator=gen) < 0.5)
        elif not dtype.is_floating_point:
            args.append(torch.randint(0, 2, shape, generator=gen).to(dtype))  # valid as an index or a class
        elif inp.fill in ("positive", "rand"):
            args.append(torch.rand(shape, generator=gen).to(dtype) + (0.5 if inp.fill == "positive" else 0.0))
        else:
            args.append(torch.randn(shape, generator=gen).to(dtype))
    return args


def tracing_shape(ref: Reference) -> dict[str, int]:
    """The first test shape whose dims have pairwise different sizes (else the first)."""
    for dims in ref.test_shapes:
        sizes = [v for v in dims.values() if v != 1]
        if len(set(sizes)) == len(sizes):
            return dict(dims)
    return dict(ref.test_shapes[0]) if ref.test_shapes else {}


def trace_reference(ref: Reference) -> Trace:
    import torch
    from torch.fx.experimental.proxy_tensor import make_fx

    try:
        fn = ref.function()
    except Exception as exc:
        raise TraceError(f"the reference does not run: {type(exc).__name__}: {exc}") from None
    dims = tracing_shape(ref)
    example = example_inputs(ref, dims)
    failures = []
    for mode in MODES:
        try:
            with torch.no_grad():
                module = make_fx(fn, tracing_mode=mode)(*example)
        except Exception as exc:
            failures.append(f"{mode}: {type(exc).__name__}: {_first_line(str(exc))}")
            continue
        return Trace(module, mode, dims, example, failures)
    raise TraceError("cannot trace the reference: " + "; ".join(failures))


def _first_line(text: str, limit: int = 200) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."
