"""Residual add fused with RMS norm (the pre-norm block of Llama/Qwen/Mistral decoders):
h = x + residual; y = h / sqrt(mean(h^2) + eps) * weight; returns (y, h).

One program per row. Rows up to MAX_FUSED_N elements are held in registers in one block: x and residual
are read once, h and y written once (4 row passes over memory, the fewest possible). Longer rows loop over
blocks twice: the first pass writes h and sums h^2, the second re-reads x and residual (mostly from L2) to
normalize. Re-reading the inputs rather than the stored h keeps h unrounded in float32, so the looped and
single-block variants give identical results, and never reads back memory another thread just wrote.
Arithmetic is in float32; each result is cast once at its store.
"""

import torch
import triton
import triton.language as tl


# Host-side arithmetic in plain Python: triton.next_power_of_2 and triton.cdiv are constexpr functions
# whose calls from the host cost about 10 us each, more than a small kernel takes on the GPU.
def _next_power_of_2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


MAX_FUSED_N = 16384  # longest row kept in registers: 16K fp32 elements of h are 32 registers/thread at 16 warps
LOOP_BLOCK_N = 4096  # block of the looped variant: 16 bytes per thread per load at 16 warps for bf16


@triton.jit(do_not_specialize=["eps"])
def _fused_add_rms_norm_row(x_ptr, r_ptr, w_ptr, y_ptr, h_ptr,
                            stride_x_row, stride_x_col, stride_r_row, stride_r_col, stride_w,
                            N, eps, HAS_WEIGHT: tl.constexpr, BLOCK_N: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offsets = tl.arange(0, BLOCK_N)
    mask = offsets < N
    x = tl.load(x_ptr + row * stride_x_row + offsets * stride_x_col, mask=mask, other=0.0).to(tl.float32)
    r = tl.load(r_ptr + row * stride_r_row + offsets * stride_r_col, mask=mask, other=0.0).to(tl.float32)
    h = x + r
    tl.store(h_ptr + row * N + offsets, h.to(h_ptr.dtype.element_ty), mask=mask)
    rstd = 1.0 / tl.sqrt(tl.sum(h * h, axis=0) / N + eps)
    y = h * rstd
    if HAS_WEIGHT:
        y = y * tl.load(w_ptr + offsets * stride_w, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * N + offsets, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["eps"])
def _fused_add_rms_norm_looped(x_ptr, r_ptr, w_ptr, y_ptr, h_ptr,
                               stride_x_row, stride_x_col, stride_r_row, stride_r_col, stride_w,
                               N, eps, HAS_WEIGHT: tl.constexpr, BLOCK_N: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_x_row
    r_row = r_ptr + row * stride_r_row
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for start in range(0, N, BLOCK_N):
        offsets = start + tl.arange(0, BLOCK_N)
        mask = offsets < N
        h = (tl.load(x_row + offsets * stride_x_col, mask=mask, other=0.0).to(tl.float32)
             + tl.load(r_row + offsets * stride_r_col, mask=mask, other=0.0).to(tl.float32))
        tl.store(h_ptr + row * N + offsets, h.to(h_ptr.dtype.element_ty), mask=mask)
        acc += h * h
    rstd = 1.0 / tl.sqrt(tl.sum(acc, axis=0) / N + eps)
    for start in range(0, N, BLOCK_N):
        offsets = start + tl.arange(0, BLOCK_N)
        mask = offsets < N
        h = (tl.load(x_row + offsets * stride_x_col, mask=mask, other=0.0).to(tl.float32)
             + tl.load(r_row + offsets * stride_r_col, mask=mask, other=0.0).to(tl.float32))
        y = h * rstd
        if HAS_WEIGHT:
            y = y * tl.load(w_ptr + offsets * stride_w, mask=mask, other=0.0).to(tl.float32)
        tl.store(y_ptr + row * N + offsets, y.to(y_ptr.dtype.element_ty), mask=mask)


def _num_warps(block_n: int, elem_size: int) -> int:
    # 16 bytes per thread per load, at most 8 warps: swept on the H100 (bf16, benchmarks/sweep_launch.py),
    # 8 warps beat 16 at 4096x4096 (49.8 vs 50.1 us) and tie at 16384x8192 (within 1%).
    return max(1, min(8, block_n * elem_size // (16 * 32)))


FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _rows(t: torch.Tensor, name: str) -> torch.Tensor:
    """t as a 2-D [rows, N] view (no copy); ValueError when its leading dims cannot be merged."""
    if t.dim() == 2:
        return t
    try:
        return t.view(-1, t.shape[-1])
    except RuntimeError:
        raise ValueError(f"fused_add_rms_norm: the leading dims of {name} cannot be viewed as rows "
                         "without a copy") from None


def fused_add_rms_norm(x, residual, weight=None, eps=1e-6, *, max_block=None):
    """h = x + residual; returns (rms_norm(h) * weight, h), both new tensors of x's shape and dtype.

    x and residual: same shape and dtype (float32/float16/bfloat16), any leading dims, rows may be strided.
    weight: [N] of any float dtype, or None."""
    for name, t in (("x", x), ("residual", residual)):
        if not isinstance(t, torch.Tensor) or t.dtype not in FLOAT_DTYPES:
            raise TypeError(f"fused_add_rms_norm: {name} must be a float32/float16/bfloat16 tensor, "
                            f"got {getattr(t, 'dtype', type(t))}")
    if x.dim() == 0:
        raise ValueError("fused_add_rms_norm: x must have at least one dimension")
    if residual.shape != x.shape:
        raise ValueError(f"fused_add_rms_norm: residual must have x's shape {tuple(x.shape)}, "
                         f"got {tuple(residual.shape)}")
    if residual.dtype != x.dtype:
        raise TypeError(f"fused_add_rms_norm: residual must have x's dtype {x.dtype}, got {residual.dtype}")
    if residual.device != x.device:
        raise ValueError(f"fused_add_rms_norm: residual is on {residual.device} but x is on {x.device}")
    N = x.shape[-1]
    if weight is not None:
        if not isinstance(weight, torch.Tensor) or weight.dtype not in FLOAT_DTYPES:
            raise TypeError("fused_add_rms_norm: weight must be a float32/float16/bfloat16 tensor")
        if weight.shape != (N,):
            raise ValueError(f"fused_add_rms_norm: weight must have shape ({N},), got {tuple(weight.shape)}")
        if weight.device != x.device:
            raise ValueError(f"fused_add_rms_norm: weight is on {weight.device} but x is on {x.device}")
    x2, r2 = _rows(x, "x"), _rows(residual, "residual")
    # empty_like parses no shape/dtype/device arguments (about 1.5 us less per output than torch.empty on a
    # small call); only for a contiguous x, whose copy is contiguous as y and h must be.
    if x.is_contiguous():
        y, h = torch.empty_like(x), torch.empty_like(x)
    else:
        y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        h = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    M = x2.shape[0]
    if M == 0 or N == 0:
        return y, h
    limit = min(MAX_FUSED_N, max_block or MAX_FUSED_N)
    block_n = _next_power_of_2(N)
    kernel = _fused_add_rms_norm_row
    if block_n > limit:
        kernel, block_n = _fused_add_rms_norm_looped, min(limit, LOOP_BLOCK_N)
    w = weight if weight is not None else x2
    kernel[(M,)](x2, r2, w, y, h, x2.stride(0), x2.stride(1), r2.stride(0), r2.stride(1),
                 weight.stride(0) if weight is not None else 0, N, float(eps),
                 HAS_WEIGHT=weight is not None, BLOCK_N=block_n,
                 num_warps=_num_warps(block_n, x.element_size()))
    return y, h
