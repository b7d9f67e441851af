"""Softmax family (softmax, log_softmax): every dtype against an upcast reference, edge shapes, strided
rows, the online (looped) variant, half_to_float and bad input."""

import pytest
import torch

from kernelgen.library import get_op
from kernelgen.verify.guard import count_launches

SOFTMAX_OPS = ["softmax", "log_softmax"]
REFERENCES = {"softmax": torch.softmax, "log_softmax": torch.log_softmax}


@pytest.mark.parametrize("name", SOFTMAX_OPS)
def test_softmax_op_matches_reference_on_every_dtype_and_edge_shape(name, assert_library_op_verifies):
    assert_library_op_verifies(name)


@pytest.mark.parametrize("name", SOFTMAX_OPS)
def test_online_looped_variant_matches_single_block(name, interpreter):
    fn = get_op(name).launcher()
    x = torch.randn(3, 1000) * 4
    x[1, 600:] += 30.0  # the running max grows in a late block: the running sum must be rescaled
    looped, single = fn(x, -1, max_block=128), fn(x, -1)
    torch.testing.assert_close(looped, single, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(looped.double(), REFERENCES[name](x.double(), -1), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", SOFTMAX_OPS)
def test_vocabulary_sized_rows_in_registers_and_past_them(name, interpreter):
    # 16K < N <= 32K: one block of 32K in registers (32 warps); N > 32K: the looped variant.
    fn = get_op(name).launcher()
    for n in (20000, 40000):
        x = torch.randn(2, n) * 3
        x[1, n - 5] += 40.0  # a late maximum
        torch.testing.assert_close(fn(x, -1).double(), REFERENCES[name](x.double(), -1), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", SOFTMAX_OPS)
def test_looped_variant_handles_a_row_that_starts_with_minus_infinity(name, interpreter):
    # An attention row masked at the start: the first blocks are all -inf, the running max starts at -inf.
    fn = get_op(name).launcher()
    x = torch.randn(2, 700)
    x[:, :300] = float("-inf")
    got = fn(x, -1, max_block=128)
    expected = REFERENCES[name](x.double(), -1)
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", SOFTMAX_OPS)
def test_softmax_op_on_strided_rows_of_3d_input(name, interpreter):
    fn = get_op(name).launcher()
    x = torch.randn(2, 3, 90, dtype=torch.float16)[:, :, :77]
    torch.testing.assert_close(fn(x).double(), REFERENCES[name](x.double(), -1), atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("name", SOFTMAX_OPS)
def test_aten_adapter_half_to_float_gives_float32_from_half(name, interpreter):
    adapter = getattr(get_op(name).module(), f"aten_{name}")
    x = torch.randn(4, 50, dtype=torch.float16)
    y = adapter(x, 1, True)
    assert y.dtype == torch.float32
    # float32 output keeps the precision the float16 output would round away
    torch.testing.assert_close(y.double(), REFERENCES[name](x.double(), -1), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", SOFTMAX_OPS)
def test_aten_adapter_hands_back_other_dims_and_dtypes(name, interpreter):
    adapter = getattr(get_op(name).module(), f"aten_{name}")
    x = torch.randn(4, 6)
    assert adapter(x, 0, False) is NotImplemented
    assert adapter(x.double(), 1, False) is NotImplemented
    assert adapter(x.bfloat16(), 1, True) is NotImplemented  # ATen allows half_to_float for float16 only
    assert adapter(torch.tensor(1.0), 0, False) is NotImplemented


@pytest.mark.parametrize("name", SOFTMAX_OPS)
@pytest.mark.parametrize(
    "args, exc, words",
    [
        ((torch.randint(0, 5, (2, 8)),), TypeError, "x must be"),
        ((torch.randn(2, 8, dtype=torch.float64),), TypeError, "x must be"),
        ((torch.randn(2, 8), 0), ValueError, "dim must be the last"),
        ((torch.tensor(3.0),), ValueError, "at least one dimension"),
    ],
)
def test_softmax_op_rejects_bad_input_before_launch(name, args, exc, words, interpreter):
    fn = get_op(name).launcher()
    with count_launches() as launches, pytest.raises(exc, match=words):
        fn(*args)
    assert launches.total_launches == 0
