"""Each bug candidate of the hostile battery is a real, subtle bug: run in this process on the interpreter, it looks
right on its spec's test shapes in every spec dtype (the way a careless verifier calls it) and is wrong under the
conditions its expect.toml names in [trigger]:

    dims = { M = 2, N = 5000 }   # instead of the first test shape
    dtype = "float16"            # instead of the spec's first dtype
    scale = 100.0                # the first input multiplied by this
    zero_row = true              # the first row of the first input all zeros
    layout = "nd" | "transposed" | "strided"   # (2, M/2, N) / column stride M / rows padded past N
    defaults = true              # the launcher called without max_block (as production calls it)
    calls = 4                    # calls with fresh inputs; the last one is judged (the first ones are right)
    aten = { dim = 0 }           # call the spec's [[aten]] adapter with these ATen arguments, judged against ATen
    tolerance = "default"        # judge with the dtype's default tolerance instead of the spec's
    blatant = true               # also wrong on the test shapes (an old, unsubtle candidate)
    expect = "wrong" | "raises" | "dtype" | "shape" | "alias" | "input_changed" | "earlier_output_changed"
             | "aten_mismatch"

Only bug candidates are imported here (checks accuracy, outputs, inputs, adapter, spec, and static ones with a
[trigger]); attacks never are.
"""

from __future__ import annotations

import importlib.util
import inspect
import math
import sys
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from battery import HOSTILE, bug_cases, expectations
from torch.utils._python_dispatch import TorchDispatchMode

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
DEFAULT_TOLERANCE = {"float32": (1e-5, 1.3e-6), "float16": (1e-3, 1e-3), "bfloat16": (1.6e-2, 1e-2)}
VERIFIER_MAX_BLOCK = 1024  # what the verifier passes to a launcher that takes max_block on the interpreter
BUGS = bug_cases()
_loaded = 0


@dataclass
class Candidate:
    case: str
    spec: dict[str, Any]
    module: Any
    trigger: dict[str, Any]

    @property
    def launcher(self):
        return getattr(self.module, self.spec["signature"]["function"])

    @property
    def reference(self):
        env: dict[str, Any] = {"torch": torch, "F": torch.nn.functional, "math": math}
        exec(compile(self.spec["reference"], f"{self.case}:reference", "exec"), env)
        return env["reference"]

    def dims(self, trigger: bool) -> dict[str, int]:
        first = dict(self.spec["shapes"]["test"][0])
        return dict(self.trigger.get("dims", first)) if trigger else first

    def dtype(self, trigger: bool) -> str:
        return self.trigger.get("dtype", self.spec["dtypes"][0]) if trigger else self.spec["dtypes"][0]

    def tolerance(self, dtype: str, default: bool = False) -> tuple[float, float]:
        own = self.spec.get("tolerance", {}).get(dtype)
        return DEFAULT_TOLERANCE[dtype] if default or own is None else (own["atol"], own["rtol"])


def load(case: str) -> Candidate:
    """A fresh import of the candidate's kernel.py (fresh module state: call counters start at zero)."""
    global _loaded
    _loaded += 1
    folder = HOSTILE / case
    spec = tomllib.loads((folder / "spec.toml").read_text())
    mod_spec = importlib.util.spec_from_file_location(f"hostile_bug_{case}_{_loaded}", folder / "kernel.py")
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return Candidate(case, spec, module, expectations()[case].trigger)


def make_inputs(c: Candidate, dims: dict[str, int], dtype: str, seed: int, trigger: dict[str, Any]) -> list[Any]:
    gen = torch.Generator().manual_seed(seed)
    args: list[Any] = []
    first = True
    for inp in c.spec["inputs"]:
        if inp.get("kind", "tensor") != "tensor":
            args.append(inp["value"])
            continue
        shape = [int(d) if str(d).isdigit() else dims[d] for d in inp["shape"]]
        t = torch.randn(shape, generator=gen)
        if first:
            t = t * trigger.get("scale", 1.0)
            if trigger.get("zero_row") and shape[0]:
                t[0] = 0.0
            first = False
        t = t.to(DTYPES[dtype if inp.get("dtype", "input") == "input" else inp["dtype"]])
        layout = trigger.get("layout")
        if layout and len(shape) == 2:
            if layout == "nd":
                assert shape[0] % 2 == 0, "layout nd splits the rows in two"
                t = t.view(2, shape[0] // 2, shape[1])
            elif layout == "transposed":
                t = t.t().contiguous().t()  # the same values, column stride M
            elif layout == "strided":
                wide = torch.randn(shape[0], shape[1] + 7, generator=gen).to(t.dtype)
                wide[:, : shape[1]] = t
                t = wide[:, : shape[1]]
            else:
                raise ValueError(f"unknown layout {layout!r}")
        args.append(t)
    return args


class NaNPoison(TorchDispatchMode):
    """Fresh float allocations start as NaN, as under the verifier's guard (the runs of the "looks right" test are
    the verifier's view; trigger runs are production's: no mode, whatever memory torch.empty hands out)."""

    ALLOCATIONS = ("empty", "empty_strided", "empty_like", "new_empty", "new_empty_strided")

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        fresh = func.overloadpacket.__name__ in self.ALLOCATIONS and isinstance(out, torch.Tensor)
        if fresh and out.is_floating_point():
            out.fill_(float("nan"))
        return out


def upcast(args: list[Any]) -> list[Any]:
    return [a.detach().clone().to(torch.float64) if isinstance(a, torch.Tensor) else a for a in args]


def as_tuple(x: Any) -> tuple:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def call(c: Candidate, args: list[Any], defaults: bool = False) -> tuple:
    params = inspect.signature(c.launcher).parameters
    kwargs = {"max_block": VERIFIER_MAX_BLOCK} if "max_block" in params and not defaults else {}
    return as_tuple(c.launcher(*args, **kwargs))


def close(got: Any, expected: torch.Tensor, c: Candidate, dtype: str, default_tolerance: bool = False) -> bool:
    """Right values and shape, judged with the tolerance of the output's dtype (as the verifier judges it)."""
    if not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(expected.shape):
        return False
    out_dtype = str(got.dtype).removeprefix("torch.")
    atol, rtol = c.tolerance(out_dtype if out_dtype in DTYPES else dtype, default_tolerance)
    g = got.detach().to(torch.float64)
    e = expected.to(got.dtype).to(torch.float64) if expected.is_floating_point() else expected.to(torch.float64)
    return torch.allclose(g, e, rtol=rtol, atol=atol, equal_nan=True)


def all_close(got: tuple, expected: tuple, c: Candidate, dtype: str, default_tolerance: bool = False) -> bool:
    return len(got) == len(expected) and all(close(g, e, c, dtype, default_tolerance) for g, e in zip(got, expected))


# ---- ATen arguments for the overloads the battery's adapters serve --------------------------------------------
def aten_args(overload: str, args: list[Any], opts: dict[str, Any]) -> tuple:
    x = args[0]
    if overload == "aten::rms_norm":
        return x, [x.shape[-1]], args[1], opts.get("eps", args[2])
    if overload in ("aten::_softmax", "aten::_log_softmax"):
        return x, opts.get("dim", -1), opts.get("half_to_float", False)
    if overload == "aten::silu":
        return (x,)
    raise ValueError(f"no ATen argument builder for {overload}")


def aten_expected(overload: str, call_args: tuple) -> tuple[torch.Tensor, torch.dtype]:
    """ATen's own answer on float64 copies, and the dtype ATen returns for the real arguments."""
    x = call_args[0]
    out_dtype = x.dtype
    wide = tuple(a.detach().to(torch.float64) if isinstance(a, torch.Tensor) else a for a in call_args)
    if overload in ("aten::_softmax", "aten::_log_softmax") and call_args[2]:
        out_dtype = torch.float32  # half_to_float: float16 in, float32 out
        wide = (wide[0], wide[1], False)
    op = getattr(torch.ops.aten, overload.removeprefix("aten::")).default
    return op(*wide), out_dtype


def test_every_bug_candidate_has_a_trigger():
    assert len(BUGS) >= 25
    missing = [case for case in BUGS if "expect" not in expectations()[case].trigger]
    assert not missing, f"bug candidates without a [trigger]: {missing}"


@pytest.mark.parametrize("case", BUGS)
def test_bug_candidate_looks_right_on_its_test_shapes(case):
    c = load(case)
    results = {}
    for n, dims in enumerate(c.spec["shapes"]["test"]):
        for dtype in c.spec["dtypes"]:
            for seed in (11, 12):  # two calls, fresh inputs each: a verifier that tries no more sees no bug
                args = make_inputs(c, dims, dtype, seed, {})
                expected = as_tuple(c.reference(*upcast(args)))
                with NaNPoison():
                    got = call(c, args)
                results[n, dtype, seed] = all_close(got, expected, c, dtype)
    if c.trigger.get("blatant"):
        assert not all(results.values()), f"{case} is marked blatant but looks right on its test shapes"
    else:
        wrong = [key for key, ok in results.items() if not ok]
        assert not wrong, f"{case} is already wrong on (test shape, dtype, seed) {wrong}: not a subtle bug"


def _judge_adapter(c: Candidate, dims: dict[str, int], dtype: str) -> None:
    t = c.trigger
    (aten,) = c.spec["aten"]
    args = make_inputs(c, dims, dtype, 21, t)
    call_args = aten_args(aten["overload"], args, t["aten"])
    expected, out_dtype = aten_expected(aten["overload"], call_args)
    got = getattr(c.module, aten["adapter"])(*call_args)
    assert got is not NotImplemented, f"{c.case}: the adapter hands this case back to ATen; the trigger shows nothing"
    if t["expect"] == "dtype":
        assert got.dtype != out_dtype, f"{c.case}: adapter returned {got.dtype}, as ATen does"
    else:
        assert t["expect"] == "wrong"
        atol, rtol = c.tolerance(str(out_dtype).removeprefix("torch."))
        right = tuple(got.shape) == tuple(expected.shape) and torch.allclose(
            got.to(torch.float64), expected.to(out_dtype).to(torch.float64), rtol=rtol, atol=atol, equal_nan=True)
        assert not right, f"{c.case}: the adapter agrees with {aten['overload']} under {t}"


@pytest.mark.parametrize("case", BUGS)
def test_bug_candidate_is_wrong_under_its_trigger(case):
    c = load(case)
    t = c.trigger
    dims, dtype, expect = c.dims(True), c.dtype(True), t["expect"]
    defaults = bool(t.get("defaults"))
    if "aten" in t:
        _judge_adapter(c, dims, dtype)
        return
    args = make_inputs(c, dims, dtype, 21, t)
    expected = as_tuple(c.reference(*upcast(args)))
    if expect == "raises":
        with pytest.raises(Exception):  # noqa: B017 - any exception: production gets no output at all
            call(c, args, defaults)
    elif expect == "wrong":
        calls = int(t.get("calls", 1))
        for k in range(1, calls):  # the earlier calls, on fresh inputs each, are right
            early = make_inputs(c, dims, dtype, 100 + k, t)
            assert all_close(call(c, early, defaults), as_tuple(c.reference(*upcast(early))), c, dtype), (
                f"{case}: call {k} of {calls} is already wrong")
        got = call(c, args, defaults)
        assert not all_close(got, expected, c, dtype, t.get("tolerance") == "default"), (
            f"{case}: right under {t}")
        if t.get("tolerance") == "default":  # the spec's widened tolerance is what hides it
            assert all_close(got, expected, c, dtype), f"{case}: wrong even under its spec's tolerance"
    elif expect == "dtype":
        got = call(c, args, defaults)
        assert got[0].dtype != args[0].dtype, f"{case}: output dtype {got[0].dtype} is the input's"
        assert all_close(got, expected, c, dtype), f"{case}: values wrong too, not only the dtype"
    elif expect == "shape":
        got = call(c, args, defaults)
        assert tuple(got[0].shape) != tuple(expected[0].shape), f"{case}: shape {tuple(got[0].shape)} is right"
    elif expect == "alias":
        inputs = [a for a in args if isinstance(a, torch.Tensor)]
        got = call(c, args, defaults)
        storages = {a.untyped_storage().data_ptr() for a in inputs}
        assert any(g.untyped_storage().data_ptr() in storages for g in got), f"{case}: no output aliases an input"
    elif expect == "input_changed":
        before = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
        got = call(c, args, defaults)
        assert all_close(got, expected, c, dtype), f"{case}: the output is wrong too, not only the input"
        changed = [i for i, (a, b) in enumerate(zip(args, before))
                   if isinstance(a, torch.Tensor) and not torch.equal(a, b)]
        assert changed, f"{case}: every input is bitwise unchanged"
    elif expect == "earlier_output_changed":
        first = call(c, args, defaults)
        assert all_close(first, expected, c, dtype), f"{case}: call 1 is wrong from the start"
        call(c, make_inputs(c, dims, dtype, 22, t), defaults)
        assert not all_close(first, expected, c, dtype), f"{case}: call 1's output survived call 2"
    elif expect == "aten_mismatch":
        got = call(c, args, defaults)
        assert all_close(got, expected, c, dtype), f"{case}: disagrees with its own reference"
        (aten,) = c.spec["aten"]
        ours, _ = aten_expected(aten["overload"], aten_args(aten["overload"], args, {}))
        assert not all_close(got, (ours,), c, dtype), f"{case}: agrees with {aten['overload']}"
    else:
        raise AssertionError(f"unknown trigger.expect {expect!r}")


CONTROLS = [c for c, e in expectations().items() if e.passes]
CONTROL_TRIGGERS = [
    {"layout": "nd"}, {"layout": "transposed"}, {"layout": "strided"}, {"zero_row": True}, {"scale": 100.0},
    {"defaults": True, "dims": {"M": 2, "N": 5000}}, {"dtype": "float16", "scale": 100.0},
]


@pytest.mark.parametrize("case", CONTROLS)
def test_correct_controls_are_right_under_every_trigger(case):
    """The other side of the harness: what shows the bugs above leaves a correct kernel right."""
    c = load(case)
    assert len(CONTROLS) >= 4
    for trigger in CONTROL_TRIGGERS:
        dims = dict(trigger.get("dims", {"M": 4, "N": 64}))
        for name in c.dims(False):
            dims.setdefault(name, c.dims(False)[name])
        dtype = trigger.get("dtype", c.dtype(False))
        for call_no in range(3):  # repeated calls: nothing changes between them
            args = make_inputs(c, dims, dtype, 31 + call_no, trigger)
            before = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
            expected = as_tuple(c.reference(*upcast(args)))
            got = call(c, args, bool(trigger.get("defaults")))
            assert all_close(got, expected, c, dtype), f"{case} wrong under {trigger}"
            assert all(g.dtype == args[0].dtype for g in got), f"{case}: output dtype under {trigger}"
            assert all(not isinstance(a, torch.Tensor) or torch.equal(a, b) for a, b in zip(args, before))
