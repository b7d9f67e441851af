"""Checks of a spec the LLM wrote, before any kernel is verified against it. A failure here is a spec error:
it goes back to the LLM as such (spec prompt retry in `generate`, spec repair in `repair`) instead of being
filed as an accuracy failure of every kernel.

- `dims_problem`: `[shapes] row_dim` / `col_dim` must name dims of the inputs, or the verifier's edge cases
  (one row, non-power-of-two, long and zero rows) would have nothing to vary.
- `reference_problem`: the reference, run on the spec's own inputs (its test shapes, strided rows and the
  edge shapes; float64 on the CPU, as the verifier computes it), must return the spec's outputs as tensors
  without NaN. The LLM wrote that reference, so it runs only in the verifier's sandboxed reference process,
  never in the kernelgen process.
"""

from __future__ import annotations

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
    """"" when the spec's reference runs cleanly on the spec's inputs; else the spec error, one paragraph.
    The inputs are made here; the LLM's reference runs behind the verifier's wall (its own sandboxed
    process, `kernelgen.verify.references`), and its outputs are judged here."""
    import torch

    from kernelgen.agents.state import _load_spec_text
    from kernelgen.verify import references
    from kernelgen.verify.inputs import make_inputs, upcast
    from kernelgen.verify.sandbox import sandbox_disabled
    from kernelgen.verify.static import check_reference

    spec = _load_spec_text(spec_text, "<LLM spec.toml>")
    static = check_reference(spec.reference, "spec.toml reference")
    if static:
        return f"the spec's reference fails the static check: {static}"
    dtype = spec.dtypes[0] if spec.dtypes else "float32"
    requests, where, empty = [], {}, {}
    for label, dims, strided in _probe_cases(spec):
        for seed in PROBE_SEEDS:
            key = (label, seed)
            requests.append((key, upcast(make_inputs(spec, dims, dtype, "cpu", seed, strided))))
            where[key] = f"{label}, seed {seed}"
            empty[key] = bool(dims) and min(dims.values()) == 0
    try:
        got = references.evaluate(spec, requests, trusted=False, sandbox=not sandbox_disabled(), timeout=timeout)
    except references.ReferenceFailed as exc:
        return f"the spec's reference cannot be run: {exc}"
    for key, _ in requests:
        outs = got.get(key)
        if isinstance(outs, str) or outs is None:
            if empty[key]:
                continue  # the verifier also lets a reference reject an empty input
            return f"the spec's reference raised on the spec's own inputs ({where[key]}): {outs}"
        if len(outs) != len(spec.outputs):
            return (f"the spec's reference returns {len(outs)} output(s) but [signature] outputs names "
                    f"{len(spec.outputs)} ({spec.outputs}) ({where[key]})")
        for name, out in zip(spec.outputs, outs):
            if not isinstance(out, torch.Tensor):
                return f"the spec's reference returns a {type(out).__name__} for {name!r}, not a tensor ({where[key]})"
            if out.is_floating_point() and out.numel() and torch.isnan(out).any():
                n = int(torch.isnan(out).sum())
                # a NaN reference would accept a kernel that writes nothing (outputs start as NaN)
                return (f"the spec's reference gives NaN in {n} of {out.numel()} elements of {name!r} "
                        f"({where[key]}): its inputs leave the op's domain; choose fills inside it")
    return ""


def _probe_cases(spec) -> list[tuple[str, dict[str, int], bool]]:
    from kernelgen.verify.inputs import edge_shapes

    cases = [(f"test {s}", s, False) for s in spec.test_shapes]
    cases.append((f"strided rows {spec.test_shapes[0]}", spec.test_shapes[0], True))
    return cases + [(label, dims, False) for label, dims in edge_shapes(spec, PROBE_LONG_ROW)]
