"""Accuracy and anti-cheat of a launcher in this process: the same plan and the same comparisons as the
sandboxed path (`kernelgen.verify.engine`), for trusted code only (tests of the shipped library and of the
composer's output). Untrusted candidates go through `kernelgen.verify.sandbox`, never through this.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from kernelgen.backends.base import Backend
from kernelgen.spec import OpSpec
from kernelgen.verify import compare, plan, references
from kernelgen.verify.inputs import make_inputs, upcast
from kernelgen.verify.plan import INTERPRETER_LONG_ROW_BLOCK  # noqa: F401 (re-exported)


@dataclass
class AccuracyResult:
    passed: bool
    check: str = ""  # the failing check ("accuracy", "outputs", "inputs", "anticheat", ...) when failed
    message: str = ""
    rows: list[dict[str, Any]] = field(default_factory=list)
    launches: int = 0
    seed: int = 0


def check_accuracy(
    spec: OpSpec, launcher, backend: Backend, trials: int = 3, seed: int | None = None,
    dtypes: list[str] | None = None,
) -> AccuracyResult:
    """Run every case of the plan on `launcher` here and compare with the spec's reference (evaluated here:
    the spec must be trusted too)."""
    from kernelgen.verify.worker import run_calls

    seed = int.from_bytes(os.urandom(4), "little") if seed is None else seed
    dtypes = [d for d in (dtypes or spec.dtypes) if backend.supports_dtype(d)]
    if not dtypes:
        return AccuracyResult(False, "accuracy", f"no dtype of {spec.dtypes} is supported by {backend.name}")
    calls, groups = plan.build(spec, backend, plan.launcher_params(launcher), dtypes, trials, seed)
    refs = references.evaluate(spec, [(c.id, upcast(c.args)) for c in calls if c.kind == "call" and c.same_as is None],
                               trusted=True)
    probe = references.evaluate(spec, [(d, make_inputs(spec, spec.test_shapes[0], d, "cpu", 7)) for d in dtypes],
                                trusted=True)
    out_dtypes = {d: [t.dtype for t in r] if isinstance(r, tuple) else [] for d, r in probe.items()}
    wire = {"calls": [c.wire() for c in calls]}
    results = run_calls(wire, launcher, None, backend)
    outcome = compare.compare(spec, backend.device, calls, groups, results, refs, out_dtypes)
    return AccuracyResult(outcome.passed, outcome.check, outcome.message, outcome.rows, outcome.launches, seed)
