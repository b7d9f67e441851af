"""Library ops as torch.library custom ops, so `torch.compile(fullgraph=True)` traces through them.

Dynamo cannot trace a library launcher (Python that launches a Triton kernel through our cached launch
path), so `kernelgen.ops.NAME` hands out a thin wrapper: in eager it calls the launcher directly (no
dispatcher on the way), while Dynamo is tracing it calls `torch.ops.kernelgen.NAME`, a custom op whose
implementation is that same launcher. The graph then holds one opaque node per library call and no break.

The schema comes from the launcher's signature and the spec: positional parameters only (keyword-only ones
such as `max_block` are launch tuning, not part of the op), tensors as `Tensor` (`Tensor?` when the
launcher's default is None), scalars as the spec's kind. The fake (meta) implementation is the launcher
itself run on fake tensors with launches switched off (`kernelgen.launch.no_launch`): launchers only
allocate and view, so that gives the real output shapes, dtypes and strides without a hand-written meta
function per op. An op whose signature cannot be expressed gets no registration; its wrapper is then the
plain launcher, and Dynamo breaks the graph there as it would for any Python call.
"""

from __future__ import annotations

import functools
import inspect

import torch

from kernelgen.launch import no_launch

NAMESPACE = "kernelgen"
_SCALAR_TYPES = {"float": "float", "int": "int", "bool": "bool"}
_registered: dict[str, object] = {}  # op name -> the custom op (one per process: torch keeps them for good)


def schema_for(spec, launcher) -> str | None:
    """`(Tensor x, Tensor? weight=None, float eps=1e-06) -> Tensor`, or None when not expressible."""
    kinds = {i.name: i.kind for i in spec.inputs}
    try:
        params = inspect.signature(launcher).parameters.values()
    except (TypeError, ValueError):
        return None
    parts = []
    for p in params:
        if p.kind in (p.KEYWORD_ONLY, p.VAR_KEYWORD):
            continue
        if p.kind == p.VAR_POSITIONAL or p.name not in kinds:
            return None
        kind = kinds[p.name]
        has_default = p.default is not p.empty
        if kind == "tensor":
            if has_default and p.default is not None:
                return None
            parts.append(f"Tensor? {p.name}=None" if has_default else f"Tensor {p.name}")
        elif kind in _SCALAR_TYPES:
            typ = _SCALAR_TYPES[kind]
            if not has_default:
                parts.append(f"{typ} {p.name}")
            elif isinstance(p.default, (bool, int, float)):
                parts.append(f"{typ} {p.name}={_literal(p.default)}")
            elif p.default is None:  # an optional scalar, e.g. a scale that defaults to 1/sqrt(D)
                parts.append(f"{typ}? {p.name}=None")
            else:
                return None
        else:
            return None
    n_out = len(spec.outputs) if getattr(spec, "outputs", None) else 1
    out = "Tensor" if n_out == 1 else "(" + ", ".join(["Tensor"] * n_out) + ")"
    return f"({', '.join(parts)}) -> {out}"


def _literal(value) -> str:
    if isinstance(value, bool):
        return "True" if value else "False"
    return repr(value)


def register(spec, launcher):
    """The custom op `torch.ops.kernelgen.<name>` running `launcher`, registered on first use; None when the
    launcher's signature cannot be expressed as a schema."""
    name = spec.name
    if name in _registered:
        return _registered[name]
    schema = schema_for(spec, launcher)
    if schema is None:
        _registered[name] = None
        return None

    def impl(*args):
        return launcher(*args)

    def fake(*args):
        with no_launch():
            return launcher(*args)

    op = torch.library.custom_op(f"{NAMESPACE}::{name}", impl, mutates_args=(), schema=schema)
    op.register_fake(fake)
    _registered[name] = op
    return op


def compile_aware(launcher, custom):
    """The launcher in eager; the custom op while Dynamo traces (torch.compile), so no graph break. A launcher
    with launch plans makes this entry point itself, the check inline (one frame less per call)."""
    if custom is None:
        return launcher
    is_compiling = torch.compiler.is_compiling
    with_custom = getattr(launcher, "compile_aware", None)
    if with_custom is not None:
        call = with_custom(custom, is_compiling)
    else:
        @functools.wraps(launcher)
        def call(*args, **kwargs):
            if is_compiling():
                return custom(*args, **kwargs)
            return launcher(*args, **kwargs)

    call.launcher = launcher  # the plain launcher, for callers that never run under torch.compile
    call.custom_op = custom
    return call
