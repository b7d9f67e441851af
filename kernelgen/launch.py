"""The library's launch path: compiled kernels launched directly from a per-specialization cache.

`kernel[grid](*args, **kwargs)` in Triton redoes, on every call, work whose result a library launcher
gets identically call after call: reading knobs, binding the arguments to the signature, building a string
cache key, checking the kernel's global variables, building launch metadata. For a small input that costs
more than the kernel takes on the GPU (a decode step is made of such calls). `accelerate(module)`, applied
by the library loader to every kernel module it imports, makes each compiled @triton.jit function of the
module remember, per specialization, the launch handle of the kernel Triton compiled for it, and launch
that handle directly the next time. kernel.py files stay plain Triton.

The key of a call (`specialization_key`), per argument in parameter order:
- a constexpr parameter: its value;
- a tensor: its dtype and whether its data pointer is 16-byte aligned;
- an int: whether it is 1, whether it is divisible by 16, and its range (32-bit, unsigned 64-bit, 64-bit);
- a float, a bool, None: the type only;
plus every keyword argument by name and value (constexprs given by name, num_warps, num_stages, ...), and
the current device. Triton specializes on these same properties (some parameters on fewer of them), so our
key is at least as fine as Triton's: a hit always names the kernel Triton itself would launch, and a key
that is finer than needed only costs a miss. A miss goes through Triton's own `JITFunction.run`, which
compiles or finds the kernel; its handle is then cached under our key.

Triton's path is taken whenever anything is unusual: an argument of another type or an unhashable keyword
value (no key), a callable grid, a launch hook (profilers), pre-run hooks on the kernel, launches being
counted by the verifier, a Triton without the expected launch API, or KERNELGEN_FAST_LAUNCH=0.

`no_launch()` makes every library kernel launch a no-op: running a launcher on fake tensors under it gives
the shapes, dtypes and strides of its outputs, which is how the torch.library registrations get their fake
(meta) implementations without a hand-written one per op.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading
import types

import torch

try:  # Triton >= 3.3: launch hooks are runtime knobs; older Trittons keep Triton's own path
    from triton import knobs as _knobs
    from triton.runtime.jit import JITFunction
except ImportError:  # pragma: no cover - depends on the installed Triton
    _knobs, JITFunction = None, None

try:
    from triton.runtime.interpreter import InterpretedFunction
except ImportError:  # pragma: no cover
    InterpretedFunction = None

MAX_ENTRIES = 256  # specializations cached per kernel; past it the cache starts over (never seen in practice)
_INT32_MIN, _INT32_MAX = -(1 << 31), (1 << 31) - 1
_UINT64_FROM = 1 << 63
_Tensor = torch.Tensor

class _State(threading.local):
    # Class-level defaults: reading a missing attribute of a plain threading.local raises and catches
    # internally, which costs about 0.5 us on every launch.
    no_launch = False
    recorder = None


_state = _State()
_TRITON_RUN = JITFunction.run if JITFunction is not None else None
_device_and_stream: tuple | None = None  # Triton's own getters, fetched on the first launch


_use_cache = True  # set_cached_launches(False): every launch takes Triton's path (benchmarks, debugging)


def enabled() -> bool:
    return _knobs is not None and os.environ.get("KERNELGEN_FAST_LAUNCH", "1") != "0"


def set_cached_launches(on: bool) -> bool:
    """Switch the cached launch path on or off for kernels already accelerated; returns the previous state."""
    global _use_cache
    before, _use_cache = _use_cache, bool(on)
    return before


@contextlib.contextmanager
def no_launch():
    """Within the block, library kernel launches do nothing (launchers still allocate their outputs)."""
    before = _state.no_launch
    _state.no_launch = True
    try:
        yield
    finally:
        _state.no_launch = before


def specialization_key(constexpr: tuple[bool, ...], args: tuple, kwargs: dict, device=None):
    """The cache key of a call (see the module docstring), or None when the call must take Triton's path.

    A flat tuple, built in one pass (this runs on every launch): per argument, a constexpr's value; an
    int's (is 1, divisible by 16, range); a tensor's (dtype, 16-byte aligned); the type of a float, bool
    or None. The first entry of each group tells its kind (a bool, a dtype, a type) and so its length,
    which keeps the flat form unambiguous."""
    if len(args) > len(constexpr):
        return None  # too many arguments: Triton raises the error
    parts = [device]
    append = parts.append
    for a, is_constexpr in zip(args, constexpr):
        if is_constexpr:
            append(a)
            continue
        t = type(a)
        if t is int:
            append(a == 1)
            append(not a & 15)
            append(0 if _INT32_MIN <= a <= _INT32_MAX else (1 if a >= _UINT64_FROM else 2))
        elif t is _Tensor or isinstance(a, _Tensor):
            append(a.dtype)
            append(not a.data_ptr() & 15)
        elif t is float or t is bool or a is None:
            append(t)
        else:
            return None
    if kwargs:
        parts.extend(kwargs.items())
    return tuple(parts)


class _Unkeyable(Exception):
    """An argument of a type the key does not cover: the call takes Triton's path."""


def _part(a):
    """The key part of an argument that is not a plain torch.Tensor or int (the generated keys' slow branch)."""
    if isinstance(a, _Tensor):
        return (a.dtype, not a.data_ptr() & 15)
    t = type(a)
    if t is float or t is bool or a is None:
        return t
    raise _Unkeyable


def key_function(constexpr: tuple[bool, ...], n: int):
    """`key(args, kwargs, device)` for calls with n positional arguments: the properties of
    `specialization_key`, with one group per argument (a tensor's (dtype, aligned), an int's (is 1,
    divisible by 16, range), a constexpr's value, a type), in a function generated with the argument loop
    unrolled: about half the time of the generic loop per launch. None when the call must take Triton's
    path."""
    if n > len(constexpr):
        return lambda args, kwargs, device: None  # too many arguments: Triton raises the error
    names = [f"a{i}" for i in range(n)]
    parts = []
    for a, is_constexpr in zip(names, constexpr):
        if is_constexpr:
            parts.append(a)
        else:
            parts.append(f"(({a}.dtype, not {a}.data_ptr() & 15) if type({a}) is T else "
                         f"(({a} == 1, not {a} & 15, 0 if LO <= {a} <= HI else (1 if {a} >= U else 2)) "
                         f"if type({a}) is int else part({a})))")
    unpack = f"    {', '.join(names)}, = args\n" if n else ""
    src = (f"def key(args, kwargs, device):\n{unpack}    try:\n"
           f"        return (device, {''.join(p + ', ' for p in parts)}tuple(kwargs.items()) if kwargs else ())\n"
           f"    except Unkeyable:\n        return None\n")
    scope = {"T": _Tensor, "LO": _INT32_MIN, "HI": _INT32_MAX, "U": _UINT64_FROM, "part": _part,
             "Unkeyable": _Unkeyable}
    exec(src, scope)  # noqa: S102 - source built above from argument positions only
    return scope["key"]


def _counted() -> bool:
    """Whether someone watches JITFunction.run: the verifier's launch counter while it counts, or any other
    wrapper (a profiler, a test). Those launches must go through run to be seen."""
    run = JITFunction.run
    if getattr(run, "_kernelgen_counting", False):  # checked first: it may predate this module's import
        guard = sys.modules.get("kernelgen.verify.guard")
        local = getattr(guard, "_local", None)
        return local is None or getattr(local, "watch", None) is not None
    return run is not _TRITON_RUN


def _hooks_active() -> bool:
    rt = _knobs.runtime
    for hook in (rt.launch_enter_hook, rt.launch_exit_hook):
        # Triton 3.6 keeps None or a callable; newer ones a HookChain whose `calls` may be empty.
        if hook is not None and getattr(hook, "calls", True):
            return True
    return False


def _getters():
    global _device_and_stream
    if _device_and_stream is None:
        from triton.runtime import driver

        get_device = driver.active.get_current_device
        if get_device is torch.cuda.current_device and torch.cuda.is_initialized():
            # torch.cuda.current_device() is a Python check that CUDA is initialized around this C call;
            # once it is (it is: the launch that fills the getters has a CUDA tensor), the C call alone.
            get_device = torch._C._cuda_getDevice
        _device_and_stream = (get_device, driver.active.get_current_stream)
        GETTERS[:] = _device_and_stream
    return _device_and_stream


def _tail(jit_fn, n_args: int) -> tuple:
    """(name, default) of the parameters after the positional ones, to append in parameter order."""
    out = []
    for p in jit_fn.params[n_args:]:
        default = p.default if p.has_default else None
        out.append((p.name, default))
    return tuple(out)


class _Entry:
    __slots__ = ("kernel", "run", "function", "metadata", "tail")

    def __init__(self, kernel, run, tail):
        # tail: the values of the parameters after the positional arguments, in order. The key holds every
        # keyword argument by value, so every call that hits this entry passes the same ones.
        self.kernel, self.run, self.tail = kernel, run, tail
        self.function, self.metadata = kernel.function, kernel.packed_metadata


class _Recording:
    """The launches of one recording call (see kernelgen/plans.py): (entry, grid of 3, arguments) each."""

    def __init__(self):
        self.calls: list[tuple] = []
        self.complete = True

    def add(self, entry, grid, args):
        if entry is None or type(grid) is not tuple or not 1 <= len(grid) <= 3:
            self.complete = False  # a launch the cached path cannot repeat
            return
        self.calls.append((entry, tuple(grid) + (1,) * (3 - len(grid)), args + entry.tail))


@contextlib.contextmanager
def recording():
    """Within the block, cached launches are also recorded; yields the _Recording."""
    rec = _state.recorder = _Recording()
    try:
        yield rec
    finally:
        _state.recorder = None


def current_device():
    return (_device_and_stream or _getters())[0]()


def current_stream(device):
    return (_device_and_stream or _getters())[1](device)


# [device getter, stream getter] for generated code (kernelgen/plans.py) to call without a Python frame:
# current_device and current_stream until the first launch, then Triton's getters themselves.
GETTERS = [current_device, current_stream]


class CachedLaunchJIT(JITFunction if JITFunction is not None else object):
    """A JITFunction whose `kernel[grid](...)` launches cached compiled kernels (see the module docstring).
    Instances are made by changing the class of a module's JITFunctions: everything else (compilation,
    calls from other kernels, warmup, Triton's own run) is JITFunction's."""

    def __getitem__(self, grid):
        return functools.partial(self._launch, grid)

    def _launch(self, grid, *args, **kwargs):
        if _state.no_launch:
            return None
        get_device, get_stream = _device_and_stream or _getters()
        device = get_device()
        keyfn = self._kg_keys.get(len(args))
        if keyfn is None:
            keyfn = self._kg_keys[len(args)] = key_function(self._kg_constexpr, len(args))
        key = keyfn(args, kwargs, device)
        try:
            entry = self._kg_cache.get(key) if key is not None else None
        except TypeError:  # an unhashable keyword value
            key = entry = None
        if (entry is None or not _use_cache or type(grid) is not tuple or self.pre_run_hooks or _hooks_active()
                or _counted()):
            kernel = self._launch_through_triton(grid, key, args, kwargs)
            rec = _state.recorder
            if rec is not None:
                rec.add(self._kg_cache.get(key) if key is not None and not self.pre_run_hooks else None, grid, args)
            return kernel
        rec = _state.recorder
        if rec is not None:
            rec.add(entry, grid, args)
        if entry.tail:
            args = args + entry.tail
        n = len(grid)
        entry.run(grid[0], grid[1] if n > 1 else 1, grid[2] if n > 2 else 1, get_stream(device),
                  entry.function, entry.metadata, None, None, None, *args)
        return entry.kernel

    def _launch_through_triton(self, grid, key, args, kwargs):
        kernel = JITFunction.run(self, *args, grid=grid, warmup=False, **kwargs)
        cacheable = (key is not None and _use_cache and type(grid) is tuple and not self.pre_run_hooks
                     and not _hooks_active() and not _counted())
        if cacheable and kernel is not None:
            run = getattr(kernel, "run", None)  # initializes the handle if Triton has not
            if callable(run) and getattr(kernel, "function", None) is not None and hasattr(kernel, "packed_metadata"):
                if len(self._kg_cache) >= MAX_ENTRIES:
                    self._kg_cache.clear()
                tail = tuple(kwargs.get(name, default) for name, default in _tail(self, len(args)))
                self._kg_cache[key] = _Entry(kernel, run, tail)
        return kernel

    def launch_cache(self) -> dict:
        return self._kg_cache


class _NoLaunchInterpreted(InterpretedFunction if InterpretedFunction is not None else object):
    """An interpreted kernel that honours `no_launch()` (the interpreter has no compiled kernel to cache)."""

    def run(self, *args, grid, warmup, **kwargs):
        if _state.no_launch:
            return None
        return InterpretedFunction.run(self, *args, grid=grid, warmup=warmup, **kwargs)


def accelerate(module: types.ModuleType) -> list[str]:
    """Give the module's @triton.jit functions the cached launch path (compiled ones) or the no-launch switch
    (interpreted ones). Returns the names of the kernels changed. Idempotent."""
    changed = []
    for name, obj in list(vars(module).items()):
        if JITFunction is not None and type(obj) is JITFunction and enabled():
            obj.__class__ = CachedLaunchJIT
            obj._kg_constexpr = tuple(bool(p.is_constexpr) for p in obj.params)
            obj._kg_cache = {}
            obj._kg_keys = {}  # number of positional arguments -> its key function
            changed.append(name)
        elif InterpretedFunction is not None and type(obj) is InterpretedFunction:
            obj.__class__ = _NoLaunchInterpreted
            changed.append(name)
    return changed
