"""Row layer_norm with a fused pointwise prologue/epilogue: one program per row.

Composed by kernelgen from the request: 'residual add then layernorm'
Understood as: h1 = x + residual -> r = layer_norm(h1, weight, ln_bias, eps) -> (y=r, h=h1)
"""

import torch
import triton
import triton.language as tl


# longest row kept in registers in one block (8K float32 per row with 16 warps is 16 per thread)
MAX_FUSED_N = 8192


@triton.jit(do_not_specialize=['eps'])
def _add_layer_norm_residual_row(x_ptr, residual_ptr, weight_ptr, ln_bias_ptr, y_ptr, h_ptr, stride_x_row,
                                 stride_x_col, stride_residual_row, stride_residual_col, stride_weight,
                                 stride_ln_bias, stride_y_row, stride_h_row, N, eps, BLOCK_N: tl.constexpr):
    # the whole row in one block: every input is read once
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    in_bounds = cols < N
    weight = tl.load(weight_ptr + cols * stride_weight, mask=in_bounds, other=0.0).to(tl.float32)
    ln_bias = tl.load(ln_bias_ptr + cols * stride_ln_bias, mask=in_bounds, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + row * stride_x_row + cols * stride_x_col, mask=in_bounds, other=0.0).to(tl.float32)
    residual = tl.load(residual_ptr + row * stride_residual_row + cols * stride_residual_col, mask=in_bounds, other=0.0).to(tl.float32)
    h1 = x + residual
    tl.store(h_ptr + row * stride_h_row + cols, h1.to(h_ptr.dtype.element_ty), mask=in_bounds)
    v = tl.where(in_bounds, h1, 0.0)
    mean = tl.sum(v, axis=0) / N
    d = tl.where(in_bounds, v - mean, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(d * d, axis=0) / N + eps)
    r = d * rstd
    r = r * weight
    r = r + ln_bias
    tl.store(y_ptr + row * stride_y_row + cols, r.to(y_ptr.dtype.element_ty), mask=in_bounds)


@triton.jit(do_not_specialize=['eps'])
def _add_layer_norm_residual_looped(x_ptr, residual_ptr, weight_ptr, ln_bias_ptr, y_ptr, h_ptr, stride_x_row,
                                    stride_x_col, stride_residual_row, stride_residual_col, stride_weight,
                                    stride_ln_bias, stride_y_row, stride_h_row, N, eps,
                                    BLOCK_N: tl.constexpr):
    # rows longer than one block: statistics first, then (for full rows) a second pass that
    # recomputes the prologue from the inputs (re-read from L2) and writes the output
    row = tl.program_id(0).to(tl.int64)
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for start in range(0, N, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        in_bounds = cols < N
        x = tl.load(x_ptr + row * stride_x_row + cols * stride_x_col, mask=in_bounds, other=0.0).to(tl.float32)
        residual = tl.load(residual_ptr + row * stride_residual_row + cols * stride_residual_col, mask=in_bounds, other=0.0).to(tl.float32)
        h1 = x + residual
        v = tl.where(in_bounds, h1, 0.0)
        acc += v
    mean = tl.sum(acc, axis=0) / N
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for start in range(0, N, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        in_bounds = cols < N
        x = tl.load(x_ptr + row * stride_x_row + cols * stride_x_col, mask=in_bounds, other=0.0).to(tl.float32)
        residual = tl.load(residual_ptr + row * stride_residual_row + cols * stride_residual_col, mask=in_bounds, other=0.0).to(tl.float32)
        h1 = x + residual
        d = tl.where(in_bounds, h1 - mean, 0.0)
        acc += d * d
    rstd = 1.0 / tl.sqrt(tl.sum(acc, axis=0) / N + eps)
    for start in range(0, N, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        in_bounds = cols < N
        weight = tl.load(weight_ptr + cols * stride_weight, mask=in_bounds, other=0.0).to(tl.float32)
        ln_bias = tl.load(ln_bias_ptr + cols * stride_ln_bias, mask=in_bounds, other=0.0).to(tl.float32)
        x = tl.load(x_ptr + row * stride_x_row + cols * stride_x_col, mask=in_bounds, other=0.0).to(tl.float32)
        residual = tl.load(residual_ptr + row * stride_residual_row + cols * stride_residual_col, mask=in_bounds, other=0.0).to(tl.float32)
        h1 = x + residual
        tl.store(h_ptr + row * stride_h_row + cols, h1.to(h_ptr.dtype.element_ty), mask=in_bounds)
        r = (h1 - mean) * rstd
        r = r * weight
        r = r + ln_bias
        tl.store(y_ptr + row * stride_y_row + cols, r.to(y_ptr.dtype.element_ty), mask=in_bounds)


FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# Host-side arithmetic in plain Python: triton.next_power_of_2 and triton.cdiv are constexpr functions
# whose calls from the host cost about 10 us each, more than a small kernel takes on the GPU.
def _next_power_of_2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


def _num_warps(block: int) -> int:
    # about 1K elements per warp, between 1 and 8 warps: swept on the H100 (bf16, benchmarks/sweep_launch.py),
    # 4 warps for a 4K tile or row beat 16 by 5-10%, and 1 warp for rows of 1K let more rows be in flight per
    # SM (causal softmax 4x16x1024x1024: 94 vs 122 us at 8 warps)
    return max(1, min(8, block // 1024))


def _broadcast_shape(*shapes):
    """The broadcast of several shapes (PyTorch rules), computed on sizes only."""
    if all(s == shapes[0] for s in shapes):
        return tuple(shapes[0])  # the common case, without the general walk
    out = []
    for dims in zip(*[(1,) * (max(map(len, shapes)) - len(s)) + tuple(s) for s in shapes]):
        sizes = {d for d in dims if d != 1}
        if len(sizes) > 1:
            raise ValueError(f"shapes {[tuple(s) for s in shapes]} do not broadcast")
        out.append(sizes.pop() if sizes else 1)
    return tuple(out)


def _rows(t, shape):
    """t broadcast to `shape` and seen as rows [M, N] through views only (a broadcast dim has stride 0)."""
    if t.dim() == 2 and t.shape == shape:
        return t  # already rows: no view op to pay for on the host
    try:
        return t.expand(shape).view(-1, shape[-1])
    except RuntimeError:
        raise ValueError(f"a tensor of shape {tuple(t.shape)} and strides {t.stride()} cannot be seen as rows "
                         "without a copy") from None


def _per_row(t, shape):
    """A one-value-per-row tensor (shape[:-1]) seen as a 1-D view over the rows."""
    try:
        return t.expand(shape[:-1]).view(-1)
    except RuntimeError:
        raise ValueError(f"a per-row tensor of shape {tuple(t.shape)} must broadcast to {tuple(shape[:-1])}") from None


def _check(name, t, dtypes):
    if not isinstance(t, torch.Tensor) or t.dtype not in dtypes:
        got = getattr(t, "dtype", type(t))
        raise TypeError(f"{name} must be a tensor of dtype {[str(d) for d in dtypes]}, got {got}")


def _result_dtype(*tensors):
    # PyTorch promotion among float32/float16/bfloat16: one dtype stays, any mix is float32
    dtypes = {t.dtype for t in tensors}
    return dtypes.pop() if len(dtypes) == 1 else torch.float32



def add_layer_norm_residual(x, residual, weight, ln_bias, eps=1e-05, *, max_block=None):
    """h1 = x + residual -> r = layer_norm(h1, weight, ln_bias, eps) -> (y=r, h=h1)

    Rows may be strided; max_block caps the block (longer rows take the looped kernel)."""
    _check("x", x, FLOAT_DTYPES)
    _check("residual", residual, FLOAT_DTYPES)
    _check("weight", weight, FLOAT_DTYPES)
    _check("ln_bias", ln_bias, FLOAT_DTYPES)
    shape = _broadcast_shape(x.shape, residual.shape)
    N = shape[-1]
    y = torch.empty(shape, dtype=_result_dtype(x, residual, weight, ln_bias), device=x.device)
    h = torch.empty(shape, dtype=y.dtype, device=x.device)
    if y.numel() == 0:
        return y, h
    x2 = _rows(x, shape)
    residual2 = _rows(residual, shape)
    if weight.shape != (N,):
        raise ValueError(f"weight must have shape ({N},), got {tuple(weight.shape)}")
    weight2 = weight
    if ln_bias.shape != (N,):
        raise ValueError(f"ln_bias must have shape ({N},), got {tuple(ln_bias.shape)}")
    ln_bias2 = ln_bias
    y2 = y.view(-1, N)
    h2 = h.view(-1, N)
    M = x2.shape[0]
    limit = min(MAX_FUSED_N, max_block or MAX_FUSED_N)
    block_n = _next_power_of_2(N)
    kernel = _add_layer_norm_residual_row
    if block_n > limit:
        kernel, block_n = _add_layer_norm_residual_looped, min(limit, 4096)
    kernel[(M,)](x2, residual2, weight2, ln_bias2, y2, h2,
        x2.stride(0), x2.stride(1), residual2.stride(0), residual2.stride(1), weight2.stride(0), ln_bias2.stride(0), y2.stride(0), h2.stride(0), N, float(eps),
        BLOCK_N=block_n, num_warps=_num_warps(block_n))
    return y, h
