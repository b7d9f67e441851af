"""The sandboxed child: run a plan of calls on a candidate (or evaluate an untrusted reference) and write
the outputs back. It compares nothing and decides nothing.

    python -m kernelgen.verify.worker SCRATCH            # SCRATCH/plan.pt -> SCRATCH/results.pt
    python -m kernelgen.verify.worker SCRATCH --reference

Both files hold plain containers of tensors, numbers and strings (`torch.save`; read back with
`torch.load(weights_only=True)`, which unpickles nothing else). The parent (`kernelgen.verify.engine`)
builds the plan, starts this inside the sandbox, and compares the outputs with the reference.
"""

from __future__ import annotations

import argparse
import faulthandler
import os
import sys
import traceback
from typing import Any

import torch

# Errors after which the process (or its GPU context) is unusable: later calls would only repeat them.
FATAL_MARKERS = ("illegal memory access", "out of memory", "misaligned address", "unspecified launch failure",
                 "device-side assert", "CUDA error")
PLAN, RESULTS = "plan.pt", "results.pt"


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:600]


def _outputs(out: Any) -> list[Any]:
    return list(out) if isinstance(out, (tuple, list)) else [out]


def _wire_output(x: Any) -> Any:
    """Tensors go back as they are (their storage sharing included); anything else as its type name."""
    return x if isinstance(x, torch.Tensor) else {"type": type(x).__name__}


def run_calls(plan: dict[str, Any], launcher, module, backend) -> list[dict[str, Any]]:
    """Run every call of the plan in order; each call's outputs and inputs are kept alive until the end
    (a kernel that reuses an output buffer, or writes into an input, shows in what is returned)."""
    from kernelgen.verify import guard
    from kernelgen.verify.adapters import call_with_adapter
    from kernelgen.verify.inputs import to_device

    device = backend.device
    results: list[dict[str, Any]] = []
    by_id: dict[int, list[Any]] = {}
    for call in plan["calls"]:
        if call["same_as"] >= 0:
            args = by_id[call["same_as"]]
        else:
            # A copy of its own, even in-process: the plan's tensors are what the inputs must still equal.
            args = [to_device(a, device, copy=True) if isinstance(a, torch.Tensor) else a for a in call["args"]]
            by_id[call["id"]] = args
        res: dict[str, Any] = {"id": call["id"], "outputs": [], "error": "", "launches": 0, "violations": [],
                               "inputs": args, "devices": [], "served": 0, "fallbacks": 0}
        w = None
        try:
            if call["overload"]:
                with guard.count_launches(ghost=call["ghost"]) as w:
                    out, res["served"], res["fallbacks"] = call_with_adapter(
                        call["overload"], getattr(module, call["adapter"]), backend, args)
            elif call["guard"] or call["ghost"]:
                with guard.watch(poison=True, ghost=call["ghost"]) as w:
                    out = launcher(*args, **call["kwargs"])
            else:
                with guard.count_launches() as w:
                    out = launcher(*args, **call["kwargs"])
            backend.synchronize()
            outs = _outputs(out)
            res["outputs"] = [_wire_output(o) for o in outs]
            res["devices"] = [o.device.type if isinstance(o, torch.Tensor) else "" for o in outs]
        except Exception as exc:
            res["error"] = _error(exc)
        if w is not None:
            res["launches"], res["violations"] = w.total_launches, sorted(set(w.violations))[:8]
        results.append(res)
        if any(m in res["error"] for m in FATAL_MARKERS):
            break
    return results


def run_candidate(plan: dict[str, Any]) -> dict[str, Any]:
    from pathlib import Path

    import triton

    from kernelgen.backends import get_backend
    from kernelgen.library import load_op

    out: dict[str, Any] = {"error": "", "calls": [], "performance": [], "timed": [], "device": "",
                           "versions": {"torch": str(torch.__version__), "triton": str(triton.__version__)}}
    backend = get_backend(plan["backend"])
    try:
        backend.prepare()
        out["device"] = backend.device_name()
    except Exception as exc:
        out["error"], out["stage"] = _error(exc), "backend"
        return out
    op = load_op(Path(plan["folder"]))
    try:
        module = op.module(plan["backend"])
        launcher = getattr(module, op.spec.function)
    except Exception as exc:
        out["error"], out["stage"] = f"kernel.py failed to import: {_error(exc)}", "import"
        return out
    out["calls"] = run_calls(plan, launcher, module, backend)
    perf = plan.get("perf")
    if perf and not any(m in c["error"] for c in out["calls"] for m in FATAL_MARKERS):
        from kernelgen.verify.performance import measure

        try:
            timed: list[dict[str, Any]] = []
            out["performance"] = measure(op.spec, launcher, backend, tuple(perf["dtypes"]),
                                         with_compile=perf["with_compile"], seed=perf["seed"], timed_outputs=timed,
                                         keep_numel=perf["keep_numel"])
            out["timed"] = timed
        except Exception as exc:
            out["error"], out["stage"] = _error(exc), "performance"
    return out


def run_reference(plan: dict[str, Any]) -> dict[str, Any]:
    """Evaluate an untrusted spec's reference on the inputs it was sent (no kernel, no Triton)."""
    from kernelgen.spec import OpSpec  # noqa: F401 (the reference gets torch, F and math, as in the parent)
    from kernelgen.verify.inputs import reference_source_function

    out: dict[str, Any] = {"error": "", "calls": []}
    try:
        fns = {key: reference_source_function(src, key) for key, src in plan["references"].items()}
    except Exception as exc:
        out["error"] = f"reference failed to load: {_error(exc)}"
        return out
    for call in plan["calls"]:
        res: dict[str, Any] = {"id": call["id"], "outputs": [], "error": ""}
        try:
            with torch.no_grad():
                res["outputs"] = [_wire_output(o) for o in _outputs(fns[call["reference"]](*call["args"]))]
        except Exception as exc:
            res["error"] = _error(exc)
        out["calls"].append(res)
    return out


def main(argv: list[str] | None = None) -> int:
    faulthandler.enable()  # a SIGSEGV leaves a Python traceback in the stderr tail the parent reports
    p = argparse.ArgumentParser(prog="python -m kernelgen.verify.worker")
    p.add_argument("scratch")
    p.add_argument("--reference", action="store_true", help="evaluate references, not a candidate")
    args = p.parse_args(argv)
    plan = torch.load(os.path.join(args.scratch, PLAN), weights_only=True, map_location="cpu")
    try:
        result = run_reference(plan) if args.reference else run_candidate(plan)
    except Exception as exc:
        traceback.print_exc()
        result = {"error": _error(exc), "stage": "worker", "calls": []}
    tmp = os.path.join(args.scratch, RESULTS + ".tmp")
    torch.save(result, tmp)
    os.replace(tmp, os.path.join(args.scratch, RESULTS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
