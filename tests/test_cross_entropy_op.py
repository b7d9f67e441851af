"""The fused cross-entropy op: verified like every library op, plus ignore_index, the looped vocabulary, and
the aten::cross_entropy_loss override (served for the mean over class indices, handed back otherwise)."""

import pytest
import torch
import torch.nn.functional as F

import kernelgen
from kernelgen.verify.guard import count_launches


def test_cross_entropy_matches_reference_on_every_dtype_and_edge_shape(assert_library_op_verifies):
    assert_library_op_verifies("cross_entropy")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ignored_rows_and_a_vocabulary_longer_than_one_block(dtype, rng_seed, interpreter):
    g = torch.Generator().manual_seed(rng_seed)
    logits = (3 * torch.randn(6, 700, generator=g)).to(dtype)
    targets = torch.randint(0, 700, (6,), generator=g)
    targets[[1, 4]] = -100
    got = kernelgen.ops.cross_entropy.launcher(logits, targets, -100, float32_loss=True, max_block=128)
    want = F.cross_entropy(logits.float(), targets, ignore_index=-100)
    assert got.dtype == torch.float32 and got.shape == ()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert kernelgen.ops.cross_entropy(logits, targets).dtype == dtype  # in the logits' dtype by default


def test_every_row_ignored_gives_nan_like_pytorch(interpreter):
    logits, targets = torch.randn(3, 16), torch.full((3,), -100)
    assert torch.isnan(kernelgen.ops.cross_entropy(logits, targets))
    assert torch.isnan(F.cross_entropy(logits, targets))


def test_aten_override_serves_the_mean_and_hands_back_the_rest(interpreter):
    x, t = torch.randn(5, 40), torch.randint(0, 40, (5,))
    with torch.no_grad():  # ATen's answers, before the override
        want = {"mean": F.cross_entropy(x, t), "sum": F.cross_entropy(x, t, reduction="sum"),
                "smooth": F.cross_entropy(x, t, label_smoothing=0.1)}
    assert kernelgen.enable(backend="interpreter", policy="all", include=["cross_entropy"]) == ["cross_entropy"]
    with torch.no_grad(), count_launches() as launches:
        got = F.cross_entropy(x, t)
    assert launches.launches["_cross_entropy_rows"] == 1
    torch.testing.assert_close(got, want["mean"])
    with torch.no_grad(), count_launches() as launches:
        assert torch.equal(F.cross_entropy(x, t, reduction="sum"), want["sum"])
        assert torch.equal(F.cross_entropy(x, t, label_smoothing=0.1), want["smooth"])
    assert launches.total_launches == 0
    st = kernelgen.status()["interpreter"]
    assert st["calls"]["cross_entropy"] == 1 and st["fallbacks"]["cross_entropy"] == 2
