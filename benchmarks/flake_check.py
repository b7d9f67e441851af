"""Verify the library N times in a row (fresh seeds each time) and report every failure: a correct kernel
must never fail, so any failure here is a flaky check or a kernel that is only right most of the time.

    python benchmarks/flake_check.py                          # 20 runs, the default backend, no records
    python benchmarks/flake_check.py --runs 3 --backend interpreter --ops rms_norm softmax --json out.json

Accuracy and anti-cheat only (no timings), `--no-write` semantics: records are never touched. Exit code 0
when every run of every op passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/flake_check.py")
    p.add_argument("--runs", type=int, default=20, help="verifications of the whole library in a row (default 20)")
    p.add_argument("--backend", default=None, help="default: the accelerator, else interpreter")
    p.add_argument("--ops", nargs="*", default=None, help="only these ops (default: every library op)")
    p.add_argument("--jobs", type=int, default=1, help="ops verified in parallel")
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--json", dest="json_out", default=None, help="write every failure and the timings here")
    args = p.parse_args(argv)

    from kernelgen.backends import default_backend, get_backend
    from kernelgen.library import discover, get_op
    from kernelgen.verify.sandbox import verify_many

    backend = get_backend(args.backend) if args.backend else (default_backend() or get_backend("interpreter"))
    folders = [get_op(n).path for n in args.ops] if args.ops else [op.path for op in discover() if not op.broken]
    failures: list[dict] = []
    walls: list[float] = []
    for run in range(1, args.runs + 1):
        t0 = time.perf_counter()
        verdicts = verify_many(folders, backend.name, jobs=args.jobs, timeout=args.timeout, perf=False,
                               trials=args.trials, write=False)
        walls.append(time.perf_counter() - t0)
        bad = [v for v in verdicts if not v.passed]
        for v in bad:
            failures.append({"run": run, "op": v.op, "check": v.check, "message": v.message, "seed": v.seed})
        print(f"run {run}/{args.runs}: {len(verdicts) - len(bad)} of {len(verdicts)} passed "
              f"({walls[-1]:.0f} s)" + "".join(f"\n  FAIL {v.op}: {v.check}: {v.message[:300]} (seed {v.seed})"
                                               for v in bad), flush=True)
    summary = {"backend": backend.name, "runs": args.runs, "ops": [Path(f).name for f in folders],
               "failures": failures, "wall_s": walls}
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{len(failures)} failure(s) in {args.runs} run(s) of {len(folders)} op(s) on {backend.name}")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
