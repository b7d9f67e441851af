"""Where a model step leaves the GPU idle: host enqueue time, synchronizations and idle gaps, per mode.

    python benchmarks/step_gaps.py --out DIR [--modes eager patch patch_attention]

For the Llama-style model of bench_model (hidden 4096, 8 layers, bf16) and each mode, after warm-up:
- the host time to enqueue one prefill and one decode step (no synchronization inside the timed region),
  against the GPU time of the same call (the profiler's kernel total), and the call's wall time from an
  idle GPU to its end;
- every synchronizing CUDA call made during one call (torch.cuda.set_sync_debug_mode("warn"), with the
  innermost frames of each), because a synchronization in the middle of a step makes the GPU wait for the
  host to enqueue what follows;
- the GPU's idle gaps inside one call from the profiler's kernel timeline (total, the largest ones, and the
  CPU op that was running when each largest gap ended).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _host_ms(fn) -> float:
    import torch

    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    host = (time.perf_counter() - t0) * 1e3
    torch.cuda.synchronize()
    return host


def _wall_ms(fn, calls=10) -> float:
    """Median wall time of one call from an idle GPU to its last kernel (synchronized before and after): the
    latency a caller sees, including host time that leaves the GPU idle."""
    import statistics

    import torch

    times = []
    for _ in range(calls):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _syncs(fn) -> list:
    import torch

    found = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    for w in caught:
        if "synchroniz" in str(w.message).lower():
            found.append(f"{w.filename}:{w.lineno}: {str(w.message)[:120]}")
    return found[:20]


def _gaps(fn) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    events = prof.events()
    cuda, cpu = torch.autograd.DeviceType.CUDA, torch.autograd.DeviceType.CPU
    kernels = sorted((e for e in events if e.device_type == cuda and e.time_range.elapsed_us() > 0),
                     key=lambda e: e.time_range.start)
    cpu_ops = sorted((e for e in events if e.device_type == cpu and e.name.startswith("aten::")),
                     key=lambda e: e.time_range.start)
    gaps, busy = [], 0.0
    for a, b in zip(kernels, kernels[1:]):
        gap = b.time_range.start - a.time_range.end
        if gap > 5:
            gaps.append((gap, a.time_range.end, b.name[:60]))
    for k in kernels:
        busy += k.time_range.elapsed_us()
    span = kernels[-1].time_range.end - kernels[0].time_range.start if kernels else 0
    top = []
    for gap, start, next_kernel in sorted(gaps, reverse=True)[:6]:
        running = [c.name for c in cpu_ops if c.time_range.start <= start + gap][-1:] if cpu_ops else []
        top.append({"gap_us": round(gap, 1), "at_us": round(start - kernels[0].time_range.start, 1),
                    "next_kernel": next_kernel, "cpu_op_before_it_ended": running})
    return {"kernels": len(kernels), "kernel_us": round(busy, 1), "span_us": round(span, 1),
            "idle_us": round(sum(g for g, _, _ in gaps), 1), "largest": top}


def main() -> None:
    import bench_model as mm
    import torch
    from bench_model_enable import cast_cache, make_inputs, phase_fns

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--modes", nargs="*", default=["eager", "patch", "patch_attention"])
    args = ap.parse_args()
    from kernelgen.backends import get_backend

    get_backend("cuda").prepare()
    model = mm.build("llama", mm.FULL, torch.bfloat16, "cuda")
    prefill_ids, decode_ids, cache = make_inputs(model, mm.FULL, 2048, 16, "cuda")
    cast_cache(cache, model.dtype)
    fns = phase_fns(model, prefill_ids, decode_ids, cache, 2048)
    result = {"device": torch.cuda.get_device_name(), "modes": {}}
    for mode in args.modes:
        try:
            leave, details = mm._enter_mode(mode, model, "llama", "cuda", "all")
        except Exception as exc:  # noqa: BLE001
            result["modes"][mode] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        row = {"details": details}
        try:
            for phase, fn in fns.items():
                for _ in range(3):
                    fn()
                torch.cuda.synchronize()
                row[phase] = {"host_enqueue_ms": round(min(_host_ms(fn) for _ in range(5)), 3),
                              "wall_ms": round(_wall_ms(fn), 3),
                              "syncs": _syncs(fn), "gpu": _gaps(fn)}
                print(mode, phase, json.dumps(row[phase])[:900], flush=True)
        except Exception as exc:  # noqa: BLE001
            row["error"] = f"{type(exc).__name__}: {exc}"
            row["traceback"] = traceback.format_exc()[-2000:]
            print(mode, "FAILED", row["error"], flush=True)
        finally:
            leave()
        result["modes"][mode] = row
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "step_gaps.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
