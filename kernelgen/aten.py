"""ATen overrides: registering library launchers through `torch.library` for one backend's dispatch key.

For each selected op and each `aten::` overload in its spec, the op's adapter (a function in kernel.py
that takes the ATen arguments) is registered with `torch.library.Library("aten", "IMPL")`. The adapter
returns NotImplemented for cases the kernel does not cover (another dtype, several normalized dims...);
those, and any call that needs autograd, go to the kernel ATen had before, so enabling the library never
changes what a model can do, only how fast it runs.
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch

from kernelgen import functional_routes
from kernelgen.backends import default_backend, get_backend
from kernelgen.backends.base import Backend
from kernelgen.library import Op, discover, op_status

POLICIES = ("verified", "correct", "all")


class BrokenOpWarning(UserWarning):
    """enable() skipped an op whose folder is broken or whose kernel file fails to import."""


@dataclass
class Registration:
    backend: Backend
    library: torch.library.Library
    ops: dict[str, list[str]] = field(default_factory=dict)  # op name -> overloads registered
    calls: Counter = field(default_factory=Counter)  # op name -> calls served by our kernel
    fallbacks: Counter = field(default_factory=Counter)  # op name -> calls handed back to ATen
    min_numel: dict[str, int] = field(default_factory=dict)  # op name -> smallest input it takes (verified)
    routes: list[tuple] = field(default_factory=list)  # (torch.nn.functional name, PyTorch's function, the route)
    arguments: dict[str, Any] = field(default_factory=dict)  # the enable() call that made it, to restore it


_active: dict[str, Registration] = {}  # dispatch key -> registration
_warned_no_backend = False


def policy_allows(op: Op, backend: Backend, policy: str, by_size: bool = False) -> tuple[bool, str]:
    """Whether `policy` lets this op be switched on for `backend`, and why not.

    `verified` asks for a kernel faster than eager on every recorded shape and dtype: an override costs a
    Python dispatch on every call of its ATen op, including the calls it hands back to ATen, so an op that
    loses on small inputs would slow down a model whose calls are small (decoding). With `by_size`, such an
    op is switched on anyway, for inputs from the smallest size where it won (see `faster_from`)."""
    if op.broken:
        return False, op.error
    if not op.spec.aten:
        return False, "overrides no ATen op"
    if policy == "all":
        return True, ""
    st = op_status(op, backend.name)
    if st["status"] != "verified":
        return False, f"{st['status']} on {backend.name}"
    if policy == "correct":
        return True, ""
    rec = op.record(backend.name) or {}
    if not backend.measures_performance:
        return False, f"{backend.name} has no speed figures; use policy='correct'"
    slowest = rec.get("min_speedup_vs_eager")
    if by_size:
        if faster_from(op, rec) is None:
            return False, f"not faster than eager even on its largest recorded shapes (slowest {slowest})"
    elif not all((row.get("speedup_eager") or 0.0) >= 1.0 for row in rec.get("performance") or [{}]):
        return False, f"slower than eager on some recorded shape (slowest {slowest}; by_size uses it on large inputs)"
    return True, ""


def faster_from(op: Op, record: dict) -> int | None:
    """The smallest input size (elements of the op's first input) from which every recorded shape, in every
    dtype, was faster than eager; None when even the largest was not. Launch-bound small shapes can lose to
    ATen while large ones win: the `verified` policy then switches the kernel on for large inputs only."""
    first = next((i for i in op.spec.inputs if i.kind == "tensor"), None)
    rows = record.get("performance") or []
    if first is None or not rows:
        return None
    sized = []
    for row in rows:
        numel = 1
        for d in first.shape:
            numel *= int(d) if d.isdigit() else int(row["dims"].get(d, 1))
        sized.append((numel, row.get("speedup_eager") or 0.0))
    threshold = None
    for numel, _ in sorted(sized, reverse=True):  # walk down from the largest size while all stay faster
        if all(speedup >= 1.0 for n, speedup in sized if n >= numel):
            threshold = numel
        else:
            break
    return threshold


def _make_impl(reg: Registration, op_name: str, adapter, original, at_autograd_key: bool, min_numel: int = 0):
    def impl(keyset, *args, **kwargs):
        if at_autograd_key and torch.is_grad_enabled() and any(
            isinstance(a, torch.Tensor) and a.requires_grad for a in args
        ):
            reg.fallbacks[op_name] += 1  # our kernels are forward-only: ATen's decomposition keeps autograd
            return original.call_boxed(keyset, *args, **kwargs)
        if min_numel and args and isinstance(args[0], torch.Tensor) and args[0].numel() < min_numel:
            reg.fallbacks[op_name] += 1  # smaller than any size where the kernel was measured faster
            return original.call_boxed(keyset, *args, **kwargs)
        out = adapter(*args, **kwargs)
        if out is NotImplemented:
            reg.fallbacks[op_name] += 1
            return original.call_boxed(keyset, *args, **kwargs)
        reg.calls[op_name] += 1
        return out

    return impl


def enable(
    backend: str | None = None, include: list[str] | None = None, exclude: list[str] | None = None,
    policy: str = "verified", library: list[str] | None = None, by_size: bool = False,
) -> list[str]:
    """Register the selected library ops for the backend; returns the names of the ops switched on.

    by_size (policy `verified` only): also switch on ops that beat eager only on large inputs, for those
    inputs; smaller calls go back to ATen, each paying the override's Python dispatch."""
    global _warned_no_backend
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    if backend is None:
        be = default_backend()
        if be is None:
            if not _warned_no_backend:
                warnings.warn("kernelgen.enable(): no accelerator found; nothing enabled "
                              "(pass backend='interpreter' to run kernels on the CPU)", stacklevel=2)
                _warned_no_backend = True
            return []
    else:
        be = get_backend(backend)
        if not be.available():
            raise RuntimeError(f"backend {be.name!r} is not available on this machine")
    disable(be.name)
    be.prepare()
    from kernelgen import lean_replay

    lean_replay.prefetch(be.device)
    ops = discover(library)
    known = {o.name for o in ops}
    unknown = sorted(set(include or []) - known) + sorted(set(exclude or []) - known)
    if unknown:
        raise ValueError(f"unknown op(s) {unknown}; see `kernelgen list`")
    lib = torch.library.Library("aten", "IMPL")
    reg = Registration(be, lib, arguments=dict(include=include, exclude=exclude, policy=policy, library=library,
                                               by_size=by_size))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="(?s).*Overriding a previously registered kernel")
        for op in ops:
            if (include is not None and op.name not in include) or op.name in (exclude or []):
                continue
            if op.broken:  # one bad folder must not keep the rest of the library off
                warnings.warn(f"kernelgen.enable(): skipped {op.name}: {op.error}", BrokenOpWarning, stacklevel=3)
                continue
            ok, _why = policy_allows(op, be, policy, by_size)
            if not ok:
                continue
            try:
                module = op.module(be.name)  # the backend's variant and tuning when it has them
            except Exception as exc:  # a kernel file that fails to import: skip the op, enable the others
                warnings.warn(f"kernelgen.enable(): skipped {op.name}: {type(exc).__name__}: {exc}", BrokenOpWarning,
                              stacklevel=3)
                continue
            min_numel = (faster_from(op, op.record(be.name) or {}) or 0) if policy == "verified" and by_size else 0
            if min_numel:
                reg.min_numel[op.name] = min_numel
            for ov in op.spec.aten:
                if not hasattr(module, ov.adapter):
                    continue  # a backend variant (variants/<backend>/kernel.py) may offer the launcher only
                qualified = ov.overload.removeprefix("aten::")
                # An op ATen implements as a decomposition (CompositeImplicitAutograd, e.g. rms_norm) has no
                # autograd formula of its own: we take its place at the backend's autograd key, so a call
                # that needs gradients still gets the differentiable decomposition.
                composite = torch._C._dispatch_has_kernel_for_dispatch_key(ov.overload, "CompositeImplicitAutograd")
                # Under torch.inference_mode() the autograd keys are skipped and such a call lands on the
                # backend key itself, so a composite op is taken there too (no autograd is possible there).
                keys = [f"Autograd{be.dispatch_key}", be.dispatch_key] if composite else [be.dispatch_key]
                for key in keys:
                    original = torch.library.get_kernel(ov.overload, key)
                    impl = _make_impl(
                        reg, op.name, getattr(module, ov.adapter), original, key != be.dispatch_key, min_numel
                    )
                    lib.impl(qualified, impl, key, with_keyset=True)
                route = functional_routes.install(
                    ov.overload, getattr(module, ov.adapter), be.dispatch_key.lower(), op.name, min_numel)
                if route is not None:
                    reg.routes.append(route)
                reg.ops.setdefault(op.name, []).append(ov.overload)
    _active[be.dispatch_key] = reg
    return sorted(reg.ops)


def disable(backend: str | None = None) -> None:
    """Remove the overrides (of one backend, or all): ATen's own kernels are back."""
    keys = list(_active) if backend is None else [get_backend(backend).dispatch_key]
    for key in keys:
        reg = _active.pop(key, None)
        if reg is not None:
            for name, original, _ in reversed(reg.routes):
                functional_routes.remove(name, original)
            reg.library._destroy()


def enabled() -> dict[str, Any]:
    """What is switched on now: {backend: {op: [overloads]}}, plus call counters for each op."""
    return {
        reg.backend.name: {"ops": dict(reg.ops), "calls": _served(reg), "fallbacks": dict(reg.fallbacks),
                           "min_numel": dict(reg.min_numel)}
        for reg in _active.values()
    }


def _served(reg: Registration) -> dict[str, int]:
    """Calls served by our kernels, op name -> count: through the dispatcher's override and the routes."""
    calls = Counter(reg.calls)
    for _, _, route in reg.routes:
        calls[route.op_name] += route.served[0]
    return {op: n for op, n in calls.items() if n}
