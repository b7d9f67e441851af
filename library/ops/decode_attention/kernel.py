"""Decode attention (flash-decoding, split over the cache): a few query positions attend to a long KV cache
with grouped-query heads. out = softmax(q k^T * scale + causal) v, per query head, the causal mask aligned
to the end of the cache (query i of Sq sees cache positions j <= S - Sq + i; Sq = 1 sees all of it).

Why split: one decode step has B * Hkv (kv head, batch) pairs, 128 for batch 16 and 8 kv heads, fewer
than one program per SM on a large GPU, and each pair streams S * D * 2 elements of K and V. A program
per pair leaves most of the memory system idle. The cache is cut into `num_splits` slices per pair:
program (pair, split) loads the GROUP = Hq / Hkv query rows (times Sq positions) that share the kv head,
walks its slice in BLOCK_S tiles with an online softmax (running max, sum and weighted V sum in float32),
and writes its partial result, normalized, and the log2-sum-exp of its scores to float32 workspaces. A
second kernel combines the splits of each query row: weights exp2(lse_split - max lse). With one split the
first kernel writes the output directly and the second is not launched.

Each K and V element is read once per kv head: the group's query rows share every tile (that is the point
of GQA in decode). The scores are a [BLOCK_M, BLOCK_S] product: with tl.dot the rows are padded to 16
(tensor cores need 16; decode is bound by memory, the padded rows cost no bandwidth); `use_dot=False`
computes the same with a broadcast multiply and a sum, for a GPU sweep to compare.

Strides of q, k and v are passed (a cache slice or a transposed view needs no copy); the output is
contiguous [B, Hq, Sq, D] in q's dtype.
"""

import math

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634


# Host-side arithmetic in plain Python: triton.next_power_of_2 and triton.cdiv are constexpr functions
# whose calls from the host cost about 10 us each, more than a decode kernel takes on the GPU.
def _next_power_of_2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


# Programs of the split kernel to aim for: about 4 waves of a 132-SM GPU. Batch 16 x 8 kv heads then gets
# 4 splits per pair (512 programs) and batch 1 gets 64 (bounded by the tiles of the cache).
TARGET_PROGRAMS = 512
MAX_ROWS = 128  # query rows per kv head (GROUP * Sq) one program holds
MAX_HEAD_DIM = 256
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def _split_kernel(q_ptr, k_ptr, v_ptr, out_ptr, part_ptr, lse_ptr,
                  Hkv, S, Sq, D, rows, group, split_len, num_splits, scale_log2,
                  stride_qb, stride_qh, stride_qs, stride_qd,
                  stride_kb, stride_kh, stride_ks, stride_kd,
                  stride_vb, stride_vh, stride_vs, stride_vd,
                  BLOCK_M: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
                  USE_DOT: tl.constexpr, UPCAST_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr,
                  WIDE: tl.constexpr, SINGLE: tl.constexpr):
    pair = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1)
    b = pair // Hkv
    kv_head = pair % Hkv

    # Row r of the program: query head kv_head * group + r // Sq, query position r % Sq.
    r = tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    row_ok = r < rows
    head = kv_head * group + r // Sq
    pos = r % Sq
    dmask = dims < D
    q_ptrs = (q_ptr + b * stride_qb + head[:, None].to(tl.int64) * stride_qh + pos[:, None] * stride_qs
              + dims[None, :] * stride_qd)
    q = tl.load(q_ptrs, mask=row_ok[:, None] & dmask[None, :], other=0.0)
    if WIDE:
        q = q.to(tl.float64)
    elif UPCAST_DOT:
        q = q.to(tl.float32)
    # Causal limit per row, aligned to the cache's end; a padded row sees nothing.
    last = tl.where(row_ok, S - Sq + pos, -1)

    start = split * split_len
    end = tl.minimum(start + split_len, S)
    k_base = k_ptr + b * stride_kb + kv_head * stride_kh
    v_base = v_ptr + b * stride_vb + kv_head * stride_vh
    # A finite floor instead of -inf: a row with nothing visible in this slice keeps m = floor, l = 0 and
    # never computes (-inf) - (-inf).
    m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)
    if WIDE:
        m_i = m_i.to(tl.float64)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for s0 in range(start, end, BLOCK_S):
        offs = s0 + tl.arange(0, BLOCK_S)
        smask = offs < end
        kt = tl.load(k_base + offs[None, :].to(tl.int64) * stride_ks + dims[:, None] * stride_kd,
                     mask=dmask[:, None] & smask[None, :], other=0.0)
        if WIDE:
            kt = kt.to(tl.float64)
        elif UPCAST_DOT:
            kt = kt.to(tl.float32)
        if USE_DOT:
            scores = tl.dot(q, kt, input_precision=DOT_PRECISION, out_dtype=m_i.dtype)
        else:
            scores = tl.sum(q.to(m_i.dtype)[:, :, None] * kt.to(m_i.dtype)[None, :, :], axis=1)
        visible = smask[None, :] & (offs[None, :] <= last[:, None])
        scores = tl.where(visible, scores * scale_log2, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, axis=1))
        # Differences to the running max are small where they matter: float32 from here on.
        alpha = tl.math.exp2((m_i - m_new).to(tl.float32))
        p = tl.math.exp2((scores - m_new[:, None]).to(tl.float32))
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(v_base + offs[:, None].to(tl.int64) * stride_vs + dims[None, :] * stride_vd,
                    mask=smask[:, None] & dmask[None, :], other=0.0)
        if UPCAST_DOT:
            v = v.to(tl.float32)
        if USE_DOT:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        else:
            acc = acc * alpha[:, None] + tl.sum(p[:, :, None] * v.to(tl.float32)[None, :, :], axis=1)
        m_i = m_new

    has = l_i > 0.0
    o = acc / tl.where(has, l_i, 1.0)[:, None]
    if SINGLE:
        # out is contiguous [B, Hq, Sq, D]: row (b, head, pos) starts at ((b * Hq + head) * Sq + pos) * D.
        out_rows = (b * Hkv * group + head) * Sq + pos
        tl.store(out_ptr + out_rows[:, None] * D + dims[None, :], o.to(out_ptr.dtype.element_ty),
                 mask=row_ok[:, None] & dmask[None, :])
    else:
        # Workspaces: [pair, split, row] for lse, [pair, split, row, D] for the partial output.
        slot = (pair * num_splits + split) * rows + r
        tl.store(part_ptr + slot[:, None] * D + dims[None, :], o, mask=row_ok[:, None] & dmask[None, :])
        tl.store(lse_ptr + slot, tl.where(has, m_i + tl.math.log2(tl.where(has, l_i, 1.0)), float("-inf")),
                 mask=row_ok)


@triton.jit
def _combine_kernel(part_ptr, lse_ptr, out_ptr, Hkv, Sq, D, rows, group, num_splits,
                    BLOCK_SPLITS: tl.constexpr, BLOCK_D: tl.constexpr):
    # One program per query row (pair, r): a weighted sum of its splits' partial outputs.
    row = tl.program_id(0).to(tl.int64)
    pair = row // rows
    r = row % rows
    splits = tl.arange(0, BLOCK_SPLITS)
    dims = tl.arange(0, BLOCK_D)
    smask = splits < num_splits
    slot = (pair * num_splits + splits) * rows + r
    lse = tl.load(lse_ptr + slot, mask=smask, other=float("-inf"))
    # Every row sees cache position 0 in split 0, so the max is finite.
    weight = tl.math.exp2((lse - tl.max(lse, axis=0)).to(tl.float32))
    part = tl.load(part_ptr + slot[:, None] * D + dims[None, :], mask=smask[:, None] & (dims[None, :] < D),
                   other=0.0)
    o = tl.sum(weight[:, None] * part, axis=0) / tl.sum(weight, axis=0)
    b = pair // Hkv
    head = (pair % Hkv) * group + r // Sq
    out_row = (b * Hkv * group + head) * Sq + r % Sq
    tl.store(out_ptr + out_row * D + dims, o.to(out_ptr.dtype.element_ty), mask=dims < D)


def _check(t, name: str) -> None:
    if not isinstance(t, torch.Tensor) or t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"decode_attention: {name} must be a float32/float16/bfloat16 tensor, "
                        f"got {getattr(t, 'dtype', type(t))}")
    if t.dim() != 4:
        raise ValueError(f"decode_attention: {name} must have 4 dims [B, H, S, D], got shape {tuple(t.shape)}")


def decode_attention(q, k, v, scale=None, *, block_s=64, num_warps=4, num_stages=2, splits=None,
                     target_programs=TARGET_PROGRAMS, use_dot=True, upcast_dot=None, max_block=None):
    """Attention of q [B, Hq, Sq, D] (Sq small: 1 in decode) against a cache k, v [B, Hkv, S, D].

    Hq must be a multiple of Hkv (grouped-query attention: query head h uses kv head h // (Hq / Hkv)).
    Query position i attends to cache positions j <= S - Sq + i (all of the cache when Sq = 1). scale
    defaults to 1 / sqrt(D). Returns a new contiguous [B, Hq, Sq, D] tensor in q's dtype; arithmetic in
    float32. block_s, num_warps, num_stages, splits (slices of the cache per kv head; default: enough for
    about target_programs programs), use_dot and upcast_dot are launch parameters, for tuning sweeps;
    max_block caps the tile of cache positions (for tests)."""
    _check(q, "q")
    _check(k, "k")
    _check(v, "v")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"decode_attention: q, k and v must have one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    for name, t in (("k", k), ("v", v)):
        if t.device != q.device:
            raise ValueError(f"decode_attention: {name} is on {t.device} but q is on {q.device}")
    B, Hq, Sq, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    if tuple(k.shape) != (B, Hkv, S, D) or tuple(v.shape) != (B, Hkv, S, D):
        raise ValueError(f"decode_attention: k and v must have shape [{B}, Hkv, S, {D}], "
                         f"got {tuple(k.shape)} and {tuple(v.shape)}")
    if Hkv == 0 or Hq % Hkv:
        raise ValueError(f"decode_attention: query heads ({Hq}) must be a multiple of kv heads ({Hkv})")
    if D > MAX_HEAD_DIM:
        raise ValueError(f"decode_attention: head dim {D} is over {MAX_HEAD_DIM}")
    group = Hq // Hkv
    rows = group * Sq
    if rows > MAX_ROWS:
        raise ValueError(f"decode_attention: {group} query heads per kv head x {Sq} positions = {rows} rows, "
                         f"over {MAX_ROWS}; this kernel is for decoding a few positions")
    out = torch.empty((B, Hq, Sq, D), dtype=q.dtype, device=q.device)
    if B == 0 or Sq == 0 or D == 0 or Hq == 0:
        return out
    if S < Sq:
        raise ValueError(f"decode_attention: the cache ({S} positions) must hold the {Sq} query positions")
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)

    if max_block is not None:
        # the largest power of two within the cap, at least 16 (the K dim of a tensor-core product)
        block_s = max(16, min(block_s, 1 << (max(1, int(max_block)).bit_length() - 1)))
    block_d = max(16, _next_power_of_2(D))
    block_m = _next_power_of_2(rows)
    if use_dot:
        block_m = max(16, block_m)  # tensor-core tiles are at least 16 rows
    tiles = _cdiv(S, block_s)
    pairs = B * Hkv
    if splits is None:
        splits = _cdiv(target_programs, pairs)
    splits = max(1, min(int(splits), tiles))
    split_len = _cdiv(tiles, splits) * block_s
    num_splits = _cdiv(S, split_len)
    single = num_splits == 1
    # float32 inputs: scores and running maxima in float64. A float32 dot of D terms carries a rounding
    # error of ~1e-7 * |q| |k| sqrt(D), which at large magnitudes (|q| ~ 1e4) moves two close softmax
    # weights by ~1e-3, far over float32's tolerance; the float64 scores keep a float32 result exact to it.
    wide = q.dtype == torch.float32
    if upcast_dot is None:
        # Triton's CPU interpreter multiplies 16-bit float operands of tl.dot as raw bit patterns; float32
        # operands are exact copies of bf16/fp16 values (and TF32 keeps their 8 to 11 significant bits).
        upcast_dot = q.dtype != torch.float32 and q.device.type == "cpu"
    precision = "ieee" if q.dtype == torch.float32 else "tf32"
    if single:
        part, lse = out, out  # not read: the split kernel stores the output itself
    else:
        part = torch.empty((pairs * num_splits * rows * D,), dtype=torch.float32, device=q.device)
        lse = torch.empty((pairs * num_splits * rows,), dtype=torch.float64 if wide else torch.float32,
                          device=q.device)
    _split_kernel[(pairs, num_splits)](
        q, k, v, out, part, lse, Hkv, S, Sq, D, rows, group, split_len, num_splits, scale * LOG2E,
        *q.stride(), *k.stride(), *v.stride(),
        BLOCK_M=block_m, BLOCK_S=block_s, BLOCK_D=block_d, USE_DOT=use_dot,
        UPCAST_DOT=bool(upcast_dot), DOT_PRECISION=precision, WIDE=wide, SINGLE=single,
        num_warps=num_warps, num_stages=num_stages)
    if not single:
        _combine_kernel[(pairs * rows,)](
            part, lse, out, Hkv, Sq, D, rows, group, num_splits,
            BLOCK_SPLITS=_next_power_of_2(num_splits), BLOCK_D=block_d, num_warps=4 if block_d >= 128 else 1)
    return out
