"""Bug: eps is taken but a tiny constant is added instead (so an all-zero row still gives 0, not NaN). Rows of
magnitude 1 cannot tell 1e-30 from eps=1e-6; rows whose mean square is near eps can."""

import torch
import triton
import triton.language as tl


def _next_power_of_2(n):
    return 1 << max(0, n - 1).bit_length()


@triton.jit(do_not_specialize=["eps"])
def _rms_norm_rows(x_ptr, w_ptr, y_ptr, D1, D2, s0, s1, s2, s_col, s_w, N, eps, BLOCK: tl.constexpr):
    # The row index splits into three leading indices, so a strided or transposed input is read in place.
    pid = tl.program_id(0).to(tl.int64)
    i2 = pid % D2
    i1 = (pid // D2) % D1
    i0 = pid // D2 // D1
    x_row = x_ptr + i0 * s0 + i1 * s1 + i2 * s2
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, N, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        x = tl.load(x_row + cols * s_col, mask=cols < N, other=0.0).to(tl.float32)
        acc += x * x
    rstd = 1.0 / tl.sqrt(tl.sum(acc, axis=0) / N + 1e-30)
    for start in range(0, N, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < N
        x = tl.load(x_row + cols * s_col, mask=mask, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + cols * s_w, mask=mask, other=0.0).to(tl.float32)
        tl.store(y_ptr + pid * N + cols, (x * rstd * w).to(y_ptr.dtype.element_ty), mask=mask)


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
        raise ValueError("rms_norm: more than three leading dims that cannot be read as one")
    pad = 3 - len(sizes)
    return [1] * pad + sizes, [0] * pad + strides


FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def rms_norm(x, weight, eps=1e-6, *, max_block=None):
    """RMS-normalize the last dim of x (any rank >= 1, any strides), times weight."""
    if x.dtype not in FLOAT_DTYPES or x.dim() == 0:
        raise TypeError(f"rms_norm: x must be a float tensor with at least one dim, got {x.dtype} {tuple(x.shape)}")
    N = x.shape[-1]
    if tuple(weight.shape) != (N,):
        raise ValueError(f"rms_norm: weight must have shape ({N},), got {tuple(weight.shape)}")
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if y.numel() == 0:
        return y
    (d0, d1, d2), (s0, s1, s2) = _leading(x)
    block = min(_next_power_of_2(N), max_block or 4096, 4096)
    _rms_norm_rows[(d0 * d1 * d2,)](x, weight, y, d1, d2, s0, s1, s2, x.stride(-1), weight.stride(0), N,
                                    float(eps), BLOCK=block)
    return y


VERIFIED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # spec.toml dtypes


def aten_rms_norm(input, normalized_shape, weight=None, eps=None):
    """aten::rms_norm. NotImplemented (ATen runs) for what this kernel was not verified on."""
    if input.dtype not in VERIFIED_DTYPES or input.dim() == 0 or len(normalized_shape) != 1:
        return NotImplemented
    if normalized_shape[0] != input.shape[-1] or weight is None or weight.dtype != input.dtype or eps is None:
        return NotImplemented
    try:
        return rms_norm(input, weight, eps)
    except ValueError:
        return NotImplemented
