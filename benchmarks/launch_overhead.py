"""Host cost per call and device-only time of library and composed launchers (diagnostics for tuning).

For each op: host microseconds per call on a tiny input (GPU work negligible, so wall time per call is the
launcher's Python + Triton launch cost), and the device time at [4096, 4096] bf16 measured by replaying a
CUDA graph of 20 calls (no host cost), next to the do_bench time that includes it.

    python benchmarks/launch_overhead.py [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from triton.testing import do_bench

from kernelgen.frontends.composer import compose
from kernelgen.library import get_op, load_op, merge_op
from kernelgen.verify.inputs import make_inputs, reference_function

COMPOSED = ["add + relu", "clamp then square", "residual add then layernorm", "gelu and mul (tanh approximation)",
            "dequantize int8 with per-row scale", "mean over the last dim"]
LIBRARY = ["rms_norm", "silu_and_mul", "gelu_and_mul", "softmax"]


def host_us(fn, args, calls: int = 2000) -> float:
    for _ in range(20):
        fn(*args)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn(*args)
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / calls * 1e6


def graph_us(fn, args, reps: int = 20) -> float:
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn(*args)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(reps):
            fn(*args)
    return do_bench(graph.replay, return_mode="median") * 1e3 / reps


def measure(name, spec, launcher) -> dict:
    reference = reference_function(spec)
    dims_small = {d: 8 for d in spec.dims()}
    dims_big = dict(spec.bench_shapes[-1]) if spec.bench_shapes else {}
    small = make_inputs(spec, dims_small, "bfloat16", "cuda", 0)
    big = make_inputs(spec, dims_big, "bfloat16", "cuda", 1)
    row = {"op": name, "dims": dims_big,
           "host_us_kernel": host_us(launcher, small), "host_us_eager": host_us(reference, small),
           "graph_us_kernel": graph_us(launcher, big), "graph_us_eager": graph_us(reference, big),
           "bench_us_kernel": do_bench(lambda: launcher(*big), return_mode="median") * 1e3,
           "bench_us_eager": do_bench(lambda: reference(*big), return_mode="median") * 1e3}
    print(" | ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    rows = []
    for name in LIBRARY:
        op = get_op(name)
        rows.append(measure(name, op.spec, op.launcher()))
    work = Path("/tmp/kernelgen-overhead")
    for request in COMPOSED:
        comp = compose(request)
        op = load_op(merge_op(work, comp.spec, comp.kernel_source, replace=True))
        rows.append(measure(comp.spec.name, op.spec, op.launcher()))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "launch_overhead.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
