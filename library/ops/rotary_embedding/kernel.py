"""Rotary position embedding (RoPE), NeoX style, applied to queries and keys in one launch:
out = x * cos_full + rotate_half(x) * sin_full, with rotate_half(x) = cat(-x2, x1) and
cos_full = cat(cos, cos) per token. With x1, x2 the two halves of each head:
    out1 = x1 * cos - x2 * sin;   out2 = x2 * cos + x1 * sin.

Grid: one program per token. It loads the token's cos/sin row once and rotates all of the token's q heads,
then all of its k heads, each in tiles of BLOCK_HQ / BLOCK_HK heads (one tile each for Llama's 32/8 heads),
so q and k are read once and written once and the tables are read once. Every tensor may be strided (token,
head and element strides); the outputs are contiguous. Arithmetic is in float32; results are cast once at
the store.
"""

import torch
import triton
import triton.language as tl


# Host-side arithmetic in plain Python: triton.next_power_of_2 and triton.cdiv are constexpr functions
# whose calls from the host cost about 10 us each, more than a small kernel takes on the GPU.
def _next_power_of_2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()



# Largest tile (heads x half-dim elements) rotated at once; more heads than that are looped over. On an H100
# at 16K tokens (bf16, 32/8 heads, D 128; benchmarks/sweep_gaps.py) one program per token with a q tile of
# all 32 heads, a k tile of all 8 and 8 warps reached 0.95 of copy bandwidth, as much as torch's own copy of
# the same bytes; the earlier grid of tokens x 8-head blocks (4 q programs and 1 k program per token, each
# loading the tables) reached 0.87, and a [tokens, heads, dims] tile of several tokens 0.77 (H200).
TILE_MAX = 2048
MAX_WARPS = 8


@triton.jit
def _rotate_tile(x_ptr, out_ptr, cos, sin, token, head_start, H, R, stride_t, stride_h, stride_d,
                 BLOCK_H: tl.constexpr, BLOCK_R: tl.constexpr, EVEN_R: tl.constexpr):
    heads = head_start + tl.arange(0, BLOCK_H)
    dims = tl.arange(0, BLOCK_R)
    if EVEN_R:  # R == BLOCK_R: only the heads need a mask, so the loads stay vectorized
        mask = heads[:, None] < H
    else:
        mask = (heads[:, None] < H) & (dims[None, :] < R)
    # The token offset is int64; offsets inside one token stay small.
    x1_ptrs = x_ptr + token * stride_t + heads[:, None] * stride_h + dims[None, :] * stride_d
    x1 = tl.load(x1_ptrs, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(x1_ptrs + R * stride_d, mask=mask, other=0.0).to(tl.float32)
    out_ptrs = out_ptr + token * H * 2 * R + heads[:, None] * (2 * R) + dims[None, :]
    tl.store(out_ptrs, (x1 * cos - x2 * sin).to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(out_ptrs + R, (x2 * cos + x1 * sin).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rotate_heads(x_ptr, out_ptr, cos, sin, token, H, R, stride_t, stride_h, stride_d,
                  BLOCK_H: tl.constexpr, BLOCK_R: tl.constexpr, EVEN_R: tl.constexpr, ONE_TILE: tl.constexpr):
    """All H heads of one token: one tile when they fit (ONE_TILE), else BLOCK_H heads at a time."""
    if ONE_TILE:
        _rotate_tile(x_ptr, out_ptr, cos, sin, token, 0, H, R, stride_t, stride_h, stride_d, BLOCK_H, BLOCK_R, EVEN_R)
    else:
        for head_start in range(0, H, BLOCK_H):
            _rotate_tile(x_ptr, out_ptr, cos, sin, token, head_start, H, R, stride_t, stride_h, stride_d,
                         BLOCK_H, BLOCK_R, EVEN_R)


@triton.jit
def _rotary_kernel(q_ptr, k_ptr, cos_ptr, sin_ptr, q_out_ptr, k_out_ptr, Hq, Hk, R,
                   stride_qt, stride_qh, stride_qd, stride_kt, stride_kh, stride_kd,
                   stride_ct, stride_cd, stride_st, stride_sd,
                   BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr, BLOCK_R: tl.constexpr, EVEN_R: tl.constexpr,
                   ONE_Q_TILE: tl.constexpr, ONE_K_TILE: tl.constexpr):
    token = tl.program_id(0).to(tl.int64)
    dims = tl.arange(0, BLOCK_R)
    dmask = dims < R
    cos = tl.load(cos_ptr + token * stride_ct + dims * stride_cd, mask=dmask, other=0.0).to(tl.float32)[None, :]
    sin = tl.load(sin_ptr + token * stride_st + dims * stride_sd, mask=dmask, other=0.0).to(tl.float32)[None, :]
    _rotate_heads(q_ptr, q_out_ptr, cos, sin, token, Hq, R, stride_qt, stride_qh, stride_qd,
                  BLOCK_HQ, BLOCK_R, EVEN_R, ONE_Q_TILE)
    _rotate_heads(k_ptr, k_out_ptr, cos, sin, token, Hk, R, stride_kt, stride_kh, stride_kd,
                  BLOCK_HK, BLOCK_R, EVEN_R, ONE_K_TILE)


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
    heads_per_tile = max(1, tile // block_r)
    block_hq = max(1, min(_next_power_of_2(Hq), heads_per_tile))
    block_hk = max(1, min(_next_power_of_2(Hk), heads_per_tile))
    # 16 bytes per thread per load of the larger tile, at most MAX_WARPS
    num_warps = max(1, min(MAX_WARPS, max(block_hq, block_hk) * block_r * q.element_size() // (16 * 32)))
    _rotary_kernel[(T,)](
        q, k, cos, sin, q_out, k_out, Hq, Hk, R, *q.stride(), *k.stride(), *cos.stride(), *sin.stride(),
        BLOCK_HQ=block_hq, BLOCK_HK=block_hk, BLOCK_R=block_r, EVEN_R=block_r == R, ONE_Q_TILE=Hq <= block_hq,
        ONE_K_TILE=Hk <= block_hk, num_warps=num_warps)
    return q_out, k_out
