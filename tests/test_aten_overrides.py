"""ATen overrides of the library's row ops: torch.nn.functional calls launch our kernels once and match
ATen; cases the kernels do not cover fall back to ATen (no launch, same answer); autograd keeps working."""

import pytest
import torch
import torch.nn.functional as F

import kernelgen
from kernelgen.verify.guard import count_launches

OVERRIDDEN = ["layer_norm", "log_softmax", "rms_norm", "softmax"]

# (op enabled, call) with fresh random inputs made inside the call
CALLS = {
    "softmax": lambda x, w, b: F.softmax(x, dim=-1),
    "softmax_positive_dim": lambda x, w, b: torch.softmax(x, dim=x.dim() - 1),
    "log_softmax": lambda x, w, b: F.log_softmax(x, dim=-1),
    "layer_norm": lambda x, w, b: F.layer_norm(x, (x.shape[-1],), w, b, 1e-5),
    "layer_norm_module": lambda x, w, b: torch.nn.functional.layer_norm(x, x.shape[-1:]),
    "rms_norm": lambda x, w, b: F.rms_norm(x, (x.shape[-1],), w, 1e-6),
}
OP_OF = {"softmax_positive_dim": "softmax", "layer_norm_module": "layer_norm"}
TOLERANCES = {torch.float32: (1e-5, 1.3e-6), torch.float16: (1e-3, 1e-3), torch.bfloat16: (1.6e-2, 1e-2)}


def test_enable_switches_on_every_overriding_op(interpreter):
    assert kernelgen.enable(backend="interpreter", policy="all", include=OVERRIDDEN) == OVERRIDDEN
    ops = kernelgen.status()["interpreter"]["ops"]
    assert ops["softmax"] == ["aten::_softmax"] and ops["log_softmax"] == ["aten::_log_softmax"]
    assert ops["layer_norm"] == ["aten::native_layer_norm"]


@pytest.mark.parametrize("call", sorted(CALLS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_functional_call_launches_our_kernel_and_matches_aten(call, dtype, interpreter):
    op = OP_OF.get(call, call)
    x = torch.randn(3, 5, 96, dtype=dtype) * 2
    w, b = torch.randn(96, dtype=dtype), torch.randn(96, dtype=dtype)
    expected = CALLS[call](x, w, b)
    kernelgen.enable(backend="interpreter", policy="all", include=[op])
    with count_launches() as launches:
        got = CALLS[call](x, w, b)
    assert launches.total_launches == 1
    assert kernelgen.status()["interpreter"]["calls"][op] == 1
    assert got.dtype == expected.dtype and got.shape == expected.shape
    atol, rtol = TOLERANCES[dtype]
    torch.testing.assert_close(got, expected, atol=2 * atol, rtol=2 * rtol)
    kernelgen.disable()
    with count_launches() as launches:
        CALLS[call](x, w, b)
    assert launches.total_launches == 0


FALLBACKS = {
    "softmax over a leading dim": ("softmax", lambda x: F.softmax(x, dim=0)),
    "log_softmax over a middle dim": ("log_softmax", lambda x: F.log_softmax(x, dim=1)),
    "float64 softmax": ("softmax", lambda x: F.softmax(x.double(), dim=-1)),
    "layer_norm over two dims": ("layer_norm", lambda x: F.layer_norm(x, x.shape[-2:])),
    "float64 layer_norm": ("layer_norm", lambda x: F.layer_norm(x.double(), x.shape[-1:])),
    "layer_norm with float32 weight on half input": (
        "layer_norm", lambda x: F.layer_norm(x.half(), x.shape[-1:], torch.ones(x.shape[-1]) * 1.5)),
    "rms_norm over two dims": ("rms_norm", lambda x: F.rms_norm(x, x.shape[-2:])),
}


@pytest.mark.parametrize("case", sorted(FALLBACKS))
def test_unsupported_calls_fall_back_to_aten_without_a_launch(case, interpreter):
    op, call = FALLBACKS[case]
    x = torch.randn(4, 6, 10)
    expected = call(x)
    kernelgen.enable(backend="interpreter", policy="all", include=[op])
    with count_launches() as launches:
        got = call(x)
    assert launches.total_launches == 0
    assert kernelgen.status()["interpreter"]["fallbacks"][op] >= 1
    torch.testing.assert_close(got, expected)


def test_half_to_float_softmax_is_served_by_our_kernel(interpreter):
    # ATen's CPU kernel rejects half_to_float; ours gives what CUDA gives: float32 probabilities.
    x = torch.randn(4, 80, dtype=torch.float16)
    kernelgen.enable(backend="interpreter", policy="all", include=["softmax", "log_softmax"])
    with count_launches() as launches:
        p = torch.ops.aten._softmax(x, -1, True)
        logp = torch.ops.aten._log_softmax(x, 1, True)
    assert launches.total_launches == 2 and p.dtype == logp.dtype == torch.float32
    torch.testing.assert_close(p.double(), torch.softmax(x.double(), -1), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(logp.double(), torch.log_softmax(x.double(), -1), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("op, call", [
    ("softmax", lambda x, w, b: F.softmax(x, -1)),
    ("log_softmax", lambda x, w, b: F.log_softmax(x, -1)),
    ("layer_norm", lambda x, w, b: F.layer_norm(x, (x.shape[-1],), w, b, 1e-5)),
])
def test_gradients_through_our_forward_match_aten(op, call, interpreter):
    # softmax/log_softmax/native_layer_norm are overridden below autograd: ATen's backward runs on what our
    # forward saved (the output, or layer_norm's mean and rstd), so the gradients check those too.
    x = (torch.randn(6, 40) + 3).requires_grad_()
    w, b = torch.randn(40, requires_grad=True), torch.randn(40, requires_grad=True)
    g = torch.randn(6, 40)
    (call(x, w, b) * g).sum().backward()
    expected = [t.grad.clone() for t in (x, w, b) if t.grad is not None]
    for t in (x, w, b):
        t.grad = None
    kernelgen.enable(backend="interpreter", policy="all", include=[op])
    with count_launches() as launches:
        (call(x, w, b) * g).sum().backward()
    assert launches.total_launches == 1
    got = [t.grad for t in (x, w, b) if t.grad is not None]
    assert len(got) == len(expected)
    for a, e in zip(got, expected):
        torch.testing.assert_close(a, e, atol=1e-4, rtol=1e-4)
