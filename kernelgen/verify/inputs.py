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


LAYOUTS = ("contiguous", "strided", "transposed", "nd")
ND_LEADING = (2, 3)  # the row dim becomes these leading dims in the "several leading dims" case


def input_shape(spec: OpSpec, inp, dims: dict[str, int], layout: str = "contiguous") -> list[int]:
    shape = [int(d) if d.isdigit() else dims[d] for d in inp.shape]
    if layout == "nd" and inp.shape and inp.shape[0] == spec.row_dim:
        shape = list(ND_LEADING) + shape[1:]
    return shape


def flatten_leading(spec: OpSpec, args: list[Any]) -> list[Any]:
    """Arguments of the "several leading dims" layout with those dims folded back into one row dim: what a
    reference that works row by row gives the same rows for."""
    out = []
    for inp, a in zip(spec.inputs, args):
        if isinstance(a, torch.Tensor) and inp.kind == "tensor" and inp.shape and inp.shape[0] == spec.row_dim:
            a = a.reshape(-1, *a.shape[len(ND_LEADING):])
        out.append(a)
    return out


def rowwise(nd_out: Any, flat_out: Any) -> bool:
    """Whether a reference's outputs on inputs with several leading dims are, row for row, its outputs on the
    same inputs with those dims flattened. When they are not (a reference that names a dim by position,
    such as softmax over dim=1), leading dims change what it computes, and an op may refuse them."""
    if nd_out is None or flat_out is None or isinstance(nd_out, str) or isinstance(flat_out, str):
        return False
    nd_out, flat_out = as_tuple(nd_out), as_tuple(flat_out)
    if len(nd_out) != len(flat_out):
        return False
    for a, b in zip(nd_out, flat_out):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)) or a.numel() != b.numel():
            return False
        if a.dim() >= len(ND_LEADING) and a.shape[len(ND_LEADING):] != b.shape[1:]:
            return False
        if not torch.allclose(a.reshape(b.shape).double(), b.double(), rtol=1e-6, atol=1e-9, equal_nan=True):
            return False
    return True


def nd_applies(spec: OpSpec) -> bool:
    """Whether any tensor input leads with the row dim (only those get several leading dims)."""
    return any(i.shape and i.shape[0] == spec.row_dim for i in spec.tensor_inputs())


def make_inputs(
    spec: OpSpec, dims: dict[str, int], dtype: str, device: str, seed: int, strided: bool = False,
    layout: str = "contiguous", magnitude: float = 1.0, special_rows: bool = False,
) -> list[Any]:
    """Fresh random inputs, in the launcher's argument order.

    layout: "strided": every tensor of 2+ dims gets rows longer than its last dim (a slice of a wider
    buffer); "transposed": a 2-D tensor is the transpose of a contiguous buffer, a tensor of more dims
    takes every other element of a wider one, so its last dim has a stride other than 1; "nd": tensors
    that lead with the row dim get several leading dims.
    magnitude: the first float input is multiplied by it (large values break half-precision sums).
    special_rows: in the first float input, row 0 is all zeros and row 1 constant."""
    if strided:
        layout = "strided"
    gen = torch.Generator(device="cpu").manual_seed(seed)
    args: list[Any] = []
    first_float = True
    for inp in spec.inputs:
        if inp.kind != "tensor":
            args.append(inp.value)
            continue
        shape = input_shape(spec, inp, dims, layout)
        dt = torch_dtype(dtype if inp.dtype == "input" else inp.dtype)
        def fill(alloc: list[int], inp=inp, dt=dt) -> torch.Tensor:
            return _index_fill(inp, dims, alloc, dt, gen) if inp.fill == "index" else _fill(inp.fill, alloc, dt, gen)

        if layout == "strided" and len(shape) >= 2:
            t = fill(shape[:-1] + [shape[-1] + ROW_PAD])[..., : shape[-1]]
        elif layout == "transposed" and len(shape) == 2:
            t = fill([shape[1], shape[0]]).t()
        elif layout == "transposed" and len(shape) > 2:
            # every other element of a wider buffer: a column stride of 2, rows that still flatten
            t = fill(shape + [2])[..., 0]
        else:
            t = fill(shape)
        if dt.is_floating_point and first_float and inp.dtype == "input":
            first_float = False
            if magnitude != 1.0:
                t.mul_(magnitude)
            if special_rows and t.dim() >= 2 and t.numel():
                _special(t)
        args.append(to_device(t, device))
    return args


def to_device(t: torch.Tensor, device: str, copy: bool = False) -> torch.Tensor:
    """`t` on `device` with its strides, storage offset and the bytes around it (a strided view stays a
    view into a wider buffer; a plain `.to()` would make it contiguous). `copy`: a new storage even when
    `t` is already there."""
    if (str(t.device) == device or t.device.type == device) and not copy:
        return t
    st = t.untyped_storage()
    whole = torch.empty(0, dtype=t.dtype, device=t.device).set_(st, 0, (st.nbytes() // t.element_size(),))
    moved = whole.to(device, copy=True)
    return moved.as_strided(t.shape, t.stride(), t.storage_offset())


def _special(t: torch.Tensor) -> None:
    """Row 0 all zeros, row 1 (when there is one) constant: a dropped eps divides by zero there, and a
    variance of a constant row is exactly zero."""
    index = (0,) * (t.dim() - 1)
    t[index].zero_()
    if t.shape[-2] > 1:
        t[index[:-1] + (1,)].fill_(1.5)


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
    """The spec's `reference(...)`, compiled with torch, F and math in scope. Runs the spec's code: call it
    in this process only for a trusted spec (the shipped library, the user's own); otherwise see
    `kernelgen.verify.references`."""
    try:
        return reference_source_function(spec.reference, f"{spec.name}:reference")
    except ValueError:
        raise ValueError(f"{spec.source}: field 'reference' must define a function named reference(...)") from None


def reference_source_function(source: str, filename: str = "reference"):
    env: dict[str, Any] = {"torch": torch, "F": torch.nn.functional, "math": math}
    exec(compile(source, filename, "exec"), env)
    fn = env.get("reference")
    if not callable(fn):
        raise ValueError(f"{filename}: must define a function named reference(...)")
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
