"""Routes from torch.nn.functional straight to library adapters, past the dispatcher's Python round trip.

An ATen override registered through torch.library is a Python function that the C++ dispatcher calls: each
call converts its arguments to Python objects and its result back, about 5 us of host time on a server CPU,
as much as a whole small eager call. For the functionals that models call by name (F.rms_norm, which
nn.RMSNorm calls; F.softmax; F.log_softmax; F.layer_norm; F.cross_entropy; the losses F.mse_loss,
F.huber_loss, F.smooth_l1_loss and F.kl_div), enable() also puts a route in front of PyTorch's function.
A call goes straight to the op's ATen adapter (with its launch plans) when:
- its tensors are plain tensors (no subclass such as FakeTensor or DTensor) on the backend's device;
- no gradient is needed, no torch function or dispatch mode is active, torch.compile is not tracing;
- it passes none of the functional's arguments that the ATen overload does not take (a softmax `dtype`,
  cross_entropy's legacy `size_average`/`reduce`), and it is at least as large as `enable(by_size=True)` asks.
Every other call, and every call the adapter hands back (NotImplemented), runs the function PyTorch had,
which goes through the dispatcher as before, ATen override included. disable() puts the functions back.
"""

from __future__ import annotations

import ast
import inspect
import os
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kernelgen import plans
from kernelgen.plans import PLAIN_TENSOR_TYPES

# The functional's metadata the route keeps (what functools.wraps copies)
_WRAPPED = ("__doc__", "__module__", "__qualname__", "__name__")
_REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}


@dataclass(frozen=True)
class Route:
    """How one functional's call becomes its ATen overload's adapter call, as Python expressions over the
    functional's parameter names."""

    function: str  # the name in torch.nn.functional
    tensors: tuple[str, ...]  # tensor parameters: the first `required` must be tensors, the others may be None
    call: str  # the adapter call
    when: str = "True"  # the arguments the overload covers (anything else is PyTorch's)
    result: str = "out"  # the functional's result from the adapter's
    required: int = 1


ROUTES = {
    "aten::rms_norm": Route("rms_norm", ("input", "weight"), "adapter(input, normalized_shape, weight, eps)"),
    # the implicit dim and the dtype cast stay PyTorch's
    "aten::_softmax": Route("softmax", ("input",), "adapter(input, dim, False)", "dim is not None and dtype is None"),
    "aten::_log_softmax": Route("log_softmax", ("input",), "adapter(input, dim, False)",
                                "dim is not None and dtype is None"),
    "aten::native_layer_norm": Route("layer_norm", ("input", "weight", "bias"),
                                     "adapter(input, normalized_shape, weight, bias, eps)", result="out[0]"),
    "aten::cross_entropy_loss": Route(
        "cross_entropy", ("input", "target", "weight"),
        "adapter(input, target, weight, REDUCTIONS[reduction], ignore_index, label_smoothing)",
        "size_average is None and reduce is None and reduction in REDUCTIONS", required=2),
    # The pointwise losses: same shapes only (PyTorch's function warns about and broadcasts others), no weight,
    # no legacy reduction arguments, the reductions their adapters compute (mean and sum).
    "aten::mse_loss": Route(
        "mse_loss", ("input", "target"), "adapter(input, target, REDUCTIONS[reduction])",
        "weight is None and size_average is None and reduce is None and reduction in ('mean', 'sum')"
        " and input.shape == target.shape", required=2),
    "aten::huber_loss": Route(
        "huber_loss", ("input", "target"), "adapter(input, target, REDUCTIONS[reduction], delta)",
        "weight is None and reduction in ('mean', 'sum') and input.shape == target.shape", required=2),
    # beta = 0 is PyTorch's l1_loss, not smooth_l1_loss
    "aten::smooth_l1_loss": Route(
        "smooth_l1_loss", ("input", "target"), "adapter(input, target, REDUCTIONS[reduction], beta)",
        "size_average is None and reduce is None and reduction in ('mean', 'sum') and beta > 0"
        " and input.shape == target.shape", required=2),
    # 'sum' only: 'mean' (PyTorch warns about it), 'batchmean' (a division after the sum) and 'none' stay PyTorch's
    "aten::kl_div": Route(
        "kl_div", ("input", "target"), "adapter(input, target, REDUCTIONS[reduction], log_target)",
        "size_average is None and reduce is None and reduction == 'sum' and input.shape == target.shape",
        required=2),
}


def _adapter_arguments(route: Route):
    """The expressions the route's call passes to the adapter, when they are all positional (None if not)."""
    call = ast.parse(route.call, mode="eval").body
    if (not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name) or call.func.id != "adapter"
            or call.keywords or any(isinstance(a, ast.Starred) for a in call.args)):
        return None
    return [ast.unparse(a) for a in call.args]


def _source(route: Route, params: list, adapter, device_type: str, min_numel: int) -> tuple[str, dict]:
    """The route's source, one function with the functional's own signature (no *args repacking, one frame
    before the adapter's), and the objects it names. With a planned adapter (kernelgen/plans.py) the
    replay of its plan is inline too, so a replayed call is the route's frame and the replay's."""
    scope: dict = {}
    header, passed = [], []
    for i, p in enumerate(params):
        if p.kind is p.KEYWORD_ONLY and "*" not in header:
            header.append("*")  # the keyword-only parameters follow
        if p.default is p.empty:
            header.append(p.name)
        else:
            scope[f"default{i}"] = p.default
            header.append(f"{p.name}=default{i}")
        passed.append(p.name if p.kind is p.POSITIONAL_OR_KEYWORD else f"{p.name}={p.name}")
    checks = []
    for i, name in enumerate(route.tensors):
        plain = (f"(type({name}) is T or type({name}) is P) and {name}.is_{device_type} "
                 f"and not (grad and {name}.requires_grad)")
        checks.append(plain if i < route.required else f"({name} is None or {plain})")
    if min_numel:
        checks.append(f"{route.tensors[0]}.numel() >= {int(min_numel)}")
    body = [f"out = {route.call}"]
    values = _adapter_arguments(route)
    inline = None if values is None else plans.inline_replay(
        adapter, values, set(route.tensors[:route.required]), route.call, "")
    # the inline lines' names must not shadow a parameter (p0, p1... are theirs too)
    if inline is not None and not any(p.name in inline[1] or p.name in plans.LOCAL_NAMES
                                      or re.fullmatch(r"p\d+", p.name) for p in params):
        body, names = inline
        scope.update(names)
    lines = [f"def route({', '.join(header)}):",
             "    grad = grad_enabled()",
             f"    if ({' and '.join(checks)}",
             # modes must see every op; Dynamo traces
             f"            and {route.when} and not function_modes() and not dispatch_modes() and not compiling()):",
             *("        " + line for line in body),
             "        if out is not NotImplemented:",  # handed back: PyTorch's function reaches the ATen override
             "            served[0] += 1",  # a list cell: a third of a Counter increment's cost
             f"            return {route.result}",
             f"    return original({', '.join(passed)})"]
    return "\n".join(lines) + "\n", scope


def make_route(original, adapter, route: Route, device_type: str, op_name: str, min_numel: int = 0):
    """The function that takes F.<name>'s place (see the module docstring), or None when the functional's
    signature is not one a route can take (parameters it does not know, *args), so PyTorch's stays. The
    calls it serves are counted in its `served[0]`; `op_name` is the library op it serves them with."""
    try:
        params = list(inspect.signature(original).parameters.values())
    except (TypeError, ValueError):
        return None
    names = {p.name for p in params}
    used = set(route.tensors)  # every name the route's expressions read must be a parameter
    for expr in (route.call, route.when, route.result):
        used |= {n.id for n in ast.walk(ast.parse(expr, mode="eval")) if isinstance(n, ast.Name)}
    used -= {"adapter", "REDUCTIONS", "out", "True"}
    if (any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY) for p in params)
            or not used <= names or not device_type.isidentifier() or not hasattr(torch.Tensor, f"is_{device_type}")):
        return None
    source, scope = _source(route, params, adapter, device_type, min_numel)
    scope.update(T=PLAIN_TENSOR_TYPES[0], P=PLAIN_TENSOR_TYPES[1], grad_enabled=torch.is_grad_enabled,
                 function_modes=torch._C._len_torch_function_stack,
                 dispatch_modes=torch._C._len_torch_dispatch_stack, compiling=torch.compiler.is_compiling,
                 adapter=adapter, original=original, served=[0], REDUCTIONS=_REDUCTIONS)
    exec(source, scope)  # noqa: S102 - source built from the functional's signature and the table above
    fn = scope["route"]
    for attr in _WRAPPED:
        setattr(fn, attr, getattr(original, attr))
    fn.__wrapped__ = fn.kernelgen_original = original
    fn.source, fn.served, fn.op_name = source, scope["served"], op_name
    return fn


def install(overload: str, adapter, device_type: str, op_name: str, min_numel: int = 0):
    """Put the route for `overload` in place; returns (function name, original, route) to restore and count
    from, or None when the overload has no functional route."""
    if overload not in ROUTES or os.environ.get("KERNELGEN_FUNCTIONAL_ROUTES", "1") == "0":
        return None
    route = ROUTES[overload]
    original = getattr(F, route.function)
    fn = make_route(original, adapter, route, device_type, op_name, min_numel)
    if fn is None:
        return None
    setattr(F, route.function, fn)
    return route.function, original, fn


def remove(name: str, original) -> None:
    """Put PyTorch's function back, if our route is still the one in place."""
    current = getattr(F, name)
    if getattr(current, "kernelgen_original", None) is original:
        setattr(F, name, original)
