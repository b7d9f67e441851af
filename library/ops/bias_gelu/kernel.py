"""Pointwise kernel over the rows of the broadcast output.

Composed by kernelgen from the request: 'bias add + gelu'
Understood as: h1 = x + bias -> h2 = gelu(h1, approximate='none') -> (y=h2)
"""

import torch
import triton
import triton.language as tl


# elements per program: enough work per tile to hide memory latency
TILE_ELEMS = 4096


@triton.jit
def _bias_gelu_kernel(x_ptr, bias_ptr, y_ptr, stride_x_row, stride_x_col, stride_bias, stride_y_row, M, N,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    # one program per tile of BLOCK_M rows x BLOCK_N columns; rows are int64 so large tensors don't overflow
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    in_bounds = (rows[:, None] < M) & (cols[None, :] < N)
    x = tl.load(x_ptr + rows[:, None] * stride_x_row + cols[None, :] * stride_x_col, mask=in_bounds, other=0.0).to(tl.float32)
    bias = tl.load(bias_ptr + cols[None, :] * stride_bias, mask=cols[None, :] < N, other=0.0).to(tl.float32)
    h1 = x + bias
    h2 = 0.5 * h1 * (1.0 + tl.erf(h1 * 0.7071067811865476))
    tl.store(y_ptr + rows[:, None] * stride_y_row + cols[None, :], h2.to(y_ptr.dtype.element_ty), mask=in_bounds)


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



def bias_gelu(x, bias, *, max_block=None):
    """h1 = x + bias -> h2 = gelu(h1, approximate='none') -> (y=h2)

    Inputs broadcast like PyTorch ([N] or [..., N] against the rows); rows may be strided.
    max_block caps the column tile."""
    _check("x", x, FLOAT_DTYPES)
    _check("bias", bias, FLOAT_DTYPES)
    shape = _broadcast_shape(x.shape)
    N = shape[-1]
    y = torch.empty(shape, dtype=_result_dtype(x, bias), device=x.device)
    if y.numel() == 0:
        return y
    x2 = _rows(x, shape)
    if bias.shape != (N,):
        raise ValueError(f"bias must have shape ({N},), got {tuple(bias.shape)}")
    bias2 = bias
    y2 = y.view(-1, N)
    M = y2.shape[0]
    block_n = min(_next_power_of_2(N), max_block or 1024, 1024)
    block_m = max(1, min(_next_power_of_2(M), TILE_ELEMS // block_n))
    grid = (_cdiv(M, block_m), _cdiv(N, block_n))
    _bias_gelu_kernel[grid](x2, bias2, y2,
        x2.stride(0), x2.stride(1), bias2.stride(0), y2.stride(0), M, N,
        BLOCK_M=block_m, BLOCK_N=block_n, num_warps=_num_warps(block_m * block_n))
    return y
