"""Accuracy and anti-cheat: the candidate against an upcast PyTorch reference on fresh random inputs.

Every run of the candidate happens under `guard.watch()`: outputs start as NaN, launches are counted and
ATen ops are recorded. Cases: the spec's test shapes, the first one with strided rows, and the edge
shapes (one row, non-power-of-two, longer than one block, zero rows); each with `trials` fresh seeds.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from kernelgen.backends.base import Backend
from kernelgen.spec import OpSpec
from kernelgen.verify import guard
from kernelgen.verify.inputs import as_tuple, edge_shapes, make_inputs, reference_function, upcast

INTERPRETER_LONG_ROW_BLOCK = 1024  # the interpreter is slow: a smaller block limit keeps "long row" cheap


@dataclass
class AccuracyResult:
    passed: bool
    check: str = ""  # "accuracy" or "anticheat" when failed
    message: str = ""
    rows: list[dict[str, Any]] = field(default_factory=list)
    launches: int = 0
    seed: int = 0


def _launch_kwargs(launcher, backend: Backend) -> dict[str, Any]:
    try:
        params = inspect.signature(launcher).parameters
    except (TypeError, ValueError):
        return {}
    if "max_block" in params:
        limit = backend.max_block_size
        if backend.interpret:
            limit = min(limit, INTERPRETER_LONG_ROW_BLOCK)
        return {"max_block": limit}
    return {}


def cases(spec: OpSpec, backend: Backend, launcher) -> list[tuple[str, dict[str, int], bool]]:
    limit = _launch_kwargs(launcher, backend).get("max_block", backend.max_block_size)
    out = [(f"test {s}", s, False) for s in spec.test_shapes]
    out.append((f"strided rows {spec.test_shapes[0]}", spec.test_shapes[0], True))
    long_row = 2 * min(limit, 16384) + 37
    out += [(label, dims, False) for label, dims in edge_shapes(spec, long_row)]
    return out


def check_accuracy(
    spec: OpSpec, launcher, backend: Backend, trials: int = 3, seed: int | None = None,
    dtypes: list[str] | None = None,
) -> AccuracyResult:
    seed = int.from_bytes(os.urandom(4), "little") if seed is None else seed
    reference = reference_function(spec)
    dtypes = [d for d in (dtypes or spec.dtypes) if backend.supports_dtype(d)]
    if not dtypes:
        return AccuracyResult(False, "accuracy", f"no dtype of {spec.dtypes} is supported by {backend.name}")
    kwargs = _launch_kwargs(launcher, backend)
    result = AccuracyResult(True, seed=seed)
    for dtype in dtypes:
        for label, dims, strided in cases(spec, backend, launcher):
            prev_out: tuple | None = None
            for trial in range(trials):
                s = seed + trial * 7919
                inputs = make_inputs(spec, dims, dtype, backend.device, s, strided)
                where = f"{dtype} {label} (seed {s})"
                try:
                    expected = as_tuple(reference(*upcast(inputs)))
                except Exception as exc:
                    if sum(dims.values()) and min(dims.values()) == 0:
                        break  # the reference itself rejects an empty input: nothing to compare
                    return _fail(result, "accuracy", f"reference failed on {where}: {exc}")
                try:
                    with guard.watch() as w:
                        got = as_tuple(launcher(*inputs, **kwargs))
                except Exception as exc:
                    return _fail(result, "accuracy", f"candidate raised on {where}: {type(exc).__name__}: {exc}")
                result.launches += w.total_launches
                if w.violations:
                    ops = sorted(set(w.violations))
                    return _fail(result, "anticheat",
                                 f"computes with torch ops {ops[:5]} on {where}; only allocation/view ops are allowed")
                nonempty = all(t.numel() for t in expected if isinstance(t, torch.Tensor))
                if nonempty and w.total_launches == 0:
                    return _fail(result, "anticheat", f"launched no Triton kernel on {where}")
                # Before the comparison: a candidate that replays an earlier answer is cheating, not inaccurate.
                if prev_out is not None and nonempty and len(got) == len(prev_out) and all(
                    isinstance(a, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
                    for a, b in zip(got, prev_out)
                ):
                    return _fail(result, "anticheat", f"same output for two different inputs on {dtype} {label}")
                msg = _compare(spec, got, expected, dtype)
                if msg:
                    return _fail(result, "accuracy", f"{where}: {msg}")
                prev_out = tuple(g.clone() for g in got)
            result.rows.append({"dtype": dtype, "case": label, "dims": dims, "strided": strided, "passed": True})
    return result


def _fail(result: AccuracyResult, check: str, message: str) -> AccuracyResult:
    result.passed, result.check, result.message = False, check, message
    return result


def _compare(spec: OpSpec, got: tuple, expected: tuple, dtype: str) -> str:
    if len(got) != len(expected):
        return f"returned {len(got)} outputs, expected {len(expected)}"
    for i, (g, e) in enumerate(zip(got, expected)):
        name = spec.outputs[i] if i < len(spec.outputs) else f"output {i}"
        if not isinstance(g, torch.Tensor):
            return f"{name} is a {type(g).__name__}, expected a tensor"
        if tuple(g.shape) != tuple(e.shape):
            return f"{name} has shape {tuple(g.shape)}, expected {tuple(e.shape)}"
        out_dtype = str(g.dtype).removeprefix("torch.")
        atol, rtol = spec.tolerance(out_dtype if out_dtype in ("float32", "float16", "bfloat16") else dtype)
        g64 = g.detach().cpu().to(torch.float64)
        e64 = e.to(g.dtype).to(torch.float64) if e.is_floating_point() else e.to(torch.float64)
        if g.numel() == 0:
            continue
        nan = torch.isnan(g64) & ~torch.isnan(e64)
        if nan.any():
            return f"{name}: {int(nan.sum())} of {g.numel()} elements are NaN (unwritten or invalid)"
        try:
            torch.testing.assert_close(g64, e64, atol=atol, rtol=rtol, equal_nan=True)
        except AssertionError as exc:
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
            return f"{name} differs from the reference ({out_dtype}, atol={atol}, rtol={rtol}): " + "; ".join(
                lines[1:4]
            )
    return ""
