"""Where the host time of one small library launch goes, piece by piece (16x4096 bf16, on the GPU machine).

    python benchmarks/host_profile.py [--out DIR]

The cached launch path of `kernelgen.launch` does, per call: the launcher's Python (argument checks, output
allocation, block size and warps), then in `_launch` the device query, the specialization key, the cache
lookup, the fallback checks (hooks, counters), the stream query and the compiled kernel's launcher. Each
piece is timed alone here (the same arguments, back-to-back calls, best of several interleaved rounds), next
to eager ATen and to the whole call, and a cProfile of the whole call lists the functions by own time.
"""

from __future__ import annotations

import cProfile
import io
import json
import pstats
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

F = torch.nn.functional


def best_us(fns: dict, calls=2000, rounds=5) -> dict:
    """Per name, the best over `rounds` interleaved rounds of `calls` back-to-back calls and one sync."""
    best = {name: float("inf") for name in fns}
    for fn in fns.values():
        for _ in range(50):
            fn()
    for _ in range(rounds):
        for name, fn in fns.items():
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            torch.cuda.synchronize()
            best[name] = min(best[name], (time.perf_counter() - t0) / calls * 1e6)
    return best


def pieces(op_name, kernel_name, eager, call, raw_args_fn):
    """The cost of each piece of the cached launch of `kernel_name` for the call `call`."""
    import kernelgen
    from kernelgen import launch

    launcher = getattr(call.fn, "unplanned", call.fn)  # the launcher itself, under its launch plans
    jit = launcher.__globals__[kernel_name]  # the kernel the launcher launches (its module's)
    call()
    torch.cuda.synchronize()
    cache = jit.launch_cache()
    key, entry = next(iter(cache.items()))
    grid, args = raw_args_fn()
    get_device, get_stream = launch._getters()
    device = key[0]
    stream = get_stream(device)
    constexpr = jit._kg_constexpr
    keyfn = launch.key_function(constexpr, len(args))
    # The keyword arguments of the launch: the last group of its key, (name, value) pairs.
    kwargs = dict(key[-1])
    full_args = args + entry.tail  # the values of the parameters after the positional ones

    int_args = tuple(a.data_ptr() if isinstance(a, torch.Tensor) else a for a in full_args)
    plan_pieces = {}
    if hasattr(call.fn, "plans"):
        for _ in range(3):
            call()  # the first call of a signature, the one that records its plan, then a replay
        from kernelgen import plans

        (plan_key, replay), = [(k, v) for k, v in call.fn.plans.items() if callable(v)]
        print(f"replay of {op_name}:\n{replay.source}")
        tensors = [a for a in call.args if isinstance(a, torch.Tensor)]
        plan_pieces = {
            # the generated entry point (the replay conditions, the signature, the lookup) and the replay
            "plan: generated entry (whole planned call)": lambda: call.fn(*call.args),
            "plan: lookup": lambda: call.fn.plans.get(plan_key),
            "plan: replay function alone": lambda: replay(*tensors, stream),
            "plans off (launcher + cached launch)": lambda: (plans.set_replays(False), call(), plans.set_replays(True)),
        }
        fast_plans = getattr(call.fn, "fast_plans", {})
        if fast_plans:  # kernelgen/lean_replay.py: the signature, the lookup and the replay in one C++ call
            from kernelgen import lean_replay

            plan_pieces["plan: C++ signature, lookup and replay (fast)"] = lambda: lean_replay.fast(
                fast_plans, device, stream, *call.args)
            plan_pieces["plan: C++ signature alone"] = lambda: lean_replay.module().signature(device, *call.args)
        print("C++ fast plans:", len(fast_plans))

    def no_launch_call():
        with launch.no_launch():
            call()

    fns = {
        "eager": eager,
        "ops_written_out": lambda: getattr(kernelgen.ops, op_name)(*call.args),
        "prefetched (with its launch plan)": call,
        "launcher_python_only (no_launch)": no_launch_call,
        "no_launch context alone": lambda: launch.no_launch().__enter__(),
        "get_device": get_device,
        "get_stream": lambda: get_stream(device),
        "specialization_key (generic loop)": lambda: launch.specialization_key(constexpr, args, kwargs, device),
        "generated key function": lambda: keyfn(args, kwargs, device),
        "cache lookup": lambda: cache.get(key),
        "fallback checks": lambda: (launch._hooks_active(), launch._counted()),
        "compiled launcher alone": lambda: entry.run(grid[0], 1, 1, stream, entry.function, entry.metadata,
                                                     None, None, None, *full_args),
        "_launch (key+lookup+launch)": lambda: jit[grid](*args, **kwargs),
        "jit[grid] alone (partial)": lambda: jit[grid],
        "torch.empty_like": lambda: torch.empty_like(call.args[0]),
        "compiled launcher alone, integer pointers": lambda: entry.run(
            grid[0], 1, 1, stream, entry.function, entry.metadata, None, None, None, *int_args),
        **plan_pieces,
    }
    run = entry.run
    if getattr(run, "global_scratch_size", 1) == 0 and getattr(run, "profile_scratch_size", 1) == 0:
        # Triton 3.6's launcher.__call__ without its Python (no scratch to allocate): the C launch alone
        def c_launch():
            run.launch(grid[0], 1, 1, stream, entry.function, run.launch_cooperative_grid, run.launch_pdl,
                       None, None, entry.metadata, None, None, None, *full_args)
        try:
            c_launch()
            torch.cuda.synchronize()
            fns["C launch alone (3.6 layout)"] = c_launch
        except Exception as exc:  # noqa: BLE001 - another Triton's layout
            print(f"C launch alone: {type(exc).__name__}: {exc}")
    from kernelgen import lean_launch

    lean = lean_launch.launcher()
    lean_plan = lean_launch.plan(entry.kernel, len(full_args)) if lean is not None else None
    print("lean launch:", "built" if lean is not None else "not available", "covers" if lean_plan else "-")
    if lean_plan is not None:
        types, positions, threads, shared = lean_plan
        values = [int_args[i] for i in positions]
        fns["kernelgen lean C launch alone"] = lambda: lean(grid[0], 1, 1, stream, entry.function, threads, shared,
                                                            types, *values)
    return best_us(fns)


def route_pieces(x, w, N) -> dict:
    """F.rms_norm and F.softmax through enable()'s functional routes, next to the planned adapters and
    launchers they call, and the same overrides reached through the dispatcher."""
    import kernelgen
    from kernelgen.library import get_op

    rms, soft = get_op("rms_norm").module("cuda"), get_op("softmax").module("cuda")
    kernelgen.enable(backend="cuda", policy="all", include=["rms_norm", "softmax"])
    try:
        rms_route, softmax_route = F.rms_norm, F.softmax
        print("routes in place:", [hasattr(r, "kernelgen_original") for r in (rms_route, softmax_route)])
        for _ in range(3):
            rms_route(x, (N,), w, 1e-6)
            softmax_route(x, -1)
        return best_us({
            "route: F.rms_norm through enable()": lambda: rms_route(x, (N,), w, 1e-6),
            "route: planned rms_norm adapter called directly": lambda: rms.aten_rms_norm(x, (N,), w, 1e-6),
            "route: planned rms_norm launcher called directly": lambda: rms.rms_norm(x, w, 1e-6),
            "route: torch.rms_norm through the dispatcher's override": lambda: torch.rms_norm(x, (N,), w, 1e-6),
            "route: F.softmax through enable()": lambda: softmax_route(x, -1),
            "route: planned softmax adapter called directly": lambda: soft.aten_softmax(x, -1, False),
            "route: planned softmax launcher called directly": lambda: soft.softmax(x),
            "route: torch.softmax through the dispatcher's override": lambda: torch.softmax(x, -1),
        })
    finally:
        kernelgen.disable()


class Call:
    """A callable with its arguments visible (so the pieces can reuse them)."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __call__(self):
        return self.fn(*self.args)


def main() -> None:
    import argparse

    import triton

    from kernelgen.library import get_op

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    M, N = 16, 4096
    dt = torch.bfloat16
    x, w = torch.randn(M, N, device="cuda", dtype=dt), torch.randn(N, device="cuda", dtype=dt)
    y = torch.empty_like(x)
    result = {"triton": triton.__version__, "torch": torch.__version__, "device": torch.cuda.get_device_name(),
              "shape": [M, N], "ops": {}}
    rms_call = Call(get_op("rms_norm").launcher("cuda"), x, w, 1e-6)
    soft_call = Call(get_op("softmax").launcher("cuda"), x)
    rows = {
        "rms_norm": pieces("rms_norm", "_rms_norm_row", lambda: F.rms_norm(x, (N,), w, 1e-6), rms_call,
                           lambda: ((M,), (x, w, y, N, 1, N, N, 1e-6))),
        "softmax": pieces("softmax", "_softmax_row", lambda: F.softmax(x, -1), soft_call,
                          lambda: ((M,), (x, y, N, 1, N))),
    }
    rows["routes"] = route_pieces(x, w, N)
    for op, row in rows.items():
        print(f"host pieces {op} ({result['device']}):")
        for name, us in row.items():
            print(f"  {name:36s} {us:7.2f} us")
    result["ops"] = rows
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(3000):
        rms_call()
    torch.cuda.synchronize()
    profile.disable()
    text = io.StringIO()
    pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(18)
    result["cprofile_rms_norm"] = text.getvalue()[-4000:]
    print(result["cprofile_rms_norm"])
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "host_profile.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
