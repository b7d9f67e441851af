"""Why the model's prefill time exceeds the sum of its kernels: idle GPU, or slower kernels in a hot loop?

    python benchmarks/prefill_clocks.py --out DIR [--family llama] [--modes eager patch]

For the model of bench_model.py (hidden 4096, 8 layers, bf16, prefill 1x2048) in each mode, in one process:
- `do_bench_ms`: the prefill as bench_model.py times it (triton's do_bench median, L2 flushed);
- `kernels_cold_ms`: the sum of the kernels of one call from the profiler, after a second of idle GPU;
- `kernels_hot_ms`: the same for a call made right after 30 back-to-back calls (a GPU at its sustained clocks);
- `sm_clock_mhz` and `power_w`: nvidia-smi's readings every 50 ms during a loop of back-to-back calls, with
  the card's maximum SM clock.
A hot kernel sum near do_bench's time means the gap to the cold sum is the kernels themselves running slower
under sustained load (clocks), not host time; a hot sum well below it means the GPU waits for the host.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _kernel_ms(fn) -> float:
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(e.device_time_total for e in prof.key_averages() if e.device_time_total > 0) / 1e3


def _smi_during(fn, calls: int) -> dict:
    """SM clock and power sampled by nvidia-smi while fn runs `calls` times back to back."""
    import torch

    query = ["nvidia-smi", "--query-gpu=clocks.sm,power.draw,clocks.max.sm", "--format=csv,noheader,nounits"]
    smi = subprocess.Popen([*query, "-lms", "50"], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.3)
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    finally:
        smi.terminate()
    rows = [line.split(",") for line in smi.communicate()[0].splitlines() if line.count(",") == 2]
    rows = [[float(v) for v in r] for r in rows[6:]]  # past the idle samples taken before the loop
    if not rows:
        return {"error": "no nvidia-smi samples"}
    busy = [r for r in rows if r[1] > 150] or rows
    return {"sm_clock_mhz": sum(r[0] for r in busy) / len(busy), "power_w": sum(r[1] for r in busy) / len(busy),
            "max_sm_clock_mhz": busy[0][2], "samples": len(busy)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--family", default="llama")
    ap.add_argument("--modes", nargs="*", default=["eager", "patch"])
    args = ap.parse_args()

    import torch
    from bench_model import FULL, _enter_mode, _timer, build
    from bench_model_enable import make_inputs, phase_fns

    model = build(args.family, FULL, torch.bfloat16, "cuda")
    prefill_ids, decode_ids, cache = make_inputs(model, FULL, 2048, 16, "cuda")
    prefill = phase_fns(model, prefill_ids, decode_ids, cache, 2048)["prefill"]
    timer = _timer("cuda", True, False)
    result = {"device": torch.cuda.get_device_name(), "family": args.family, "modes": {}}
    for mode in args.modes:
        leave, _ = _enter_mode(mode, model, args.family, "cuda", "all")
        try:
            for _ in range(3):
                prefill()
            row = {"do_bench_ms": timer(prefill)}
            torch.cuda.synchronize()
            time.sleep(1.0)
            row["kernels_cold_ms"] = _kernel_ms(prefill)
            for _ in range(30):
                prefill()
            row["kernels_hot_ms"] = _kernel_ms(prefill)
            row.update(_smi_during(prefill, 60))
        finally:
            leave()
        result["modes"][mode] = row
        print(mode, json.dumps(row), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "prefill_clocks.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
