"""Rules a spec must meet before its candidate is verified against it: a spec cannot lower the bar.

- A widened tolerance is at most `TOLERANCE_CAP` times the dtype's default, and says why (the reason is
  shown in reports).
- `row_dim` and `col_dim` name dims of the inputs' shapes (otherwise the edge cases built from them would
  silently not happen).
- A spec that overrides `aten::X` has a reference that matches ATen's X on random inputs (checked by
  `aten_agreement` with the reference's outputs, which the caller evaluates where the spec's trust allows).
- The reference means the same function in float32 and float64 (`precision_problem`). Candidates are judged
  against the reference run in float64; a reference whose constants follow its input dtype (F.rms_norm's
  eps=None is torch.finfo(input.dtype).eps) would then accept a kernel with float64's constant, wrong for
  every dtype a model runs. Small inputs make such a constant show.
"""

from __future__ import annotations

from typing import Any

import torch

from kernelgen.spec import DEFAULT_TOLERANCES, OpSpec
from kernelgen.verify.adapters import AtenCallError, aten_args, aten_expected
from kernelgen.verify.inputs import make_inputs, upcast

TOLERANCE_CAP = 10.0
AGREEMENT_SEEDS = (101, 202)
AGREEMENT_TOL = (1e-6, 1e-6)  # both sides run in float64: any real difference is far larger
PRECISION_SEED = 303
PRECISION_SCALE = 1e-3  # the first float input is this small: a mean square of 1e-6 lets an eps show
PRECISION_TOL = 1e-3  # float32 against float64, relative to the output's largest value: rounding is far less


def static_rules(spec: OpSpec) -> str | None:
    """The rules that need no reference evaluation: None when met, else one line."""
    for dtype, tol in spec.tolerances.items():
        atol, rtol = DEFAULT_TOLERANCES[dtype]
        if tol.atol > TOLERANCE_CAP * atol or tol.rtol > TOLERANCE_CAP * rtol:
            return (f"{spec.source}: tolerance.{dtype} (atol={tol.atol:g}, rtol={tol.rtol:g}) is wider than "
                    f"{TOLERANCE_CAP:g}x the default (atol={atol:g}, rtol={rtol:g}); a kernel that needs more is wrong")
    dims = spec.dims()
    for field_name, dim in (("row_dim", spec.row_dim), ("col_dim", spec.col_dim)):
        if dim not in dims:
            return (f"{spec.source}: shapes.{field_name} = {dim!r} names no dim of the inputs' shapes "
                    f"({', '.join(sorted(dims)) or 'none'}); the edge cases are built from it")
    return None


def widened(spec: OpSpec) -> list[dict[str, Any]]:
    """The spec's widened tolerances with their reasons, for reports."""
    return [{"dtype": d, "atol": t.atol, "rtol": t.rtol, "reason": t.reason,
             "default": list(DEFAULT_TOLERANCES[d])} for d, t in sorted(spec.tolerances.items())]


def agreement_requests(spec: OpSpec) -> tuple[list[tuple[Any, list]], dict[Any, tuple], str | None]:
    """Reference requests for the ATen agreement rule, ATen's answers for them (computed here: ATen is
    trusted), and a problem when the ATen call cannot be built from the spec's inputs."""
    requests, expected = [], {}
    for ov in spec.aten:
        for seed in AGREEMENT_SEEDS:
            args = upcast(make_inputs(spec, spec.test_shapes[0], "float32", "cpu", seed))
            try:
                expected[("aten", ov.overload, seed)] = aten_expected(ov.overload, aten_args(spec, ov.overload, args))
            except AtenCallError as exc:
                return [], {}, f"{spec.source}: [[aten]] {exc}"
            except Exception as exc:
                return [], {}, f"{spec.source}: ATen's {ov.overload} rejects the spec's inputs: {exc}"[:500]
            requests.append((("aten", ov.overload, seed), args))
    return requests, expected, None


def aten_agreement(spec: OpSpec, expected: dict[Any, tuple], refs: dict[Any, Any]) -> str | None:
    """None when the reference matches ATen's op on every agreement input (its outputs against ATen's
    first outputs), else one line."""
    for key, aten_out in expected.items():
        ref = refs.get(key)
        overload = key[1]
        if isinstance(ref, str) or ref is None:
            return f"{spec.source}: the reference failed on the inputs used to compare it with {overload}: {ref}"
        for i, r in enumerate(ref):
            if i >= len(aten_out) or not isinstance(r, torch.Tensor) or r.shape != aten_out[i].shape:
                return f"{spec.source}: the reference's output {i} does not have the shape of {overload}'s"
            if not torch.allclose(r.double(), aten_out[i].double(), atol=AGREEMENT_TOL[0], rtol=AGREEMENT_TOL[1],
                                  equal_nan=True):
                diff = (r.double() - aten_out[i].double()).abs().max().item()
                return (f"{spec.source}: the reference disagrees with {overload}, the ATen op the spec overrides "
                        f"(output {i}, max difference {diff:.3g} in float64); the adapter would change what "
                        "models compute")
    return None


def precision_requests(spec: OpSpec) -> list[tuple[Any, list]]:
    """The same small inputs twice: in float32 (`("precision32",)`, for the caller to run as they are) and
    upcast to float64 (`("precision64",)`)."""
    if "float32" not in spec.dtypes:
        return []
    args = make_inputs(spec, dict(spec.test_shapes[0]), "float32", "cpu", PRECISION_SEED, magnitude=PRECISION_SCALE)
    return [(("precision32",), args), (("precision64",), upcast(args))]


def precision_problem(spec: OpSpec, refs: dict[Any, Any]) -> str | None:
    """None when the reference's float32 outputs match its float64 outputs on `precision_requests`' inputs
    (or it cannot run in float32 on the CPU: nothing to compare), else one line."""
    low, high = refs.get(("precision32",)), refs.get(("precision64",))
    if not isinstance(low, tuple) or not isinstance(high, tuple):
        return None
    for i, (a, b) in enumerate(zip(low, high)):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)) or not b.is_floating_point():
            continue
        if a.shape != b.shape or not b.numel():
            continue
        a64, b64 = a.double(), b.double()
        finite = torch.isfinite(b64)
        scale = b64[finite].abs().max().item() if finite.any() else 0.0
        diff = (a64 - b64)[finite].abs().max().item() if finite.any() else 0.0
        if diff > PRECISION_TOL * scale:
            return (f"{spec.source}: the reference computes another function in float32 than in float64 (output "
                    f"{i} differs by {diff / scale:.2g} of its largest value on small inputs): a constant follows "
                    "the input dtype (e.g. eps=None, which is torch.finfo(dtype).eps). Candidates are judged in "
                    "float64, so give such constants explicitly (e.g. eps=1e-6)")
    return None
