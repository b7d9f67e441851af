"""Hostile battery control with two outputs: h = x + residual and y = rms_norm(h) * weight, both in fresh tensors,
for inputs of any rank and strides."""

import torch
import triton
import triton.language as tl


def _next_power_of_2(n):
    return 1 << max(0, n - 1).bit_length()


@triton.jit(do_not_specialize=["eps"])
def _add_rms_norm_rows(x_ptr, r_ptr, w_ptr, y_ptr, h_ptr, D1, D2, xs0, xs1, xs2, xs_col, rs0, rs1, rs2, rs_col, s_w,
                       N, eps, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    i2 = pid % D2
    i1 = (pid // D2) % D1
    i0 = pid // D2 // D1
    x_row = x_ptr + i0 * xs0 + i1 * xs1 + i2 * xs2
    r_row = r_ptr + i0 * rs0 + i1 * rs1 + i2 * rs2
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, N, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < N
        x = tl.load(x_row + cols * xs_col, mask=mask, other=0.0).to(tl.float32)
        r = tl.load(r_row + cols * rs_col, mask=mask, other=0.0).to(tl.float32)
        h = x + r
        tl.store(h_ptr + pid * N + cols, h.to(h_ptr.dtype.element_ty), mask=mask)
        acc += h * h
    rstd = 1.0 / tl.sqrt(tl.sum(acc, axis=0) / N + eps)
    for start in range(0, N, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < N
        x = tl.load(x_row + cols * xs_col, mask=mask, other=0.0).to(tl.float32)
        h = x + tl.load(r_row + cols * rs_col, mask=mask, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + cols * s_w, mask=mask, other=0.0).to(tl.float32)
        tl.store(y_ptr + pid * N + cols, (h * rstd * w).to(y_ptr.dtype.element_ty), mask=mask)


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


def fused_add_rms_norm(x, residual, weight, eps=1e-6, *, max_block=None):
    """(rms_norm(x + residual) * weight, x + residual) over the last dim; x and residual of one shape."""
    if x.dtype not in FLOAT_DTYPES or x.dim() == 0:
        raise TypeError(f"fused_add_rms_norm: x must be a float tensor with at least one dim, got {x.dtype}")
    if residual.shape != x.shape or residual.dtype != x.dtype:
        raise ValueError("fused_add_rms_norm: residual must have the shape and dtype of x")
    N = x.shape[-1]
    if tuple(weight.shape) != (N,):
        raise ValueError(f"fused_add_rms_norm: weight must have shape ({N},), got {tuple(weight.shape)}")
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    h = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if y.numel() == 0:
        return y, h
    (d0, d1, d2), (xs0, xs1, xs2) = _leading(x)
    _, (rs0, rs1, rs2) = _leading(residual)
    block = min(_next_power_of_2(N), max_block or 4096, 4096)
    _add_rms_norm_rows[(d0 * d1 * d2,)](x, residual, weight, y, h, d1, d2, xs0, xs1, xs2, x.stride(-1),
                                        rs0, rs1, rs2, residual.stride(-1), weight.stride(0), N, float(eps),
                                        BLOCK=block)
    return y, h
