"""One GPU run for the launch path and the models (issue: models get faster), every number in one JSON.

    python benchmarks/bench_launch_models.py --out DIR [--part P ...] [--quick]
    python benchmarks/bench_launch_models.py --tiny --device cpu --out DIR   # the code path on the CPU

Parts (each bounded in time, each can run alone with --part; all by default, in this order):

- check:   the cached launch path and launch plans give bit-identical outputs to Triton's own path for the
           library ops, on fresh inputs in three dtypes, with 16-byte aligned and misaligned views (a cache
           miss, a hit that records the plan, two replays; the number of plans made is reported),
           and every cached kernel is the one Triton's own cache holds for that call (where the installed
           Triton exposes its binder);
- host:    host cost per call at 16x4096 bf16 (2,000 back-to-back calls, one sync) of rms_norm, softmax and
           silu_and_mul: eager PyTorch; `kernelgen.ops.NAME(...)` written out per call; a pre-fetched
           launcher (with its launch plans, kernelgen/plans.py); the same without plans; the same with the
           cached launch path off too (Triton's run); through `kernelgen.enable()` by the functional (its
           route) and by the torch.* name (through the dispatcher's override), next to eager by both names;
           each as a ratio to eager measured in the same process, the best of 5 interleaved rounds
           (benchmarks/host_profile.py breaks one launch into its pieces);
- device:  GPU time of one call at 16x4096 (and 4096x4096) bf16 by replaying a CUDA graph of the call after
           an L2 flush (no host cost in it), eager vs ours (and ours through enable()); at 16x4096 also that
           a captured call of ours (pre-fetched, and through enable()) replays correctly on fresh input values,
           against eager ATen;
- kernels: softmax and log_softmax at 4096x32000 and rotary_embedding at 16K tokens (32/8 heads, D 128) as a
           fraction of the measured copy bandwidth: ours, eager, torch.compile, Liger (if importable); plus
           a sweep of the launch constants of those kernels, to pick defaults from;
- compile: torch.compile(fullgraph=True) (inductor) of a function calling kernelgen.ops: graph breaks
           (torch._dynamo.explain), result vs eager, time;
- models:  benchmarks/bench_model.py: Llama-style and Qwen2-style models, eager / kernelgen.patch /
           FlagGems use_gems / Liger apply_liger_kernel_to_*, prefill, decode, decode in a CUDA graph, logits
           error of every mode vs the float32 model.

Liger-Kernel, FlagGems and transformers are optional: a part or mode that needs a missing one is reported as
skipped with the reason, never as a pass. Library records go stale when a kernel.py changes; parts that use
ops directly do not look at records, the models part patches with policy="all" unless --patch-policy says
otherwise, and reports which ops it patched.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

PARTS = ("check", "host", "device", "kernels", "compile", "models")
ROUNDS = 5  # host part: interleaved rounds per mode, the best kept


def _sync(device):
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def host_us(fn, device, calls=2000, warmup=50) -> float:
    """Wall time per call of `calls` back-to-back calls and one sync at the end."""
    for _ in range(warmup):
        fn()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    _sync(device)
    return (time.perf_counter() - t0) / calls * 1e6


def _capture(fn):
    """(a CUDA graph of one call of fn, after warm-up calls on a side stream; the call's static output)."""
    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out


def graph_device_us(fn, reps=100) -> float:
    """Median GPU time of one call: a CUDA graph of the call replayed after a 256 MB L2 flush, timed with
    events around the replay (the flush gives the host time to enqueue the replay, so no host gap)."""
    import torch

    graph, _ = _capture(fn)
    flush = torch.empty(64 * 1024 * 1024, dtype=torch.int32, device="cuda")
    events = []
    for _ in range(reps):
        flush.zero_()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        graph.replay()
        b.record()
        events.append((a, b))
    torch.cuda.synchronize()
    times = sorted(a.elapsed_time(b) * 1e3 for a, b in events)
    return times[len(times) // 2]


# ---- check -------------------------------------------------------------------------------------------------
def _check_cases(device, tiny):
    import torch

    M, N = (3, 64) if tiny else (16, 4096)
    g = torch.Generator(device=device).manual_seed(0)

    def rand(*shape, dtype, offset=0):
        t = torch.randn(shape[0] * shape[1] + offset, device=device, dtype=torch.float32, generator=g).to(dtype)
        return t[offset:].view(*shape)

    cases = []
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for offset in (0, 1):  # 1: the data pointer is 2 or 4 bytes past a 16-byte boundary
            x, w, r = rand(M, N, dtype=dtype, offset=offset), rand(1, N, dtype=dtype)[0], rand(M, N, dtype=dtype)
            b = rand(1, N, dtype=dtype)[0]
            cases += [("rms_norm", (x, w, 1e-6)), ("softmax", (x,)), ("log_softmax", (x,)),
                      ("silu_and_mul", (x, r)), ("fused_add_rms_norm", (x, r, w, 1e-6)),
                      ("layer_norm", (x, w, b, 1e-5)),
                      ("cross_entropy", (x, torch.randint(0, N, (M,), device=device, generator=g)))]
            T = 4 if tiny else 32
            q = rand(T * 4, 16, dtype=dtype, offset=offset).view(T, 4, 16)
            k = rand(T * 2, 16, dtype=dtype).view(T, 2, 16)
            cos, sin = rand(T, 8, dtype=dtype), rand(T, 8, dtype=dtype)
            cases.append(("rotary_embedding", (q, k, cos, sin)))
    return cases


def part_check(device, tiny, quick) -> dict:
    import torch

    import kernelgen
    from kernelgen import launch

    out = {"cases": 0, "mismatches": [], "kernel_identity": {"checked": 0, "different": [], "skipped": None}}
    cases = _check_cases(device, tiny)
    for name, args in cases:
        fn = getattr(kernelgen.ops, name).launcher
        launch.set_cached_launches(False)
        want = fn(*args)
        launch.set_cached_launches(True)
        # a miss (Triton's path fills the cache and the launch plan counts the call), a hit that records
        # the plan, then two replays of the plan
        got = [fn(*args) for _ in range(4)]
        want = want if isinstance(want, tuple) else (want,)
        for g_ in got:
            g_ = g_ if isinstance(g_, tuple) else (g_,)
            if not all(torch.equal(a, b) or (torch.isnan(a).all() and torch.isnan(b).all()) for a, b in zip(g_, want)):
                out["mismatches"].append(f"{name} {args[0].dtype} ptr%16={args[0].data_ptr() % 16}")
        out["cases"] += 1
    out["plans"] = _plan_counts(sorted({name for name, _ in cases}))
    if device == "cuda":
        out["kernel_identity"] = _kernel_identity()
    else:
        out["kernel_identity"]["skipped"] = "the interpreter has no compiled kernels to cache"
    out["passed"] = not out["mismatches"] and not out["kernel_identity"]["different"]
    return out


def _plan_counts(names: list[str]) -> dict:
    """op -> {"replayable": its launcher's signatures with a plan, "unplannable": those without}."""
    import kernelgen

    counts = {}
    for name in names:
        plans = getattr(getattr(kernelgen.ops, name).launcher, "plans", None)
        if plans is None:
            counts[name] = "no plans (interpreted kernels)"
            continue
        counts[name] = {"replayable": sum(callable(p) for p in plans.values()),
                        "unplannable": sum(p == "unplannable" for p in plans.values())}
    return counts


def _kernel_identity() -> dict:
    """Every cached entry is the kernel Triton's own cache maps that call to (Triton >= 3.3 binder API)."""
    import sys as _sys

    from triton.runtime import jit

    res = {"checked": 0, "different": [], "skipped": None}
    for mod_name, mod in list(_sys.modules.items()):
        if not mod_name.startswith("kernelgen_ops."):
            continue
        for obj in vars(mod).values():
            cache = getattr(obj, "_kg_cache", None)
            if not cache:
                continue
            for key, entry in cache.items():
                device = key[0]
                kernel_cache = obj.device_caches[device][0]
                if not any(v is entry.kernel for v in kernel_cache.values()):
                    res["different"].append(f"{obj.fn.__name__}: cached kernel not in Triton's cache")
                res["checked"] += 1
    if not hasattr(jit, "compute_cache_key"):
        res["skipped"] = "this Triton has no compute_cache_key: only membership in its cache was checked"
    return res


# ---- host and device -----------------------------------------------------------------------------------------
def _small_calls(device, M, N, with_inputs=False):
    import torch
    import torch.nn.functional as F

    import kernelgen

    g = torch.Generator(device=device).manual_seed(1)
    dt = torch.bfloat16 if device == "cuda" else torch.float32
    x = torch.randn(M, N, device=device, generator=g).to(dt)
    w = torch.randn(N, device=device, generator=g).to(dt)
    a, b = torch.randn(M, N, device=device, generator=g).to(dt), torch.randn(M, N, device=device, generator=g).to(dt)
    rms, soft = kernelgen.ops.rms_norm.launcher, kernelgen.ops.softmax.launcher
    silu = kernelgen.ops.silu_and_mul.launcher
    calls = {
        # "dispatcher": the same ATen op called by its torch.* name, which no functional route covers
        "rms_norm": {"eager": lambda: F.rms_norm(x, (N,), w, 1e-6),
                     "ops_written_out": lambda: kernelgen.ops.rms_norm(x, w, 1e-6),
                     "prefetched": lambda: rms(x, w, 1e-6),
                     "dispatcher": lambda: torch.rms_norm(x, (N,), w, 1e-6)},
        "softmax": {"eager": lambda: F.softmax(x, -1), "ops_written_out": lambda: kernelgen.ops.softmax(x),
                    "prefetched": lambda: soft(x), "dispatcher": lambda: torch.softmax(x, -1)},
        "silu_and_mul": {"eager": lambda: F.silu(a) * b, "ops_written_out": lambda: kernelgen.ops.silu_and_mul(a, b),
                         "prefetched": lambda: silu(a, b)},
    }
    # with_inputs: also each op's input tensors, for a check that refills them
    return (calls, {"rms_norm": [x, w], "softmax": [x], "silu_and_mul": [a, b]}) if with_inputs else calls


def part_host(device, backend, tiny, quick) -> dict:
    import kernelgen
    from kernelgen import launch, plans

    M, N = (4, 64) if tiny else (16, 4096)
    calls = 20 if tiny else (500 if quick else 2000)
    out = {"shape": [M, N], "calls": calls, "ops": {}}
    rounds = 1 if tiny else ROUNDS
    out["rounds"] = rounds
    for op, fns in _small_calls(device, M, N).items():
        # Interleaved rounds, the best of each: one round of 2,000 calls per mode swung by 30% between runs.
        row = {}
        for _ in range(rounds):
            timed = {mode: host_us(fn, device, calls) for mode, fn in fns.items() if mode != "dispatcher"}
            plans.set_replays(False)
            timed["prefetched_no_plan"] = host_us(fns["prefetched"], device, calls)
            launch.set_cached_launches(False)
            timed["prefetched_triton_run"] = host_us(fns["prefetched"], device, calls)
            launch.set_cached_launches(True)
            plans.set_replays(True)
            if op != "silu_and_mul":  # silu_and_mul overrides no ATen op
                timed["eager_dispatcher"] = host_us(fns["dispatcher"], device, calls)
                kernelgen.enable(backend=backend, policy="all", include=[op])
                timed["through_enable"] = host_us(fns["eager"], device, calls)  # the functional route
                timed["through_enable_dispatcher"] = host_us(fns["dispatcher"], device, calls)
                kernelgen.disable()
            for mode, us in timed.items():
                row[mode] = min(row.get(mode, us), us)
        row["ratio_to_eager"] = {k: v / row["eager"] for k, v in row.items() if k != "eager"}
        out["ops"][op] = row
        print(f"host {op}: " + ", ".join(f"{k} {v:.1f} us" for k, v in row.items() if k != "ratio_to_eager"),
              flush=True)
    return out


def replay_check(graph, static, inputs, reference) -> dict:
    """Give a captured call's input tensors fresh random values and replay its graph: the replay's output
    (static) against reference() (eager ATen on the new values), and whether the replay changed it at all."""
    import torch

    before = static.clone()
    for t in inputs:
        t.copy_(torch.randn(t.shape, device=t.device).to(t.dtype))
    graph.replay()
    torch.cuda.synchronize()
    want = reference()
    return {"max_abs_err": (static.float() - want.float()).abs().max().item(),
            "close": bool(torch.allclose(static.float(), want.float(), atol=1.6e-2, rtol=1e-2)),
            "output_changed": not torch.equal(static, before)}


def part_device(device, backend, tiny, quick) -> dict:
    """GPU time of one call in a CUDA graph, eager vs ours (and ours through enable()); at 16x4096 also that a
    captured call of ours replays correctly on new input values (`replay_check`, against eager ATen)."""
    if device != "cuda":
        return {"skipped": "CUDA graphs need a GPU"}
    import kernelgen

    out = {}
    for M, N in ((16, 4096), (4096, 4096)):
        calls, inputs = _small_calls(device, M, N, with_inputs=True)
        for op, fns in calls.items():
            row = {mode: graph_device_us(fns[mode]) for mode in ("eager", "prefetched")}
            captured = {"prefetched": _capture(fns["prefetched"])} if M == 16 else {}
            if op != "silu_and_mul":  # the ATen override captured into a graph too
                kernelgen.enable(backend=backend, policy="all", include=[op])
                try:
                    row["through_enable"] = graph_device_us(fns["eager"])
                    if M == 16:
                        captured["through_enable"] = _capture(fns["eager"])
                finally:
                    kernelgen.disable()
            # checked with nothing enabled: the graphs hold our kernels, the reference is ATen's
            checks = {mode: replay_check(*graph, inputs[op], fns["eager"]) for mode, graph in captured.items()}
            if checks:
                row["replay_check"] = checks
            out[f"{op} {M}x{N}"] = row
            print(f"device {op} {M}x{N}: eager {row['eager']:.2f} us, ours {row['prefetched']:.2f} us"
                  + (f", replays {checks}" if checks else ""), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--part", nargs="*", choices=PARTS, default=list(PARTS))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes (the CPU path through Triton's interpreter)")
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    ap.add_argument("--patch-policy", default="all", choices=("verified", "all"))
    ap.add_argument("--models", nargs="*", default=["llama", "qwen2"])
    ap.add_argument("--part-budget-s", type=float, default=180.0,
                    help="after this many seconds in the kernels or models part, its remaining sweep points or "
                         "modes are skipped (and reported as skipped)")
    args = ap.parse_args()
    if args.device == "cpu":
        import os

        os.environ.setdefault("TRITON_INTERPRET", "1")
    from kernelgen.backends import get_backend

    backend = "cuda" if args.device == "cuda" else "interpreter"
    get_backend(backend).prepare()
    import bench_kernels_compile as kc
    import bench_model as mm

    runners = {"check": part_check, "host": part_host, "device": part_device, "kernels": kc.part_kernels,
               "compile": kc.part_compile}
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"command": "python benchmarks/bench_launch_models.py " + " ".join(sys.argv[1:]), "parts": {}}
    try:
        from kernelgen.verify.engine import versions

        result["versions"] = versions()
    except Exception as exc:  # noqa: BLE001
        result["versions"] = {"error": str(exc)}
    for part in args.part:
        t0 = time.time()
        kc.DEADLINE = mm.DEADLINE = t0 + args.part_budget_s
        try:
            if part == "check":
                res = part_check(args.device, args.tiny, args.quick)
            elif part == "models":
                res = mm.part_models(args.device, backend, args.tiny, args.quick, args.patch_policy, args.models)
            else:
                res = runners[part](args.device, backend, args.tiny, args.quick)
        except Exception as exc:  # noqa: BLE001 - one part failing must not lose the others' numbers
            res = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
            print(f"{part}: FAILED {res['error']}", flush=True)
        res["wall_s"] = round(time.time() - t0, 1)
        result["parts"][part] = res
        (args.out / "bench_launch_models.json").write_text(json.dumps(result, indent=2, default=str))
        print(f"== {part} done in {res['wall_s']} s", flush=True)
    print(f"wrote {args.out / 'bench_launch_models.json'}")


if __name__ == "__main__":
    main()
