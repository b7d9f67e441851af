"""Softmax over the last dimension: y = exp(x - max(x)) / sum(exp(x - max(x))).

One program per row. Rows up to MAX_FUSED_N elements are held in registers in one block: x is read once
and y written once. Longer rows use the online softmax: one pass keeps a running max and a running sum
(rescaled whenever the max grows), a second pass re-reads x and writes y, so x is read twice, never three
times. Arithmetic is in float32; y is cast once at the store (to float32 for half_to_float).
"""

import torch
import triton
import triton.language as tl


# Host-side arithmetic in plain Python: triton.next_power_of_2 and triton.cdiv are constexpr functions
# whose calls from the host cost about 10 us each, more than a small kernel takes on the GPU.
def _next_power_of_2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


# Longest row kept in registers: read once, written once. Rows past 16K (a 32K vocabulary) are spread over
# up to 32 warps at FUSED_ELEMS_PER_THREAD float32 values per thread. On an H200 at 4096x32000 bf16 every
# variant measured 0.727-0.733 of copy bandwidth: this one, the two-pass loop (MAX_FUSED_N 16384), 64
# values per thread, and a persistent kernel whose pipeliner loads the next row while one is reduced (2 or 3
# stages). Kept: it reads x once.
MAX_FUSED_N = 32768
FUSED_ELEMS_PER_THREAD = 32
# Block of the looped variant (rows longer than MAX_FUSED_N, e.g. a 128K vocabulary): 16K elements at 16 per
# thread (32 warps), so an SM holds 2 rows in flight. The second pass re-reads the row and should find it in
# L2: with 4K blocks at 8 warps, 8 rows of 64 KB per SM (67 MB over 132 SMs) overflowed the 50 MB L2 and a
# 4096x32000 bf16 softmax read x twice from memory (0.65 of copy bandwidth, the cost of three passes).
# Timed on an H200 at 4096x32000 bf16 (4K or 8K blocks, 8 to 32 values per thread): all within 1%.
LOOP_BLOCK_N = 16384
LOOP_ELEMS_PER_THREAD = 16


@triton.jit
def _softmax_row(x_ptr, y_ptr, stride_x_row, stride_x_col, N, BLOCK_N: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offsets = tl.arange(0, BLOCK_N)
    mask = offsets < N
    x = tl.load(x_ptr + row * stride_x_row + offsets * stride_x_col, mask=mask, other=float("-inf"))
    x = x.to(tl.float32)
    row_max = tl.max(x, axis=0)
    e = tl.exp(x - row_max)  # masked lanes: exp(-inf) = 0
    y = e * (1.0 / tl.sum(e, axis=0))
    tl.store(y_ptr + row * N + offsets, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _softmax_looped(x_ptr, y_ptr, stride_x_row, stride_x_col, N, BLOCK_N: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_x_row
    # The first block (always full: N > BLOCK_N here) seeds the running max m and sum s.
    offsets = tl.arange(0, BLOCK_N)
    x = tl.load(x_row + offsets * stride_x_col, mask=offsets < N, other=float("-inf")).to(tl.float32)
    m = tl.max(x, axis=0)
    # A row that starts with -inf: shift by 0 instead (exp(-inf - -inf) would be NaN).
    s = tl.sum(tl.exp(x - tl.where(m == float("-inf"), 0.0, m)), axis=0)
    for start in range(BLOCK_N, N, BLOCK_N):
        offsets = start + tl.arange(0, BLOCK_N)
        x = tl.load(x_row + offsets * stride_x_col, mask=offsets < N, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, axis=0))
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        s = s * tl.exp(m - shift) + tl.sum(tl.exp(x - shift), axis=0)
        m = m_new
    shift = tl.where(m == float("-inf"), 0.0, m)
    inv_s = 1.0 / s
    for start in range(0, N, BLOCK_N):
        offsets = start + tl.arange(0, BLOCK_N)
        mask = offsets < N
        x = tl.load(x_row + offsets * stride_x_col, mask=mask, other=float("-inf")).to(tl.float32)
        y = tl.exp(x - shift) * inv_s
        tl.store(y_ptr + row * N + offsets, y.to(y_ptr.dtype.element_ty), mask=mask)


def _num_warps(block_n: int, elem_size: int) -> int:
    # 16 bytes per thread per load, at most 8 warps: swept on the H100 (bf16, benchmarks/sweep_launch.py),
    # 8 warps beat 16 at 4096x4096 (27.7 vs 30.4 us) and tie at 16384x8192 (within 1%).
    return max(1, min(8, block_n * elem_size // (16 * 32)))


FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _softmax(x, out_dtype, max_block=None):
    N = x.shape[-1]
    try:
        x2 = x.view(-1, N) if x.dim() != 2 else x
    except RuntimeError:
        raise ValueError("softmax: the leading dims of x cannot be viewed as rows without a copy") from None
    # empty_like parses no shape/dtype/device arguments: about a microsecond less per call than torch.empty,
    # which matters for small (decode-size) calls. y must be contiguous, as a contiguous x's copy is.
    if out_dtype == x.dtype and x.is_contiguous():
        y = torch.empty_like(x)
    else:
        y = torch.empty(x.shape, dtype=out_dtype, device=x.device)
    M = x2.shape[0]
    if M == 0 or N == 0:
        return y
    limit = min(MAX_FUSED_N, max_block or MAX_FUSED_N)
    block_n = _next_power_of_2(N)
    kernel = _softmax_row
    if block_n > limit:
        kernel, block_n = _softmax_looped, min(limit, LOOP_BLOCK_N)
        num_warps = max(1, min(32, block_n // (LOOP_ELEMS_PER_THREAD * 32)))
    elif block_n > 16384:
        num_warps = max(1, min(32, block_n // (FUSED_ELEMS_PER_THREAD * 32)))
    else:
        num_warps = _num_warps(block_n, x.element_size())
    kernel[(M,)](x2, y, x2.stride(0), x2.stride(1), N, BLOCK_N=block_n, num_warps=num_warps)
    return y


def _check_x(x, dim):
    if not isinstance(x, torch.Tensor) or x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"softmax: x must be a float32/float16/bfloat16 tensor, got {getattr(x, 'dtype', type(x))}")
    if x.dim() == 0:
        raise ValueError("softmax: x must have at least one dimension")
    if not isinstance(dim, int) or isinstance(dim, bool) or dim not in (-1, x.dim() - 1):
        raise ValueError(f"softmax: dim must be the last dimension (-1 or {x.dim() - 1}), got {dim!r}")


def softmax(x, dim=-1, *, max_block=None):
    """Softmax over the last dim of x (any leading shape, rows may be strided); same dtype as x."""
    _check_x(x, dim)
    return _softmax(x, x.dtype, max_block)


def aten_softmax(self, dim, half_to_float):
    """aten::_softmax. half_to_float=True (float16 in, float32 out) is supported as on CUDA; for other dtypes
    ATen rejects it, so we hand it back. NotImplemented (ATen runs) for any dim but the last."""
    if not isinstance(self, torch.Tensor) or self.dtype not in FLOAT_DTYPES or self.dim() == 0:
        return NotImplemented
    if dim % self.dim() != self.dim() - 1:
        return NotImplemented
    if half_to_float and self.dtype != torch.float16:
        return NotImplemented
    try:
        return _softmax(self, torch.float32 if half_to_float else self.dtype)
    except ValueError:
        return NotImplemented
