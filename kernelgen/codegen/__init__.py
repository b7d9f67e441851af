"""The code generator: a fusion graph -> kernel.py text (and the PyTorch reference it must match).

`graph` holds the fusion graph; `expressions` the per-op PyTorch and Triton expressions; one module per
kernel template (`pointwise`, `reduction`, `matmul`) over the shared launcher helpers in `common`.
"""

from __future__ import annotations

from kernelgen.codegen.common import reference_source
from kernelgen.codegen.graph import FusionGraph
from kernelgen.codegen.matmul import matmul_source
from kernelgen.codegen.pointwise import pointwise_source
from kernelgen.codegen.reduction import reduction_source

__all__ = ["kernel_source", "reference_source"]


def kernel_source(g: FusionGraph, fn: str, request: str) -> str:
    if g.matmul:
        return matmul_source(g, fn, request)
    if g.reduction:
        return reduction_source(g, fn, request)
    return pointwise_source(g, fn, request)
