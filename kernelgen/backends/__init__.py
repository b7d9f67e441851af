"""Backend registry: built-ins plus plugins from the `kernelgen.backends` entry-point group."""

from __future__ import annotations

import warnings
from importlib.metadata import entry_points

from kernelgen.backends.base import Backend
from kernelgen.backends.cuda import CudaBackend
from kernelgen.backends.interpreter import InterpreterBackend
from kernelgen.errors import BackendError

BUILTIN: dict[str, type[Backend]] = {"cuda": CudaBackend, "interpreter": InterpreterBackend}
ENTRY_POINT_GROUP = "kernelgen.backends"
_instances: dict[str, Backend] = {}


def _plugins() -> dict[str, object]:
    found = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in BUILTIN:
            continue  # our own pyproject lists the built-ins too
        found[ep.name] = ep
    return found


def backend_names() -> list[str]:
    return list(BUILTIN) + sorted(_plugins())


def get_backend(name: str) -> Backend:
    if name in _instances:
        return _instances[name]
    if name in BUILTIN:
        backend: Backend = BUILTIN[name]()
    else:
        ep = _plugins().get(name)
        if ep is None:
            raise BackendError(f"unknown backend {name!r}; known: {', '.join(backend_names())}")
        try:
            obj = ep.load()
        except Exception as exc:  # a broken plugin must not take the others down
            raise BackendError(f"backend plugin {name!r} failed to load: {exc}") from exc
        backend = obj() if isinstance(obj, type) else obj
        if not isinstance(backend, Backend):
            raise BackendError(f"backend plugin {name!r} does not provide a kernelgen Backend")
        backend.name = backend.name or name
    _instances[name] = backend
    return backend


def all_backends() -> list[Backend]:
    out = []
    for name in backend_names():
        try:
            out.append(get_backend(name))
        except BackendError as exc:
            warnings.warn(str(exc), stacklevel=2)
    return out


def available_backends() -> list[Backend]:
    return [b for b in all_backends() if b.available()]


def default_backend() -> Backend | None:
    """The accelerator backend to use when none is named: the first available non-interpreter one."""
    for b in all_backends():
        if not b.interpret and b.available():
            return b
    return None


__all__ = [
    "Backend",
    "BackendError",
    "available_backends",
    "all_backends",
    "backend_names",
    "default_backend",
    "get_backend",
]
