"""Norm family (rms_norm, fused_add_rms_norm, layer_norm): every dtype against an upcast reference,
edge shapes, strided rows, looped vs single-block variants, bad input."""

import pytest
import torch

from kernelgen.library import get_op

NORM_OPS = ["rms_norm", "fused_add_rms_norm", "layer_norm"]


@pytest.mark.parametrize("name", NORM_OPS)
def test_norm_op_matches_reference_on_every_dtype_and_edge_shape(name, assert_library_op_verifies):
    assert_library_op_verifies(name)


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


# ---- fused_add_rms_norm ------------------------------------------------------------------------------
def test_fused_add_rms_norm_returns_normalized_sum_and_updated_residual(interpreter):
    fused = get_op("fused_add_rms_norm").launcher()
    x, r, w = torch.randn(2, 3, 96, dtype=torch.bfloat16), torch.randn(2, 3, 96, dtype=torch.bfloat16), torch.randn(96)
    y, h = fused(x, r, w, 1e-6)
    h_ref = x.double() + r.double()
    y_ref = torch.nn.functional.rms_norm(h_ref, (96,), w.double(), 1e-6)
    assert y.shape == h.shape == x.shape and y.dtype == h.dtype == torch.bfloat16
    # one bf16 ulp: Triton's interpreter casts float32 -> bfloat16 by truncation, GPUs round to nearest
    torch.testing.assert_close(h.double(), h_ref, atol=0, rtol=2**-7)
    torch.testing.assert_close(y.double(), y_ref, atol=2e-2, rtol=1.6e-2)


def test_fused_add_rms_norm_looped_variant_matches_single_block(interpreter):
    fused = get_op("fused_add_rms_norm").launcher()
    x, r, w = torch.randn(3, 1000), torch.randn(3, 1000), torch.randn(1000)
    y_loop, h_loop = fused(x, r, w, 1e-6, max_block=128)
    y_one, h_one = fused(x, r, w, 1e-6)
    torch.testing.assert_close(y_loop, y_one, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h_loop, h_one, atol=0, rtol=0)


@pytest.mark.parametrize(
    "args, exc, words",
    [
        ((torch.randn(2, 8), torch.randn(2, 9), torch.randn(8)), ValueError, "residual must have x's shape"),
        ((torch.randn(2, 8), torch.randn(2, 8, dtype=torch.float16), torch.randn(8)), TypeError, "residual"),
        ((torch.randint(0, 5, (2, 8)), torch.randn(2, 8), torch.randn(8)), TypeError, "x must be"),
        ((torch.randn(2, 8), torch.randn(2, 8), torch.randn(4)), ValueError, "weight must have shape"),
        ((torch.randn(2, 8), torch.randn(2, 8), torch.randn(8, dtype=torch.float64)), TypeError, "weight"),
    ],
)
def test_fused_add_rms_norm_rejects_bad_input_before_launch(args, exc, words, interpreter):
    from kernelgen.verify.guard import count_launches

    fused = get_op("fused_add_rms_norm").launcher()
    with count_launches() as launches, pytest.raises(exc, match=words):
        fused(*args)
    assert launches.total_launches == 0


# ---- layer_norm --------------------------------------------------------------------------------------
@pytest.mark.parametrize("with_weight, with_bias", [(True, False), (False, True), (False, False)])
def test_layer_norm_accepts_missing_weight_or_bias(with_weight, with_bias, interpreter):
    layer_norm = get_op("layer_norm").launcher()
    x = torch.randn(4, 100)
    w = torch.randn(100) if with_weight else None
    b = torch.randn(100) if with_bias else None
    ref = torch.nn.functional.layer_norm(x.double(), (100,), None if w is None else w.double(),
                                         None if b is None else b.double(), 1e-5)
    torch.testing.assert_close(layer_norm(x, w, b, 1e-5).double(), ref, atol=1e-5, rtol=1e-5)


def test_layer_norm_looped_variant_is_stable_for_rows_with_a_large_mean(interpreter):
    # Welford lanes + Chan's merge: a mean of 1000 with unit spread must not cancel away the variance.
    layer_norm = get_op("layer_norm").launcher()
    x = 1000.0 + torch.randn(3, 1000)
    w, b = torch.randn(1000), torch.randn(1000)
    ref = torch.nn.functional.layer_norm(x.double(), (1000,), w.double(), b.double(), 1e-5)
    looped, single = layer_norm(x, w, b, 1e-5, max_block=128), layer_norm(x, w, b, 1e-5)
    torch.testing.assert_close(looped.double(), ref, atol=2e-3, rtol=1e-3)
    torch.testing.assert_close(looped, single, atol=2e-3, rtol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_layer_norm_aten_adapter_returns_mean_and_rstd_like_aten(dtype, interpreter):
    mod = get_op("layer_norm").module()
    x = torch.randn(2, 5, 48, dtype=dtype)
    w, b = torch.randn(48, dtype=dtype), torch.randn(48, dtype=dtype)
    got = mod.aten_native_layer_norm(x, [48], w, b, 1e-5)
    expected = torch.ops.aten.native_layer_norm(x, [48], w, b, 1e-5)
    for g, e in zip(got, expected):
        assert g.shape == e.shape and g.dtype == e.dtype
        torch.testing.assert_close(g, e, atol=2e-2 if dtype == torch.bfloat16 else 1e-5, rtol=1e-2)


def test_layer_norm_aten_adapter_hands_back_what_it_does_not_cover(interpreter):
    mod = get_op("layer_norm").module()
    x = torch.randn(3, 4, 8)
    assert mod.aten_native_layer_norm(x, [4, 8], None, None, 1e-5) is NotImplemented
    assert mod.aten_native_layer_norm(x.double(), [8], None, None, 1e-5) is NotImplemented
    assert mod.aten_native_layer_norm(x.half(), [8], torch.randn(8), None, 1e-5) is NotImplemented
    assert mod.aten_native_layer_norm(x, [7], None, None, 1e-5) is NotImplemented


@pytest.mark.parametrize(
    "args, exc, words",
    [
        ((torch.randint(0, 5, (2, 8)), None, None), TypeError, "x must be"),
        ((torch.randn(2, 8), torch.randn(7), None), ValueError, "weight must have shape"),
        ((torch.randn(2, 8), None, torch.randn(9)), ValueError, "bias must have shape"),
        ((torch.randn(2, 8), None, torch.randint(0, 3, (8,))), TypeError, "bias"),
    ],
)
def test_layer_norm_rejects_bad_input_before_launch(args, exc, words, interpreter):
    from kernelgen.verify.guard import count_launches

    layer_norm = get_op("layer_norm").launcher()
    with count_launches() as launches, pytest.raises(exc, match=words):
        layer_norm(*args)
    assert launches.total_launches == 0


@pytest.mark.parametrize("name", ["fused_add_rms_norm", "layer_norm"])
def test_norm_op_reads_a_strided_weight_without_copying_it(name, interpreter):
    from kernelgen.verify.guard import watch

    fn = get_op(name).launcher()
    x, r = torch.randn(3, 50), torch.randn(3, 50)
    w = torch.randn(100)[::2]  # stride 2
    with watch() as w_watch:
        out = fn(x, r, w) if name == "fused_add_rms_norm" else fn(x, w, None)
    assert not w_watch.violations and w_watch.total_launches == 1
    if name == "fused_add_rms_norm":
        y, h = out
        ref = torch.nn.functional.rms_norm(h.double(), (50,), w.double(), 1e-6)
    else:
        y, ref = out, torch.nn.functional.layer_norm(x.double(), (50,), w.double(), None, 1e-5)
    torch.testing.assert_close(y.double(), ref, atol=1e-5, rtol=1e-5)
