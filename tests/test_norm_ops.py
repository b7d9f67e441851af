"""rms_norm family: every dtype against an upcast reference, edge shapes, strided rows, bad input."""

import pytest
import torch

from kernelgen.library import get_op
from kernelgen.verify.accuracy import check_accuracy

NORM_OPS = ["rms_norm"]


@pytest.mark.parametrize("name", NORM_OPS)
def test_norm_op_matches_reference_on_every_dtype_and_edge_shape(name, interpreter):
    op = get_op(name)
    result = check_accuracy(op.spec, op.launcher(), interpreter, trials=3)
    assert result.passed, result.message
    cases = {r["case"].split(" {")[0] for r in result.rows}
    assert {"one row", "non-power-of-two", "longer than one block", "strided rows", "zero rows"} <= cases
    assert {r["dtype"] for r in result.rows} == {"float32", "float16", "bfloat16"}


def test_rms_norm_matches_reference_on_strided_rows_of_3d_input(interpreter):
    rms_norm = get_op("rms_norm").launcher()
    base = torch.randn(2, 3, 200)
    x = base[:, :, :150]  # rows of 150 inside rows of 200
    w = torch.randn(150)
    got = rms_norm(x, w, 1e-5)
    ref = torch.nn.functional.rms_norm(x.double(), (150,), w.double(), 1e-5)
    torch.testing.assert_close(got.double(), ref, atol=1e-5, rtol=1e-5)


def test_rms_norm_looped_variant_matches_single_block(interpreter):
    rms_norm = get_op("rms_norm").launcher()
    x, w = torch.randn(3, 1000), torch.randn(1000)
    torch.testing.assert_close(rms_norm(x, w, 1e-6, max_block=128), rms_norm(x, w, 1e-6), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "args, exc, words",
    [
        ((torch.randint(0, 5, (2, 8)), torch.randn(8)), TypeError, "x must be"),
        ((torch.randn(2, 8), torch.randn(7)), ValueError, "weight must have shape"),
        ((torch.randn(2, 8), torch.randint(0, 3, (8,))), TypeError, "weight"),
    ],
)
def test_rms_norm_rejects_bad_input_before_launch(args, exc, words, interpreter):
    rms_norm = get_op("rms_norm").launcher()
    with pytest.raises(exc, match=words):
        rms_norm(*args)
