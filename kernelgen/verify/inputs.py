"""Random inputs for an op from its spec, the reference function, and the edge shapes every op is tried on."""

from __future__ import annotations

import math
from typing import Any

import torch

from kernelgen.spec import OpSpec

TORCH_DTYPES = {
    "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "int8": torch.int8,
    "int32": torch.int32, "int64": torch.int64, "bool": torch.bool, "float64": torch.float64,
}
ROW_PAD = 7  # extra elements per row when building strided rows: an odd pad breaks any alignment luck


def torch_dtype(name: str) -> torch.dtype:
    return TORCH_DTYPES[name]


def make_inputs(
    spec: OpSpec, dims: dict[str, int], dtype: str, device: str, seed: int, strided: bool = False
) -> list[Any]:
    """Fresh random inputs, in the launcher's argument order. `strided`: every tensor of 2+ dims gets
    rows longer than its last dim (a slice of a wider buffer), so its row stride differs from its width."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    args: list[Any] = []
    for inp in spec.inputs:
        if inp.kind != "tensor":
            args.append(inp.value)
            continue
        shape = [int(d) if d.isdigit() else dims[d] for d in inp.shape]
        dt = torch_dtype(dtype if inp.dtype == "input" else inp.dtype)
        alloc = list(shape)
        if strided and len(shape) >= 2:
            alloc[-1] += ROW_PAD
        if inp.fill == "index":
            t = _index_fill(inp, dims, alloc, dt, gen)
        else:
            t = _fill(inp.fill, alloc, dt, gen)
        if alloc != shape:
            t = t[..., : shape[-1]]
        args.append(t.to(device))
    return args


def _index_fill(inp, dims: dict[str, int], shape: list[int], dt: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    """Indices in [0, high) (high: a dim, at least 1 so an empty dim still draws), and the sentinel, when
    the spec gives one, in about a quarter of the elements (an ignore_index must be exercised)."""
    high = max(1, int(inp.high) if inp.high.isdigit() else dims[inp.high])
    t = torch.randint(0, high, shape, generator=gen, dtype=torch.int64)
    if inp.sentinel is not None:
        t[torch.rand(shape, generator=gen) < 0.25] = inp.sentinel
    return t.to(dt)


def _fill(fill: str, shape: list[int], dt: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    if fill == "int8" or dt == torch.int8:
        return torch.randint(-128, 128, shape, generator=gen, dtype=torch.int16).to(dt)
    if dt == torch.bool:
        return torch.rand(shape, generator=gen) < 0.5
    if not dt.is_floating_point:
        return torch.randint(-1000, 1000, shape, generator=gen, dtype=torch.int64).to(dt)
    if fill == "rand":
        t = torch.rand(shape, generator=gen)
    elif fill == "positive":
        t = torch.rand(shape, generator=gen) + 0.5
    elif fill == "uniform_pm1":
        t = torch.rand(shape, generator=gen) * 2 - 1
    else:
        t = torch.randn(shape, generator=gen)
    return t.to(dt)


def reference_function(spec: OpSpec):
    """The spec's `reference(...)`, compiled with torch, F and math in scope."""
    env: dict[str, Any] = {"torch": torch, "F": torch.nn.functional, "math": math}
    exec(compile(spec.reference, f"{spec.name}:reference", "exec"), env)
    fn = env.get("reference")
    if not callable(fn):
        raise ValueError(f"{spec.source}: field 'reference' must define a function named reference(...)")
    return fn


def upcast(args: list[Any], device: str = "cpu") -> list[Any]:
    """Float tensors to float64 on the CPU (the reference precision); other tensors to the CPU as they are."""
    out = []
    for a in args:
        if isinstance(a, torch.Tensor):
            a = a.detach().to("cpu")
            if a.is_floating_point():
                a = a.to(torch.float64)
        out.append(a)
    return out


def as_tuple(x: Any) -> tuple:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def edge_shapes(spec: OpSpec, long_row: int) -> list[tuple[str, dict[str, int]]]:
    """(label, dims) for the edge cases: one row, a non-power-of-two row, a row longer than one block,
    and zero rows. Built from the spec's first test shape, varying only its row and column dims."""
    base = dict(spec.test_shapes[0])
    m, n = spec.row_dim, spec.col_dim
    out: list[tuple[str, dict[str, int]]] = []
    if m in base:
        out.append(("one row", {**base, m: 1}))
    if n in base:
        out.append(("non-power-of-two", {**base, n: 777}))
        out.append(("longer than one block", {**base, m: min(base.get(m, 2), 2), n: long_row}))
    if m in base:
        out.append(("zero rows", {**base, m: 0}))
    return out
