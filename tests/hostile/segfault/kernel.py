"""Hostile: a kernel that loads from a wild address (SIGSEGV in the interpreter, illegal access on a GPU)."""

import torch
import triton
import triton.language as tl


@triton.jit
def _silu_rows(x_ptr, y_ptr, stride_x_row, stride_x_col, N, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    wild = x_ptr + (row + 1) * 0x10000000000  # far outside any allocation
    x = tl.load(wild + cols).to(tl.float32)
    tl.store(y_ptr + row * N + cols, x.to(y_ptr.dtype.element_ty), mask=cols < N)


def silu(x):
    M, N = x.shape
    y = torch.empty((M, N), dtype=x.dtype, device=x.device)
    if M == 0 or N == 0:
        return y
    _silu_rows[(M,)](x, y, x.stride(0), x.stride(1), N, BLOCK=1024)
    return y
