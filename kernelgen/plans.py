"""Launch plans: a library launcher's host work done once per argument signature, then replayed.

A library launcher (and an ATen adapter around it) is plain Python: it checks its arguments, takes views,
allocates its outputs and launches one or more compiled Triton kernels. Given the same signature of
arguments (each tensor's dtype, shape, strides, device and 16-byte alignment; the value of every other
argument) it does the same thing every time; only the data pointers differ. `planned(fn)` records that work
once per signature and replays it on later calls: allocate the same buffers, launch the same cached kernels
with the same grids and scalars and the new pointers, return the same structure. A replay is a generated
function of a few lines (built by kernelgen/plan_build.py), so a small call costs about what the allocation
and the C launch cost.

A plan is only made where the recording is known to be complete; otherwise that signature always runs the
launcher itself:
- every ATen op the launcher runs (watched with a TorchDispatchMode during the recording call) is an
  allocation (`empty`, `empty_like`, `empty_strided`, `zeros`...) or a view; anything that computes (the copy
  behind `.contiguous()`, a fill, an arithmetic op) means no plan;
- every kernel launch went through the cached launch path of `kernelgen.launch` and the module has no other
  kind of Triton launcher (an autotuner, a kernel not made cacheable);
- every pointer handed to a kernel lies in exactly one argument or allocation (it is replayed as that
  tensor's pointer plus the same byte offset);
- everything returned is an allocation or a view of one, an argument itself, or a constant (NotImplemented,
  None, a number).
The contract a launcher must keep for this to be right: its work depends on its arguments' metadata and
values of non-tensor arguments only, never on data pointers or tensor contents (kernel files may not read
`data_ptr` or storages: the static check refuses them), nor on mutable global state (also refused).

Replays hand the kernels plain integer pointers, which also skips the driver's per-pointer attribute
query that a tensor argument costs in Triton's launcher; the key's device check (every tensor on the
current accelerator) is what makes that safe. A call replays only under the conditions of the cached
launch path (no profiler hooks, launches not being counted by the verifier, `no_launch()` off, cached
launches on) and with plain tensors (FakeTensors under torch.compile run the launcher);
KERNELGEN_LAUNCH_PLANS=0 switches plans off.
"""

from __future__ import annotations

import ast
import functools
import os
import sys
import types

import torch

from kernelgen import launch
from kernelgen.dispatch_mode import UncompiledDispatchMode
from kernelgen.plan_build import Unplannable as _Unplannable
from kernelgen.plan_build import build

MAX_PLANS = 64  # signatures per launcher; past it the plans start over
PLAIN_TENSOR_TYPES = (torch.Tensor, torch.nn.Parameter)  # exact types: a subclass (FakeTensor...) is not plain
_SCALARS = (int, float, bool, str, type(None), torch.dtype)
_aten = torch.ops.aten
_ALLOCATIONS = {_aten.empty.memory_format, _aten.empty_like.default, _aten.empty_strided.default,
                _aten.new_empty.default, _aten.new_empty_strided.default}
_ZEROED = {_aten.zeros.default, _aten.zeros_like.default, _aten.new_zeros.default}
_UNPLANNABLE = "unplannable"


_replays_on = True  # set_replays(False): planned launchers run the launcher itself (benchmarks, debugging)


def enabled() -> bool:
    return launch.enabled() and os.environ.get("KERNELGEN_LAUNCH_PLANS", "1") != "0"


def set_replays(on: bool) -> bool:
    """Switch replays on or off for every planned launcher; returns the previous state."""
    global _replays_on
    before, _replays_on = _replays_on, bool(on)
    return before


_device_index = torch.Tensor.get_device  # -1 for a CPU tensor


def _part(a, tensors):
    """The key part of one argument (tensors are appended to `tensors`), or raise _Unplannable."""
    if type(a) in PLAIN_TENSOR_TYPES:
        device = _device_index(a)
        if device < 0:
            raise _Unplannable  # a CPU tensor: compiled kernels cannot take its pointer
        tensors.append(a)
        return (a.dtype, a.shape, a.stride(), device, not a.data_ptr() & 15)
    if type(a) in _SCALARS:
        return (type(a), a)
    if type(a) in (tuple, list, torch.Size):
        for v in a:
            if type(v) is not int:
                return (type(a), tuple(_part(v, tensors) for v in a))
        return (type(a), tuple(a))  # ints only (a normalized_shape, a dim list): the values themselves
    raise _Unplannable


def signature(args: tuple, kwargs: dict):
    """(key, tensors) of a call: the key holds every property a launcher may depend on, tensors the tensor
    arguments in the order replays receive them. (None, None) when the call has an argument no plan
    covers (a FakeTensor, a CPU tensor, an object). The generic form of the keys `front_function` builds
    with the argument loop unrolled (tested to be equal)."""
    tensors: list = []
    try:
        parts = tuple(_part(a, tensors) for a in args)
        if kwargs:
            parts += tuple((name, _part(v, tensors)) for name, v in kwargs.items())
        key = (launch.current_device(), parts)
        hash(key)
    except (_Unplannable, TypeError):
        return None, None
    return key, tensors


def _is_scalar_literal(expr: str) -> bool:
    try:
        return type(ast.literal_eval(expr)) in _SCALARS
    except (ValueError, SyntaxError):
        return False


def _key_lines(values: list[str], keywords: tuple[str, ...], indent: str, plain=frozenset()) -> list[str]:
    """Source lines that set `key` (and fill `tensors`) for a call with these argument expressions (the last
    len(keywords) passed by those names), the argument loop unrolled: a tensor's part and a scalar's inline,
    anything else through `_part`. Expressions in `plain` are known to be plain tensors already."""
    n = len(values) - len(keywords)
    lines, parts = [], []
    for i, v in enumerate(values):
        tensor = ["d = device_index(a)",
                  "if d < 0:",
                  "    raise Unplannable",
                  "tensors.append(a)",
                  f"p{i} = (a.dtype, a.shape, a.stride(), d, not a.data_ptr() & 15)"]
        if v in plain:
            lines += [f"a = {v}", *tensor]
        elif _is_scalar_literal(v):
            lines += [f"a = {v}", f"p{i} = (type(a), a)"]
        else:
            lines += [f"a = {v}",
                      "if type(a) is T or type(a) is P:", *("    " + line for line in tensor),
                      "elif type(a) in S:",
                      f"    p{i} = (type(a), a)",
                      "else:",
                      f"    p{i} = part(a, tensors)"]
        parts.append(f"p{i}" if i < n else f"({keywords[i - n]!r}, p{i})")
    lines.append(f"key = (getters[0](), ({''.join(p + ', ' for p in parts)}))")
    return [indent + line for line in lines]


def _key_names() -> dict:
    """The global names the lines of `_key_lines` use."""
    return {"T": torch.Tensor, "P": torch.nn.Parameter, "S": _SCALARS, "device_index": _device_index,
            "part": _part, "Unplannable": _Unplannable, "getters": launch.GETTERS}


def _generated(lines: list[str], name: str, **bound):
    scope = {**_key_names(), **bound}
    exec("\n".join(lines) + "\n", scope)  # noqa: S102 - source built from argument positions and names only
    return scope[name]


def _no_replay_test() -> str:
    """An expression that is true when a call must not replay: the cached launch path's conditions inline
    (CachedLaunchJIT._launch tests the same), the two function calls only when the cheap test sees something
    (JITFunction.run wrapped, a hook set)."""
    return ("not planmod._replays_on or not launchmod._use_cache or st.no_launch or st.recorder is not None"
            f" or (JIT.run is not launchmod._TRITON_RUN and counted()) or (({_hook_test()}) and hooks())")


def _front_body(n: int, names: tuple[str, ...], indent: str) -> list[str]:
    """Source lines of the hot path of a planned call with n positional arguments and these keyword names
    (`args` and `kwargs` hold them): the conditions for a replay, the signature, the lookup and the replay;
    anything else goes to fn (no replay possible) or to slow (a first call, a recording, an unplannable
    signature). Every path returns."""
    values = [f"args[{i}]" for i in range(n)] + [f"kwargs[{name!r}]" for name in names]
    lines = [
        "st = state",
        f"if {_no_replay_test()}:",
        "    return fn(*args, **kwargs)",
        *([] if names else _fast_lines(values, "return out")),
        "tensors = []",
        "try:", *_key_lines(values, names, " " * 4),
        "    plan = plans.get(key)",
        "except (Unplannable, TypeError):  # an argument no plan covers, or an unhashable value",
        "    return fn(*args, **kwargs)",
        "if type(plan) is Replay:",
        "    return plan(*tensors, getters[1](key[0]))",
        "return slow(args, kwargs, key, tensors, plan)"]
    return [indent + line for line in lines]


def _fast_lines(values: list[str], hit: str) -> list[str]:
    """Lines that replay a plan filed under the call's C++ signature (kernelgen/lean_replay.py), if the call
    has one: `out` is the result, then `hit` runs; on a miss `out` is MISS."""
    return ["out = MISS",
            "if fast_plans:",
            "    dv = getters[0]()",
            f"    out = lean.fast(fast_plans, dv, getters[1](dv){''.join(', ' + v for v in values)})",
            "    if out is not MISS:",
            f"        {hit}"]


def inline_replay(call, values: list[str], plain, fallback: str, indent: str):
    """For generated code that calls a planned `call` with the positional argument expressions `values`:
    (lines that set `out` to the replay of that call's plan when one is recorded and a replay is allowed,
    else to `fallback` evaluated; the global names they use, bound), or None when `call` has no plans.
    Expressions in `plain` must be known plain tensors. The local names the lines set are LOCAL_NAMES."""
    if not isinstance(getattr(call, "plans", None), dict):
        return None
    lines = ["out = MISS",
             "st = state",
             f"if not ({_no_replay_test()}):",
             *("    " + line for line in _fast_lines(list(values), "pass")),
             "    if out is MISS:",
             "        tensors = []",
             "        try:", *_key_lines(list(values), (), " " * 12, frozenset(plain)),
             "            plan = plans.get(key)",
             "        except (Unplannable, TypeError):",
             "            plan = None",
             "        if type(plan) is Replay:",
             "            out = plan(*tensors, getters[1](key[0]))",
             "if out is MISS:",
             f"    out = {fallback}"]
    scope = {**_key_names(), **_front_scope(call.plans, None, None, call.fast_plans)}
    return [indent + line for line in lines], scope


LOCAL_NAMES = frozenset({"plan", "st", "tensors", "a", "d", "dv", "key", "out"})  # and p0, p1, ...


_HOOKS = ("launch_enter_hook", "launch_exit_hook")


def _hooks_now() -> list:
    """Triton's launch hooks as they are when a front is generated (None, a HookChain or a callable)."""
    return [getattr(launch._knobs.runtime, name, None) for name in _HOOKS]


def _hook_test() -> str:
    """A cheap test that is true whenever Triton's launch hooks may be set (then `hooks()` decides): a hook
    that is None must still be None; a HookChain (newer Triton) must still be the same object (bound as
    hook<i> by `_front_scope`), with no calls."""
    tests = []
    for i, (name, value) in enumerate(zip(_HOOKS, _hooks_now())):
        if value is None:
            tests.append(f"rt.{name} is not None")
        elif type(getattr(value, "calls", None)) is list:
            tests.append(f"rt.{name} is not hook{i} or hook{i}.calls")
        else:
            tests.append("True")  # a hook object of another kind: always ask hooks()
    return " or ".join(tests)


def _front_scope(plans: dict, fn, slow, fast_plans=None) -> dict:
    from kernelgen import lean_replay

    return {**{f"hook{i}": value for i, value in enumerate(_hooks_now())},
            "state": launch._state, "planmod": sys.modules[__name__], "launchmod": launch, "JIT": launch.JITFunction,
            "rt": launch._knobs.runtime, "hooks": launch._hooks_active, "counted": launch._counted,
            "plans": plans, "fn": fn, "slow": slow, "Replay": types.FunctionType,
            "fast_plans": {} if fast_plans is None else fast_plans, "lean": lean_replay, "MISS": lean_replay.MISS}


def front_function(n: int, names: tuple[str, ...], plans: dict, fn, slow, fast_plans=None):
    """`front(args, kwargs)`: the hot path (`_front_body`) for n positional arguments and these keyword names."""
    return _generated(["def front(args, kwargs):", *_front_body(n, names, "    ")], "front",
                      **_front_scope(plans, fn, slow, fast_plans))


def _positional_counts(fn) -> tuple[int, ...]:
    """The numbers of positional arguments fn can be called with (required up to all), or () when it takes
    *args or has no readable signature."""
    import inspect

    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return ()
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return ()
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = sum(p.default is p.empty for p in positional)
    return tuple(range(required, len(positional) + 1))[:8]


def call_function(counts: tuple[int, ...], plans: dict, fn, slow, dispatch, custom=None, compiling=None,
                  fast_plans=None):
    """`call(*args, **kwargs)` with the hot path of every positional-only call shape in `counts` inline, so a
    replayed call is this one frame and the replay's: other shapes go to dispatch(args, kwargs). With a custom
    op, a call made while torch.compile traces (compiling()) goes to it instead (what `compile_aware` does
    for a launcher that has no plans)."""
    lines = ["def call(*args, **kwargs):"]
    if custom is not None:
        lines += ["    if compiling():", "        return custom(*args, **kwargs)"]
    lines += ["    if kwargs:", "        return dispatch(args, kwargs)", "    n = len(args)"]
    for i, n in enumerate(counts):
        lines += [f"    {'if' if i == 0 else 'elif'} n == {n}:", *_front_body(n, (), " " * 8)]
    lines.append("    return dispatch(args, kwargs)")
    return _generated(lines, "call", **_front_scope(plans, fn, slow, fast_plans), dispatch=dispatch, custom=custom,
                      compiling=compiling)


class _Watch(UncompiledDispatchMode):
    """Sees every ATen op of the recording call: keeps the allocations, notes any op that computes."""

    def __init__(self):
        super().__init__()
        self.allocations: list[tuple[torch.Tensor, bool]] = []  # (tensor, zero-filled)
        self.computes: str | None = None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in _ALLOCATIONS or func in _ZEROED:
            self.allocations.append((out, func in _ZEROED))
        elif not func.is_view and self.computes is None:
            self.computes = str(func)
        return out


def _record(fn, args, kwargs, inputs):
    """Run fn while recording; returns (its result, a replay function or _UNPLANNABLE)."""
    watch = _Watch()
    with launch.recording() as launches, watch:
        out = fn(*args, **kwargs)
    try:
        if not launches.complete:
            raise _Unplannable
        return out, build(launches.calls, watch, out, inputs)
    except _Unplannable:
        return out, _UNPLANNABLE


def plannable(module: types.ModuleType) -> bool:
    """Whether every Triton launcher of a kernel module goes through the cached launch path (plans can only
    see launches made there)."""
    from triton.runtime.jit import KernelInterface  # JITFunction, Autotuner, Heuristics, the interpreter's

    kernels = [v for v in vars(module).values() if isinstance(v, KernelInterface)]
    return bool(kernels) and all(type(v) is launch.CachedLaunchJIT for v in kernels)


def planned(fn):
    """fn with launch plans (see the module docstring). The second call of a signature records its plan;
    later calls replay it. `call.compile_aware(custom, compiling)` makes a second entry point over the same
    plans that hands calls made while torch.compile traces to a custom op."""
    plans: dict = {}  # key -> replay function, _UNPLANNABLE, or the number of plain calls so far
    fast_plans: dict = {}  # C++ signature (kernelgen/lean_replay.py) -> C++ plan, for one-call replays
    fronts: dict = {}  # number of positional arguments (and keyword names) -> its generated front

    def slow(args, kwargs, key, tensors, plan):
        if plan is None:  # first call: compiles and fills the launch caches
            if len(plans) >= MAX_PLANS:
                plans.clear()
                fast_plans.clear()
            plans[key] = 1
            return fn(*args, **kwargs)
        if plan == _UNPLANNABLE:
            return fn(*args, **kwargs)
        out, plans[key] = _record(fn, args, kwargs, tensors)
        _file_fast(fast_plans, plans[key], key, args, kwargs)
        return out

    def dispatch(args, kwargs):
        """Calls of a shape the entry point does not inline: a front per shape, generated on first use."""
        shape = (len(args), tuple(kwargs)) if kwargs else len(args)
        front = fronts.get(shape)
        if front is None:
            front = fronts[shape] = front_function(len(args), tuple(kwargs), plans, fn, slow, fast_plans)
        return front(args, kwargs)

    counts = _positional_counts(fn)

    def with_custom(custom, compiling):
        return functools.wraps(fn)(call_function(counts, plans, fn, slow, dispatch, custom, compiling, fast_plans))

    call = functools.wraps(fn)(call_function(counts, plans, fn, slow, dispatch, fast_plans=fast_plans))
    call.plans, call.fast_plans, call.fronts, call.unplanned, call.compile_aware = (
        plans, fast_plans, fronts, fn, with_custom)
    return call


def _file_fast(fast_plans: dict, replay, key, args: tuple, kwargs: dict) -> None:
    """File a one-call replay's C++ plan under the call's C++ signature too, when it returns one allocation
    and every argument has such a signature (positional calls only: keyword names are not in it)."""
    plan = getattr(replay, "fast_plan", None)
    if plan is None or kwargs:
        return
    from kernelgen import lean_replay

    module = lean_replay.module()
    fast_key = module.signature(key[0], *args) if module is not None else None
    if fast_key is not None:
        fast_plans[fast_key] = plan
