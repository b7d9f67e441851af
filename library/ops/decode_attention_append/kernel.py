"""Decode attention fused with the KV-cache append: k_all = cat(k_cache, k_new), v_all = cat(v_cache, v_new)
along positions, and the query positions attend over them with grouped-query heads, causal relative to the
end (query i of Sq sees positions j <= S + i, S the old cache length; Sq = 1 sees everything).

Why fuse: a decode step with transformers' DynamicCache concatenates each layer's cache with the new token
(reading and writing the whole cache) and then attends over the result (reading it again). Here each split
program reads its slice of the old cache (or of the new positions) once, writes it to its place in k_all /
v_all and attends over it from registers: two passes over the cache instead of three. On an H100 at batch
16, 8 kv heads, 2048 positions, bf16, the unfused step took 156.5 us (torch.cat twice 101.1, SDPA 60.9) and
this kernel 112.5 us (benchmarks/sweep_decode_append.py).

The attention is the library's decode_attention (flash-decoding): the cache is cut into `num_splits` slices
per (batch, kv head) pair so a small batch still fills the GPU; program (pair, split) holds the GROUP = Hq /
Hkv query rows (times Sq positions) of its kv head, walks its slice in BLOCK_S tiles with an online softmax
in float32 (float64 scores for float32 inputs), and writes its normalized partial output and log2-sum-exp;
a second kernel combines the splits of each query row. With one split the first kernel writes the output.

q, the caches and the new positions may be strided views; out [B, Hq, Sq, D], k_all and v_all
[B, Hkv, S + Sq, D] are new contiguous tensors in q's dtype.
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


# Launch defaults from benchmarks/sweep_decode_append.py (H100, batch 16, 8 kv heads, 2048 positions, bf16):
# 64-position tiles, 4 warps, no software pipelining (1 stage: 112.5 us; 2 or 3 stages 138-162 us), and
# about 8 waves of a 132-SM GPU worth of programs (1056: 112.5 us, 528: 117.6, 264: 126.1).
TARGET_PROGRAMS = 1056
BLOCK_S = 64
NUM_WARPS = 4
NUM_STAGES = 1
MAX_ROWS = 128  # query rows per kv head (GROUP * Sq) one program holds
MAX_HEAD_DIM = 256
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def _append_split_kernel(q_ptr, kc_ptr, vc_ptr, kn_ptr, vn_ptr, ka_ptr, va_ptr, out_ptr, part_ptr, lse_ptr,
                  Hkv, S, Sq, D, rows, group, split_len, num_splits, scale_log2,
                  stride_qb, stride_qh, stride_qs, stride_qd,
                  stride_kb, stride_kh, stride_ks, stride_kd,
                  stride_vb, stride_vh, stride_vs, stride_vd,
                  stride_knb, stride_knh, stride_kns, stride_knd,
                  stride_vnb, stride_vnh, stride_vns, stride_vnd,
                  BLOCK_M: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
                  USE_DOT: tl.constexpr, UPCAST_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr,
                  WIDE: tl.constexpr, SINGLE: tl.constexpr):
    pair = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1)
    b = pair // Hkv
    kv_head = pair % Hkv
    total = S + Sq

    # Row r of the program: query head kv_head * group + r // Sq, query position r % Sq.
    r = tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    row_ok = r < rows
    per_head = tl.maximum(Sq, 1)  # Sq = 0 (no query rows): still a valid divisor
    head = kv_head * group + r // per_head
    pos = r % per_head
    dmask = dims < D
    q_ptrs = (q_ptr + b * stride_qb + head[:, None].to(tl.int64) * stride_qh + pos[:, None] * stride_qs
              + dims[None, :] * stride_qd)
    q = tl.load(q_ptrs, mask=row_ok[:, None] & dmask[None, :], other=0.0)
    if WIDE:
        q = q.to(tl.float64)
    elif UPCAST_DOT:
        q = q.to(tl.float32)
    # Causal limit per row: query i is position S + i of the new cache; a padded row sees nothing.
    last = tl.where(row_ok, S + pos, -1)

    start = split * split_len
    end = tl.minimum(start + split_len, total)
    kc_base = kc_ptr + b * stride_kb + kv_head * stride_kh
    vc_base = vc_ptr + b * stride_vb + kv_head * stride_vh
    kn_base = kn_ptr + b * stride_knb + kv_head * stride_knh
    vn_base = vn_ptr + b * stride_vnb + kv_head * stride_vnh
    all_base = pair * total * D  # k_all, v_all: contiguous [B, Hkv, S + Sq, D]
    # A finite floor instead of -inf: a row with nothing visible in this slice keeps m = floor, l = 0 and
    # never computes (-inf) - (-inf).
    m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)
    if WIDE:
        m_i = m_i.to(tl.float64)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for s0 in range(start, end, BLOCK_S):
        offs = s0 + tl.arange(0, BLOCK_S)
        inside = offs < end
        old = (inside & (offs < S))[:, None] & dmask[None, :]
        new = (inside & (offs >= S))[:, None] & dmask[None, :]
        # [BLOCK_S, BLOCK_D] tiles: a position comes from the old cache or from the new rows (masks disjoint)
        c_offs = offs[:, None].to(tl.int64)
        n_offs = (offs - S)[:, None].to(tl.int64)
        k = (tl.load(kc_base + c_offs * stride_ks + dims[None, :] * stride_kd, mask=old, other=0.0)
             + tl.load(kn_base + n_offs * stride_kns + dims[None, :] * stride_knd, mask=new, other=0.0))
        v = (tl.load(vc_base + c_offs * stride_vs + dims[None, :] * stride_vd, mask=old, other=0.0)
             + tl.load(vn_base + n_offs * stride_vns + dims[None, :] * stride_vnd, mask=new, other=0.0))
        keep = inside[:, None] & dmask[None, :]
        tl.store(ka_ptr + all_base + c_offs * D + dims[None, :], k, mask=keep)
        tl.store(va_ptr + all_base + c_offs * D + dims[None, :], v, mask=keep)
        kt = tl.trans(k)
        if WIDE:
            kt = kt.to(tl.float64)
        elif UPCAST_DOT:
            kt = kt.to(tl.float32)
        if USE_DOT:
            scores = tl.dot(q, kt, input_precision=DOT_PRECISION, out_dtype=m_i.dtype)
        else:
            scores = tl.sum(q.to(m_i.dtype)[:, :, None] * kt.to(m_i.dtype)[None, :, :], axis=1)
        visible = inside[None, :] & (offs[None, :] <= last[:, None])
        scores = tl.where(visible, scores * scale_log2, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, axis=1))
        # Differences to the running max are small where they matter: float32 from here on.
        alpha = tl.math.exp2((m_i - m_new).to(tl.float32))
        p = tl.math.exp2((scores - m_new[:, None]).to(tl.float32))
        l_i = l_i * alpha + tl.sum(p, axis=1)
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
def _append_combine_kernel(part_ptr, lse_ptr, out_ptr, Hkv, Sq, D, rows, group, num_splits,
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
        raise TypeError(f"decode_attention_append: {name} must be a float32/float16/bfloat16 tensor, "
                        f"got {getattr(t, 'dtype', type(t))}")
    if t.dim() != 4:
        raise ValueError(f"decode_attention_append: {name} must have 4 dims [B, H, S, D], "
                         f"got shape {tuple(t.shape)}")


def decode_attention_append(q, k_cache, v_cache, k_new, v_new, scale=None, *, block_s=None, num_warps=None,
                            num_stages=None, splits=None, target_programs=None, use_dot=True, upcast_dot=None,
                            max_block=None):
    """(out, k_all, v_all): k_all = cat(k_cache, k_new, dim=2), v_all likewise, and the attention of
    q [B, Hq, Sq, D] over them, query i seeing positions j <= S + i (S = the old cache length).

    k_cache, v_cache [B, Hkv, S, D] (S may be 0); k_new, v_new [B, Hkv, Sq, D]; Hq a multiple of Hkv. scale
    defaults to 1 / sqrt(D). Arithmetic in float32 (float64 scores for float32 inputs). block_s, num_warps,
    num_stages, splits (slices per kv head; default: about target_programs programs), use_dot and upcast_dot
    are launch parameters, for tuning sweeps; max_block caps the tile of positions (for tests)."""
    for name, t in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache), ("k_new", k_new), ("v_new", v_new)):
        _check(t, name)
        if t.dtype != q.dtype:
            raise TypeError(f"decode_attention_append: every tensor must have q's dtype {q.dtype}, "
                            f"{name} is {t.dtype}")
        if t.device != q.device:
            raise ValueError(f"decode_attention_append: {name} is on {t.device} but q is on {q.device}")
    B, Hq, Sq, D = q.shape
    Hkv, S = k_cache.shape[1], k_cache.shape[2]
    if tuple(k_cache.shape) != (B, Hkv, S, D) or tuple(v_cache.shape) != (B, Hkv, S, D):
        raise ValueError(f"decode_attention_append: k_cache and v_cache must have shape [{B}, Hkv, S, {D}], "
                         f"got {tuple(k_cache.shape)} and {tuple(v_cache.shape)}")
    if tuple(k_new.shape) != (B, Hkv, Sq, D) or tuple(v_new.shape) != (B, Hkv, Sq, D):
        raise ValueError(f"decode_attention_append: k_new and v_new must have shape [{B}, {Hkv}, {Sq}, {D}], "
                         f"got {tuple(k_new.shape)} and {tuple(v_new.shape)}")
    if Hkv == 0 or Hq % Hkv:
        raise ValueError(f"decode_attention_append: query heads ({Hq}) must be a multiple of kv heads ({Hkv})")
    if D > MAX_HEAD_DIM:
        raise ValueError(f"decode_attention_append: head dim {D} is over {MAX_HEAD_DIM}")
    group = Hq // Hkv
    rows = group * Sq
    if rows > MAX_ROWS:
        raise ValueError(f"decode_attention_append: {group} query heads per kv head x {Sq} positions = {rows} "
                         f"rows, over {MAX_ROWS}; this kernel is for decoding a few positions")
    total = S + Sq
    out = torch.empty((B, Hq, Sq, D), dtype=q.dtype, device=q.device)
    k_all = torch.empty((B, Hkv, total, D), dtype=q.dtype, device=q.device)
    v_all = torch.empty((B, Hkv, total, D), dtype=q.dtype, device=q.device)
    if B == 0 or D == 0 or total == 0:
        return out, k_all, v_all
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    block_s = BLOCK_S if block_s is None else block_s
    if max_block is not None:
        # the largest power of two within the cap, at least 16 (the K dim of a tensor-core product)
        block_s = max(16, min(block_s, 1 << (max(1, int(max_block)).bit_length() - 1)))
    block_d = max(16, _next_power_of_2(D))
    block_m = _next_power_of_2(max(rows, 1))
    if use_dot:
        block_m = max(16, block_m)  # tensor-core tiles are at least 16 rows
    tiles = _cdiv(total, block_s)
    pairs = B * Hkv
    if splits is None:
        splits = _cdiv(TARGET_PROGRAMS if target_programs is None else target_programs, pairs)
    splits = max(1, min(int(splits), tiles))
    split_len = _cdiv(tiles, splits) * block_s
    num_splits = _cdiv(total, split_len)
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
    if single or rows == 0:
        part, lse = out, out  # not read: the split kernel stores the output itself (or there is none)
    else:
        part = torch.empty((pairs * num_splits * rows * D,), dtype=torch.float32, device=q.device)
        lse = torch.empty((pairs * num_splits * rows,), dtype=torch.float64 if wide else torch.float32,
                          device=q.device)
    _append_split_kernel[(pairs, num_splits)](
        q, k_cache, v_cache, k_new, v_new, k_all, v_all, out, part, lse, Hkv, S, Sq, D, rows, group, split_len,
        num_splits, scale * LOG2E, *q.stride(), *k_cache.stride(), *v_cache.stride(), *k_new.stride(),
        *v_new.stride(), BLOCK_M=block_m, BLOCK_S=block_s, BLOCK_D=block_d, USE_DOT=use_dot,
        UPCAST_DOT=bool(upcast_dot), DOT_PRECISION=precision, WIDE=wide, SINGLE=single or rows == 0,
        num_warps=NUM_WARPS if num_warps is None else num_warps,
        num_stages=NUM_STAGES if num_stages is None else num_stages)
    if not single and rows:
        _append_combine_kernel[(pairs * rows,)](
            part, lse, out, Hkv, Sq, D, rows, group, num_splits,
            BLOCK_SPLITS=_next_power_of_2(num_splits), BLOCK_D=block_d, num_warps=4 if block_d >= 128 else 1)
    return out, k_all, v_all
