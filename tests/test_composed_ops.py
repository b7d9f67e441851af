"""Independent accuracy tests of the four ops `kernelgen new` merged (causal_softmax, scale_softmax,
bias_gelu, add_layer_norm_residual): expectations written by hand here (the causal mask with explicit
loops, GELU from erf, layer norm from its definition), never the op's own spec reference. Small shapes
through Triton's interpreter; an off-by-one in the causal mask fails (checked on mutated kernels). Plus:
every shipped verification record is fresh (its source hash matches) and passing."""

import json
import math
from pathlib import Path

import pytest
import torch

from kernelgen.library import builtin_library, get_op, load_kernel_module, ops_dir, source_hash

TOL = dict(atol=2e-6, rtol=1e-5)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# ---- causal_softmax ---------------------------------------------------------------------------------
CAUSAL_SHAPES = [(1, 2, 4, 4), (2, 1, 3, 7), (1, 1, 1, 5), (1, 3, 6, 6), (1, 1, 5, 40)]


def causal_expected(x: torch.Tensor) -> torch.Tensor:
    """Bottom-right aligned causal softmax: query i of M sees keys j <= i + (N - M), by explicit loops."""
    *_, m, n = x.shape
    out = torch.empty_like(x, dtype=torch.float64)
    flat, res = x.double().reshape(-1, m, n), out.view(-1, m, n)
    for b in range(flat.shape[0]):
        for i in range(m):
            visible = [j for j in range(n) if j <= i + (n - m)]
            e = [math.exp(flat[b, i, j].item() - max(flat[b, i, k].item() for k in visible)) for j in visible]
            total = sum(e)
            res[b, i, :] = 0.0
            for j, v in zip(visible, e):
                res[b, i, j] = v / total
    return out


def causal_failures(fn) -> list[str]:
    bad = []
    for seed, shape in enumerate(CAUSAL_SHAPES):
        x = torch.randn(shape, generator=_gen(seed))
        want = causal_expected(x)
        for max_block in (None, 16):  # one block per row, and the looped (online) kernel
            got = fn(x, max_block=max_block).double()
            if not torch.allclose(got, want, **TOL):
                bad.append(f"{shape} max_block={max_block}: max diff {(got - want).abs().max().item():.3g}")
    return bad


def test_causal_softmax_matches_the_mask_built_by_hand(interpreter):
    assert causal_failures(get_op("causal_softmax").launcher()) == []


@pytest.mark.parametrize("mutant", ["cols < query + N - n_queries", "cols <= query + N - n_queries + 1",
                                    "cols <= query"])
def test_an_off_by_one_causal_mask_fails_the_test(interpreter, tmp_path, mutant):
    source = (get_op("causal_softmax").path / "kernel.py").read_text()
    assert source.count("cols <= query + N - n_queries") == 3
    path = tmp_path / "kernel.py"
    path.write_text(source.replace("cols <= query + N - n_queries", mutant))
    fn = load_kernel_module(path, f"causal_mutant_{abs(hash(mutant))}").causal_softmax
    assert causal_failures(fn), f"the mutant mask {mutant!r} passed"


# ---- scale_softmax ----------------------------------------------------------------------------------
@pytest.mark.parametrize("scale", [0.125, 2.0])
def test_scale_softmax_scales_before_the_softmax(interpreter, scale):
    fn = get_op("scale_softmax").launcher()
    for seed, shape in enumerate([(4, 64), (3, 200), (1, 7)]):
        x = torch.randn(shape, generator=_gen(seed)) * 3
        z = x.double() * scale
        e = torch.exp(z - z.max(-1, keepdim=True).values)
        want = e / e.sum(-1, keepdim=True)
        for max_block in (None, 32):
            torch.testing.assert_close(fn(x, scale, max_block=max_block).double(), want, **TOL)
    # the scale is not applied after the softmax (a misreading the expectation tells apart)
    assert not torch.allclose(torch.softmax(x.double(), -1) * scale, want, **TOL)


# ---- bias_gelu --------------------------------------------------------------------------------------
def test_bias_gelu_is_exact_gelu_of_x_plus_bias(interpreter):
    fn = get_op("bias_gelu").launcher()
    for seed, (m, n) in enumerate([(4, 64), (3, 200), (1, 5)]):
        x = torch.randn(m, n, generator=_gen(seed)) * 3
        bias = torch.randn(n, generator=_gen(seed + 10))
        h = x.double() + bias.double()
        want = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
        torch.testing.assert_close(fn(x, bias).double(), want, **TOL)
    tanh_form = 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h ** 3)))
    assert not torch.allclose(tanh_form, want, **TOL)  # the test tells exact from tanh GELU
    assert not torch.allclose(0.5 * x.double() * (1 + torch.erf(x.double() / math.sqrt(2))) + bias, want, **TOL)


# ---- add_layer_norm_residual ------------------------------------------------------------------------
def test_add_layer_norm_residual_returns_the_norm_and_the_residual_sum(interpreter):
    fn = get_op("add_layer_norm_residual").launcher()
    for seed, (m, n) in enumerate([(4, 64), (3, 200), (2, 7)]):
        g = _gen(seed)
        x, r = torch.randn(m, n, generator=g), torch.randn(m, n, generator=g)
        w, b = torch.randn(n, generator=g), torch.randn(n, generator=g)
        eps = 1e-5
        h = x.double() + r.double()
        mean = h.sum(-1, keepdim=True) / n
        var = ((h - mean) ** 2).sum(-1, keepdim=True) / n  # population variance, as layer norm uses
        want = (h - mean) / torch.sqrt(var + eps) * w.double() + b.double()
        for max_block in (None, 32):
            y, h_out = fn(x, r, w, b, eps, max_block=max_block)
            torch.testing.assert_close(y.double(), want, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(h_out.double(), h, **TOL)
    unbiased = (h - mean) / torch.sqrt(var * n / (n - 1) + eps) * w.double() + b.double()
    assert not torch.allclose(unbiased, want, atol=1e-5, rtol=1e-5)


# ---- shipped records --------------------------------------------------------------------------------
def _records():
    for op_path in sorted(p for p in ops_dir(builtin_library()).iterdir() if (p / "spec.toml").is_file()):
        for rec in sorted((op_path / "verified").glob("*.json")):
            yield op_path, rec


@pytest.mark.parametrize("op_path, record", list(_records()), ids=lambda v: v.parent.name + "/" + v.stem
                         if isinstance(v, Path) and v.suffix == ".json" else "")
def test_every_shipped_verification_record_is_fresh_and_passing(op_path, record):
    rec = json.loads(record.read_text())
    backend = record.stem
    assert rec.get("backend", backend) == backend
    where = f"{op_path.name}/verified/{record.name}"
    assert rec.get("source_hash") == source_hash(op_path, backend), (
        f"{where} is stale: regenerate it with `kernelgen verify {op_path.name} --backend {backend}`")
    assert rec.get("passed") is True, f"{where} records a failure: {rec.get('failure') or rec.get('message')}"
