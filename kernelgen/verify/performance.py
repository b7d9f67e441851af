"""Performance on accelerators: the kernel, eager PyTorch and torch.compile of the same reference,
timed side by side on the same inputs, plus the fraction of the measured copy bandwidth reached."""

from __future__ import annotations

import math
import statistics
from typing import Any

import torch

from kernelgen.backends.base import Backend
from kernelgen.spec import OpSpec
from kernelgen.verify.inputs import make_inputs, reference_function

L2_BYTES = 64 << 20  # rotate inputs while several copies still fit well under a few L2s
PERF_DTYPES = ("bfloat16", "float16")
ROUNDS = 3  # interleaved timing rounds per contender
REP_MS = 50  # do_bench repetition window per round


def _working_set(args: list[Any]) -> int:
    return sum(a.numel() * a.element_size() for a in args if isinstance(a, torch.Tensor))


def input_sets(spec: OpSpec, dims: dict[str, int], dtype: str, device: str, seed: int) -> list[list[Any]]:
    """Fresh inputs for one timed shape: several sets (rotated by `rotating`) while they fit in a few L2s, so
    a kernel is not timed on data the previous call left in cache; one set for larger working sets."""
    first = make_inputs(spec, dims, dtype, device, seed)
    ws = _working_set(first)
    copies = 1 if ws == 0 or ws * 2 > L2_BYTES else min(16, math.ceil(4 * L2_BYTES / ws))
    return [first] + [make_inputs(spec, dims, dtype, device, seed + k) for k in range(1, copies)]


def rotating(fn, input_sets: list[list[Any]], last: dict[str, Any] | None = None):
    """A no-argument call of `fn` on the next input set. `last`: gets the latest output and its set index
    (the outputs of timed runs are checked too)."""
    state = {"i": 0}

    def call():
        k = state["i"] % len(input_sets)
        state["i"] += 1
        out = fn(*input_sets[k])
        if last is not None:
            last["set"], last["outputs"] = k, out
        return out

    return call


def measure(
    spec: OpSpec, launcher, backend: Backend, dtypes: tuple[str, ...] = PERF_DTYPES,
    shapes: list[dict[str, int]] | None = None, with_compile: bool = True, seed: int = 1234,
    timed_outputs: list[dict[str, Any]] | None = None, keep_numel: int = 1 << 22,
) -> list[dict[str, Any]]:
    """Timing rows. `timed_outputs`: gets, per timed shape whose first input has at most `keep_numel`
    elements, the kernel's output of its last timed call and the input set it ran on (seed, set index),
    so the parent can check what the timed runs computed."""
    if not backend.measures_performance:
        return []
    reference = reference_function(spec)
    compiled = torch.compile(reference, dynamic=False) if with_compile else None
    bandwidth = backend.copy_bandwidth()
    rows = []
    for dtype in dtypes:
        if dtype not in spec.dtypes or not backend.supports_dtype(dtype):
            continue
        for dims in shapes if shapes is not None else spec.bench_shapes:
            sets = input_sets(spec, dims, dtype, backend.device, seed)
            first, copies = sets[0], len(sets)
            row: dict[str, Any] = {"dtype": dtype, "dims": dims, "input_sets": copies, "rounds": ROUNDS}
            fns = {"kernel": launcher, "eager": reference}
            if compiled is not None:
                try:
                    compiled(*first)  # compile outside the timed region; a failure is reported, not fatal
                    fns["compile"] = compiled
                except Exception as exc:
                    row["compile_ms"], row["compile_error"] = None, str(exc).splitlines()[0][:200]
            # Interleaved rounds, median per contender: a passing hiccup of the host (launch-bound small
            # shapes are sensitive to it) lands in one round of one contender, not in the result.
            samples: dict[str, list[float]] = {k: [] for k in fns}
            last: dict[str, Any] = {}
            for _ in range(ROUNDS):
                for key, fn in fns.items():
                    timed = rotating(fn, sets, last if key == "kernel" else None)
                    samples[key].append(backend.bench(timed, rep_ms=REP_MS))
            first_tensor = next((a for a in first if isinstance(a, torch.Tensor)), None)
            if timed_outputs is not None and last and first_tensor is not None and first_tensor.numel() <= keep_numel:
                outs = last["outputs"] if isinstance(last["outputs"], (tuple, list)) else (last["outputs"],)
                timed_outputs.append({"dtype": dtype, "dims": dict(dims), "seed": seed, "set": last["set"],
                                      "outputs": [o.clone() if isinstance(o, torch.Tensor) else None for o in outs]})
            for key, vals in samples.items():
                row[f"{key}_ms"] = statistics.median(vals)
            row["speedup_eager"] = row["eager_ms"] / row["kernel_ms"]
            row["speedup_compile"] = (row["compile_ms"] / row["kernel_ms"]) if row.get("compile_ms") else None
            elem = torch.empty((), dtype=getattr(torch, dtype)).element_size()
            nbytes = spec.bytes_moved(dims, elem)
            row["bytes"] = nbytes
            for key in ("kernel", "eager", "compile"):
                ms = row.get(f"{key}_ms")
                row[f"{key}_bw_frac"] = (nbytes / (ms * 1e-3) / 1e9 / bandwidth) if ms and nbytes else None
            row["copy_bandwidth_gbs"] = bandwidth
            rows.append(row)
            del sets, first
    return rows
