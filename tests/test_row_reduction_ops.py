"""logsumexp and cosine_similarity, one value per row: verified like every library op, rows longer than one
block, ATen's conventions at the edges (infinite rows, eps clamping each norm), and the ATen overrides: served
over the last dim, handed back for other dims, broadcasting or dtypes, with gradients that still match."""

import pytest
import torch
import torch.nn.functional as F

import kernelgen
from kernelgen.verify.guard import count_launches


@pytest.mark.parametrize("name", ["cosine_similarity", "logsumexp"])
def test_row_reduction_matches_reference_on_every_dtype_and_edge_shape(name, assert_library_op_verifies):
    assert_library_op_verifies(name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_logsumexp_long_rows_and_infinite_rows_follow_aten(dtype, rng_seed, interpreter):
    g = torch.Generator().manual_seed(rng_seed)
    x = (5 * torch.randn(4, 1500, generator=g)).to(dtype)
    x[1] = float("-inf")  # every value -inf: -inf, not NaN
    x[2, 7] = float("inf")  # one +inf: +inf
    x[3, :700] = float("-inf")  # -inf in the first blocks only: the running max must not turn NaN
    want = torch.logsumexp(x.double(), -1)
    for max_block in (None, 256):  # one block, and the online loop over 6 blocks
        got = kernelgen.ops.logsumexp(x, -1, max_block=max_block)
        assert got.dtype == dtype and got.shape == (4,)
        torch.testing.assert_close(got.double(), want, atol=2e-2 if dtype == torch.bfloat16 else 1e-5, rtol=1e-2)
    assert kernelgen.ops.logsumexp(x, -1, keepdim=True).shape == (4, 1)


def test_cosine_similarity_clamps_each_norm_and_takes_long_rows(rng_seed, interpreter):
    g = torch.Generator().manual_seed(rng_seed)
    a, b = torch.randn(3, 2000, generator=g) * 0.001, torch.randn(3, 2000, generator=g)
    a[0] = 0.0
    for eps in (1e-8, 0.05):  # 0.05 is above ||a||: ATen clamps each norm on its own, not their product
        want = F.cosine_similarity(a.double(), b.double(), -1, eps)
        for max_block in (None, 512):
            got = kernelgen.ops.cosine_similarity(a, b, -1, eps, max_block=max_block)
            torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)


# (op, call of x [5, 6, 40] and y of its shape, served?)
OVERRIDE_CALLS = [
    ("logsumexp", lambda x, y: torch.logsumexp(x, -1), True),
    ("logsumexp", lambda x, y: x.logsumexp(dim=(2,), keepdim=True), True),
    ("logsumexp", lambda x, y: torch.logsumexp(x.bfloat16(), 2), True),
    ("logsumexp", lambda x, y: torch.logsumexp(x, 1), False),
    ("logsumexp", lambda x, y: torch.logsumexp(x, (1, 2)), False),
    ("cosine_similarity", lambda x, y: F.cosine_similarity(x, y, dim=-1), True),
    ("cosine_similarity", lambda x, y: F.cosine_similarity(x[0], y[0], dim=1, eps=1e-3), True),  # KernelBench 97
    ("cosine_similarity", lambda x, y: F.cosine_similarity(x, y), False),  # dim=1 of a 3-D tensor
    ("cosine_similarity", lambda x, y: F.cosine_similarity(x, y[0], dim=-1), False),  # broadcast
    ("cosine_similarity", lambda x, y: F.cosine_similarity(x, y.double(), dim=-1), False),
]
# ATen raises for these; so must the override (it hands them back rather than serving a dim ATen refuses)
OUT_OF_RANGE = [
    ("logsumexp", lambda x: torch.logsumexp(x[0, 0], 1)),
    ("cosine_similarity", lambda x: F.cosine_similarity(x[0, 0], x[0, 1])),  # 1-D inputs, default dim=1
]


@pytest.mark.parametrize("k", range(len(OVERRIDE_CALLS)))
def test_calls_are_served_over_the_last_dim_and_handed_back_otherwise(k, rng_seed, interpreter):
    op, call, served = OVERRIDE_CALLS[k]
    g = torch.Generator().manual_seed(rng_seed)
    x, y = torch.randn(5, 6, 40, generator=g), torch.randn(5, 6, 40, generator=g)
    with torch.no_grad():
        want = call(x, y)
    assert kernelgen.enable(backend="interpreter", policy="all", include=[op]) == [op]
    with torch.no_grad(), count_launches() as launches:
        got = call(x, y)
    st = kernelgen.status()["interpreter"]
    assert (st["calls"].get(op, 0), st["fallbacks"].get(op, 0) > 0) == ((1, False) if served else (0, True))
    assert launches.total_launches == (1 if served else 0)
    assert got.dtype == want.dtype and got.shape == want.shape
    tol = 1e-2 if got.dtype == torch.bfloat16 else 1e-5
    torch.testing.assert_close(got, want, atol=tol, rtol=tol)


@pytest.mark.parametrize("op, call", [
    ("logsumexp", lambda x, y: torch.logsumexp(x, -1)),
    ("cosine_similarity", lambda x, y: F.cosine_similarity(x, y, dim=-1)),
])
def test_gradients_still_match_aten(op, call, rng_seed, interpreter):
    # logsumexp has its own backward formula (over its result): our forward serves under autograd.
    # cosine_similarity is a composite op: a call that needs gradients goes back to ATen's decomposition.
    g = torch.Generator().manual_seed(rng_seed)
    x, y = torch.randn(4, 40, generator=g).requires_grad_(), torch.randn(4, 40, generator=g)
    w = torch.randn(4, generator=g)
    (call(x, y) * w).sum().backward()
    expected, x.grad = x.grad.clone(), None
    kernelgen.enable(backend="interpreter", policy="all", include=[op])
    (call(x, y) * w).sum().backward()
    torch.testing.assert_close(x.grad, expected, atol=1e-5, rtol=1e-5)
    st = kernelgen.status()["interpreter"]
    served = op == "logsumexp"
    assert (st["calls"].get(op, 0), st["fallbacks"].get(op, 0)) == ((1, 0) if served else (0, 1))


@pytest.mark.parametrize("op, call", OUT_OF_RANGE)
def test_a_dim_aten_rejects_is_still_rejected(op, call, interpreter):
    x = torch.randn(2, 3, 16)
    with pytest.raises(IndexError):
        call(x)
    kernelgen.enable(backend="interpreter", policy="all", include=[op])
    with torch.no_grad(), pytest.raises(IndexError):
        call(x)
    assert kernelgen.status()["interpreter"]["calls"].get(op, 0) == 0
