"""Verifying one op folder on one backend: the trusted parent's side.

1. static: the kernel file and the spec's reference against their allowlists (no code runs);
2. spec: tolerance caps, row/col dims, and (with the reference evaluated where its trust allows) the
   reference against the ATen op the spec overrides;
3. the plan of calls goes to one sandboxed child per candidate and backend (`kernelgen.verify.worker`),
   which returns outputs, launch counts, guard records and timings;
4. the reference is evaluated here (trusted spec) or in its own sandboxed process (untrusted spec);
5. everything is compared here (`kernelgen.verify.compare`), and only here is a verdict made.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch

from kernelgen.backends import get_backend
from kernelgen.library import Op, load_op
from kernelgen.verify import compare, plan, references, specrules, wall
from kernelgen.verify.inputs import as_tuple, flatten_leading, make_inputs, rowwise, upcast
from kernelgen.verify.static import check_reference, check_source, module_functions
from kernelgen.verify.verdict import Verdict

KEEP_TIMED_NUMEL = 1 << 22  # timed outputs up to this size come back and are checked


def static_problem(op: Op, backend: str) -> str | None:
    kernel = op.kernel_path_for(backend)
    return check_source(kernel.read_text(), str(kernel.relative_to(op.path))) or check_reference(
        op.spec.reference, "spec.toml reference")


def _dtype_requests(spec, dtypes: list[str]) -> list[tuple[Any, list]]:
    """Reference calls on inputs of each dtype under test (not upcast): the dtypes of their outputs are what
    the kernel must return."""
    return [(("dtype", d), make_inputs(spec, spec.test_shapes[0], d, "cpu", 7)) for d in dtypes]


def _output_dtypes(dtypes: list[str], got: dict) -> dict[str, list[torch.dtype | None]]:
    out: dict[str, list] = {}
    for d in dtypes:
        res = got.get(("dtype", d))
        # A reference that cannot run in low precision on the CPU: no dtype rule beyond the values.
        out[d] = [t.dtype if isinstance(t, torch.Tensor) else None for t in res] if isinstance(res, tuple) else []
    return out


def verify_folder(
    folder: Path, backend_name: str, *, trials: int = 3, perf: bool = True, with_compile: bool = True,
    seed: int | None = None, candidate: str = "", timeout: float = 120.0, sandbox: bool = True,
    trusted_reference: bool = False, device: str | None = None, sanitize: bool = False,
) -> tuple[Verdict, bool]:
    """The verdict for one folder on one backend, and whether the candidate ran (only then may the verdict
    become a record). Raises `wall.SandboxUnavailable` when `sandbox` is asked for and cannot start."""
    t0 = time.perf_counter()
    folder = Path(folder).resolve()
    op = load_op(folder)
    name = folder.name
    base: dict[str, Any] = dict(candidate=candidate or name, sandboxed=sandbox, trusted_reference=trusted_reference)
    if op.broken:  # a spec.toml that does not validate is the spec's failure; a broken kernel.py, static
        from kernelgen.verify.sandbox import broken_check

        return Verdict.fail(name, backend_name, broken_check(op), op.error, **base), False
    spec = op.spec
    base["source_hash"] = op.source_hash(backend_name)
    base["tolerances"] = specrules.widened(spec)

    def done(check: str, message: str, ran: bool = False, **kw) -> tuple[Verdict, bool]:
        v = Verdict.fail(name, backend_name, check, message, **base, **kw)
        v.wall_s = time.perf_counter() - t0
        return v, ran

    problem = static_problem(op, backend_name)
    if problem:
        return done("static", problem)
    problem = specrules.static_rules(spec)
    if problem:
        return done("spec", problem)
    be = get_backend(backend_name)
    cuda = be.device == "cuda"
    if sandbox:
        why = wall.sandbox_problem(cuda)
        if why:
            raise wall.SandboxUnavailable(why)

    def refs_of(requests):
        return references.evaluate(spec, [(k, a if k[0] in ("dtype", "precision32") else upcast(a))
                                          for k, a in requests],
                                   trusted_reference, sandbox, timeout)

    agree_requests, aten_answers, problem = specrules.agreement_requests(spec)
    if problem:
        return done("spec", problem)
    dtypes = [d for d in spec.dtypes if be.supports_dtype(d)]
    if not dtypes:
        return done("accuracy", f"no dtype of {spec.dtypes} is supported by {be.name}")
    kernel_source = op.kernel_path_for(backend_name).read_text()
    functions = module_functions(kernel_source)
    if spec.function not in functions:
        return done("static", f"kernel.py defines no launcher named {spec.function!r}")
    seed = int.from_bytes(os.urandom(4), "little") if seed is None else seed
    # The launcher's parameters come from the parsed source: the parent never imports the candidate.
    calls, groups = plan.build(spec, be, functions[spec.function], dtypes, trials, seed)
    adapter_calls, problems = plan.adapter_calls(spec, be, seed, set(functions), len(calls))
    if problems:
        return done("spec", problems[0])

    # References first: a spec whose reference disagrees with ATen stops here, before any candidate runs.
    ref_requests = [((c.id,), c.args) for c in calls if c.kind == "call" and c.same_as is None]
    nd_ids = {cid for g in groups if g.get("layout") == "nd" for cid in g["ids"]}
    ref_requests += [(("flat", c.id), flatten_leading(spec, c.args)) for c in calls if c.id in nd_ids]
    ref_requests += [(k, a) for k, a in agree_requests] + _dtype_requests(spec, dtypes)
    ref_requests += specrules.precision_requests(spec)
    try:
        got = refs_of(ref_requests)
    except references.ReferenceFailed as exc:
        return done("spec", f"the reference could not be evaluated: {exc}")
    problem = specrules.aten_agreement(spec, aten_answers, got) or specrules.precision_problem(spec, got)
    if problem:
        return done("spec", problem)
    refs = {k[0]: v for k, v in got.items() if len(k) == 1}
    for g in groups:  # leading dims that change what the reference computes may be refused by the candidate
        if g.get("layout") == "nd" and not all(rowwise(refs.get(i), got.get(("flat", i))) for i in g["ids"]):
            g["refusable"] = True
    out_dtypes = _output_dtypes(dtypes, got)

    measure = perf and be.measures_performance and not sanitize  # timings under memcheck mean nothing
    wire = {"folder": str(folder), "backend": be.name, "calls": [c.wire() for c in calls + adapter_calls],
            "perf": {"dtypes": ["bfloat16", "float16"], "with_compile": with_compile, "seed": 1234,
                     "keep_numel": KEEP_TIMED_NUMEL} if measure else None}
    from kernelgen.verify.sandbox import run_child

    result, failure = run_child(wire, be, timeout, sandbox, device, sanitize and be.device == "cuda")
    if failure:
        return done("sandbox", failure, ran=True)
    base.update(device=result.get("device", ""), versions=result.get("versions", {}))
    stage = result.get("stage", "")
    if result.get("error") and stage != "performance":
        return done("static" if stage == "import" else "sandbox", result["error"], ran=stage != "backend")
    results = result["calls"]
    outcome = compare.compare(spec, be.device, calls, groups, results, refs, out_dtypes)
    if outcome.passed:
        try:
            compare.adapter_calls(spec, adapter_calls, {r["id"]: r for r in results}, dtypes, outcome,
                                  be.device)
        except compare.Failed as exc:
            outcome.check, outcome.message = exc.check, exc.message
    if outcome.passed and stage == "performance":
        outcome.check, outcome.message = "performance", result["error"]
    elif outcome.passed and measure:
        problem = _timed_outputs(spec, result.get("timed", []), refs_of)
        if problem:
            outcome.check, outcome.message = "accuracy", problem
    verdict = Verdict(op=name, backend=be.name, passed=outcome.passed, check=outcome.check, message=outcome.message,
                      accuracy=outcome.rows, launches=outcome.launches, seed=seed,
                      performance=result.get("performance", []) if outcome.passed else [], **base)
    verdict.message = verdict.message[:2000]
    verdict.wall_s = time.perf_counter() - t0
    return verdict, True


def _timed_outputs(spec, timed: list[dict[str, Any]], refs_of) -> str:
    """The outputs of the timed runs against the reference on the input set each ran on."""
    requests, outs = [], {}
    for n, t in enumerate(timed):
        s = t["seed"] + t["set"] if t["set"] else t["seed"]
        requests.append(((("timed", n)), make_inputs(spec, t["dims"], t["dtype"], "cpu", s)))
        outs[("timed", n)] = t
    got = refs_of(requests) if requests else {}
    for key, t in outs.items():
        ref = got.get(key)
        if not isinstance(ref, tuple):
            continue  # the reference fails on this shape: nothing to compare (the accuracy cases ran)
        msg = compare.values(spec, [o for o in t["outputs"]], as_tuple(ref), t["dtype"])
        if msg:
            return f"{t['dtype']} timed run {t['dims']}: {msg}"
    return ""


def verify_op(op: Op, backend, trials: int = 3, perf: bool = True, with_compile: bool = True,
              seed: int | None = None, write: bool = False, candidate: str = "", **_ignored) -> Verdict:
    """A library op, through the same sandboxed path as everything else (benchmarks call this)."""
    from kernelgen.verify.sandbox import verify_candidate

    name = backend if isinstance(backend, str) else backend.name
    return verify_candidate(op.path, name, perf=perf, trials=trials, write=write, with_compile=with_compile,
                            seed=seed, candidate=candidate)


def versions() -> dict[str, str]:
    import triton

    return {"torch": torch.__version__, "triton": triton.__version__}
