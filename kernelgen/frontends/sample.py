"""Random inputs for a `Reference` (fresh values from a seed, never zeros or constants), used to run a
composed reference once before it is shown and by the request tests to compare it with a hand-written one.
Class-index targets ("index" fill) are drawn in [0, N) so a loss can use them."""

from __future__ import annotations

from typing import Any

import torch

DTYPES = {"float32": torch.float32, "float64": torch.float64, "int8": torch.int8, "int64": torch.int64,
          "int32": torch.int32, "bool": torch.bool, "float16": torch.float16, "bfloat16": torch.bfloat16}


def sample_inputs(ref, dims: dict[str, int], seed: int, dtype: torch.dtype = torch.float32) -> list[Any]:
    gen = torch.Generator().manual_seed(seed)
    out: list[Any] = []
    for inp in ref.inputs:
        if inp.kind != "tensor":
            out.append(inp.value)
            continue
        shape = [int(d) if d.isdigit() else dims[d] for d in inp.shape]
        dt = dtype if inp.dtype == "input" else DTYPES[inp.dtype]
        if inp.fill == "index":
            t = torch.randint(0, dims.get("N", 2), shape, generator=gen)
        elif inp.fill == "int8" or dt == torch.int8:
            t = torch.randint(-128, 128, shape, generator=gen)
        elif dt == torch.bool:
            t = torch.rand(shape, generator=gen) < 0.5
        elif inp.fill == "rand":
            t = torch.rand(shape, generator=gen)
        elif inp.fill == "positive":
            t = torch.rand(shape, generator=gen) + 0.5
        elif inp.fill == "uniform_pm1":
            t = torch.rand(shape, generator=gen) * 2 - 1
        else:
            t = torch.randn(shape, generator=gen)
        out.append(t.to(dt))
    return out
