"""Parts `kernels` and `compile` of benchmarks/bench_launch_models.py (see its docstring).

kernels: large-shape kernels as a fraction of copy bandwidth (do_bench medians: large enough that host cost
is hidden, with Triton's L2 flush between runs), side by side with eager, torch.compile and Liger when it is
installed, then a sweep of each kernel's launch constants (module attributes of the loaded kernel module,
restored afterwards) so the defaults can be set from measurements.
compile: torch.compile(fullgraph=True) over a function calling kernelgen.ops.
"""

from __future__ import annotations

import time


def _bench_ms(fn, quick) -> float:
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=25 if quick else 100, rep=100 if quick else 400, return_mode="median"))


def _max_err(out, ref) -> float:
    """Largest absolute difference of an output (or a tuple of them) from the reference's, in float32."""
    if isinstance(out, tuple):
        return max(_max_err(o, r) for o, r in zip(out, ref))
    return (out.float() - ref.float()).abs().max().item()


def copy_bandwidth(quick) -> float:
    """Bytes per second of a 1 GiB device copy (read + write)."""
    import torch

    x = torch.empty(256 * 1024 * 1024, dtype=torch.float32, device="cuda")
    y = torch.empty_like(x)
    ms = _bench_ms(lambda: y.copy_(x), quick)
    return 2 * x.numel() * 4 / (ms * 1e-3)


def _liger():
    try:
        import liger_kernel  # noqa: F401
    except ImportError:
        return None
    found = {}
    try:
        from liger_kernel.ops.softmax import LigerSoftmaxFunction

        found["softmax"] = LigerSoftmaxFunction.apply
    except ImportError:
        pass
    try:
        from liger_kernel.ops.rope import LigerRopeFunction

        found["rope"] = LigerRopeFunction.apply
    except ImportError:
        pass
    return found


def _cases(tiny):
    import torch
    import torch.nn.functional as F

    import kernelgen

    M, V = (8, 300) if tiny else (4096, 32000)
    T, Hq, Hk, D = (8, 4, 2, 16) if tiny else (16384, 32, 8, 128)
    dev = "cuda"
    x = torch.randn(M, V, device=dev, dtype=torch.bfloat16)
    q = torch.randn(T, Hq, D, device=dev, dtype=torch.bfloat16)
    k = torch.randn(T, Hk, D, device=dev, dtype=torch.bfloat16)
    cos, sin = (torch.rand(T, D // 2, device=dev, dtype=torch.bfloat16) * 2 - 1 for _ in range(2))

    def rope_ref(q, k, cos, sin):
        c, s = torch.cat((cos, cos), -1)[:, None, :], torch.cat((sin, sin), -1)[:, None, :]

        def rot(t):
            t1, t2 = t.chunk(2, -1)
            return torch.cat((-t2, t1), -1)

        return q * c + rot(q) * s, k * c + rot(k) * s

    cases = {
        "softmax": dict(bytes=2 * M * V * 2, ours=lambda: kernelgen.ops.softmax.launcher(x),
                        eager=lambda: torch.softmax(x, -1), ref=(lambda t: torch.softmax(t, -1), (x,))),
        "log_softmax": dict(bytes=2 * M * V * 2, ours=lambda: kernelgen.ops.log_softmax.launcher(x),
                            eager=lambda: F.log_softmax(x, -1), ref=(lambda t: F.log_softmax(t, -1), (x,))),
        "rotary_embedding": dict(bytes=(2 * T * (Hq + Hk) * D + 2 * T * D // 2) * 2,
                                 ours=lambda: kernelgen.ops.rotary_embedding.launcher(q, k, cos, sin),
                                 eager=lambda: rope_ref(q, k, cos, sin), ref=(rope_ref, (q, k, cos, sin))),
    }
    liger = _liger()
    if liger and "softmax" in liger:
        cases["softmax"]["liger"] = lambda: liger["softmax"](x)
    if liger and "rope" in liger:
        # Liger's layout: q [B, H, S, D], k [B, Hk, S, D], cos/sin [1, S, D] (both halves)
        ql, kl = q.transpose(0, 1).unsqueeze(0), k.transpose(0, 1).unsqueeze(0)
        cl, sl = torch.cat((cos, cos), -1).unsqueeze(0), torch.cat((sin, sin), -1).unsqueeze(0)
        cases["rotary_embedding"]["liger"] = lambda: liger["rope"](ql.clone(), kl.clone(), cl, sl)
        cases["rotary_embedding"]["liger_note"] = "includes two input clones (Liger's rope works in place)"
    return cases


DEADLINE: float | None = None  # time.time() past which the remaining sweep points are skipped

# Launch constants to sweep, per op: points, each a set of module attributes tried together (the others at
# their defaults). Softmax rows of 32K: in registers at 32 or 64 values per thread, or the two-pass loop
# (MAX_FUSED_N 16384). Rotary: the smallest head block and the warps.
_ROWS = [{"FUSED_ELEMS_PER_THREAD": 32}, {"FUSED_ELEMS_PER_THREAD": 64}, {"MAX_FUSED_N": 16384}]
SWEEPS = {
    "softmax": _ROWS,
    "log_softmax": _ROWS,
    "rotary_embedding": [{"TILE_MIN": 256}, {"TILE_MIN": 512}, {"TILE_MIN": 256, "MAX_WARPS": 4},
                         {"TILE_MIN": 256, "MAX_WARPS": 2}],
}


def part_kernels(device, backend, tiny, quick) -> dict:
    if device != "cuda":
        return {"skipped": "bandwidth needs a GPU"}
    import torch

    from kernelgen.library import get_op

    bw = copy_bandwidth(quick)
    out = {"copy_bandwidth_GBps": bw / 1e9, "ops": {}, "liger": _liger() is not None}
    for name, case in _cases(tiny).items():
        row = {"bytes": case["bytes"]}
        for mode in ("ours", "eager", "liger"):
            if mode in case:
                ms = _bench_ms(case[mode], quick)
                row[mode] = {"ms": ms, "fraction_of_copy": case["bytes"] / (ms * 1e-3) / bw}
        fn, args = case["ref"]
        expected = fn(*args)
        row["ours"]["max_abs_err_vs_eager"] = _max_err(case["ours"](), expected)
        torch._dynamo.reset()
        compiled = torch.compile(fn)
        ms = _bench_ms(lambda compiled=compiled, args=args: compiled(*args), quick)
        row["compile"] = {"ms": ms, "fraction_of_copy": case["bytes"] / (ms * 1e-3) / bw}
        if "liger_note" in case:
            row["liger_note"] = case["liger_note"]
        module = get_op(name).module("cuda")
        sweep = []
        for point in SWEEPS[name]:
            if any(not hasattr(module, attr) for attr in point):
                continue
            if DEADLINE is not None and time.time() > DEADLINE:
                sweep.append({**point, "skipped": "time budget of the part spent"})
                continue
            defaults = {attr: getattr(module, attr) for attr in point}
            for attr, value in point.items():
                setattr(module, attr, value)
            try:
                err = _max_err(case["ours"](), expected)
                ms = _bench_ms(case["ours"], quick)
                sweep.append({**point, "ms": ms, "fraction_of_copy": case["bytes"] / (ms * 1e-3) / bw,
                              "max_abs_err_vs_eager": err, "default": point == defaults})
            except Exception as exc:  # noqa: BLE001 - a point that fails to compile is reported, not fatal
                sweep.append({**point, "error": f"{type(exc).__name__}: {str(exc)[:300]}"})
            finally:
                for attr, value in defaults.items():
                    setattr(module, attr, value)
        row["sweep"] = sweep
        out["ops"][name] = row
        print(f"kernels {name}: " + ", ".join(f"{m} {row[m]['fraction_of_copy']:.3f}" for m in
                                              ("ours", "eager", "compile", "liger") if m in row), flush=True)
        timed = [r for r in sweep if "fraction_of_copy" in r]
        best = max(timed, key=lambda r: r["fraction_of_copy"]) if timed else None
        if best:
            print(f"  best sweep point: {best}", flush=True)
    return out


def part_compile(device, backend, tiny, quick) -> dict:
    import torch
    import torch.nn.functional as F

    import kernelgen

    M, N = (4, 64) if tiny else (16, 4096)
    dt = torch.bfloat16 if device == "cuda" else torch.float32
    x, w = torch.randn(M, N, device=device, dtype=dt), torch.randn(N, device=device, dtype=dt)
    gate, up = torch.randn(M, N, device=device, dtype=dt), torch.randn(M, N, device=device, dtype=dt)

    def block(x, w, gate, up):
        h = kernelgen.ops.rms_norm(x * 2, w, 1e-6)
        return kernelgen.ops.silu_and_mul(gate, up) + h

    out = {}
    torch._dynamo.reset()
    explain = torch._dynamo.explain(block)(x, w, gate, up)
    out["graph_breaks"] = explain.graph_break_count
    out["graphs"] = explain.graph_count
    out["break_reasons"] = [str(r.reason) for r in explain.break_reasons]
    torch._dynamo.reset()
    t0 = time.time()
    compiled = torch.compile(block, fullgraph=True, backend="inductor" if device == "cuda" else "aot_eager")
    got = compiled(x, w, gate, up)
    out["compile_s"] = time.time() - t0
    want = F.silu(gate.float()) * up.float() + F.rms_norm((x * 2).float(), (N,), w.float(), 1e-6)
    out["max_abs_err_vs_float32"] = (got.float() - want).abs().max().item()
    out["max_abs_err_eager_vs_float32"] = (block(x, w, gate, up).float() - want).abs().max().item()
    from bench_launch_models import host_us

    out["host_us_eager_fn"] = host_us(lambda: block(x, w, gate, up), device, 20 if tiny else 1000)
    out["host_us_compiled"] = host_us(lambda: compiled(x, w, gate, up), device, 20 if tiny else 1000)
    print(f"compile: {out['graph_breaks']} graph breaks, err {out['max_abs_err_vs_float32']:.3g} "
          f"(eager {out['max_abs_err_eager_vs_float32']:.3g})", flush=True)
    return out
