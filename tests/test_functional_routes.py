"""enable()'s routes from torch.nn.functional to library adapters (kernelgen/functional_routes.py): served
calls skip the dispatcher; every call a route must not take runs PyTorch's function; disable() restores."""

import pytest
import torch
import torch.nn.functional as F

import kernelgen
from kernelgen import functional_routes
from kernelgen.verify.guard import count_launches


def _aten_ops_seen(fn) -> set[str]:
    """Names of the ATen ops the dispatcher ran for fn (the profiler sees dispatcher calls, not modes)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {e.name for e in prof.events()}


@pytest.mark.parametrize("op, name, call", [
    ("rms_norm", "rms_norm", lambda x, w: F.rms_norm(x, (x.shape[-1],), w, 1e-6)),
    ("softmax", "softmax", lambda x, w: F.softmax(x, dim=-1)),
    ("log_softmax", "log_softmax", lambda x, w: F.log_softmax(x, -1)),
    ("layer_norm", "layer_norm", lambda x, w: F.layer_norm(x, (x.shape[-1],), w, None, 1e-5)),
    ("cross_entropy", "cross_entropy", lambda x, w: F.cross_entropy(x, torch.arange(x.shape[0]) % x.shape[1])),
    ("mse_loss", "mse_loss", lambda x, w: F.mse_loss(x, x.flip(0) * w)),
    ("huber_loss", "huber_loss", lambda x, w: F.huber_loss(x, x.flip(0) * w, reduction="sum", delta=0.5)),
    ("smooth_l1_loss", "smooth_l1_loss", lambda x, w: F.smooth_l1_loss(x, x.flip(0) * w, beta=0.7)),
    ("kl_div", "kl_div", lambda x, w: F.kl_div(x, x.flip(0), reduction="sum", log_target=True)),
])
def test_served_calls_skip_the_dispatcher_and_match_pytorch(op, name, call, interpreter):
    original = getattr(F, name)
    x, w = torch.randn(4, 48), torch.randn(48)
    expected = call(x, w)
    assert kernelgen.enable(backend="interpreter", policy="all", include=[op]) == [op]
    try:
        assert getattr(F, name) is not original and getattr(F, name).kernelgen_original is original
        with count_launches() as launches:
            got = call(x, w)
        assert launches.total_launches >= 1 and kernelgen.status()["interpreter"]["calls"][op] == 1
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        seen = _aten_ops_seen(lambda: call(x, w))
        overload = {"softmax": "aten::_softmax", "log_softmax": "aten::_log_softmax",
                    "layer_norm": "aten::native_layer_norm", "rms_norm": "aten::rms_norm",
                    "cross_entropy": "aten::cross_entropy_loss"}.get(op, f"aten::{op}")
        assert overload not in seen, seen
    finally:
        kernelgen.disable()
    assert getattr(F, name) is original


def test_calls_a_route_must_not_take_run_pytorchs_function(interpreter):
    x = torch.randn(4, 48)
    kernelgen.enable(backend="interpreter", policy="all", include=["softmax", "rms_norm"])
    try:
        # a dtype cast, the implicit dim: PyTorch's function (which reaches the ATen override below)
        assert "aten::_softmax" in _aten_ops_seen(lambda: F.softmax(x, -1, dtype=torch.float32))
        # gradients: PyTorch's function, ATen's autograd around our forward
        xg = x.clone().requires_grad_()
        F.softmax(xg, -1).sum().backward()
        assert xg.grad is not None
        # a dim the kernel does not cover: handed back once, counted once
        expected = torch.softmax(x.double(), 0).float()
        before = kernelgen.status()["interpreter"]["fallbacks"].get("softmax", 0)
        torch.testing.assert_close(F.softmax(x, 0), expected)
        assert kernelgen.status()["interpreter"]["fallbacks"]["softmax"] == before + 1
        # a dispatch mode must see every op: a route steps aside
        from torch.utils._python_dispatch import TorchDispatchMode

        class Seen(TorchDispatchMode):
            ops: list = []

            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                self.ops.append(str(func))
                return func(*args, **(kwargs or {}))

        with Seen() as mode:
            F.softmax(x, -1)
        assert any("_softmax" in o for o in mode.ops)
        # a tensor subclass (as FakeTensor and DTensor are) goes to PyTorch's function
        sub = x.as_subclass(type("Sub", (torch.Tensor,), {}))
        assert "aten::rms_norm" in _aten_ops_seen(lambda: F.rms_norm(sub, (48,)))
        assert "aten::rms_norm" not in _aten_ops_seen(lambda: F.rms_norm(x, (48,)))
    finally:
        kernelgen.disable()


def test_a_route_for_another_device_runs_pytorchs_function():
    seen = []

    def original(input, normalized_shape, weight=None, eps=None):
        seen.append("original")
        return "pytorch"

    route = functional_routes.make_route(original, lambda *a: seen.append("adapter") or "ours",
                                         functional_routes.ROUTES["aten::rms_norm"], "cuda", "rms_norm")
    assert route(torch.randn(2, 8), (8,)) == "pytorch" and seen == ["original"] and route.served == [0]
    assert route.__wrapped__ is original and route.__name__ == "original"


def test_a_functional_with_another_signature_keeps_pytorchs_function():
    """A torch whose functional takes other parameters (or *args) gets no route: the route's expressions
    would read names that are not there."""
    spec = functional_routes.ROUTES["aten::_softmax"]

    def renamed(input, axis=None, _stacklevel=3, dtype=None):
        return "pytorch"

    def variadic(*args, **kwargs):
        return "pytorch"

    for original in (renamed, variadic):
        assert functional_routes.make_route(original, lambda *a: "ours", spec, "cuda", "softmax") is None
    assert functional_routes.make_route(F.softmax, lambda *a: "ours", spec, "no such device", "softmax") is None


def test_routes_can_be_switched_off(interpreter, monkeypatch):
    monkeypatch.setenv("KERNELGEN_FUNCTIONAL_ROUTES", "0")
    original = F.rms_norm
    kernelgen.enable(backend="interpreter", policy="all", include=["rms_norm"])
    try:
        assert F.rms_norm is original
    finally:
        kernelgen.disable()


def test_loss_calls_a_route_must_not_take_run_pytorchs_function(interpreter):
    """Shapes that PyTorch broadcasts (with its warning), a weight, beta = 0 (PyTorch's l1_loss), kl_div's
    'batchmean', a reduction the adapters do not compute ('none'): PyTorch's function, which reaches the ATen
    override or another op, with PyTorch's result."""
    x, t = torch.randn(4, 48), torch.randn(4, 48)
    kernelgen.enable(backend="interpreter", policy="all", include=["mse_loss", "smooth_l1_loss", "kl_div"])
    try:
        before = dict(kernelgen.status()["interpreter"]["calls"])
        with pytest.warns(UserWarning, match="target size"):
            got = F.mse_loss(x, t[:1])  # broadcast: PyTorch warns, then the override serves the expanded call
        torch.testing.assert_close(got, ((x - t[:1]) ** 2).mean())
        torch.testing.assert_close(F.mse_loss(x, t, weight=torch.ones_like(x)), ((x - t) ** 2).mean())
        assert "aten::l1_loss" in _aten_ops_seen(lambda: F.smooth_l1_loss(x, t, beta=0.0))
        torch.testing.assert_close(F.kl_div(x, t.softmax(-1), reduction="batchmean"),
                                   (t.softmax(-1) * (t.softmax(-1).log() - x)).sum() / 4)
        torch.testing.assert_close(F.mse_loss(x, t, reduction="none"), (x - t) ** 2)
        calls = kernelgen.status()["interpreter"]["calls"]
        # served through the dispatcher's override, not the route: mse_loss once (the broadcast call, expanded
        # by PyTorch), kl_div once (the sum before 'batchmean' divides)
        assert {op: calls.get(op, 0) - before.get(op, 0) for op in ("mse_loss", "kl_div")} == {"mse_loss": 1,
                                                                                           "kl_div": 1}
    finally:
        kernelgen.disable()
