"""Hostile: writes only the first half of the rows."""

import torch
import triton
import triton.language as tl


@triton.jit
def _silu_rows(x_ptr, y_ptr, stride_x_row, stride_x_col, N, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    for start in range(0, N, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < N
        x = tl.load(x_ptr + row * stride_x_row + cols * stride_x_col, mask=mask, other=0.0).to(tl.float32)
        y = x / (1.0 + tl.exp(-x))
        tl.store(y_ptr + row * N + cols, y.to(y_ptr.dtype.element_ty), mask=mask)


def silu(x):
    M, N = x.shape
    y = torch.empty((M, N), dtype=x.dtype, device=x.device)
    if M == 0 or N == 0:
        return y
    _silu_rows[(max(1, M // 2),)](x, y, x.stride(0), x.stride(1), N, BLOCK=1024)
    return y
