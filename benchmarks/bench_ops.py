"""Verify and time every library op on the GPU, side by side with eager PyTorch and torch.compile.

    python benchmarks/bench_ops.py --out DIR              # on the GPU machine: writes DIR/bench_ops.json
    python benchmarks/bench_ops.py --apply DIR/bench_ops.json   # anywhere: writes each op's
                                                          # verified/<backend>.json and benchmarks/RESULTS.md

The two steps are separate because the GPU machine's working tree is thrown away: only the JSON comes
back. `--apply` refuses a record whose source hash no longer matches the op folder (the kernel changed
since it was measured). Without --out, the run writes records and RESULTS.md directly.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
SECTION = "bench_ops"


# No background compile workers: they compete with the host side of the launches being timed.
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")


def run(ops: list[str] | None, backend_name: str, trials: int) -> dict:
    import torch

    from kernelgen.backends import get_backend
    from kernelgen.library import discover
    from kernelgen.verify.engine import verify_op, versions

    backend = get_backend(backend_name)
    backend.prepare()
    torch._dynamo.config.cache_size_limit = 64  # one static compile per (shape, dtype): the best case for compile
    selected = [op for op in discover() if not ops or op.name in ops]
    started = time.time()
    out = {
        "command": "python benchmarks/bench_ops.py " + " ".join(sys.argv[1:]),
        "backend": backend.name,
        "device": backend.device_name(),
        "versions": versions(),
        "copy_bandwidth_gbs": backend.copy_bandwidth(),
        "verdicts": [],
    }
    for op in selected:
        t0 = time.time()
        verdict = verify_op(op, backend, trials=trials)
        print(f"{op.name:24s} {'PASS' if verdict.passed else 'FAIL ' + verdict.check}: "
              f"{verdict.message[:200]} ({time.time() - t0:.1f}s)", flush=True)
        out["verdicts"].append(verdict.to_record())
    out["wall_s"] = time.time() - started
    return out


def apply(bundle: dict, results_path: Path = RESULTS) -> None:
    from kernelgen.library import get_op, write_record

    for rec in bundle["verdicts"]:
        op = get_op(rec["op"])
        if op.source_hash() != rec["source_hash"]:
            print(f"skip {op.name}: measured source {rec['source_hash']} != current {op.source_hash()}")
            continue
        write_record(op.path, bundle["backend"], rec)
    update_section(results_path, SECTION, render(bundle))


def _us(ms) -> str:
    return f"{ms * 1e3:.1f}" if ms else "-"


def _x(v) -> str:
    return f"{v:.2f}x" if v else "-"


def _pct(v) -> str:
    return f"{v:.2f}" if v else "-"


def render(bundle: dict) -> str:
    v = bundle["versions"]
    lines = [
        "## Library ops vs eager PyTorch and torch.compile",
        "",
        f"Command: `{bundle['command']}` (then `--apply`). Device: {bundle['device']}; torch {v['torch']}, "
        f"triton {v['triton']}; measured device-to-device copy bandwidth {bundle['copy_bandwidth_gbs']:.0f} GB/s "
        f"(bytes read + written). Whole run: {bundle['wall_s']:.0f} s.",
        "",
        "Times are `triton.testing.do_bench` medians in microseconds, inputs rotated when the working set fits "
        "in L2. `BW` = the op's minimum bytes / time, as a fraction of the copy bandwidth. Speedups are eager "
        "time / kernel time and compile time / kernel time.",
        "",
        "| op | dtype | shape | kernel us | eager us | compile us | vs eager | vs compile "
        "| BW kernel | BW eager | BW compile |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    failures = []
    for rec in bundle["verdicts"]:
        if not rec["passed"]:
            failures.append(f"- **{rec['op']}** failed {rec['check']}: {rec['message']}")
            continue
        for p in rec["performance"]:
            shape = "x".join(str(d) for d in p["dims"].values())
            lines.append(
                f"| {rec['op']} | {p['dtype']} | {shape} | {_us(p['kernel_ms'])} | {_us(p['eager_ms'])} | "
                f"{_us(p.get('compile_ms'))} | {_x(p['speedup_eager'])} | {_x(p.get('speedup_compile'))} | "
                f"{_pct(p.get('kernel_bw_frac'))} | {_pct(p.get('eager_bw_frac'))} | {_pct(p.get('compile_bw_frac'))} |"
            )
    if failures:
        lines += ["", "Failed verification (no timings):", *failures]
    return "\n".join(lines) + "\n"


def save_or_apply(bundle: dict, out: Path | None, name: str, apply) -> None:
    """A run's result: written as OUT/<name>.json when --out is given (measured on the GPU machine, applied
    elsewhere with --apply), else applied to RESULTS.md right away by apply(bundle)."""
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{name}.json").write_text(json.dumps(bundle, indent=1, default=str))
    else:
        apply(bundle)


def update_section(path: Path, name: str, body: str) -> None:
    """Replace (or append) the block between this section's markers, leaving other sections alone."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    header = "# Benchmark results\n\nAll numbers come from GPU runs of the scripts in this folder.\n"
    text = path.read_text() if path.exists() else header
    block = f"{start}\n{body}{end}"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ops", nargs="*", help="only these ops (default: all)")
    ap.add_argument("--backend", default="cuda")
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--out", type=Path, help="write bench_ops.json here instead of applying it")
    ap.add_argument("--apply", type=Path, help="apply a bench_ops.json measured elsewhere")
    args = ap.parse_args()
    if args.apply:
        apply(json.loads(args.apply.read_text()))
        return
    bundle = run(args.ops, args.backend, args.trials)
    save_or_apply(bundle, args.out, "bench_ops", apply)
    print(render(bundle))


if __name__ == "__main__":
    main()
