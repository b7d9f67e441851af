"""Bug: a correct last-dim log-softmax whose aten::_log_softmax adapter ignores half_to_float (float16 in, float32
asked for, float16 returned)."""

import torch
import triton
import triton.language as tl


@triton.jit
def _log_softmax_rows(x_ptr, y_ptr, D1, D2, s0, s1, s2, s_col, N, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    i2 = pid % D2
    i1 = (pid // D2) % D1
    i0 = pid // D2 // D1
    x_row = x_ptr + i0 * s0 + i1 * s1 + i2 * s2
    m = tl.full([], -float("inf"), tl.float32)
    for start in range(0, N, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        x = tl.load(x_row + cols * s_col, mask=cols < N, other=-float("inf")).to(tl.float32)
        m = tl.maximum(m, tl.max(x, axis=0))
    s = tl.zeros([], dtype=tl.float32)
    for start in range(0, N, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        x = tl.load(x_row + cols * s_col, mask=cols < N, other=-float("inf")).to(tl.float32)
        s += tl.sum(tl.exp(x - m), axis=0)
    for start in range(0, N, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < N
        x = tl.load(x_row + cols * s_col, mask=mask, other=-float("inf")).to(tl.float32)
        tl.store(y_ptr + pid * N + cols, (x - m - tl.log(s)).to(y_ptr.dtype.element_ty), mask=mask)


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
        raise ValueError("more than three leading dims that cannot be read as one")
    pad = 3 - len(sizes)
    return [1] * pad + sizes, [0] * pad + strides


FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def log_softmax(x, dim=-1):
    """Log-softmax over the last dim of x (any rank >= 1, any strides)."""
    if x.dtype not in FLOAT_DTYPES or x.dim() == 0:
        raise TypeError(f"log_softmax: x must be a float tensor with at least one dim, got {x.dtype}")
    if dim % x.dim() != x.dim() - 1:
        raise ValueError(f"log_softmax: only the last dim is supported, got dim={dim}")
    N = x.shape[-1]
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if y.numel() == 0:
        return y
    (d0, d1, d2), (s0, s1, s2) = _leading(x)
    _log_softmax_rows[(d0 * d1 * d2,)](x, y, d1, d2, s0, s1, s2, x.stride(-1), N, BLOCK=1024)
    return y


VERIFIED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # spec.toml dtypes


def aten_log_softmax(self, dim, half_to_float):
    """aten::_log_softmax over the last dim. NotImplemented (ATen runs) for other dims and other dtypes."""
    if self.dtype not in VERIFIED_DTYPES or self.dim() == 0 or dim % self.dim() != self.dim() - 1:
        return NotImplemented
    return log_softmax(self)
