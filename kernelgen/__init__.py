"""kernelgen: verified Triton kernels as drop-in ATen overrides.

    import kernelgen
    kernelgen.enable()                      # verified and faster ops replace ATen kernels on this GPU
    with kernelgen.use(include=["rms_norm"]):
        ...
    kernelgen.disable()

    y = kernelgen.ops.rms_norm(x, weight, 1e-6)   # call a library op directly

This module imports only torch and triton (through the library loader); the generator, retrieval and
CLI live in submodules that are imported on demand.
"""

from __future__ import annotations

import contextlib

__version__ = "0.1.0"


def enable(backend=None, include=None, exclude=None, policy="verified", library=None, by_size=False) -> list[str]:
    """Route covered ATen ops to library kernels on `backend` (default: the accelerator present).

    policy: "verified" (fresh passing record, faster than eager on every recorded shape),
    "correct" (fresh passing record, any speed) or "all" (everything, for development).
    by_size (verified only): also switch on ops faster on large recorded shapes only, for inputs that large.
    Returns the names of the ops switched on. With no accelerator and no backend named, does nothing
    and warns once."""
    from kernelgen import aten

    return aten.enable(backend=backend, include=include, exclude=exclude, policy=policy, library=library,
                       by_size=by_size)


def disable(backend=None) -> None:
    """Remove the overrides; ATen's own kernels are used again."""
    from kernelgen import aten

    aten.disable(backend)


@contextlib.contextmanager
def use(backend=None, include=None, exclude=None, policy="verified", library=None, by_size=False):
    """`enable(...)` for the duration of a `with` block; restores what was registered before."""
    from kernelgen import aten
    from kernelgen.backends import default_backend, get_backend

    be = get_backend(backend) if backend else default_backend()
    before = aten._active.get(be.dispatch_key) if be else None
    previous = dict(before.arguments) if before is not None else None
    enabled_ops = enable(backend, include, exclude, policy, library, by_size)
    try:
        yield enabled_ops
    finally:
        if be is not None:
            aten.disable(be.name)
            if previous is not None:
                aten.enable(be.name, **previous)


def status() -> dict:
    """What is enabled now, per backend, with call counters."""
    from kernelgen import aten

    return aten.enabled()


class _Resolved:
    """op name -> the callable behind kernelgen.ops.NAME, as attributes. (Not a dict: Dynamo snapshots a dict
    it has read once, and would not see an op resolved later in the same compiled function.)"""


_resolved = _Resolved()


def _resolve_op(name: str) -> None:
    """Find the op, import its kernel and register its custom op into `_resolved` (AttributeError when there
    is no such op). Returns nothing: under torch.compile Dynamo runs it eagerly as a constant function."""
    if name in vars(_resolved):
        return
    from kernelgen.backends import default_backend, get_backend
    from kernelgen.custom_ops import compile_aware, register
    from kernelgen.errors import OpNotFound
    from kernelgen.library import get_op

    try:
        op = get_op(name)
    except OpNotFound as exc:
        raise AttributeError(str(exc)) from None
    if op.broken:
        raise AttributeError(f"op {name!r} is broken: {op.error}")
    backend = default_backend() or get_backend("interpreter")
    backend.prepare()
    launcher = op.launcher(backend.name)  # that backend's variant and tuning, if the op has them
    setattr(_resolved, name, compile_aware(launcher, register(op.spec, launcher)))


# Resolving an op reads the library from disk, which Dynamo cannot trace. Marked as a constant function
# (what torch._dynamo.assume_constant_result does, without importing Dynamo here), Dynamo calls it eagerly
# when the first access to an op happens inside a compiled function, and traces on.
_resolve_op._dynamo_marked_constant = True


class _Ops:
    """`kernelgen.ops.NAME(...)`: the launcher of a library op, for the accelerator present (the interpreter
    backend when there is none).

    The first access resolves the op (library search, kernel import, custom-op registration) and stores the
    result on this object, so every later `kernelgen.ops.NAME` is a plain attribute read: writing the
    lookup out on every call costs the same as keeping the launcher in a variable. `kernelgen.ops.reload()`
    forgets what was resolved (after adding or editing an op in the same process). In eager the launcher
    runs directly; under torch.compile the same call is the custom op `torch.ops.kernelgen.NAME`
    (`kernelgen.custom_ops`), so `fullgraph=True` traces through it."""

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        _resolve_op(name)
        fn = getattr(_resolved, name)
        self.__dict__[name] = fn  # later reads find it without __getattr__
        return fn

    def reload(self) -> None:
        """Forget resolved ops: the next access searches the library again."""
        self.__dict__.clear()
        vars(_resolved).clear()

    def __dir__(self):
        from kernelgen.library import discover

        return [o.name for o in discover() if not o.broken]


ops = _Ops()


def patch(model, backend=None, policy="verified", include=None, exclude=None):
    """Swap a Hugging Face model's norms, residual+norm, gated MLP, RoPE and causal-LM loss for library ops
    verified on the backend (see `kernelgen.patch_models`). Returns what was patched; `unpatch` undoes it."""
    from kernelgen.patch_models import patch as _patch

    return _patch(model, backend=backend, policy=policy, include=include, exclude=exclude)


def unpatch(model) -> None:
    """Restore every module `patch` changed in this model exactly as it was."""
    from kernelgen.patch_models import unpatch as _unpatch

    _unpatch(model)


__all__ = ["enable", "disable", "use", "status", "ops", "patch", "unpatch", "__version__"]
