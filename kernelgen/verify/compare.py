"""The parent's side of verification: what the candidate returned against what the reference says.

Everything here runs in the trusted process on tensors read back from the sandbox; it never runs candidate
code. Checks, in this order per call: the candidate raised ("accuracy", or "sandbox" for a dead GPU
context), no Triton launch or torch compute under the guard ("anticheat"), the outputs' count, type,
device, dtype, shape and fresh storage ("outputs"), inputs bitwise unchanged ("inputs"), equal outputs for
different inputs where the reference's differ ("anticheat"), the values ("accuracy"); per dtype, ghost
replay ("anticheat"); per adapter call, the dispatcher's answer against ATen's ("adapter").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from kernelgen.spec import OpSpec
from kernelgen.verify.worker import FATAL_MARKERS


@dataclass
class Outcome:
    check: str = ""
    message: str = ""
    rows: list[dict[str, Any]] = field(default_factory=list)
    launches: int = 0

    @property
    def passed(self) -> bool:
        return not self.check


class Failed(Exception):
    def __init__(self, check: str, message: str):
        super().__init__(message)
        self.check, self.message = check, message


def _storage(t: torch.Tensor) -> tuple[int, int] | None:
    st = t.untyped_storage()
    return (st.data_ptr(), st.nbytes()) if st.nbytes() else None


def _overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[0] + b[1] and b[0] < a[0] + a[1]


def storage_bytes(t: torch.Tensor) -> torch.Tensor:
    """Every byte of the tensor's storage (a strided view's padding included)."""
    return torch.empty(0, dtype=torch.uint8).set_(t.untyped_storage())


def out_name(spec: OpSpec, i: int) -> str:
    return spec.outputs[i] if i < len(spec.outputs) else f"output {i}"


def tensors_equal(a: tuple, b: tuple) -> bool:
    return len(a) == len(b) and all(
        isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and x.shape == y.shape and x.dtype == y.dtype
        and torch.equal(torch.nan_to_num(x.cpu()), torch.nan_to_num(y.cpu()))
        and torch.equal(torch.isnan(x.cpu()), torch.isnan(y.cpu()))
        for x, y in zip(a, b))


def values(spec: OpSpec, got: list, expected: tuple, dtype: str, scaled: bool = False) -> str:
    """"" when every output matches the reference within the dtype's tolerance, else why not. `scaled`
    (large-magnitude inputs): atol grows with the largest expected value, since an output that cancels
    large terms carries an absolute rounding error of the terms' size in any correct kernel."""
    for i, (g, e) in enumerate(zip(got, expected)):
        name = out_name(spec, i)
        if g.numel() == 0:
            continue
        out_dtype = str(g.dtype).removeprefix("torch.")
        atol, rtol = spec.tolerance(out_dtype if out_dtype in ("float32", "float16", "bfloat16") else dtype)
        g64 = g.detach().cpu().to(torch.float64)
        e64 = e.to(g.dtype).to(torch.float64) if e.is_floating_point() else e.to(torch.float64)
        if scaled:
            finite = e64[torch.isfinite(e64)]
            atol *= max(1.0, float(finite.abs().max())) if finite.numel() else 1.0
        nan = torch.isnan(g64) & ~torch.isnan(e64)
        if nan.any():
            return f"{name}: {int(nan.sum())} of {g.numel()} elements are NaN (unwritten or invalid)"
        try:
            torch.testing.assert_close(g64, e64, atol=atol, rtol=rtol, equal_nan=True)
        except AssertionError as exc:
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
            head = f"{name} differs from the reference ({out_dtype}, atol={atol:.3g}, rtol={rtol}): "
            return head + "; ".join(lines[1:4])
    return ""


def shape_and_kind(spec: OpSpec, res: dict, expected: tuple, device: str, want_dtypes: list | None) -> str:
    got = res["outputs"]
    if len(got) != len(expected):
        return f"returned {len(got)} outputs, expected {len(expected)}"
    for i, (g, e) in enumerate(zip(got, expected)):
        name = out_name(spec, i)
        if not isinstance(g, torch.Tensor):
            return f"{name} is a {g.get('type', '?') if isinstance(g, dict) else type(g).__name__}, expected a tensor"
        if res["devices"] and res["devices"][i] != device:
            return f"{name} is on {res['devices'][i]}, expected {device}"
        want = want_dtypes[i] if want_dtypes and i < len(want_dtypes) else None
        if want is not None and g.dtype != want:
            have, need = str(g.dtype).removeprefix("torch."), str(want).removeprefix("torch.")
            return f"{name} has dtype {have}, expected {need}"
        if tuple(g.shape) != tuple(e.shape):
            return f"{name} has shape {tuple(g.shape)}, expected {tuple(e.shape)}"
    return ""


class Comparer:
    """Walks the results call by call, remembering storages handed out so far (fresh-storage check)."""

    def __init__(self, spec: OpSpec, device: str, calls: dict, results: dict, refs: dict, out_dtypes: dict):
        self.spec, self.device = spec, device
        self.calls, self.results, self.refs, self.out_dtypes = calls, results, refs, out_dtypes
        self.seen: list[tuple[tuple[int, int], str]] = []  # storages of outputs returned so far
        self.done: set[int] = set()  # calls already checked (a call may appear in two groups)
        self.outcome = Outcome()

    def result(self, cid: int, where: str) -> dict:
        res = self.results.get(cid)
        if res is None:
            raise Failed("sandbox", f"the worker stopped before {where} (an earlier call broke the process)")
        if res["error"]:
            check = "sandbox" if any(m in res["error"] for m in FATAL_MARKERS) else "accuracy"
            raise Failed(check, f"candidate raised on {where}: {res['error']}")
        return res

    def fresh(self, res: dict, where: str) -> None:
        inputs = [(_storage(a), f"input {k}") for k, a in enumerate(res["inputs"]) if isinstance(a, torch.Tensor)]
        mine: list[tuple[tuple[int, int], str]] = []
        for i, g in enumerate(res["outputs"]):
            st = _storage(g)
            if st is None:
                continue
            for other, what in [x for x in inputs if x[0] is not None] + self.seen + mine:
                if _overlaps(st, other):
                    raise Failed("outputs", f"{out_name(self.spec, i)} on {where} shares storage with {what}: "
                                 "outputs must be fresh tensors (no alias of an input, another output or an "
                                 "earlier call's output)")
            mine.append((st, f"{out_name(self.spec, i)} of an earlier call"))
        self.seen += mine + [(st, "an input of an earlier call") for st, _ in inputs if st is not None]

    def unchanged(self, res: dict, sent: list, where: str) -> None:
        for k, (before, after) in enumerate(zip(sent, res["inputs"])):
            if isinstance(before, torch.Tensor) and not torch.equal(storage_bytes(before), storage_bytes(after)):
                name = self.spec.inputs[k].name if k < len(self.spec.inputs) else f"argument {k}"
                raise Failed("inputs", f"input {name!r} changed during the call on {where}: a kernel must not "
                             "write into its inputs")

    def group(self, g: dict) -> None:
        dtype, label = g["dtype"], g["label"]
        prev: tuple | None = None
        prev_ref: tuple | None = None
        for n, cid in enumerate(g["ids"]):
            call = self.calls[cid]
            where = f"{dtype} {label} (seed {call.seed}{', ' if call.guard else ', no guard, '}call {n + 1})"
            ref = self.refs.get(call.same_as if call.same_as is not None else cid)
            if isinstance(ref, str):
                if g.get("optional"):
                    self.outcome.rows.append({"dtype": dtype, "case": label, "dims": g["dims"], "passed": None,
                                              "skipped": f"the reference does not take it: {ref[:200]}"})
                    return
                raise Failed("accuracy", f"reference failed on {where}: {ref}")
            nonempty = all(t.numel() for t in ref if isinstance(t, torch.Tensor))
            raw = self.results.get(cid)
            if g.get("refusable") and nonempty and raw is not None and raw["error"] and not any(
                    m in raw["error"] for m in FATAL_MARKERS):
                self.outcome.rows.append({"dtype": dtype, "case": label, "dims": g["dims"], "passed": None,
                                          "skipped": f"the candidate refuses it: {raw['error'][:200]}"})
                return
            res = self.result(cid, where)
            first_time = cid not in self.done
            self.done.add(cid)
            self.outcome.launches += res["launches"] if first_time else 0
            if res["violations"]:
                raise Failed("anticheat", f"computes with torch ops {res['violations'][:5]} on {where}; only "
                             "allocation/view ops are allowed")
            if nonempty and res["launches"] == 0:
                raise Failed("anticheat", f"launched no Triton kernel on {where}")
            problem = shape_and_kind(self.spec, res, ref, self.device, self.out_dtypes.get(dtype))
            if problem:
                raise Failed("outputs", f"{where}: {problem}")
            if first_time:
                self.fresh(res, where)
            source = self.calls[call.same_as] if call.same_as is not None else call
            self.unchanged(res, source.args, where)
            got = tuple(res["outputs"])
            if prev is not None and nonempty and not g.get("same_inputs") and tensors_equal(got, prev):
                # Equal outputs are a replay only where the references differ by more than the tolerance:
                # two bfloat16 results 1 ulp apart in float64 may round to one value in a correct kernel.
                if values(self.spec, list(_cast(prev_ref, got)), ref, dtype, scaled=g.get("magnitude", False)):
                    raise Failed("anticheat", f"same output for two different inputs on {dtype} {label}, where "
                                 "the reference's outputs differ by more than the tolerance")
            msg = values(self.spec, list(got), ref, dtype, scaled=g.get("magnitude", False))
            if msg:
                raise Failed("accuracy", f"{where}: {msg}")
            prev, prev_ref = got, ref
        self.outcome.rows.append({"dtype": dtype, "case": label, "dims": g["dims"], "layout": g.get("layout", ""),
                                  "calls": len(g["ids"]), "passed": True})

    def ghost(self, g: dict) -> None:
        (cid,) = g["ids"]
        res, normal = self.results.get(cid), self.results.get(g["of"])
        if res is None or normal is None or res["error"] or normal["error"]:
            return  # raising without its launches is a change; a missing normal call failed elsewhere
        ref = self.refs.get(g["of"])
        if isinstance(ref, tuple) and not all(t.numel() for t in ref if isinstance(t, torch.Tensor)):
            return
        if tensors_equal(tuple(res["outputs"]), tuple(normal["outputs"])):
            raise Failed("anticheat", f"ghost replay on {g['dtype']}: with every Triton launch turned into a no-op "
                         "the outputs did not change (the result is computed outside Triton)")
        self.outcome.rows.append({"dtype": g["dtype"], "case": "ghost replay", "passed": True})


def adapter_calls(spec: OpSpec, calls: list, results: dict, verified: list[str], outcome: Outcome,
                  device: str = "cpu") -> None:
    """Each adapter call through the dispatcher against ATen's own op (float64, computed here)."""
    from kernelgen.verify.adapters import aten_dtypes, aten_expected

    normal: dict[tuple[str, str], dict] = {}
    for call in calls:
        where = f"{call.dtype} {call.case}"
        res = results.get(call.id)
        if res is None:
            raise Failed("sandbox", f"the worker stopped before {where}")
        if call.ghost:
            first = normal.get((call.overload, call.dtype))
            if first and first["served"] and not res["error"] and tensors_equal(tuple(res["outputs"]),
                                                                                tuple(first["outputs"])):
                raise Failed("anticheat", f"{where}: with every Triton launch turned into a no-op the adapter's "
                             "outputs did not change (it computes outside Triton)")
            continue
        normal[(call.overload, call.dtype)] = res
        if res["error"]:
            check = "sandbox" if any(m in res["error"] for m in FATAL_MARKERS) else "adapter"
            raise Failed(check, f"{where}: the ATen call raised through the dispatcher: {res['error']}")
        if not res["served"]:
            outcome.rows.append({"dtype": call.dtype, "case": call.case, "passed": True, "served": False})
            continue
        if call.dtype not in spec.dtypes:
            raise Failed("spec", f"{where}: the adapter serves {call.dtype} but the spec's dtypes are {spec.dtypes}: "
                         "add it to the spec (it is then verified) or return NotImplemented for it so ATen runs")
        if call.dtype not in verified:
            raise Failed("adapter", f"{where}: the adapter serves {call.dtype}, which was not verified here; "
                         "return NotImplemented for it so ATen runs")
        if res["launches"] == 0:
            raise Failed("anticheat", f"{where}: the adapter served the call without a Triton launch")
        for k, (before, after) in enumerate(zip(call.args, res["inputs"])):
            if isinstance(before, torch.Tensor) and not torch.equal(storage_bytes(before), storage_bytes(after)):
                raise Failed("inputs", f"{where}: ATen argument {k} changed during the call")
        ins = [_storage(a) for a in res["inputs"] if isinstance(a, torch.Tensor)]
        for i, g in enumerate(res["outputs"]):
            st = _storage(g) if isinstance(g, torch.Tensor) else None
            if st is not None and any(x is not None and _overlaps(st, x) for x in ins):
                raise Failed("outputs", f"{where}: output {i} shares storage with an input (outputs must be fresh)")
        expected = aten_expected(call.overload, call.args if call.expect_args is None else call.expect_args)
        dtypes = aten_dtypes(call.overload, call.args, device)  # what ATen gives a model for these arguments
        got = list(res["outputs"])
        if len(got) != len(expected) or not all(isinstance(g, torch.Tensor) for g in got):
            raise Failed("adapter", f"{where}: returned {len(got)} outputs, ATen returns {len(expected)} tensors")
        for i, (g, e, want) in enumerate(zip(got, expected, dtypes)):
            if tuple(g.shape) != tuple(e.shape):
                raise Failed("adapter", f"{where}: output {i} has shape {tuple(g.shape)}, ATen's {tuple(e.shape)}")
            if g.dtype != want:
                raise Failed("adapter", f"{where}: output {i} is {g.dtype}, ATen returns {want}")
        msg = values(spec, got, expected, call.dtype)
        if msg:
            raise Failed("adapter", f"{where}: disagrees with ATen's {call.overload}: {msg}")
        outcome.rows.append({"dtype": call.dtype, "case": call.case, "passed": True, "served": True})


def _cast(ref: tuple, like: tuple) -> tuple:
    return tuple(r.to(g.dtype) if isinstance(r, torch.Tensor) and isinstance(g, torch.Tensor) else r
                 for r, g in zip(ref, like))


def compare(spec: OpSpec, device: str, calls: list, groups: list, results: list, refs: dict,
            out_dtypes: dict) -> Outcome:
    cmp = Comparer(spec, device, {c.id: c for c in calls}, {r["id"]: r for r in results}, refs, out_dtypes)
    try:
        for g in groups:
            cmp.ghost(g) if g.get("ghost") else cmp.group(g)
    except Failed as exc:
        cmp.outcome.check, cmp.outcome.message = exc.check, exc.message
    return cmp.outcome
