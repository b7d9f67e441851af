"""Cosine similarity along the last dimension: y = sum(x1 * x2) / (max(||x1||, eps) * max(||x2||, eps)).

One program per row. A row up to MAX_FUSED_N elements is one block in registers; a longer row is read in
blocks of LOOP_BLOCK_N, with per-lane running sums reduced once at the end. Either way each input is read
once and the dot product and both squared norms come out of the same loads; eager PyTorch runs two norms,
two clamps, two divisions, a product and a sum, each writing a temporary. Each norm is clamped to eps on
its own, as ATen does (not their product). Arithmetic is in float32; y is cast once at the store.
"""

import torch
import triton
import triton.language as tl


# Host-side arithmetic in plain Python: triton.next_power_of_2 and triton.cdiv are constexpr functions
# whose calls from the host cost about 10 us each, more than a small kernel takes on the GPU.
def _next_power_of_2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


MAX_FUSED_N = 8192  # longest row held in one block: two inputs, 8 float32 values each per thread at 8 warps
LOOP_BLOCK_N = 4096  # block of the looped variant


@triton.jit(do_not_specialize=["eps"])
def _cosine_row(a_ptr, b_ptr, y_ptr, stride_a_row, stride_a_col, stride_b_row, stride_b_col, N, eps,
                BLOCK_N: tl.constexpr, LOOPED: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    a_row = a_ptr + row * stride_a_row
    b_row = b_ptr + row * stride_b_row
    if LOOPED:
        dot = tl.zeros([BLOCK_N], dtype=tl.float32)
        sq_a = tl.zeros([BLOCK_N], dtype=tl.float32)
        sq_b = tl.zeros([BLOCK_N], dtype=tl.float32)
        for start in range(0, N, BLOCK_N):
            offsets = start + tl.arange(0, BLOCK_N)
            mask = offsets < N
            a = tl.load(a_row + offsets * stride_a_col, mask=mask, other=0.0).to(tl.float32)
            b = tl.load(b_row + offsets * stride_b_col, mask=mask, other=0.0).to(tl.float32)
            dot += a * b
            sq_a += a * a
            sq_b += b * b
        dot_sum = tl.sum(dot, axis=0)
        sq_a_sum = tl.sum(sq_a, axis=0)
        sq_b_sum = tl.sum(sq_b, axis=0)
    else:
        offsets = tl.arange(0, BLOCK_N)
        mask = offsets < N
        a = tl.load(a_row + offsets * stride_a_col, mask=mask, other=0.0).to(tl.float32)
        b = tl.load(b_row + offsets * stride_b_col, mask=mask, other=0.0).to(tl.float32)
        dot_sum = tl.sum(a * b, axis=0)
        sq_a_sum = tl.sum(a * a, axis=0)
        sq_b_sum = tl.sum(b * b, axis=0)
    norm_a = tl.maximum(tl.sqrt(sq_a_sum), eps)
    norm_b = tl.maximum(tl.sqrt(sq_b_sum), eps)
    tl.store(y_ptr + row, (dot_sum / (norm_a * norm_b)).to(y_ptr.dtype.element_ty))


FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _as_rows(t, name):
    if t.dim() == 2:
        return t
    try:
        return t.view(-1, t.shape[-1])
    except RuntimeError:
        raise ValueError(f"cosine_similarity: {name}'s leading dims cannot be viewed as rows without a copy") from None


def _cosine_similarity(x1, x2, eps, max_block=None):
    a = _as_rows(x1, "x1")
    b = _as_rows(x2, "x2")
    y = torch.empty(x1.shape[:-1], dtype=x1.dtype, device=x1.device)
    M, N = a.shape
    if M == 0:
        return y
    limit = min(MAX_FUSED_N, max_block or MAX_FUSED_N)
    block_n = _next_power_of_2(N)
    looped = block_n > limit
    if looped:
        block_n = min(limit, LOOP_BLOCK_N)
    # 16 bytes per thread per load, at most 8 warps (the row ops' sweep on the H100)
    num_warps = max(1, min(8, block_n * x1.element_size() // (16 * 32)))
    _cosine_row[(M,)](a, b, y, a.stride(0), a.stride(1), b.stride(0), b.stride(1), N, float(eps),
                      BLOCK_N=block_n, LOOPED=looped, num_warps=num_warps)
    return y


def cosine_similarity(x1, x2, dim=-1, eps=1e-8, *, max_block=None):
    """Cosine similarity of x1 and x2 (float32/float16/bfloat16, one shape and dtype, rows may be strided)
    along the last dim: one value per row, in their dtype."""
    if not isinstance(x1, torch.Tensor) or x1.dtype not in FLOAT_DTYPES:
        raise TypeError(f"cosine_similarity: x1 must be a float32/float16/bfloat16 tensor, "
                        f"got {getattr(x1, 'dtype', type(x1))}")
    if not isinstance(x2, torch.Tensor) or x2.dtype != x1.dtype:
        raise TypeError(f"cosine_similarity: x2 must be a tensor of x1's dtype {x1.dtype}, "
                        f"got {getattr(x2, 'dtype', type(x2))}")
    if x2.shape != x1.shape or x2.device != x1.device or x1.dim() == 0:
        raise ValueError(f"cosine_similarity: x1 {tuple(x1.shape)} on {x1.device} and x2 {tuple(x2.shape)} on "
                         f"{x2.device} must have one shape of at least one dim, on one device")
    if not isinstance(dim, int) or isinstance(dim, bool) or dim not in (-1, x1.dim() - 1):
        raise ValueError(f"cosine_similarity: dim must be the last dimension (-1 or {x1.dim() - 1}), got {dim!r}")
    return _cosine_similarity(x1, x2, eps, max_block)


def aten_cosine_similarity(x1, x2, dim=1, eps=1e-8):
    """aten::cosine_similarity over the last dim of two inputs of one shape and float dtype; other dims,
    broadcasting, mixed dtypes and inputs that do not view as rows go to ATen."""
    if not isinstance(x1, torch.Tensor) or not isinstance(x2, torch.Tensor) or x1.dtype not in FLOAT_DTYPES:
        return NotImplemented
    if x2.dtype != x1.dtype or x2.shape != x1.shape or x1.dim() == 0:
        return NotImplemented
    if dim not in (-1, x1.dim() - 1):  # an out-of-range dim goes to ATen too, which raises for it
        return NotImplemented
    try:
        return _cosine_similarity(x1, x2, eps)
    except ValueError:
        return NotImplemented
