"""ATen adapters under verification: building the ATen call for a spec's inputs, registering a candidate's
adapter for one call, and ATen's own answer (in float64, in the trusted parent).

An `[[aten]]` adapter replaces an ATen op for every model once `kernelgen.enable()` is on, so it is
verified the way a model reaches it: `torch.ops.aten.<op>` through the real dispatcher with the adapter
registered on the backend's key, against ATen's own op on the same (upcast) arguments.
"""

from __future__ import annotations

from typing import Any

import torch

from kernelgen.spec import OpSpec

ADAPTER_DTYPES = ("float32", "float16", "bfloat16")  # every float dtype a model may send


class AtenCallError(ValueError):
    """The spec's inputs cannot be mapped onto the ATen op's arguments."""


def aten_op(overload: str):
    """`aten::name[.overload]` -> the OpOverload."""
    name, _, ov = overload.removeprefix("aten::").partition(".")
    packet = getattr(torch.ops.aten, name, None)
    if packet is None:
        raise AtenCallError(f"{overload}: no such ATen op")
    try:
        return getattr(packet, ov or "default")
    except AttributeError:
        raise AtenCallError(f"{overload}: no such overload") from None


def aten_args(spec: OpSpec, overload: str, inputs: list[Any]) -> list[Any]:
    """The ATen op's positional arguments from the launcher's inputs: tensors in order, a shape list is the
    normalized (last) dim of the first tensor, scalars by kind in order, a bool nobody gives is False."""
    op = aten_op(overload)
    schema_names = {arg.name for arg in op._schema.arguments}
    tensors = [a for a, i in zip(inputs, spec.inputs) if i.kind == "tensor"]
    # a scalar named like an ATen argument (ignore_index) goes there; the others fill by kind, in order
    named = {i.name: a for a, i in zip(inputs, spec.inputs) if i.kind != "tensor" and i.name in schema_names}
    scalars = {kind: [a for a, i in zip(inputs, spec.inputs) if i.kind == kind and i.name not in named]
               for kind in ("int", "float", "bool")}
    first = tensors[0] if tensors else None
    out: list[Any] = []
    for arg in op._schema.arguments:
        if arg.kwarg_only:
            break
        typ = str(arg.type)
        if arg.name in named:
            out.append(named.pop(arg.name))
            continue
        if named and arg.has_default_value() and typ not in ("Tensor", "Optional[Tensor]"):
            out.append(arg.default_value)  # a later argument is named by the spec: this one keeps ATen's default
            continue
        if typ in ("Tensor", "Optional[Tensor]"):
            if tensors:
                out.append(tensors.pop(0))
            elif typ.startswith("Optional"):
                out.append(None)
            else:
                raise AtenCallError(f"{overload}: argument {arg.name!r} needs a tensor the spec does not give")
        elif typ in ("List[int]", "List[SymInt]") and first is not None:
            out.append([first.shape[-1]])
        elif typ in ("int", "SymInt", "Optional[int]") and scalars["int"]:
            out.append(scalars["int"].pop(0))
        elif typ in ("float", "Optional[float]") and scalars["float"]:
            out.append(scalars["float"].pop(0))
        elif typ == "bool":
            out.append(scalars["bool"].pop(0) if scalars["bool"] else False)
        elif arg.has_default_value():
            break
        else:
            raise AtenCallError(f"{overload}: cannot fill argument {arg.name!r} ({typ}) from the spec's inputs")
    left = len(tensors) + sum(len(v) for v in scalars.values())
    if left:
        raise AtenCallError(f"{overload}: {left} spec input(s) have no place among the ATen arguments")
    return out


def aten_expected(overload: str, args: list[Any]) -> tuple:
    """ATen's own answer on float64 CPU copies of the arguments (trusted: no candidate code runs)."""
    from kernelgen.verify.inputs import as_tuple, upcast

    with torch.no_grad():
        return as_tuple(aten_op(overload)(*upcast(list(args))))


def aten_dtypes(overload: str, args: list[Any], device: str) -> tuple:
    """The output dtypes ATen gives a model for these arguments on `device` (no upcast). On the CPU, its CPU
    kernels' where they compute them (a CPU float16 layer norm returns float16 statistics); elsewhere, or
    where the CPU kernels refuse (half_to_float), its meta kernels', which follow the GPU's conventions."""
    def dtypes(out) -> tuple:
        return tuple(o.dtype for o in (out if isinstance(out, (tuple, list)) else (out,))
                     if isinstance(o, torch.Tensor))

    if device == "cpu":
        try:
            with torch.no_grad():
                return dtypes(aten_op(overload)(*[a.detach().clone() if isinstance(a, torch.Tensor) else a
                                                  for a in args]))
        except (RuntimeError, NotImplementedError):
            pass
    meta = [torch.empty_like(a, device="meta") if isinstance(a, torch.Tensor) else a for a in args]
    return dtypes(aten_op(overload)(*meta))


def with_arg(overload: str, args: list[Any], name: str, value: Any, typ: str) -> list[Any] | None:
    """`args` with the positional argument `name` (of schema type `typ`) set to `value`; None when the op has
    no such argument among `args`, or it already has that value."""
    for k, arg in enumerate(aten_op(overload)._schema.arguments[:len(args)]):
        if arg.name == name and str(arg.type) == typ:
            return None if args[k] == value else args[:k] + [value] + args[k + 1:]
    return None


def call_with_adapter(overload: str, adapter, backend, args: list[Any]) -> tuple[Any, int, int]:
    """Call the ATen op through the dispatcher with `adapter` registered on the backend's key (and its
    autograd key for composite ops, as `kernelgen.enable()` does). Returns (outputs, calls the adapter
    served, calls it handed back to ATen). Runs in the candidate's process."""
    import warnings

    from kernelgen.aten import Registration, _make_impl

    lib = torch.library.Library("aten", "IMPL")
    reg = Registration(backend, lib)
    qualified = overload.removeprefix("aten::")
    name = overload.removeprefix("aten::").split(".")[0]
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="(?s).*Overriding a previously registered kernel")
            composite = torch._C._dispatch_has_kernel_for_dispatch_key(overload, "CompositeImplicitAutograd")
            keys = [f"Autograd{backend.dispatch_key}", backend.dispatch_key] if composite else [backend.dispatch_key]
            for key in keys:
                original = torch.library.get_kernel(overload, key)
                lib.impl(qualified, _make_impl(reg, name, adapter, original, key != backend.dispatch_key), key,
                         with_keyset=True)
        with torch.no_grad():
            out = aten_op(overload)(*args)
    finally:
        lib._destroy()
    return out, reg.calls[name], reg.fallbacks[name]
