"""Routes from torch.nn.functional straight to library adapters, past the dispatcher's Python round trip.

An ATen override registered through torch.library is a Python function that the C++ dispatcher calls: each
call converts its arguments to Python objects and its result back, about 5 us of host time on a server CPU,
as much as a whole small eager call. For the functionals that models call by name (F.rms_norm, which
nn.RMSNorm calls; F.softmax; F.log_softmax; F.layer_norm; F.cross_entropy), enable() also puts a route in
front of PyTorch's function. A call goes straight to the op's ATen adapter (with its launch plans) when:
- its tensors are plain tensors (no subclass such as FakeTensor or DTensor) on the backend's device;
- no gradient is needed, no torch function or dispatch mode is active, torch.compile is not tracing;
- it passes none of the functional's arguments that the ATen overload does not take (a softmax `dtype`,
  cross_entropy's legacy `size_average`/`reduce`), and it is at least as large as `enable(by_size=True)` asks.
Every other call, and every call the adapter hands back (NotImplemented), runs the function PyTorch had,
which goes through the dispatcher as before, ATen override included. disable() puts the functions back.
"""

from __future__ import annotations

import functools
import inspect
import operator
import os

import torch
import torch.nn.functional as F

from kernelgen.plans import PLAIN_TENSOR_TYPES

_REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}


def _rms_norm(adapter):
    def call(input, normalized_shape, weight=None, eps=None):
        return adapter(input, normalized_shape, weight, eps)
    return call, ("input", "weight")


def _softmax(adapter):
    def call(input, dim=None, _stacklevel=3, dtype=None):
        if dim is None or dtype is not None:
            return NotImplemented  # the implicit dim and the dtype cast stay PyTorch's
        return adapter(input, dim, False)
    return call, ("input",)


def _layer_norm(adapter):
    def call(input, normalized_shape, weight=None, bias=None, eps=1e-5):
        out = adapter(input, normalized_shape, weight, bias, eps)
        return out if out is NotImplemented else out[0]
    return call, ("input", "weight", "bias")


def _cross_entropy(adapter):
    def call(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None, reduction="mean",
             label_smoothing=0.0):
        if size_average is not None or reduce is not None or reduction not in _REDUCTIONS:
            return NotImplemented
        return adapter(input, target, weight, _REDUCTIONS[reduction], ignore_index, label_smoothing)
    return call, ("input", "target", "weight")


# ATen overload -> (name in torch.nn.functional, how its arguments become the overload's)
ROUTES = {
    "aten::rms_norm": ("rms_norm", _rms_norm),
    "aten::_softmax": ("softmax", _softmax),
    "aten::_log_softmax": ("log_softmax", _softmax),
    "aten::native_layer_norm": ("layer_norm", _layer_norm),
    "aten::cross_entropy_loss": ("cross_entropy", _cross_entropy),
}


def make_route(original, adapter, translate, device_type: str, served, min_numel: int = 0):
    """The function that takes F.<name>'s place (see the module docstring)."""
    call, tensor_params = translate(adapter)
    on_device = operator.attrgetter(f"is_{device_type}")  # t.is_cuda: a flag, where t.device builds an object
    params = list(inspect.signature(call).parameters)
    positions = [(params.index(p), p) for p in tensor_params]

    grad_enabled, compiling = torch.is_grad_enabled, torch.compiler.is_compiling
    function_modes, dispatch_modes = torch._C._len_torch_function_stack, torch._C._len_torch_dispatch_stack

    @functools.wraps(original)
    def route(*args, **kwargs):
        grad = grad_enabled()
        for i, name in positions:
            t = args[i] if i < len(args) else kwargs.get(name)
            if t is None and i > 0:
                continue  # an optional tensor not given
            if type(t) not in PLAIN_TENSOR_TYPES or not on_device(t) or (grad and t.requires_grad):
                return original(*args, **kwargs)
        if function_modes() or dispatch_modes() or compiling():  # modes must see every op; Dynamo traces
            return original(*args, **kwargs)
        if min_numel and args and args[0].numel() < min_numel:
            return original(*args, **kwargs)
        out = call(*args, **kwargs)
        if out is NotImplemented:  # PyTorch's function reaches the ATen override, which counts the hand-back
            return original(*args, **kwargs)
        served()
        return out

    route.kernelgen_original = original
    return route


def install(overload: str, adapter, device_type: str, served, min_numel: int = 0):
    """Put the route for `overload` in place; returns (name, original) to restore, or None when the overload
    has no functional route."""
    if overload not in ROUTES or os.environ.get("KERNELGEN_FUNCTIONAL_ROUTES", "1") == "0":
        return None
    name, translate = ROUTES[overload]
    original = getattr(F, name)
    setattr(F, name, make_route(original, adapter, translate, device_type, served, min_numel))
    return name, original


def remove(name: str, original) -> None:
    """Put PyTorch's function back, if our route is still the one in place."""
    current = getattr(F, name)
    if getattr(current, "kernelgen_original", None) is original:
        setattr(F, name, original)
