"""Compose a kernel for each request of the shared request list (no LLM), verify it, and time it against
eager PyTorch and torch.compile of its own reference, all in one run.

    python benchmarks/bench_composer.py --out DIR            # on the GPU machine: DIR/bench_composer.json
    python benchmarks/bench_composer.py --apply DIR/bench_composer.json   # writes benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ops import RESULTS, _us, _x, save_or_apply, update_section  # noqa: E402

SECTION = "bench_composer"
# The requests kernelgen must handle with no LLM (rotary is reused from the library, not composed).
REQUESTS = [
    "fused rmsnorm + residual",
    "silu and mul",
    "gelu and mul (tanh approximation)",
    "residual add then layernorm",
    "scaled softmax",
    "bias add + gelu",
    "log softmax",
    "add + relu",
    "causal masked softmax",
    "matmul + bias + relu",
    "clamp then square",
    "mean over the last dim",
    "rms norm then silu",
    "dequantize int8 with per-row scale",
]


# No background compile workers: they compete with the host side of the launches being timed.
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")


def run(requests: list[str], trials: int) -> dict:
    import torch

    from kernelgen.backends import get_backend
    from kernelgen.frontends.composer import compose
    from kernelgen.library import load_op, merge_op
    from kernelgen.verify.engine import verify_op, versions

    backend = get_backend("cuda")
    backend.prepare()
    torch._dynamo.config.cache_size_limit = 64
    workdir = Path(tempfile.mkdtemp(prefix="kernelgen-compose-"))
    out = {"command": "python benchmarks/bench_composer.py " + " ".join(sys.argv[1:]),
           "device": backend.device_name(), "versions": versions(), "rows": []}
    for request in requests:
        t0 = time.time()
        comp = compose(request)
        folder = merge_op(workdir, comp.spec, comp.kernel_source)
        verdict = verify_op(load_op(folder), backend, trials=trials, perf_dtypes=("bfloat16",))
        print(f"{request:40s} -> {comp.spec.name:28s} {'PASS' if verdict.passed else 'FAIL ' + verdict.check} "
              f"{verdict.message[:160]} ({time.time() - t0:.1f}s)", flush=True)
        out["rows"].append({"request": request, "op": comp.spec.name, "summary": comp.summary,
                            "verdict": verdict.to_record()})
    return out


def render(bundle: dict) -> str:
    v = bundle["versions"]
    lines = [
        "## Composed kernels (no LLM) vs eager PyTorch and torch.compile of their reference",
        "",
        f"Command: `{bundle['command']}` (then `--apply`). Device: {bundle['device']}; torch {v['torch']}, "
        f"triton {v['triton']}. bf16; times are do_bench medians in microseconds.",
        "",
        "| request | composed op | shape | kernel us | eager us | compile us | vs eager | vs compile | BW kernel |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in bundle["rows"]:
        rec = row["verdict"]
        if not rec["passed"]:
            lines.append(f"| {row['request']} | {row['op']} | failed {rec['check']}: {rec['message'][:80]} "
                         "| | | | | | |")
            continue
        for p in rec["performance"]:
            shape = "x".join(f"{d}" for d in p["dims"].values())
            bw = f"{p['kernel_bw_frac']:.2f}" if p.get("kernel_bw_frac") else "-"
            lines.append(f"| {row['request']} | {row['op']} | {shape} | {_us(p['kernel_ms'])} | "
                         f"{_us(p['eager_ms'])} | {_us(p.get('compile_ms'))} | {_x(p['speedup_eager'])} | "
                         f"{_x(p.get('speedup_compile'))} | {bw} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--apply", type=Path)
    args = ap.parse_args()
    if args.apply:
        update_section(RESULTS, SECTION, render(json.loads(args.apply.read_text())))
        return
    bundle = run(REQUESTS, args.trials)
    save_or_apply(bundle, args.out, SECTION, lambda b: update_section(RESULTS, SECTION, render(b)))
    print(render(bundle))


if __name__ == "__main__":
    main()
