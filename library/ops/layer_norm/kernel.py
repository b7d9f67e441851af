"""Layer norm over the last dimension: y = (x - mean) / sqrt(var + eps) * weight + bias (biased variance).

One program per row. Rows up to MAX_FUSED_N elements are held in registers in one block: x is read once,
the variance is taken of the centred values (no E[x^2] - E[x]^2 cancellation). Longer rows loop over
blocks twice: the first pass keeps a Welford mean/M2 per lane and merges the lanes at the end (Chan's
formula), the second re-reads x (mostly from L2) to normalize, so x is read twice, never three times.
The kernel can also write each row's mean and rstd (for `aten::native_layer_norm`, whose backward uses
them). Arithmetic is in float32; results are cast once at the store.
"""

import torch
import triton
import triton.language as tl


# Host-side arithmetic in plain Python: triton.next_power_of_2 and triton.cdiv are constexpr functions
# whose calls from the host cost about 10 us each, more than a small kernel takes on the GPU.
def _next_power_of_2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


MAX_FUSED_N = 16384  # longest row kept in registers (bf16 rows of 16K fit with 16 warps)
LOOP_BLOCK_N = 4096  # block of the looped variant: 16 bytes per thread per load at 16 warps for bf16


@triton.jit(do_not_specialize=["eps"])
def _layer_norm_row(x_ptr, w_ptr, b_ptr, y_ptr, mean_ptr, rstd_ptr,
                    stride_x_row, stride_x_col, stride_w, stride_b, N, eps,
                    HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, STORE_STATS: tl.constexpr,
                    BLOCK_N: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offsets = tl.arange(0, BLOCK_N)
    mask = offsets < N
    x = tl.load(x_ptr + row * stride_x_row + offsets * stride_x_col, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=0) / N
    xc = tl.where(mask, x - mean, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=0) / N + eps)
    y = xc * rstd
    if HAS_WEIGHT:
        y = y * tl.load(w_ptr + offsets * stride_w, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        y = y + tl.load(b_ptr + offsets * stride_b, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * N + offsets, y.to(y_ptr.dtype.element_ty), mask=mask)
    if STORE_STATS:
        tl.store(mean_ptr + row, mean.to(mean_ptr.dtype.element_ty))
        tl.store(rstd_ptr + row, rstd.to(rstd_ptr.dtype.element_ty))


@triton.jit(do_not_specialize=["eps"])
def _layer_norm_looped(x_ptr, w_ptr, b_ptr, y_ptr, mean_ptr, rstd_ptr,
                       stride_x_row, stride_x_col, stride_w, stride_b, N, eps,
                       HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, STORE_STATS: tl.constexpr,
                       BLOCK_N: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_x_row
    # Welford per lane: lane i sees elements i, i + BLOCK_N, ...; the first block is full (N > BLOCK_N).
    count = tl.zeros([BLOCK_N], dtype=tl.float32)
    lane_mean = tl.zeros([BLOCK_N], dtype=tl.float32)
    lane_m2 = tl.zeros([BLOCK_N], dtype=tl.float32)
    for start in range(0, N, BLOCK_N):
        offsets = start + tl.arange(0, BLOCK_N)
        mask = offsets < N
        x = tl.load(x_row + offsets * stride_x_col, mask=mask, other=0.0).to(tl.float32)
        count += tl.where(mask, 1.0, 0.0)
        delta = tl.where(mask, x - lane_mean, 0.0)
        lane_mean += delta / tl.maximum(count, 1.0)
        lane_m2 += delta * tl.where(mask, x - lane_mean, 0.0)
    # Chan's merge of the lanes: total M2 = sum(M2_i) + sum(n_i * (mean_i - mean)^2)
    mean = tl.sum(count * lane_mean, axis=0) / N
    spread = lane_mean - mean
    var = (tl.sum(lane_m2, axis=0) + tl.sum(count * spread * spread, axis=0)) / N
    rstd = 1.0 / tl.sqrt(var + eps)
    for start in range(0, N, BLOCK_N):
        offsets = start + tl.arange(0, BLOCK_N)
        mask = offsets < N
        x = tl.load(x_row + offsets * stride_x_col, mask=mask, other=0.0).to(tl.float32)
        y = (x - mean) * rstd
        if HAS_WEIGHT:
            y = y * tl.load(w_ptr + offsets * stride_w, mask=mask, other=0.0).to(tl.float32)
        if HAS_BIAS:
            y = y + tl.load(b_ptr + offsets * stride_b, mask=mask, other=0.0).to(tl.float32)
        tl.store(y_ptr + row * N + offsets, y.to(y_ptr.dtype.element_ty), mask=mask)
    if STORE_STATS:
        tl.store(mean_ptr + row, mean.to(mean_ptr.dtype.element_ty))
        tl.store(rstd_ptr + row, rstd.to(rstd_ptr.dtype.element_ty))


def _num_warps(block_n: int, elem_size: int) -> int:
    # 16 bytes per thread per load, at most 8 warps: swept on the H100 (bf16, benchmarks/sweep_launch.py),
    # 8 warps beat 16 at 4096x4096 (30.1 vs 30.8 us) and tie at 16384x8192 (within 1%).
    return max(1, min(8, block_n * elem_size // (16 * 32)))


FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _check_param(t, name: str, x: torch.Tensor, N: int) -> None:
    if t is None:
        return
    if not isinstance(t, torch.Tensor) or t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"layer_norm: {name} must be a float32/float16/bfloat16 tensor or None, "
                        f"got {getattr(t, 'dtype', type(t))}")
    if t.shape != (N,):
        raise ValueError(f"layer_norm: {name} must have shape ({N},), got {tuple(t.shape)}")
    if t.device != x.device:
        raise ValueError(f"layer_norm: {name} is on {t.device} but x is on {x.device}")


def _layer_norm(x, weight, bias, eps, max_block=None, stats_dtype=None):
    """y (and, when stats_dtype is given, mean and rstd of shape x.shape[:-1] + (1,)) for the last dim of x."""
    if not isinstance(x, torch.Tensor) or x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"layer_norm: x must be a float32/float16/bfloat16 tensor, got {getattr(x, 'dtype', type(x))}")
    if x.dim() == 0:
        raise ValueError("layer_norm: x must have at least one dimension")
    N = x.shape[-1]
    _check_param(weight, "weight", x, N)
    _check_param(bias, "bias", x, N)
    try:
        x2 = x.view(-1, N) if x.dim() != 2 else x
    except RuntimeError:
        raise ValueError("layer_norm: the leading dims of x cannot be viewed as rows without a copy") from None
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    stats = None
    if stats_dtype is not None:
        stats_shape = tuple(x.shape[:-1]) + (1,)
        stats = (torch.empty(stats_shape, dtype=stats_dtype, device=x.device),
                 torch.empty(stats_shape, dtype=stats_dtype, device=x.device))
    M = x2.shape[0]
    if M == 0 or N == 0:
        return y, stats
    limit = min(MAX_FUSED_N, max_block or MAX_FUSED_N)
    block_n = _next_power_of_2(N)
    kernel = _layer_norm_row
    if block_n > limit:
        kernel, block_n = _layer_norm_looped, min(limit, LOOP_BLOCK_N)
    mean, rstd = stats if stats is not None else (y, y)
    kernel[(M,)](x2, weight if weight is not None else x2, bias if bias is not None else x2, y, mean, rstd,
                 x2.stride(0), x2.stride(1), weight.stride(0) if weight is not None else 0,
                 bias.stride(0) if bias is not None else 0, N, float(eps),
                 HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None, STORE_STATS=stats is not None,
                 BLOCK_N=block_n, num_warps=_num_warps(block_n, x.element_size()))
    return y, stats


def layer_norm(x, weight=None, bias=None, eps=1e-5, *, max_block=None):
    """Layer-normalize the last dim of x (any leading shape, rows may be strided); weight/bias [N] or None."""
    return _layer_norm(x, weight, bias, eps, max_block)[0]


def aten_native_layer_norm(input, normalized_shape, weight, bias, eps):
    """aten::native_layer_norm -> (out, mean, rstd). NotImplemented (ATen runs) for what this kernel does not
    cover: several normalized dims, other dtypes, weight/bias of another dtype than input (ATen's mixed-type
    path), an empty normalized dim, rows that are not one view.

    mean/rstd have shape input.shape[:-1] + (1,) like ATen's. Their dtype follows ATen on the same device:
    the CPU kernel keeps them in the input dtype, the CUDA kernel in float32 (the accumulate type)."""
    if not isinstance(input, torch.Tensor) or input.dtype not in FLOAT_DTYPES or input.dim() == 0:
        return NotImplemented
    if len(normalized_shape) != 1 or int(normalized_shape[0]) != input.shape[-1] or input.shape[-1] == 0:
        return NotImplemented
    if any(t is not None and t.dtype != input.dtype for t in (weight, bias)):
        return NotImplemented
    stats_dtype = input.dtype if input.device.type == "cpu" else torch.float32
    try:
        y, (mean, rstd) = _layer_norm(input, weight, bias, eps, stats_dtype=stats_dtype)
    except ValueError:
        return NotImplemented
    return y, mean, rstd
