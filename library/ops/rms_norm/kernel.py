"""RMS norm over the last dimension: y = x / sqrt(mean(x^2) + eps) * weight.

One program per row. Rows up to MAX_FUSED_N elements are held in registers in one block (one read of x);
longer rows loop over blocks twice (sum of squares, then normalize), which re-reads x from L2.
Arithmetic is in float32; the result is cast once at the store.
"""

import torch
import triton
import triton.language as tl


# Host-side arithmetic in plain Python: triton.next_power_of_2 and triton.cdiv are constexpr functions
# whose calls from the host cost about 10 us each, more than a small kernel takes on the GPU.
def _next_power_of_2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


MAX_FUSED_N = 16384  # longest row kept in registers (16K fp32 values over 8 warps: 64 per thread, no spills)


@triton.jit(do_not_specialize=["eps"])
def _rms_norm_row(x_ptr, w_ptr, y_ptr, stride_x_row, stride_x_col, stride_y_row, N, eps,
                  HAS_WEIGHT: tl.constexpr, BLOCK_N: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offsets = tl.arange(0, BLOCK_N)
    mask = offsets < N
    x = tl.load(x_ptr + row * stride_x_row + offsets * stride_x_col, mask=mask, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / N + eps)
    y = x * rstd
    if HAS_WEIGHT:
        y = y * tl.load(w_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * stride_y_row + offsets, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["eps"])
def _rms_norm_looped(x_ptr, w_ptr, y_ptr, stride_x_row, stride_x_col, stride_y_row, N, eps,
                     HAS_WEIGHT: tl.constexpr, BLOCK_N: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_x_row
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for start in range(0, N, BLOCK_N):
        offsets = start + tl.arange(0, BLOCK_N)
        x = tl.load(x_row + offsets * stride_x_col, mask=offsets < N, other=0.0).to(tl.float32)
        acc += x * x
    rstd = 1.0 / tl.sqrt(tl.sum(acc, axis=0) / N + eps)
    for start in range(0, N, BLOCK_N):
        offsets = start + tl.arange(0, BLOCK_N)
        mask = offsets < N
        y = tl.load(x_row + offsets * stride_x_col, mask=mask, other=0.0).to(tl.float32) * rstd
        if HAS_WEIGHT:
            y = y * tl.load(w_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        tl.store(y_ptr + row * stride_y_row + offsets, y.to(y_ptr.dtype.element_ty), mask=mask)


def _num_warps(block_n: int, elem_size: int) -> int:
    # 16 bytes per thread per load, at most 8 warps: swept on the H100 (bf16, benchmarks/logs/sweep_rows_h100.log),
    # 8 warps beat 16 at 4096x4096 (27.9 vs 28.5 us, the speed of a plain copy of the same bytes) and tie at
    # 16384x8192 (183.6 vs 183.7 us).
    return max(1, min(8, block_n * elem_size // (16 * 32)))


FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def rms_norm(x, weight=None, eps=1e-6, *, max_block=None):
    """RMS-normalize the last dim of x (any leading shape, rows may be strided), times weight if given."""
    if not isinstance(x, torch.Tensor) or x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"rms_norm: x must be a float32/float16/bfloat16 tensor, got {getattr(x, 'dtype', type(x))}")
    if x.dim() == 0:
        raise ValueError("rms_norm: x must have at least one dimension")
    N = x.shape[-1]
    if weight is not None:
        if not isinstance(weight, torch.Tensor) or weight.dtype not in FLOAT_DTYPES:
            raise TypeError("rms_norm: weight must be a floating tensor")
        if weight.shape != (N,):
            raise ValueError(f"rms_norm: weight must have shape ({N},), got {tuple(weight.shape)}")
        if weight.device != x.device:
            raise ValueError(f"rms_norm: weight is on {weight.device} but x is on {x.device}")
        weight = weight if weight.is_contiguous() else weight.contiguous()
    try:
        x2 = x.view(-1, N) if x.dim() != 2 else x
    except RuntimeError:
        raise ValueError("rms_norm: the leading dims of x cannot be viewed as rows without a copy") from None
    # empty_like parses no shape/dtype/device arguments (about 1.5 us less per call than torch.empty on a
    # small call); only for a contiguous x, whose copy is contiguous as y must be.
    y = torch.empty_like(x) if x.is_contiguous() else torch.empty(x.shape, dtype=x.dtype, device=x.device)
    M = x2.shape[0]
    if M == 0 or N == 0:
        return y
    limit = min(MAX_FUSED_N, max_block or MAX_FUSED_N)
    block_n = _next_power_of_2(N)
    kernel = _rms_norm_row
    if block_n > limit:
        kernel, block_n = _rms_norm_looped, min(limit, 4096)
    kernel[(M,)](x2, weight if weight is not None else x2, y, x2.stride(0), x2.stride(1), N, N, float(eps),
                 HAS_WEIGHT=weight is not None, BLOCK_N=block_n,
                 num_warps=_num_warps(block_n, x.element_size()))
    return y


def aten_rms_norm(input, normalized_shape, weight=None, eps=None):
    """aten::rms_norm. Returns NotImplemented (ATen runs) for cases this kernel does not cover."""
    if len(normalized_shape) != 1 or input.dtype not in FLOAT_DTYPES or input.dim() == 0:
        return NotImplemented
    if weight is not None and weight.dtype != input.dtype:
        return NotImplemented
    if eps is None:
        eps = torch.finfo(input.dtype).eps
    try:
        return rms_norm(input, weight, eps)
    except ValueError:
        return NotImplemented
