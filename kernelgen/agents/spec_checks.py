"""Checks of a spec the LLM wrote, before any kernel is verified against it. A failure here is a spec error:
it goes back to the LLM as such (spec prompt retry in `generate`, spec repair in `repair`) instead of being
filed as an accuracy failure of every kernel.

- `dims_problem`: `[shapes] row_dim` / `col_dim` must name dims of the inputs, or the verifier's edge cases
  (one row, non-power-of-two, long and zero rows) would have nothing to vary.
- `reference_problem`: the reference, run on the spec's own inputs (its test shapes, strided rows and the
  edge shapes; float64 on the CPU, as the verifier computes it), must return the spec's outputs as tensors
  without NaN. The LLM wrote that reference, so it runs in a child process (`python -m` this module, with a
  timeout), never in the kernelgen process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REFERENCE_TIMEOUT = 120.0  # seconds; most of it is the child's torch import
PROBE_SEEDS = (1, 2)
PROBE_LONG_ROW = 2 * 1024 + 37  # the interpreter's "longer than one block" row


def dims_problem(spec) -> str:
    """"" when row_dim and col_dim name dims of the spec's tensor inputs; else what is wrong."""
    dims = sorted(spec.dims())
    bad = [f"{key} = {val!r}" for key, val in (("row_dim", spec.row_dim), ("col_dim", spec.col_dim))
           if val not in dims]
    if not bad:
        return ""
    return (f"{spec.source}: [shapes] {' and '.join(bad)} name{'s' if len(bad) == 1 else ''} no dim of the inputs "
            f"(dims: {dims}); row_dim is the dim of independent rows (may be 1 or 0), col_dim the dim each "
            "row reduces or runs along (made non-power-of-two and long)")


def reference_problem(spec_text: str, timeout: float = REFERENCE_TIMEOUT) -> str:
    """"" when the spec's reference runs cleanly on the spec's inputs; else the spec error, one paragraph."""
    from kernelgen.agents.state import _load_spec_text
    from kernelgen.verify.static import check_source

    spec = _load_spec_text(spec_text, "<LLM spec.toml>")
    static = check_source(spec.reference, "spec.toml reference")
    if static:
        return f"the spec's reference fails the static check: {static}"
    env = dict(os.environ)
    pkg_parent = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([pkg_parent] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    try:
        proc = subprocess.run([sys.executable, "-m", "kernelgen.agents.spec_checks"], input=spec_text,
                              capture_output=True, text=True, timeout=timeout, env=env, start_new_session=True)
    except subprocess.TimeoutExpired:
        return f"the spec's reference did not finish within {timeout:g} s on the spec's test shapes"
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = " ".join(proc.stderr.strip().splitlines()[-3:])
        return f"the spec's reference crashed its process (exit {proc.returncode}): {tail[:400]}"
    return str(json.loads(lines[-1]).get("problem", ""))


def _probe_cases(spec) -> list[tuple[str, dict[str, int], bool]]:
    from kernelgen.verify.inputs import edge_shapes

    cases = [(f"test {s}", s, False) for s in spec.test_shapes]
    cases.append((f"strided rows {spec.test_shapes[0]}", spec.test_shapes[0], True))
    return cases + [(label, dims, False) for label, dims in edge_shapes(spec, PROBE_LONG_ROW)]


def probe(spec_text: str) -> str:
    """Run in the child: the reference on every case the verifier will use; the first problem or ""."""
    import torch

    from kernelgen.agents.state import _load_spec_text
    from kernelgen.verify.inputs import as_tuple, make_inputs, reference_function, upcast

    spec = _load_spec_text(spec_text, "<LLM spec.toml>")
    try:
        reference = reference_function(spec)
    except Exception as exc:
        return f"the spec's reference cannot be loaded: {type(exc).__name__}: {exc}"
    dtype = spec.dtypes[0] if spec.dtypes else "float32"
    for label, dims, strided in _probe_cases(spec):
        empty = bool(dims) and min(dims.values()) == 0
        for seed in PROBE_SEEDS:
            where = f"{label}, seed {seed}"
            try:
                outs = as_tuple(reference(*upcast(make_inputs(spec, dims, dtype, "cpu", seed, strided))))
            except Exception as exc:
                if empty:
                    break  # the verifier also lets a reference reject an empty input
                return f"the spec's reference raised on the spec's own inputs ({where}): {type(exc).__name__}: {exc}"
            if len(outs) != len(spec.outputs):
                return (f"the spec's reference returns {len(outs)} output(s) but [signature] outputs names "
                        f"{len(spec.outputs)} ({spec.outputs}) ({where})")
            for name, out in zip(spec.outputs, outs):
                if not isinstance(out, torch.Tensor):
                    return f"the spec's reference returns a {type(out).__name__} for {name!r}, not a tensor ({where})"
                if out.is_floating_point() and out.numel() and torch.isnan(out).any():
                    n = int(torch.isnan(out).sum())
                    # a NaN reference would accept a kernel that writes nothing (outputs start as NaN)
                    return (f"the spec's reference gives NaN in {n} of {out.numel()} elements of {name!r} ({where}): "
                            "its inputs leave the op's domain; choose fills inside it")
    return ""


if __name__ == "__main__":  # the child: spec.toml text on stdin, {"problem": ...} on stdout
    try:
        found = probe(sys.stdin.read())
    except Exception as exc:  # a spec the parent accepted should not fail here; report rather than crash
        found = f"the spec could not be probed: {type(exc).__name__}: {exc}"
    print(json.dumps({"problem": found}))
