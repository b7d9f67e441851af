"""Gated activations (silu_and_mul, gelu_and_mul): every dtype against an upcast reference, edge shapes,
strided rows, the [..., 2N] split form, both GELU approximations, column tiling and bad input."""

import pytest
import torch
import torch.nn.functional as F

from kernelgen.library import get_op
from kernelgen.verify.guard import count_launches, watch

# exp(-a) of a very negative gate overflows to inf by design (a / inf is the right limit, -0); numpy, which
# runs the interpreted kernels, warns about it.
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in exp")

ACTIVATION_OPS = ["silu_and_mul", "gelu_and_mul"]
REFERENCES = {"silu_and_mul": lambda a, b: F.silu(a) * b, "gelu_and_mul": lambda a, b: F.gelu(a) * b}


@pytest.mark.parametrize("name", ACTIVATION_OPS)
def test_activation_op_matches_reference_on_every_dtype_and_edge_shape(name, assert_library_op_verifies):
    assert_library_op_verifies(name)


@pytest.mark.parametrize("name", ACTIVATION_OPS)
def test_single_tensor_is_split_in_gate_and_up_halves(name, interpreter):
    fn = get_op(name).launcher()
    x = torch.randn(2, 3, 2 * 75, dtype=torch.bfloat16)
    with watch() as w:
        got = fn(x)
    assert not w.violations and w.total_launches == 1  # the halves are views, never copies
    assert got.shape == (2, 3, 75) and got.dtype == torch.bfloat16
    expected = REFERENCES[name](x[..., :75].double(), x[..., 75:].double())
    torch.testing.assert_close(got.double(), expected, atol=2e-2, rtol=1.6e-2)
    torch.testing.assert_close(got, fn(x[..., :75], x[..., 75:]), atol=0, rtol=0)


@pytest.mark.parametrize("name", ACTIVATION_OPS)
def test_long_rows_are_tiled_over_several_programs(name, interpreter):
    fn = get_op(name).launcher()
    a, b = torch.randn(2, 1000), torch.randn(2, 1000)
    with count_launches() as launches:
        tiled = fn(a, b, max_block=128)
    assert launches.total_launches == 1
    torch.testing.assert_close(tiled, fn(a, b), atol=0, rtol=0)
    torch.testing.assert_close(tiled.double(), REFERENCES[name](a.double(), b.double()), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype, atol, rtol", [(torch.float32, 1e-5, 1.3e-6), (torch.float16, 1e-3, 1e-3)])
def test_gelu_and_mul_tanh_approximation_matches_torch_and_differs_from_erf(dtype, atol, rtol, interpreter):
    gelu_and_mul = get_op("gelu_and_mul").launcher()
    a, b = (torch.randn(4, 300) * 3).to(dtype), torch.randn(4, 300).to(dtype)
    tanh = gelu_and_mul(a, b, approximate="tanh")
    erf = gelu_and_mul(a, b, approximate="none")
    ref_tanh = F.gelu(a.double(), approximate="tanh") * b.double()
    ref_erf = F.gelu(a.double()) * b.double()
    torch.testing.assert_close(tanh.double(), ref_tanh.to(dtype).double(), atol=atol, rtol=rtol)
    torch.testing.assert_close(erf.double(), ref_erf.to(dtype).double(), atol=atol, rtol=rtol)
    assert (ref_tanh - ref_erf).abs().max() > 1e-4  # the two forms are told apart at this size
    assert not torch.equal(tanh, erf)


def test_activations_saturate_without_nan_at_extreme_inputs(interpreter):
    a = torch.tensor([[-1e4, -100.0, -20.0, 0.0, 20.0, 100.0, 1e4]])
    b = torch.full_like(a, 2.0)
    for name, ref in (("silu_and_mul", F.silu(a.double()) * 2),
                      ("gelu_and_mul", F.gelu(a.double()) * 2)):
        got = get_op(name).launcher()(a, b)
        assert not torch.isnan(got).any(), name
        torch.testing.assert_close(got.double(), ref, atol=1e-5, rtol=1e-5)
    got = get_op("gelu_and_mul").launcher()(a, b, approximate="tanh")
    torch.testing.assert_close(got.double(), F.gelu(a.double(), approximate="tanh") * 2, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ACTIVATION_OPS)
@pytest.mark.parametrize(
    "args, kwargs, exc, words",
    [
        ((torch.randint(0, 5, (2, 8)), torch.randn(2, 8)), {}, TypeError, "a must be"),
        ((torch.randn(2, 8), torch.randn(2, 9)), {}, ValueError, "b must have a's shape"),
        ((torch.randn(2, 8), torch.randn(2, 8, dtype=torch.float16)), {}, TypeError, "b must have a's dtype"),
        ((torch.randn(2, 8), torch.randint(0, 5, (2, 8))), {}, TypeError, "b must be"),
        ((torch.randn(2, 7),), {}, ValueError, "must be even"),
    ],
)
def test_activation_op_rejects_bad_input_before_launch(name, args, kwargs, exc, words, interpreter):
    fn = get_op(name).launcher()
    with count_launches() as launches, pytest.raises(exc, match=words):
        fn(*args, **kwargs)
    assert launches.total_launches == 0


def test_gelu_and_mul_rejects_unknown_approximation_before_launch(interpreter):
    gelu_and_mul = get_op("gelu_and_mul").launcher()
    with count_launches() as launches, pytest.raises(ValueError, match="approximate"):
        gelu_and_mul(torch.randn(2, 8), torch.randn(2, 8), approximate="sigmoid")
    assert launches.total_launches == 0
