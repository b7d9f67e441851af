"""Watching a candidate run: Triton launches, ATen ops it calls, and NaN-poisoned allocations.

`watch()` is a context manager used by the accuracy check (every run of a candidate happens inside it):
- every Triton kernel launch is counted (compiled and interpreted kernels alike);
- every ATen op the candidate calls outside a Triton launch is recorded, and anything but allocation and
  view ops is a violation (a candidate that computes with torch is not a kernel);
- every floating tensor the candidate allocates is filled with NaN first, so an output element the
  kernel forgot to write cannot pass by accident.
"""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import _disable_current_modes

from kernelgen.dispatch_mode import UncompiledDispatchMode

ALLOCATION_OPS = {
    "empty.memory_format", "empty_strided.default", "empty_like.default", "new_empty.default",
    "new_empty_strided.default", "empty.default",
}
VIEW_OPS = {
    "view.default", "_unsafe_view.default", "reshape.default", "as_strided.default", "t.default",
    "transpose.int", "permute.default", "expand.default", "unsqueeze.default", "squeeze.dim", "squeeze.default",
    "squeeze.dims", "select.int", "slice.Tensor", "split.Tensor", "split_with_sizes.default", "chunk.default",
    "unbind.int", "narrow.default", "detach.default", "alias.default", "unflatten.int", "flatten.using_ints",
    "contiguous.default", "view_as.default", "expand_as.default", "movedim.int", "diagonal.default",
    "lift_fresh.default", "sym_size.int", "sym_stride.int", "sym_numel.default", "sym_storage_offset.default",
    "is_contiguous.default", "is_contiguous.memory_format", "stride.default", "size.default", "dim.default",
}
# What a launcher may call on the data besides allocation and views: nothing. (`contiguous` is listed as a
# view because on an already-contiguous tensor it is one; a real copy shows up as aten.clone.)


@dataclass
class Watch:
    launches: Counter = field(default_factory=Counter)  # kernel name -> count
    aten_calls: Counter = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    ghost: bool = False  # ghost replay: launches are counted but do not run
    guarded: bool = False  # a dispatch guard is on: the launch's grid callable runs under it too

    @property
    def total_launches(self) -> int:
        return sum(self.launches.values())


_local = threading.local()


def _current() -> Watch | None:
    return getattr(_local, "watch", None)


class _GuardMode(UncompiledDispatchMode):
    def __init__(self, watch: Watch, poison: bool):
        super().__init__()
        self.watch, self.poison = watch, poison

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = f"{func._schema.name.split('::')[-1]}.{func._overloadname}"
        self.watch.aten_calls[name] += 1
        if name not in ALLOCATION_OPS and name not in VIEW_OPS:
            self.watch.violations.append(f"aten::{name}")
        out = func(*args, **kwargs)
        if self.poison and name in ALLOCATION_OPS and isinstance(out, torch.Tensor) and out.is_floating_point():
            out.fill_(float("nan"))
        return out


def _counting(run):
    def wrapped(self, *args, **kwargs):
        watch = _current()
        if watch is None:
            return run(self, *args, **kwargs)
        fn = getattr(self, "fn", None)
        watch.launches[getattr(fn, "__name__", "kernel")] += 1
        if watch.ghost:
            return None  # ghost replay: whatever the outputs hold now was not computed by Triton
        grid = kwargs.get("grid")
        if watch.guarded and callable(grid):
            # The grid callable is the candidate's code, run inside the launch: torch compute there counts.
            def guarded_grid(meta, _grid=grid, _watch=watch):
                with _GuardMode(_watch, False):
                    return _grid(meta)

            kwargs["grid"] = guarded_grid
        # The interpreter moves tensors between host copies with torch ops: those are Triton's, not the
        # candidate's, so no mode watches them.
        with _disable_current_modes():
            return run(self, *args, **kwargs)

    wrapped._kernelgen_counting = True  # type: ignore[attr-defined]
    return wrapped


def _triton_owned(run):
    """Autotuning benchmarks configs with torch ops of its own (an L2-flush buffer, zeroed between runs):
    those are Triton's. The launches it makes still go through JITFunction.run and are counted there."""

    def wrapped(self, *args, **kwargs):
        if _current() is None:
            return run(self, *args, **kwargs)
        with _disable_current_modes():
            return run(self, *args, **kwargs)

    wrapped._kernelgen_counting = True  # type: ignore[attr-defined]
    return wrapped


def _install_launch_hooks() -> None:
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    for cls in (JITFunction, InterpretedFunction):
        if not getattr(cls.run, "_kernelgen_counting", False):
            cls.run = _counting(cls.run)
    if not getattr(Autotuner.run, "_kernelgen_counting", False):
        Autotuner.run = _triton_owned(Autotuner.run)


@contextlib.contextmanager
def count_launches(ghost: bool = False):
    """Count Triton kernel launches (no dispatch mode): for checking that ATen overrides hit our kernels.
    `ghost`: the launches do not run (ghost replay)."""
    _install_launch_hooks()
    watch = Watch(ghost=ghost)
    prev = _current()
    _local.watch = watch
    try:
        yield watch
    finally:
        _local.watch = prev


@contextlib.contextmanager
def watch(poison: bool = True, ghost: bool = False):
    """Count launches, record ATen ops outside launches, poison allocations with NaN."""
    with count_launches(ghost) as w, _GuardMode(w, poison):
        w.guarded = True
        yield w
