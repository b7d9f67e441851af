"""The whole-tensor losses (mse_loss, huber_loss, smooth_l1_loss, kl_div): verified like every library op, both
launch paths (one program, and partial sums plus their sum) on contiguous and strided inputs, bit-identical
results on repeated calls, and the ATen overrides: served for mean and sum, handed back otherwise, with
gradients that still match ATen's."""

import pytest
import torch
import torch.nn.functional as F

import kernelgen
from kernelgen.verify.guard import count_launches

LOSSES = ["huber_loss", "kl_div", "mse_loss", "smooth_l1_loss"]

# name -> (launcher call, PyTorch's answer) over an input x and a target t (probabilities for kl_div)
CASES = {
    "mse_loss": (lambda x, t, r: kernelgen.ops.mse_loss(x, t, reduction=r),
                 lambda x, t, r: F.mse_loss(x, t, reduction=r)),
    "huber_loss": (lambda x, t, r: kernelgen.ops.huber_loss(x, t, 0.7, reduction=r),
                   lambda x, t, r: F.huber_loss(x, t, reduction=r, delta=0.7)),
    "smooth_l1_loss": (lambda x, t, r: kernelgen.ops.smooth_l1_loss(x, t, 1.3, reduction=r),
                       lambda x, t, r: F.smooth_l1_loss(x, t, reduction=r, beta=1.3)),
    "smooth_l1_loss beta 0": (lambda x, t, r: kernelgen.ops.smooth_l1_loss(x, t, 0.0, reduction=r),
                              lambda x, t, r: F.l1_loss(x, t, reduction=r)),
    "kl_div": (lambda x, t, r: kernelgen.ops.kl_div(x, t, reduction=r),
               lambda x, t, r: torch.kl_div(x, t, reduction=1 if r == "mean" else 2)),
    "kl_div log_target": (lambda x, t, r: kernelgen.ops.kl_div(x, (t + 0.01).log(), reduction=r, log_target=True),
                          lambda x, t, r: torch.kl_div(x, (t + 0.01).log(), reduction=1 if r == "mean" else 2,
                                                       log_target=True)),
}


def _inputs(shape, seed, dtype=torch.float32, transposed=False):
    g = torch.Generator().manual_seed(seed)
    if transposed:  # a column stride other than 1: the strided (row, column) path of the kernels
        x, t = (torch.randn(shape[::-1], generator=g) * 2).t(), torch.rand(shape[::-1], generator=g).t()
    else:
        x, t = torch.randn(shape, generator=g) * 2, torch.rand(shape, generator=g)
    t[0, :3] = 0.0  # a zero probability: kl_div's xlogy(0, 0) is 0
    return x.to(dtype), t.to(dtype)


@pytest.mark.parametrize("name", LOSSES)
def test_loss_matches_reference_on_every_dtype_and_edge_shape(name, assert_library_op_verifies):
    assert_library_op_verifies(name)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("shape, transposed", [((3, 50), False), ((2, 7001), False), ((2, 20001), False),
                                               ((300, 130), True)])
def test_mean_and_sum_on_one_program_and_on_partial_sums(case, shape, transposed, rng_seed, interpreter):
    # 2 x 7001: one program, two blocks; 2 x 20001 and 300 x 130 are past the one-program limit (16K
    # elements): partial sums, then their sum
    ours, torchs = CASES[case]
    x, t = _inputs(shape, rng_seed, transposed=transposed)
    for reduction in ("mean", "sum"):
        got, want = ours(x, t, reduction), torchs(x.double(), t.double(), reduction)
        assert got.shape == () and got.dtype == torch.float32
        torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5, msg=lambda m, r=reduction: f"{r}: {m}")


@pytest.mark.parametrize("case", ["mse_loss", "kl_div"])
def test_bfloat16_loss_is_bfloat16_and_repeated_calls_are_bit_identical(case, rng_seed, interpreter):
    ours, torchs = CASES[case]
    x, t = _inputs((2, 20001), rng_seed, torch.bfloat16)
    got = ours(x, t, "mean")
    assert got.dtype == torchs(x, t, "mean").dtype == torch.bfloat16
    torch.testing.assert_close(got.double(), torchs(x.double(), t.double(), "mean"), atol=1e-2, rtol=1e-2)
    assert torch.equal(ours(x, t, "mean"), got)  # a fixed order of summation: no atomics


def test_empty_input_mean_is_nan_and_sum_is_zero_like_pytorch(interpreter):
    x = torch.randn(0, 8)
    assert torch.isnan(kernelgen.ops.mse_loss(x, x)) and torch.isnan(F.mse_loss(x, x))
    assert kernelgen.ops.mse_loss(x, x, reduction="sum").item() == 0.0 == F.mse_loss(x, x, reduction="sum").item()


def test_launcher_refuses_mismatched_inputs(interpreter):
    x = torch.randn(4, 8)
    with pytest.raises(ValueError, match="must match"):
        kernelgen.ops.mse_loss(x, torch.randn(8))
    with pytest.raises(TypeError, match="dtype"):
        kernelgen.ops.kl_div(x, x.double())
    with pytest.raises(ValueError, match="reduction"):
        kernelgen.ops.huber_loss(x, x, 1.0, reduction="none")
    with pytest.raises(ValueError, match="delta"):
        kernelgen.ops.huber_loss(x, x, 0.0)


# (op, call of x and t, served?) through the functional API a model uses
OVERRIDE_CALLS = [
    ("mse_loss", lambda x, t: F.mse_loss(x, t), True),
    ("mse_loss", lambda x, t: F.mse_loss(x, t, reduction="sum"), True),
    ("mse_loss", lambda x, t: F.mse_loss(x, t, reduction="none"), False),
    ("huber_loss", lambda x, t: F.huber_loss(x, t, delta=0.5), True),
    ("huber_loss", lambda x, t: F.huber_loss(x.double(), t.double()), False),
    ("smooth_l1_loss", lambda x, t: F.smooth_l1_loss(x, t, reduction="sum", beta=2.0), True),
    # F.smooth_l1_loss calls l1_loss itself for beta = 0; a direct ATen call reaches the override
    ("smooth_l1_loss", lambda x, t: torch.ops.aten.smooth_l1_loss(x, t, 1, 0.0), True),
    ("kl_div", lambda x, t: F.kl_div(x.log_softmax(-1), t, reduction="batchmean"), True),
    ("kl_div", lambda x, t: F.kl_div(x.log_softmax(-1), (t + 0.01).log(), reduction="sum", log_target=True), True),
    ("kl_div", lambda x, t: F.kl_div(x, t[0], reduction="sum"), False),  # broadcast target
]


@pytest.mark.parametrize("k", range(len(OVERRIDE_CALLS)))
def test_functional_losses_are_served_or_handed_back(k, rng_seed, interpreter):
    op, call, served = OVERRIDE_CALLS[k]
    x, t = _inputs((5, 48), rng_seed)
    with torch.no_grad():
        want = call(x, t)
    assert kernelgen.enable(backend="interpreter", policy="all", include=[op]) == [op]
    with torch.no_grad(), count_launches() as launches:
        got = call(x, t)
    st = kernelgen.status()["interpreter"]
    assert (st["calls"].get(op, 0), st["fallbacks"].get(op, 0)) == ((1, 0) if served else (0, 1))
    assert any(name.endswith("_blocks") for name in launches.launches) == served
    assert got.dtype == want.dtype and got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("op, call", [
    ("mse_loss", lambda x, t: F.mse_loss(x, t)),
    ("huber_loss", lambda x, t: F.huber_loss(x, t, delta=0.5)),
    ("kl_div", lambda x, t: F.kl_div(x, t, reduction="batchmean")),
])
def test_gradients_still_match_aten(op, call, rng_seed, interpreter):
    # mse_loss and huber_loss have ATen backward formulas over self and target: our forward serves under
    # autograd. kl_div is a composite op: a call that needs gradients goes back to ATen's decomposition.
    x, t = _inputs((4, 40), rng_seed)
    x.requires_grad_()
    call(x, t).backward()
    expected, x.grad = x.grad.clone(), None
    kernelgen.enable(backend="interpreter", policy="all", include=[op])
    call(x, t).backward()
    torch.testing.assert_close(x.grad, expected, atol=1e-5, rtol=1e-5)
    st = kernelgen.status()["interpreter"]
    assert st["fallbacks"].get(op, 0) == (1 if op == "kl_div" else 0)
    assert st["calls"].get(op, 0) == (0 if op == "kl_div" else 1)


@pytest.mark.parametrize("name, schema", [
    ("mse_loss", "(Tensor input, Tensor target) -> Tensor"),
    ("huber_loss", "(Tensor input, Tensor target, float delta=1.0) -> Tensor"),
    ("smooth_l1_loss", "(Tensor input, Tensor target, float beta=1.0) -> Tensor"),
    ("kl_div", "(Tensor input, Tensor target) -> Tensor"),
    ("logsumexp", "(Tensor x, int dim=-1) -> Tensor"),
    ("cosine_similarity", "(Tensor x1, Tensor x2, int dim=-1, float eps=1e-08) -> Tensor"),
])
def test_new_ops_are_custom_ops_for_torch_compile(name, schema, interpreter):
    # the options of a call (reduction, log_target, keepdim) are keyword-only: the positional part is a schema
    from torch._subclasses.fake_tensor import FakeTensorMode

    from kernelgen.custom_ops import schema_for
    from kernelgen.library import get_op

    op = get_op(name)
    assert schema_for(op.spec, op.launcher()) == schema
    getattr(kernelgen.ops, name)  # registers torch.ops.kernelgen.<name>
    with FakeTensorMode():
        x = torch.empty(3, 5, dtype=torch.bfloat16)
        y = getattr(torch.ops.kernelgen, name)(*([x] if name == "logsumexp" else [x, x]))
    assert y.dtype == torch.bfloat16 and y.shape == (() if name.endswith(("loss", "div")) else (3,))
