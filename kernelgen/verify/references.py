"""Evaluating spec references: in this process when the spec is trusted (the shipped library, the user's
own), otherwise in a sandboxed process of their own that receives inputs and returns outputs.

`same_outputs(a, b)` is the agent's reuse check ("does this library op compute what the new spec asks
for?") with both references evaluated behind the wall.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from kernelgen.scratch import scratch_prefix
from kernelgen.spec import OpSpec
from kernelgen.verify import wall
from kernelgen.verify.inputs import as_tuple, make_inputs, reference_function, upcast

REFERENCE_TIMEOUT = 120.0


def _in_process(sources: dict[str, Any], requests: list[tuple[Any, str, list]]) -> dict[Any, tuple | str]:
    out: dict[Any, tuple | str] = {}
    for key, ref, args in requests:
        try:
            with torch.no_grad():
                out[key] = as_tuple(sources[ref](*args))
        except Exception as exc:
            out[key] = f"{type(exc).__name__}: {exc}"[:600]
    return out


def _sandboxed(sources: dict[str, str], requests: list[tuple[Any, str, list]], timeout: float,
               sandbox: bool) -> dict[Any, tuple | str]:
    from kernelgen.verify.sandbox import child_argv, child_env, describe_exit
    from kernelgen.verify.worker import PLAN, RESULTS

    keys = [key for key, _, _ in requests]
    plan = {"references": sources,
            "calls": [{"id": n, "reference": ref, "args": args} for n, (_, ref, args) in enumerate(requests)]}
    with tempfile.TemporaryDirectory(prefix=scratch_prefix("reference")) as tmp:
        scratch = Path(tmp)
        torch.save(plan, scratch / PLAN)
        run = wall.run_walled(child_argv(scratch, reference=True), scratch, timeout, sandbox=sandbox,
                              env=child_env(scratch, interpret=False))
        result_file = scratch / RESULTS
        if run.timed_out or not result_file.is_file():
            raise ReferenceFailed(f"the reference process {describe_exit(run, timeout)}")
        result = torch.load(result_file, weights_only=True, map_location="cpu")
    if result.get("error"):
        raise ReferenceFailed(result["error"])
    out: dict[Any, tuple | str] = {}
    for res in result["calls"]:
        key = keys[res["id"]]
        outs = res["outputs"]
        out[key] = res["error"] or ("a reference output is not a tensor" if not all(
            isinstance(o, torch.Tensor) for o in outs) else tuple(outs))
    return out


class ReferenceFailed(RuntimeError):
    """The reference could not be evaluated at all (it failed to load, or its process died)."""


def evaluate(spec: OpSpec, requests: list[tuple[Any, list]], trusted: bool, sandbox: bool = True,
             timeout: float = REFERENCE_TIMEOUT) -> dict[Any, tuple | str]:
    """key -> the reference's outputs (a tuple of tensors) or why it raised (a string)."""
    if not requests:
        return {}
    reqs = [(key, "reference", args) for key, args in requests]
    if trusted:
        return _in_process({"reference": reference_function(spec)}, reqs)
    return _sandboxed({"reference": spec.reference}, reqs, timeout, sandbox)


def same_outputs(a: OpSpec, b: OpSpec, seeds: tuple[int, ...] = (1, 2), sandbox: bool = True,
                 timeout: float = REFERENCE_TIMEOUT) -> bool:
    """Whether two specs describe the same op: the same argument kinds and ranks, and `b`'s reference gives
    `a`'s outputs for `a`'s random inputs (float64, tight tolerance). Both references run in one sandboxed
    process; the comparison happens here. A reference that fails means no. Raises
    `wall.SandboxUnavailable` when no sandbox can start (`sandbox=False` runs them in a plain process)."""
    if len(a.inputs) != len(b.inputs) or len(a.outputs) != len(b.outputs):
        return False
    for x, y in zip(a.inputs, b.inputs):
        if x.kind != y.kind or (x.kind == "tensor" and (len(x.shape) != len(y.shape) or x.dtype != y.dtype)):
            return False
    requests = []
    for seed in seeds:
        args = upcast(make_inputs(a, dict(a.test_shapes[0]), "float32", "cpu", seed))
        requests += [((seed, "a"), "a", args), ((seed, "b"), "b", args)]
    try:
        got = _sandboxed({"a": a.reference, "b": b.reference}, requests, timeout, sandbox)
    except ReferenceFailed:
        return False
    for seed in seeds:
        ua, ub = got[(seed, "a")], got[(seed, "b")]
        if isinstance(ua, str) or isinstance(ub, str) or len(ua) != len(ub):
            return False
        for u, v in zip(ua, ub):
            if u.shape != v.shape or not torch.allclose(u.double(), v.double(), rtol=1e-9, atol=1e-9):
                return False
    return True
