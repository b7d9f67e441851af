"""The plan of calls the trusted parent sends to a candidate's sandboxed process.

Every call carries its inputs (CPU tensors, generated here from fresh seeds) and how to make it: under the
dispatch guard or not, with Triton launches turned into no-ops (ghost replay), on the same device inputs
as an earlier call (repeated calls), or through the ATen dispatcher with an adapter registered. The child
sees inputs only: reference outputs, tolerances and the verdict stay in the parent.

Cases per dtype: the spec's test shapes; then, from the first test shape, strided rows, transposed inputs
(a column stride other than 1), several leading dims, large and small magnitudes (small ones make an eps
matter), an all-zero and a constant row,
one row, a non-power-of-two row, a row longer than one block (with a small max_block, and with the launcher's
own defaults), zero rows and zero columns. Every case has
`trials` fresh seeds, alternately under the guard and without it (a kernel must not tell a verification
run from production); the launcher is called with its own defaults except in the long-row case.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import torch

from kernelgen.backends.base import Backend
from kernelgen.spec import OpSpec
from kernelgen.verify.adapters import ADAPTER_DTYPES, AtenCallError, aten_args, with_arg
from kernelgen.verify.inputs import edge_shapes, make_inputs, nd_applies

INTERPRETER_LONG_ROW_BLOCK = 1024  # the interpreter is slow: a smaller block limit keeps "long row" cheap
LARGE_MAGNITUDE = {"float32": 1e4, "float16": 100.0, "bfloat16": 100.0}
# Small inputs make an eps matter: a norm whose mean square is 1e-6 depends on eps through its rstd, so a
# kernel that bakes in another dtype's eps (F.rms_norm's eps=None is finfo(input dtype).eps) is caught.
SMALL_MAGNITUDE = 1e-3
REPEATS = 3  # calls on the very same inputs: a kernel that changes with the call count is wrong


@dataclass
class Call:
    id: int
    case: str
    dtype: str
    dims: dict[str, int]
    seed: int
    args: list[Any]
    kwargs: dict[str, Any] = field(default_factory=dict)
    guard: bool = True
    ghost: bool = False
    same_as: int | None = None  # run on the device inputs of that call (repeated calls)
    overload: str = ""  # adapter calls: the ATen overload and the adapter's name in kernel.py
    adapter: str = ""
    expect_args: list[Any] | None = None  # adapter calls whose expected values ATen computes from other arguments
    trial: int = 0

    @property
    def kind(self) -> str:
        return "adapter" if self.overload else "ghost" if self.ghost else "call"

    def wire(self) -> dict[str, Any]:
        """What the child receives: no label, no dtype name, nothing about the expected answer."""
        return {"id": self.id, "args": list(self.args), "kwargs": dict(self.kwargs), "guard": self.guard,
                "ghost": self.ghost, "same_as": -1 if self.same_as is None else self.same_as,
                "overload": self.overload, "adapter": self.adapter}


def launcher_params(launcher) -> list[str]:
    try:
        return list(inspect.signature(launcher).parameters)
    except (TypeError, ValueError):
        return []


def long_row_block(params: list[str], backend: Backend) -> dict[str, Any]:
    """The `max_block` the long-row case passes (a row longer than one block), when the launcher takes it."""
    if "max_block" not in params:
        return {}
    limit = backend.max_block_size
    return {"max_block": min(limit, INTERPRETER_LONG_ROW_BLOCK) if backend.interpret else limit}


def cases(spec: OpSpec, backend: Backend, block_kwargs: dict[str, Any]) -> list[dict[str, Any]]:
    """Each case: label, dims, input layout/magnitude options, launcher kwargs."""
    base = spec.test_shapes[0]
    out = [dict(label=f"test {s}", dims=s) for s in spec.test_shapes]
    out.append(dict(label=f"strided rows {base}", dims=base, layout="strided"))
    out.append(dict(label=f"transposed {base}", dims=base, layout="transposed"))
    if nd_applies(spec):
        out.append(dict(label=f"several leading dims {base}", dims=base, layout="nd", optional=True))
    out.append(dict(label=f"large magnitude {base}", dims=base, magnitude=True))
    out.append(dict(label=f"small magnitude {base}", dims=base, small=True))
    if base.get(spec.row_dim, 0) >= 1:
        out.append(dict(label=f"zero and constant rows {base}", dims=base, special_rows=True))
    limit = block_kwargs.get("max_block", backend.max_block_size)
    for label, dims in edge_shapes(spec, 2 * min(limit, 16384) + 37):
        case = dict(label=label, dims=dims, optional=label.startswith("zero"))
        if label == "longer than one block":
            case["kwargs"] = dict(block_kwargs)
        out.append(case)
        if label == "longer than one block" and block_kwargs:
            # Production calls pass no max_block: the launcher's own choice must take long rows too.
            wide = {**dims, spec.col_dim: 2 * min(backend.max_block_size, 16384) + 37}
            out.append(dict(label="longer than one block, launcher defaults", dims=wide))
    if spec.col_dim in base:
        # A reduction over zero elements has no agreed value (NaN, -inf, an error): refusing it is fine.
        out.append(dict(label="zero columns", dims={**base, spec.col_dim: 0}, optional=True, refusable=True))
    return out


def build(spec: OpSpec, backend: Backend, params: list[str], dtypes: list[str], trials: int, seed: int
          ) -> tuple[list[Call], list[dict[str, Any]]]:
    """The calls, and per case the metadata the parent compares with (label, dtype, call ids per trial).
    `params`: the launcher's parameter names."""
    calls: list[Call] = []
    groups: list[dict[str, Any]] = []
    block_kwargs = long_row_block(params, backend)
    case_list = cases(spec, backend, block_kwargs)

    def add(**kw) -> Call:
        call = Call(id=len(calls), **kw)
        calls.append(call)
        return call

    for dtype in dtypes:
        first_group = len(groups)
        for case in case_list:
            ids = []
            for trial in range(trials):
                s = seed + trial * 7919
                args = make_inputs(spec, case["dims"], dtype, "cpu", s, layout=case.get("layout", "contiguous"),
                                   magnitude=(LARGE_MAGNITUDE[dtype] if case.get("magnitude")
                                              else SMALL_MAGNITUDE if case.get("small") else 1.0),
                                   special_rows=case.get("special_rows", False))
                # Odd trials run without the dispatch guard (as production does); even ones under it.
                ids.append(add(case=case["label"], dtype=dtype, dims=case["dims"], seed=s, args=args,
                               kwargs=case.get("kwargs", {}), guard=trial % 2 == 0, trial=trial).id)
            groups.append(dict(label=case["label"], dtype=dtype, dims=case["dims"], ids=ids,
                               layout=case.get("layout", "contiguous"), optional=case.get("optional", False),
                               magnitude=case.get("magnitude", False), refusable=case.get("refusable", False)))
        # Repeated calls and ghost replay on the first test shape.
        first = calls[groups[first_group]["ids"][0]]
        rep = [add(case=f"repeated call {k + 2}", dtype=dtype, dims=first.dims, seed=first.seed, args=[],
                   same_as=first.id, guard=k % 2 == 0) for k in range(REPEATS - 1)]
        groups.append(dict(label="repeated calls", dtype=dtype, dims=first.dims, ids=[first.id] + [c.id for c in rep],
                           same_inputs=True, optional=False, layout="contiguous"))
        ghost = add(case="ghost replay", dtype=dtype, dims=first.dims, seed=first.seed,
                    args=make_inputs(spec, first.dims, dtype, "cpu", first.seed), ghost=True)
        groups.append(dict(label="ghost replay", dtype=dtype, ids=[ghost.id], of=first.id, ghost=True))
    return calls, groups


def adapter_calls(spec: OpSpec, backend: Backend, seed: int, module_names: set[str], start: int
                  ) -> tuple[list[Call], list[str]]:
    """One call per `[[aten]]` adapter and float dtype the backend has (an adapter must hand dtypes that
    were not verified back to ATen), with a zero and a constant row. Problems: adapters that cannot be
    called from the spec's inputs (named, never skipped silently)."""
    calls: list[Call] = []
    problems: list[str] = []
    dims = spec.test_shapes[0]
    for ov in spec.aten:
        if ov.adapter not in module_names:
            continue  # a backend variant may offer the launcher only; nothing is registered then
        for dtype in ADAPTER_DTYPES:
            if not backend.supports_dtype(dtype):
                continue
            inputs = make_inputs(spec, dims, dtype, "cpu", seed + 17, special_rows=True)
            try:
                args = aten_args(spec, ov.overload, inputs)
            except AtenCallError as exc:
                problems.append(str(exc))
                break
            calls.append(Call(id=start + len(calls), case=f"adapter {ov.adapter} via {ov.overload}", dtype=dtype,
                              dims=dims, seed=seed + 17, args=args, overload=ov.overload, adapter=ov.adapter))
            calls.append(Call(id=start + len(calls), case=f"adapter {ov.adapter} ghost replay", dtype=dtype,
                              dims=dims, seed=seed + 17, args=list(args), overload=ov.overload, adapter=ov.adapter,
                              ghost=True))
            first = next((a for a in args if isinstance(a, torch.Tensor)), None)
            other_dim = with_arg(ov.overload, args, "dim", 0, "int") if first is not None and first.dim() > 1 else None
            if other_dim is not None:
                # A model may reduce over another dim: the adapter must serve it right or hand it back to ATen.
                calls.append(Call(id=start + len(calls), case=f"adapter {ov.adapter} via {ov.overload}, dim=0",
                                  dtype=dtype, dims=dims, seed=seed + 17, args=other_dim, overload=ov.overload,
                                  adapter=ov.adapter))
            half = with_arg(ov.overload, args, "half_to_float", True, "bool") if dtype == "float16" else None
            if half is not None:
                # A model's float16 softmax may ask for a float32 result; the flag changes the output dtype
                # only, so the values expected are ATen's without it (its CPU kernels refuse the flag).
                calls.append(Call(id=start + len(calls), case=f"adapter {ov.adapter} via {ov.overload}, "
                                  "half_to_float", dtype=dtype, dims=dims, seed=seed + 17, args=half,
                                  overload=ov.overload, adapter=ov.adapter, expect_args=args))
            moved = _other_floats(spec, inputs)
            if moved is not None:
                # A model passes its own eps/scale: an adapter that drops one (the launcher's default is then
                # used) agrees with ATen at the spec's value and only shows with another one. It comes after
                # the ghost replay, which is compared with the first call.
                calls.append(Call(id=start + len(calls), case=f"adapter {ov.adapter} via {ov.overload}, "
                                  "other float arguments", dtype=dtype, dims=dims, seed=seed + 17,
                                  args=aten_args(spec, ov.overload, moved), overload=ov.overload,
                                  adapter=ov.adapter))
    return calls, problems


def _other_floats(spec: OpSpec, inputs: list[Any]) -> list[Any] | None:
    """The inputs with every float scalar moved well away from the spec's value (4 v + 0.25: an eps of 1e-6
    becomes about 0.25, a scale of 0.125 becomes 0.75), or None when the spec has no float scalar."""
    if not any(i.kind == "float" for i in spec.inputs):
        return None
    return [4 * a + 0.25 if i.kind == "float" else a for a, i in zip(inputs, spec.inputs)]
