"""Candidate kernels for the two bandwidth gaps, timed side by side with the library's, Liger's and copies.

    python benchmarks/sweep_gaps.py --out OUT/sweep_gaps.json [--budget-s 240]

Shapes: softmax and log_softmax over 4096x32000 bf16 (vocabulary-sized rows); rotary_embedding of q
[16384, 32, 128] and k [16384, 8, 128] bf16 with bf16 tables [16384, 64]. Every time is a do_bench median
(L2 flushed), given as a fraction of a 1 GiB device copy's bandwidth (bytes read + written). Controls:
torch's copy of the same bytes, and Triton row copies with the same grid as the row kernels (what a
one-program-per-row kernel can reach on this card at all).

Candidates (the variants live here, not in the library, until one wins):
- softmax `held`: the row stays in registers in its input dtype (half the registers of a float32 copy, so
  more programs fit on an SM); the sum is exp(x - max) and the output exp(x - log-sum-exp), two different
  expressions, so the compiler does not keep a float32 array of exponentials alive between the reductions.
- softmax `persistent`: one program per SM (or two) walks rows with a software-pipelined loop.
- rotary `flat`: q and k seen as rows of head_dim ([tokens x heads, D]); a program rotates ROWS consecutive
  rows (several tokens' heads), gathering each row's cos/sin by its token. Long contiguous tiles.
- rotary `per_token`: one program per token rotates all q heads and all k heads, each with its own tile.
Each candidate's output is checked against the library's before it is timed.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import triton
import triton.language as tl
from triton.testing import do_bench

# Without a GPU (TRITON_INTERPRET=1) the candidates run on tiny shapes on the CPU and are only checked.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@triton.jit
def _row_copy(x_ptr, y_ptr, N, BLOCK_N: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_N)
    mask = offs < N
    tl.store(y_ptr + row * N + offs, tl.load(x_ptr + row * N + offs, mask=mask), mask=mask)


@triton.jit
def _flat_copy(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=mask), mask=mask)


@triton.jit
def _softmax_held(x_ptr, y_ptr, N, BLOCK_N: tl.constexpr, LOG: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_N)
    mask = offs < N
    x = tl.load(x_ptr + row * N + offs, mask=mask, other=float("-inf"))
    m = tl.max(x, axis=0).to(tl.float32)
    s = tl.sum(tl.exp(x.to(tl.float32) - m), axis=0)
    lse = m + tl.log(s)
    if LOG:
        y = x.to(tl.float32) - lse
    else:
        y = tl.exp(x.to(tl.float32) - lse)
    tl.store(y_ptr + row * N + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _softmax_persistent(x_ptr, y_ptr, M, N, BLOCK_N: tl.constexpr, STAGES: tl.constexpr):
    offs = tl.arange(0, BLOCK_N)
    mask = offs < N
    for row in tl.range(tl.program_id(0), M, tl.num_programs(0), num_stages=STAGES):
        base = tl.cast(row, tl.int64) * N
        x = tl.load(x_ptr + base + offs, mask=mask, other=float("-inf"))
        m = tl.max(x, axis=0).to(tl.float32)
        s = tl.sum(tl.exp(x.to(tl.float32) - m), axis=0)
        y = tl.exp(x.to(tl.float32) - (m + tl.log(s)))
        tl.store(y_ptr + base + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rope_flat(q_ptr, k_ptr, cos_ptr, sin_ptr, qo_ptr, ko_ptr, q_rows, k_rows, Hq, Hk, q_blocks,
               R: tl.constexpr, ROWS: tl.constexpr):
    block = tl.program_id(0)
    if block < q_blocks:
        x_ptr, o_ptr, n_rows, H, start = q_ptr, qo_ptr, q_rows, Hq, block * ROWS
    else:
        x_ptr, o_ptr, n_rows, H, start = k_ptr, ko_ptr, k_rows, Hk, (block - q_blocks) * ROWS
    rows = start.to(tl.int64) + tl.arange(0, ROWS)
    dims = tl.arange(0, R)
    rmask = (rows < n_rows)[:, None]
    token = rows // H
    cos = tl.load(cos_ptr + token[:, None] * R + dims[None, :], mask=rmask, other=0.0).to(tl.float32)
    sin = tl.load(sin_ptr + token[:, None] * R + dims[None, :], mask=rmask, other=0.0).to(tl.float32)
    ptrs = rows[:, None] * (2 * R) + dims[None, :]
    x1 = tl.load(x_ptr + ptrs, mask=rmask, other=0.0).to(tl.float32)
    x2 = tl.load(x_ptr + ptrs + R, mask=rmask, other=0.0).to(tl.float32)
    tl.store(o_ptr + ptrs, (x1 * cos - x2 * sin).to(o_ptr.dtype.element_ty), mask=rmask)
    tl.store(o_ptr + ptrs + R, (x2 * cos + x1 * sin).to(o_ptr.dtype.element_ty), mask=rmask)


@triton.jit
def _rope_heads(x_ptr, o_ptr, cos, sin, token, H, R: tl.constexpr, BLOCK_H: tl.constexpr):
    heads = tl.arange(0, BLOCK_H)
    dims = tl.arange(0, R)
    mask = (heads < H)[:, None]
    ptrs = token * H * 2 * R + heads[:, None] * (2 * R) + dims[None, :]
    x1 = tl.load(x_ptr + ptrs, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(x_ptr + ptrs + R, mask=mask, other=0.0).to(tl.float32)
    tl.store(o_ptr + ptrs, (x1 * cos - x2 * sin).to(o_ptr.dtype.element_ty), mask=mask)
    tl.store(o_ptr + ptrs + R, (x2 * cos + x1 * sin).to(o_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rope_per_token(q_ptr, k_ptr, cos_ptr, sin_ptr, qo_ptr, ko_ptr, Hq, Hk,
                    R: tl.constexpr, BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr):
    token = tl.program_id(0).to(tl.int64)
    dims = tl.arange(0, R)
    cos = tl.load(cos_ptr + token * R + dims).to(tl.float32)[None, :]
    sin = tl.load(sin_ptr + token * R + dims).to(tl.float32)[None, :]
    _rope_heads(q_ptr, qo_ptr, cos, sin, token, Hq, R, BLOCK_HQ)
    _rope_heads(k_ptr, ko_ptr, cos, sin, token, Hk, R, BLOCK_HK)


def _ms(fn) -> float:
    return float(do_bench(fn, warmup=25, rep=150, return_mode="median"))


def _entry(name, fn, expected, nbytes, bw, **extra) -> dict:
    """One candidate: its largest difference from the library's output (None: a copy, nothing to compare), then
    its time when there is a GPU."""
    row = {"variant": name, **extra}
    try:
        out = fn()
        if expected is not None:
            outs, refs = (out, expected) if isinstance(out, tuple) else ((out,), (expected,))
            row["max_abs_err_vs_library"] = max((o.float() - r.float()).abs().max().item()
                                                for o, r in zip(outs, refs))
        if DEVICE == "cuda":
            ms = _ms(fn)
            row.update(ms=ms, fraction_of_copy=nbytes / (ms * 1e-3) / bw)
    except Exception as exc:  # noqa: BLE001 - a candidate that fails to compile is reported, not fatal
        row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    print(json.dumps(row), flush=True)
    return row


def _registers(compiled) -> dict:
    return {"n_regs": getattr(compiled, "n_regs", None), "n_spills": getattr(compiled, "n_spills", None)}


def softmax_rows(bw, deadline, log: bool) -> list:
    import kernelgen

    M, N = (8, 300) if DEVICE != "cuda" else (4096, 32000)
    BLOCK = triton.next_power_of_2(N)
    x = torch.randn(M, N, device=DEVICE, dtype=torch.bfloat16)
    y = torch.empty_like(x)
    nbytes = 2 * x.numel() * x.element_size()
    op = kernelgen.ops.log_softmax if log else kernelgen.ops.softmax
    expected = op.launcher(x)
    rows = [_entry("library", lambda: op.launcher(x), expected, nbytes, bw)]
    rows.append(_entry("torch copy", lambda: y.copy_(x), None, nbytes, bw))
    if not log:
        from bench_kernels_compile import _liger

        liger = _liger() or {}
        if "softmax" in liger:
            rows.append(_entry("liger", lambda: liger["softmax"](x), expected, nbytes, bw))
        else:
            rows.append({"variant": "liger", "error": "not installed"})
    for warps in (8, 16, 32):
        def copy(warps=warps):
            _row_copy[(M,)](x, y, N, BLOCK_N=BLOCK, num_warps=warps)
        rows.append(_entry("triton row copy", copy, None, nbytes, bw, num_warps=warps))
    for block, warps in ((4096, 4), (8192, 8), (16384, 16)):
        def flat(block=block, warps=warps):
            _flat_copy[(triton.cdiv(x.numel(), block),)](x, y, x.numel(), BLOCK=block, num_warps=warps)
        rows.append(_entry("triton flat copy", flat, None, nbytes, bw, block=block, num_warps=warps))
    for warps in (8, 16, 32):
        if time.time() > deadline:
            break
        def held(warps=warps):
            _softmax_held[(M,)](x, y, N, BLOCK_N=BLOCK, LOG=log, num_warps=warps)
            return y
        compiled = _softmax_held[(M,)](x, y, N, BLOCK_N=BLOCK, LOG=log, num_warps=warps)
        rows.append(_entry("held", held, expected, nbytes, bw, num_warps=warps, **_registers(compiled)))
    if not log:
        sms = torch.cuda.get_device_properties(0).multi_processor_count if DEVICE == "cuda" else 2
        for per_sm, warps, stages in ((1, 32, 2), (2, 16, 2), (1, 16, 2), (2, 16, 3)):
            if time.time() > deadline:
                break
            def persistent(per_sm=per_sm, warps=warps, stages=stages):
                _softmax_persistent[(sms * per_sm,)](x, y, M, N, BLOCK_N=BLOCK, STAGES=stages, num_warps=warps)
                return y
            rows.append(_entry("persistent", persistent, expected, nbytes, bw, programs_per_sm=per_sm,
                               num_warps=warps, stages=stages))
    return rows


def rotary(bw, deadline) -> list:
    import kernelgen

    T, Hq, Hk, D = (16384, 32, 8, 128) if DEVICE == "cuda" else (5, 4, 2, 16)
    R = D // 2
    q = torch.randn(T, Hq, D, device=DEVICE, dtype=torch.bfloat16)
    k = torch.randn(T, Hk, D, device=DEVICE, dtype=torch.bfloat16)
    cos, sin = (torch.rand(T, R, device=DEVICE, dtype=torch.bfloat16) * 2 - 1 for _ in range(2))
    qo, ko = torch.empty_like(q), torch.empty_like(k)
    nbytes = (2 * T * (Hq + Hk) * D + 2 * T * R) * 2
    launcher = kernelgen.ops.rotary_embedding.launcher
    expected = launcher(q, k, cos, sin)
    rows = [_entry("library", lambda: launcher(q, k, cos, sin), expected, nbytes, bw)]
    src = torch.cat((q.flatten(), k.flatten(), cos.flatten(), sin.flatten()))
    dst = torch.empty_like(src)
    rows.append(_entry("torch copy", lambda: dst.copy_(src), None, nbytes, bw))
    q_rows, k_rows = T * Hq, T * Hk
    for rows_per, warps in ((16, 4), (32, 4), (32, 8), (64, 8), (128, 8), (64, 4)):
        if time.time() > deadline:
            break
        qb, kb = triton.cdiv(q_rows, rows_per), triton.cdiv(k_rows, rows_per)

        def flat(rows_per=rows_per, warps=warps, qb=qb, kb=kb):
            _rope_flat[(qb + kb,)](q, k, cos, sin, qo, ko, q_rows, k_rows, Hq, Hk, qb, R=R, ROWS=rows_per,
                                   num_warps=warps)
            return qo, ko
        rows.append(_entry("flat", flat, expected, nbytes, bw, rows=rows_per, num_warps=warps))
    for warps in (4, 8, 16):
        if time.time() > deadline:
            break

        def per_token(warps=warps):
            _rope_per_token[(T,)](q, k, cos, sin, qo, ko, Hq, Hk, R=R, BLOCK_HQ=triton.next_power_of_2(Hq),
                                   BLOCK_HK=triton.next_power_of_2(Hk), num_warps=warps)
            return qo, ko
        rows.append(_entry("per_token", per_token, expected, nbytes, bw, num_warps=warps))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--budget-s", type=float, default=240.0)
    ap.add_argument("--ops", nargs="*", default=["softmax", "rotary_embedding", "log_softmax"],
                    choices=["softmax", "rotary_embedding", "log_softmax"])
    args = ap.parse_args()
    from bench_kernels_compile import copy_bandwidth

    deadline = time.time() + args.budget_s
    bw = copy_bandwidth(quick=False) if DEVICE == "cuda" else 1.0
    result = {"device": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu (interpreter)",
              "copy_bandwidth_GBps": bw / 1e9,
              "versions": {"torch": torch.__version__, "triton": triton.__version__}}
    print(json.dumps(result), flush=True)
    runners = {"softmax": lambda: softmax_rows(bw, deadline, log=False),
               "rotary_embedding": lambda: rotary(bw, deadline),
               "log_softmax": lambda: softmax_rows(bw, deadline, log=True)}
    for op in args.ops:
        result[op] = runners[op]()
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
