"""Rotary position embedding (RoPE), NeoX style, applied to queries and keys in one launch:
out = x * cos_full + rotate_half(x) * sin_full, with rotate_half(x) = cat(-x2, x1) and
cos_full = cat(cos, cos) per token. With x1, x2 the two halves of each head:
    out1 = x1 * cos - x2 * sin;   out2 = x2 * cos + x1 * sin.

Grid: tokens x head blocks, the q head blocks first, then the k head blocks. A program loads the token's
cos/sin row once and rotates BLOCK_H heads with it, so q and k are each read once and written once and the
tables are read once per program. Every tensor may be strided (token, head and element strides); the
outputs are contiguous. Arithmetic is in float32; results are cast once at the store.
"""

import torch
import triton
import triton.language as tl


# Host-side arithmetic in plain Python: triton.next_power_of_2 and triton.cdiv are constexpr functions
# whose calls from the host cost about 10 us each, more than a small kernel takes on the GPU.
def _next_power_of_2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b

# Tile of one program: BLOCK_H heads x BLOCK_R half-dim elements, at most TILE_MAX (per half). BLOCK_H is
# the head count of the smaller of q and k (a power of two, within the tile): q and k blocks are then the
# same size and none is mostly masked. With one tile sized for q's 32 heads, a k of 8 heads (GQA) had 3/4
# of its lanes idle and q programs did 4x the work of k programs: 0.78 of copy bandwidth at 16K tokens.
# For Llama's 32/8 heads and D = 128 a program now rotates 8 heads (2 KB of bf16 per half) with 2 warps,
# 16 bytes per thread per load, and a token takes 4 + 1 programs. A head block is never smaller than
# TILE_MIN elements per half (MQA, tiny heads). On an H200 at 16K tokens, TILE_MIN 256 measured 0.842 of
# copy bandwidth and 512 0.837; programs of several tokens each (a [tokens, heads, dims] tile, 1 to 8
# tokens, 2 to 8 warps) measured 0.77 in two other runs, so a program stays one token.
TILE_MAX = 2048
TILE_MIN = 256
MAX_WARPS = 8


@triton.jit
def _rotate_heads(x_ptr, out_ptr, cos, sin, token, head_start, H, R, stride_t, stride_h, stride_d,
                  BLOCK_H: tl.constexpr, BLOCK_R: tl.constexpr):
    heads = head_start + tl.arange(0, BLOCK_H)
    dims = tl.arange(0, BLOCK_R)
    mask = (heads[:, None] < H) & (dims[None, :] < R)
    # The token offset is int64; offsets inside one token stay small.
    x1_ptrs = x_ptr + token * stride_t + heads[:, None] * stride_h + dims[None, :] * stride_d
    x1 = tl.load(x1_ptrs, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(x1_ptrs + R * stride_d, mask=mask, other=0.0).to(tl.float32)
    out_ptrs = out_ptr + token * H * 2 * R + heads[:, None] * (2 * R) + dims[None, :]
    tl.store(out_ptrs, (x1 * cos - x2 * sin).to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(out_ptrs + R, (x2 * cos + x1 * sin).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rotary_kernel(q_ptr, k_ptr, cos_ptr, sin_ptr, q_out_ptr, k_out_ptr, Hq, Hk, R, q_blocks,
                   stride_qt, stride_qh, stride_qd, stride_kt, stride_kh, stride_kd,
                   stride_ct, stride_cd, stride_st, stride_sd,
                   BLOCK_H: tl.constexpr, BLOCK_R: tl.constexpr):
    token = tl.program_id(0).to(tl.int64)
    block = tl.program_id(1)
    dims = tl.arange(0, BLOCK_R)
    dmask = dims < R
    cos = tl.load(cos_ptr + token * stride_ct + dims * stride_cd, mask=dmask, other=0.0).to(tl.float32)[None, :]
    sin = tl.load(sin_ptr + token * stride_st + dims * stride_sd, mask=dmask, other=0.0).to(tl.float32)[None, :]
    if block < q_blocks:
        _rotate_heads(q_ptr, q_out_ptr, cos, sin, token, block * BLOCK_H, Hq, R, stride_qt, stride_qh, stride_qd,
                      BLOCK_H, BLOCK_R)
    else:
        _rotate_heads(k_ptr, k_out_ptr, cos, sin, token, (block - q_blocks) * BLOCK_H, Hk, R,
                      stride_kt, stride_kh, stride_kd, BLOCK_H, BLOCK_R)


FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _check(t, name: str, dims: int) -> None:
    if not isinstance(t, torch.Tensor) or t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"rotary_embedding: {name} must be a float32/float16/bfloat16 tensor, "
                        f"got {getattr(t, 'dtype', type(t))}")
    if t.dim() != dims:
        raise ValueError(f"rotary_embedding: {name} must have {dims} dims, got shape {tuple(t.shape)}")


def rotary_embedding(q, k, cos, sin, *, max_block=None):
    """NeoX-style RoPE of q [T, Hq, D] and k [T, Hk, D] with per-token tables cos, sin [T, D/2].

    Returns new contiguous (q_out, k_out) in q's and k's dtypes; the whole head dim D is rotated.
    The tables may be of any float dtype (float32 tables with bf16 q/k are fine). Gather the tables by
    position before calling (cos_cache[positions]). max_block caps the heads x D/2 tile (for tests)."""
    _check(q, "q", 3)
    _check(k, "k", 3)
    _check(cos, "cos", 2)
    _check(sin, "sin", 2)
    for name, t in (("k", k), ("cos", cos), ("sin", sin)):
        if t.device != q.device:
            raise ValueError(f"rotary_embedding: {name} is on {t.device} but q is on {q.device}")
    T, Hq, D = q.shape
    if D % 2:
        raise ValueError(f"rotary_embedding: the head dim of q must be even, got {D}")
    if k.shape[0] != T or k.shape[2] != D:
        raise ValueError(f"rotary_embedding: k must have shape [{T}, Hk, {D}] like q, got {tuple(k.shape)}")
    R = D // 2
    for name, t in (("cos", cos), ("sin", sin)):
        if tuple(t.shape) != (T, R):
            raise ValueError(f"rotary_embedding: {name} must have shape ({T}, {R}) = (tokens, head_dim / 2), "
                             f"got {tuple(t.shape)}")
    Hk = k.shape[1]
    q_out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    k_out = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    if T == 0 or R == 0 or Hq + Hk == 0:
        return q_out, k_out
    tile = min(TILE_MAX, max_block or TILE_MAX)
    block_r = _next_power_of_2(R)
    smaller = min(Hq, Hk) if Hq and Hk else max(Hq, Hk)
    # At least TILE_MIN elements per half (a single-head program for MQA would be a sliver of work), at most
    # the larger head count and the tile.
    wanted = max(_next_power_of_2(smaller), TILE_MIN // block_r)
    block_h = max(1, min(wanted, _next_power_of_2(max(Hq, Hk)), tile // block_r))
    q_blocks, k_blocks = _cdiv(Hq, block_h), _cdiv(Hk, block_h)
    num_warps = max(1, min(MAX_WARPS, block_h * block_r * q.element_size() // (16 * 32)))
    _rotary_kernel[(T, q_blocks + k_blocks)](
        q, k, cos, sin, q_out, k_out, Hq, Hk, R, q_blocks, *q.stride(), *k.stride(), *cos.stride(), *sin.stride(),
        BLOCK_H=block_h, BLOCK_R=block_r, num_warps=num_warps)
    return q_out, k_out
