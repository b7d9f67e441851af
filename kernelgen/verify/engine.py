"""Verifying one op folder on one backend, in this process: accuracy + anti-cheat, then performance.

This is the body that the sandbox runs in a fresh subprocess; tests and benchmarks may call it directly
for trusted library ops.
"""

from __future__ import annotations

import time

import torch

from kernelgen.backends import get_backend
from kernelgen.backends.base import Backend
from kernelgen.library import Op, load_op, write_record
from kernelgen.verify.accuracy import check_accuracy
from kernelgen.verify.performance import PERF_DTYPES, measure
from kernelgen.verify.verdict import Verdict


def versions() -> dict[str, str]:
    import triton

    return {"torch": torch.__version__, "triton": triton.__version__}


def verify_op(
    op: Op, backend: Backend | str, trials: int = 3, perf: bool = True, perf_dtypes=PERF_DTYPES,
    with_compile: bool = True, seed: int | None = None, write: bool = False, candidate: str = "",
) -> Verdict:
    backend = get_backend(backend) if isinstance(backend, str) else backend
    t0 = time.perf_counter()
    base = dict(source_hash=op.source_hash(backend.name) if not op.broken else "", candidate=candidate or op.name)
    if op.broken:
        return Verdict.fail(op.name, backend.name, "static", op.error, **base)
    try:
        backend.prepare()
    except Exception as exc:
        return Verdict.fail(op.name, backend.name, "sandbox", str(exc), **base)
    verdict = Verdict(op=op.name, backend=backend.name, device=backend.device_name(), versions=versions(), **base)
    try:
        launcher = op.launcher(backend.name)  # its variant and tuning for this backend, if any
    except Exception as exc:
        return Verdict.fail(op.name, backend.name, "static", f"kernel.py failed to import: {exc}", **base)
    acc = check_accuracy(op.spec, launcher, backend, trials=trials, seed=seed)
    verdict.accuracy, verdict.launches = acc.rows, acc.launches
    if not acc.passed:
        verdict.check, verdict.message = acc.check, acc.message
    elif perf and backend.measures_performance:
        try:
            verdict.performance = measure(op.spec, launcher, backend, perf_dtypes, with_compile=with_compile)
        except Exception as exc:
            verdict.check, verdict.message = "performance", f"{type(exc).__name__}: {exc}"[:500]
    verdict.passed = not verdict.check
    verdict.wall_s = time.perf_counter() - t0
    if write:
        write_record(op.path, backend.name, verdict.to_record(speed=backend.measures_performance))
    return verdict


def verify_path(path: str, backend: str, **kw) -> Verdict:
    from pathlib import Path

    return verify_op(load_op(Path(path)), backend, **kw)
