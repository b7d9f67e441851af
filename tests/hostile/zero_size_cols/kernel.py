"""Bug: tiles several rows per program (4096 // N of them), computed before the empty check: an input with zero
columns divides by zero."""

import torch
import triton
import triton.language as tl


@triton.jit
def _silu_rows(x_ptr, y_ptr, D1, D2, s0, s1, s2, s_col, N, BLOCK: tl.constexpr):
    # The row index splits into three leading indices, so a strided or transposed input is read in place.
    pid = tl.program_id(0).to(tl.int64)
    i2 = pid % D2
    i1 = (pid // D2) % D1
    i0 = pid // D2 // D1
    x_row = x_ptr + i0 * s0 + i1 * s1 + i2 * s2
    for start in range(0, N, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < N
        x = tl.load(x_row + cols * s_col, mask=mask, other=0.0).to(tl.float32)
        y = x / (1.0 + tl.exp(-x))
        tl.store(y_ptr + pid * N + cols, y.to(y_ptr.dtype.element_ty), mask=mask)


def _leading(x):
    """The leading dims of x and their strides, merged where they are laid out as one and padded to three."""
    sizes, strides = list(x.shape[:-1]), list(x.stride()[:-1])
    i = len(sizes) - 2
    while len(sizes) > 3 and i >= 0:
        if strides[i] == strides[i + 1] * sizes[i + 1]:
            sizes[i:i + 2] = [sizes[i] * sizes[i + 1]]
            strides[i:i + 2] = [strides[i + 1]]
        i -= 1
    if len(sizes) > 3:
        raise ValueError("silu: more than three leading dims that cannot be read as one")
    pad = 3 - len(sizes)
    return [1] * pad + sizes, [0] * pad + strides


def silu(x):
    if x.dim() == 0:
        return silu(x.view(1)).view(())
    N = x.shape[-1]
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    rows_per_program = max(1, 4096 // N)  # small rows: several per program
    rows = y.numel() // N
    if rows == 0:
        return y
    (d0, d1, d2), (s0, s1, s2) = _leading(x)
    for first in range(0, rows, rows_per_program):
        count = min(rows_per_program, rows - first)
        _silu_some_rows[(count,)](x, y, first, d1, d2, s0, s1, s2, x.stride(-1), N, BLOCK=1024)
    return y


@triton.jit
def _silu_some_rows(x_ptr, y_ptr, first, D1, D2, s0, s1, s2, s_col, N, BLOCK: tl.constexpr):
    pid = first + tl.program_id(0).to(tl.int64)
    i2 = pid % D2
    i1 = (pid // D2) % D1
    i0 = pid // D2 // D1
    x_row = x_ptr + i0 * s0 + i1 * s1 + i2 * s2
    for start in range(0, N, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < N
        x = tl.load(x_row + cols * s_col, mask=mask, other=0.0).to(tl.float32)
        tl.store(y_ptr + pid * N + cols, (x / (1.0 + tl.exp(-x))).to(y_ptr.dtype.element_ty), mask=mask)
