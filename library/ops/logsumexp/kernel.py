"""Log-sum-exp over the last dimension: y = log(sum(exp(x))), taken on x - m with m = max(x) and shifted back.

One program per row. A row up to MAX_FUSED_N elements is one block in registers; a longer row is read once
in blocks of LOOP_BLOCK_N with the online form (a running max m and a running sum s of exp(x - m), rescaled
when the max grows). Eager PyTorch launches a max, a subtract, an exp, a sum, a log and one more elementwise
kernel, writing full-size temporaries; here x is read once and one value per row is written.

As in ATen, a row whose max is infinite is shifted by 0 instead of the max: a row of -inf gives -inf (not
NaN) and a row holding +inf gives +inf; an empty row (N = 0) gives -inf, the log of an empty sum.
Arithmetic is in float32; y is cast once at the store.
"""

import torch
import triton
import triton.language as tl


# Host-side arithmetic in plain Python: triton.next_power_of_2 and triton.cdiv are constexpr functions
# whose calls from the host cost about 10 us each, more than a small kernel takes on the GPU.
def _next_power_of_2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


MAX_FUSED_N = 16384  # longest row held in one block (16 float32 values per thread at 8 warps)
LOOP_BLOCK_N = 8192  # block of the looped variant: 32 KB of float32 per step, no spills at 8 warps


@triton.jit
def _logsumexp_row(x_ptr, y_ptr, stride_x_row, stride_x_col, N, BLOCK_N: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offsets = tl.arange(0, BLOCK_N)
    x = tl.load(x_ptr + row * stride_x_row + offsets * stride_x_col, mask=offsets < N, other=float("-inf"))
    x = x.to(tl.float32)
    m = tl.max(x, axis=0)
    shift = tl.where(tl.abs(m) == float("inf"), 0.0, m)
    s = tl.sum(tl.exp(x - shift), axis=0)  # masked lanes: exp(-inf) = 0
    tl.store(y_ptr + row, (shift + tl.log(s)).to(y_ptr.dtype.element_ty))


@triton.jit
def _logsumexp_looped(x_ptr, y_ptr, stride_x_row, stride_x_col, N, BLOCK_N: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_x_row
    # Running max m and sum s per row, updated once per block: one exp per element (a per-lane running max
    # would need two, and long bf16 rows would then wait on the exp units rather than on memory).
    m = tl.full((), float("-inf"), tl.float32)
    s = tl.zeros((), dtype=tl.float32)
    for start in range(0, N, BLOCK_N):
        offsets = start + tl.arange(0, BLOCK_N)
        x = tl.load(x_row + offsets * stride_x_col, mask=offsets < N, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, axis=0))
        shift = tl.where(tl.abs(m_new) == float("inf"), 0.0, m_new)
        s = s * tl.exp(m - shift) + tl.sum(tl.exp(x - shift), axis=0)
        m = m_new
    shift = tl.where(tl.abs(m) == float("inf"), 0.0, m)
    tl.store(y_ptr + row, (shift + tl.log(s)).to(y_ptr.dtype.element_ty))


FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _logsumexp(x, keepdim, max_block=None):
    N = x.shape[-1]
    try:
        x2 = x.view(-1, N) if x.dim() != 2 else x
    except RuntimeError:
        raise ValueError("logsumexp: the leading dims of x cannot be viewed as rows without a copy") from None
    out_shape = x.shape[:-1] + (1,) if keepdim else x.shape[:-1]
    y = torch.empty(out_shape, dtype=x.dtype, device=x.device)
    M = x2.shape[0]
    if M == 0:
        return y
    limit = min(MAX_FUSED_N, max_block or MAX_FUSED_N)
    block_n = _next_power_of_2(N)
    kernel = _logsumexp_row
    if block_n > limit:
        kernel, block_n = _logsumexp_looped, min(limit, LOOP_BLOCK_N)
    # 16 bytes per thread per load, at most 8 warps (the softmax rows' sweep on the H100)
    num_warps = max(1, min(8, block_n * x.element_size() // (16 * 32)))
    kernel[(M,)](x2, y, x2.stride(0), x2.stride(1), N, BLOCK_N=block_n, num_warps=num_warps)
    return y


def logsumexp(x, dim=-1, *, keepdim=False, max_block=None):
    """log(sum(exp(x))) over the last dim of x (float32/float16/bfloat16, any leading shape, rows may be
    strided); same dtype as x, one value per row (keepdim keeps the reduced dim as size 1)."""
    if not isinstance(x, torch.Tensor) or x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"logsumexp: x must be a float32/float16/bfloat16 tensor, got {getattr(x, 'dtype', type(x))}")
    if x.dim() == 0:
        raise ValueError("logsumexp: x must have at least one dimension")
    if not isinstance(dim, int) or isinstance(dim, bool) or dim not in (-1, x.dim() - 1):
        raise ValueError(f"logsumexp: dim must be the last dimension (-1 or {x.dim() - 1}), got {dim!r}")
    return _logsumexp(x, keepdim, max_block)


def aten_logsumexp(self, dim, keepdim=False):
    """aten::logsumexp: served over the last dim (one dim, given as an int or a one-element list); other dims,
    several dims and integer inputs go to ATen."""
    if not isinstance(self, torch.Tensor) or self.dtype not in FLOAT_DTYPES or self.dim() == 0:
        return NotImplemented
    if not isinstance(dim, int):
        if len(dim) != 1:
            return NotImplemented
        dim = dim[0]
    if dim not in (-1, self.dim() - 1):  # an out-of-range dim goes to ATen too, which raises for it
        return NotImplemented
    try:
        return _logsumexp(self, keepdim)
    except ValueError:
        return NotImplemented
