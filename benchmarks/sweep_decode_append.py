"""Decode attention fused with the KV-cache append, against what a DynamicCache step does: a measurement.

    python benchmarks/sweep_decode_append.py --out OUT/sweep_decode_append.json [--budget-s 150]
    python benchmarks/sweep_decode_append.py --device cpu --tiny --out /tmp/x.json   # interpreter, checks only

A transformers decode step with a DynamicCache concatenates every layer's cache with the new token
(`torch.cat`: the whole cache read and written) and then attends over the result (the cache read again):
three passes over the cache. A kernel that attends over (old cache + new token) while it writes the
concatenated cache reads the old cache once and writes the new one once: two passes, and the same outputs
(attention output, new keys, new values). This script times such a kernel (an experiment: it lives here,
not in the library) against `torch.cat` x 2 + F.scaled_dot_product_attention(enable_gqa=True), each as the
GPU time of one call replayed from a CUDA graph after an L2 flush, at the Llama decode shape of the model
benchmark (batch 16, 32 query / 8 kv heads, head dim 128, a 2048-position cache, bf16). Each config is
first checked against the unfused computation.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
import time
from pathlib import Path

if "--device" in sys.argv and sys.argv[sys.argv.index("--device") + 1] == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

LOG2E = 1.4426950408889634


@triton.jit
def _append_split(q_ptr, kc_ptr, vc_ptr, kn_ptr, vn_ptr, ka_ptr, va_ptr, part_ptr, lse_ptr,
                  Hkv, S, group, split_len, num_splits, scale_log2,
                  BLOCK_M: tl.constexpr, BLOCK_S: tl.constexpr, D: tl.constexpr, UPCAST: tl.constexpr):
    # One new position (Sq = 1); every tensor contiguous: q [B, Hq, 1, D], caches [B, Hkv, S, D], new
    # [B, Hkv, 1, D], outputs [B, Hkv, S + 1, D].
    pair = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1)
    r = tl.arange(0, BLOCK_M)
    dims = tl.arange(0, D)
    row_ok = r < group
    q = tl.load(q_ptr + (pair * group + r[:, None]) * D + dims[None, :], mask=row_ok[:, None], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    total = S + 1
    start = split * split_len
    end = tl.minimum(start + split_len, total)
    cache = pair * S * D
    new = pair * D
    out = pair * total * D
    m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    for s0 in range(start, end, BLOCK_S):
        offs = s0 + tl.arange(0, BLOCK_S)
        inside = offs < end
        old = inside & (offs < S)
        fresh = inside & (offs == S)
        k = (tl.load(kc_ptr + cache + offs[:, None] * D + dims[None, :], mask=old[:, None], other=0.0)
             + tl.load(kn_ptr + new + offs[:, None] * 0 + dims[None, :], mask=fresh[:, None], other=0.0))
        v = (tl.load(vc_ptr + cache + offs[:, None] * D + dims[None, :], mask=old[:, None], other=0.0)
             + tl.load(vn_ptr + new + offs[:, None] * 0 + dims[None, :], mask=fresh[:, None], other=0.0))
        tl.store(ka_ptr + out + offs[:, None] * D + dims[None, :], k, mask=inside[:, None])
        tl.store(va_ptr + out + offs[:, None] * D + dims[None, :], v, mask=inside[:, None])
        if UPCAST:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        scores = tl.dot(q, tl.trans(k)) * scale_log2
        scores = tl.where(inside[None, :], scores, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, axis=1))
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(scores - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    has = l_i > 0.0
    slot = (pair * group + r) * num_splits + split  # a query row's splits side by side
    tl.store(part_ptr + slot[:, None] * D + dims[None, :], acc / tl.where(has, l_i, 1.0)[:, None],
             mask=row_ok[:, None])
    tl.store(lse_ptr + slot, tl.where(has, m_i + tl.math.log2(tl.where(has, l_i, 1.0)), float("-inf")),
             mask=row_ok)


@triton.jit
def _combine(part_ptr, lse_ptr, out_ptr, num_splits, BLOCK_SPLITS: tl.constexpr, D: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)  # query row = (b * Hq + head), the row of out [B, Hq, 1, D]
    splits = tl.arange(0, BLOCK_SPLITS)
    dims = tl.arange(0, D)
    smask = splits < num_splits
    lse = tl.load(lse_ptr + row * num_splits + splits, mask=smask, other=float("-inf"))
    weight = tl.math.exp2(lse - tl.max(lse, axis=0))
    part = tl.load(part_ptr + (row * num_splits + splits)[:, None] * D + dims[None, :], mask=smask[:, None],
                   other=0.0)
    o = tl.sum(weight[:, None] * part, axis=0) / tl.sum(weight, axis=0)
    tl.store(out_ptr + row * D + dims, o.to(out_ptr.dtype.element_ty))


def attend_and_append(q, k_cache, v_cache, k_new, v_new, *, block_s=64, num_warps=4, num_stages=2,
                      target_programs=528):
    """(out, k_all, v_all): attention of q [B, Hq, 1, D] over cat(cache, new) along positions, and that
    concatenation, from one pass over the cache."""
    B, Hq, _, D = q.shape
    Hkv, S = k_cache.shape[1], k_cache.shape[2]
    group = Hq // Hkv
    total = S + 1
    k_all = torch.empty((B, Hkv, total, D), dtype=k_cache.dtype, device=q.device)
    v_all = torch.empty_like(k_all)
    out = torch.empty_like(q)
    pairs = B * Hkv
    tiles = triton.cdiv(total, block_s)
    splits = max(1, min(triton.cdiv(target_programs, pairs), tiles))
    split_len = triton.cdiv(tiles, splits) * block_s
    num_splits = triton.cdiv(total, split_len)
    part = torch.empty((pairs * group * num_splits, D), dtype=torch.float32, device=q.device)
    lse = torch.empty((pairs * group * num_splits,), dtype=torch.float32, device=q.device)
    _append_split[(pairs, num_splits)](
        q, k_cache, v_cache, k_new, v_new, k_all, v_all, part, lse, Hkv, S, group, split_len, num_splits,
        LOG2E / math.sqrt(D), BLOCK_M=max(16, triton.next_power_of_2(group)), BLOCK_S=block_s, D=D,
        UPCAST=q.device.type == "cpu", num_warps=num_warps, num_stages=num_stages)
    _combine[(B * Hq,)](part, lse, out, num_splits, BLOCK_SPLITS=triton.next_power_of_2(num_splits), D=D,
                        num_warps=4)
    return out, k_all, v_all


def unfused(q, k_cache, v_cache, k_new, v_new):
    """What a DynamicCache decode step does: concatenate, then attend."""
    k_all = torch.cat((k_cache, k_new), dim=2)
    v_all = torch.cat((v_cache, v_new), dim=2)
    out = torch.nn.functional.scaled_dot_product_attention(q, k_all, v_all, enable_gqa=True)
    return out, k_all, v_all


def _graph_us(fn):
    from bench_launch_models import graph_device_us

    return graph_device_us(fn)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--budget-s", type=float, default=150.0)
    args = ap.parse_args()
    deadline = time.time() + args.budget_s
    B, Hq, Hkv, S, D = (2, 4, 2, 100, 16) if args.tiny else (16, 32, 8, 2048, 128)
    dtype = torch.float32 if args.device == "cpu" else torch.bfloat16
    g = torch.Generator().manual_seed(0)
    q, k_new, v_new = (torch.randn(B, h, 1, D, generator=g).to(args.device, dtype) for h in (Hq, Hkv, Hkv))
    k_cache, v_cache = (torch.randn(B, Hkv, S, D, generator=g).to(args.device, dtype) for _ in range(2))
    ref = unfused(*(t.float() for t in (q, k_cache, v_cache, k_new, v_new)))
    cuda = args.device == "cuda"
    result = {"device": torch.cuda.get_device_name() if cuda else "cpu (interpreter)",
              "shape": dict(B=B, Hq=Hq, Hkv=Hkv, S=S, D=D), "dtype": str(dtype), "baselines": {}, "fused": []}
    args_ = (q, k_cache, v_cache, k_new, v_new)
    if cuda:
        k_all, v_all = torch.cat((k_cache, k_new), 2), torch.cat((v_cache, v_new), 2)
        result["baselines"] = {
            "cat x2 + sdpa (a DynamicCache step)": _graph_us(lambda: unfused(*args_)),
            "cat x2 alone": _graph_us(lambda: (torch.cat((k_cache, k_new), 2), torch.cat((v_cache, v_new), 2))),
            "sdpa alone (default backend, enable_gqa)": _graph_us(
                lambda: torch.nn.functional.scaled_dot_product_attention(q, k_all, v_all, enable_gqa=True)),
        }
        print(json.dumps(result["baselines"]), flush=True)
    grid = [dict(block_s=b, num_warps=w, num_stages=st, target_programs=t)
            for b, w, st, t in itertools.product((64, 128), (4, 8), (1, 2, 3), (264, 528, 1056))]
    for config in grid if cuda else grid[:1]:
        if time.time() > deadline:
            result["fused"].append({**config, "skipped": "budget spent"})
            continue
        row = dict(config)
        try:
            got = attend_and_append(*args_, **config)
            row["max_abs_err"] = max((a.float() - b).abs().max().item() for a, b in zip(got, ref))
            row["appended_exactly"] = bool(torch.equal(got[1].float(), ref[1]) and torch.equal(got[2].float(), ref[2]))
            if cuda:
                row["us"] = _graph_us(lambda config=config: attend_and_append(*args_, **config))
        except Exception as exc:  # noqa: BLE001 - a config that fails to compile is reported
            row["error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
        print(json.dumps(row), flush=True)
        result["fused"].append(row)
    timed = [r for r in result["fused"] if "us" in r and r.get("appended_exactly") and r["max_abs_err"] < 2e-2]
    if timed:
        result["best_fused"] = min(timed, key=lambda r: r["us"])
        print("best fused:", json.dumps(result["best_fused"]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
