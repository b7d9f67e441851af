"""decode_attention_append (attention fused with the KV-cache append): against torch.cat + SDPA on fresh random
inputs, float32 and bfloat16, strided cache and new-position views, grouped-query groups of 1 and 4, an empty
cache, no new positions, one and several splits, tl.dot and broadcast products, a few query positions with
the causal mask aligned to the end. The appended caches must be exactly the concatenation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kernelgen.library import get_op

TOL = {torch.float32: (1e-5, 1.3e-6), torch.bfloat16: (1.6e-2, 1e-2)}


def _reference(q, k_cache, v_cache, k_new, v_new, scale):
    k, v = torch.cat((k_cache, k_new), 2), torch.cat((v_cache, v_new), 2)
    Sq, S = q.shape[-2], k.shape[-2]
    visible = torch.ones(Sq, S, dtype=torch.bool).tril(S - Sq)
    out = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=visible, scale=scale,
                                         enable_gqa=True)
    return out, k, v


def _views(gen, B, Hkv, S, D, dtype):
    """A slice of a wider buffer, and a [B, S, Hkv, D + 5] buffer seen as [B, Hkv, S, D]."""
    a = torch.randn(B, Hkv, S + 9, D + 8, generator=gen).to(dtype)[:, :, 4:S + 4, 3:D + 3]
    b = torch.randn(B, S, Hkv, D + 5, generator=gen).to(dtype)[..., :D].transpose(1, 2)
    return a, b


CASES = [  # B, Hq, Hkv, Sq, S, D, launch options
    (2, 4, 2, 1, 37, 16, {}),  # shorter than one tile
    (2, 4, 1, 1, 300, 64, {"block_s": 64, "splits": 3}),  # group of 4, several splits, a partial last tile
    (2, 4, 4, 1, 130, 32, {"block_s": 32, "splits": 1}),  # group of 1, one split: no combine kernel
    (1, 8, 2, 3, 150, 16, {"block_s": 16, "splits": 3}),  # three new positions, causal to the end
    (2, 4, 1, 1, 200, 16, {"block_s": 32, "use_dot": False, "splits": 2}),  # broadcast products
    (1, 4, 2, 2, 0, 16, {}),  # an empty cache: the new positions only
    (1, 4, 2, 0, 40, 16, {"splits": 2}),  # no new position: the cache copied, no query rows
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("B, Hq, Hkv, Sq, S, D, opts", CASES)
def test_append_matches_cat_then_sdpa(B, Hq, Hkv, Sq, S, D, opts, dtype, rng_seed, interpreter):
    fused = get_op("decode_attention_append").launcher()
    gen = torch.Generator().manual_seed(rng_seed)
    q = torch.randn(B, Hq, Sq, D, generator=gen).to(dtype)
    k_cache, v_cache = _views(gen, B, Hkv, S, D, dtype)
    k_new, v_new = _views(gen, B, Hkv, Sq, D, dtype)
    out, k_all, v_all = fused(q, k_cache, v_cache, k_new, v_new, **opts)
    want_out, want_k, want_v = _reference(q, k_cache, v_cache, k_new, v_new, 1 / math.sqrt(D))
    assert torch.equal(k_all, want_k) and torch.equal(v_all, want_v)  # the append is a copy: exact
    assert k_all.is_contiguous() and v_all.is_contiguous() and out.is_contiguous()
    assert out.shape == (B, Hq, Sq, D) and out.dtype == dtype
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(out.double(), want_out.to(dtype).double(), atol=atol, rtol=rtol,
                               msg=lambda m: f"seed {rng_seed}: {m}")


def test_append_refuses_what_it_does_not_compute(interpreter):
    fused = get_op("decode_attention_append").launcher()
    q, c, n = torch.randn(1, 4, 1, 16), torch.randn(1, 2, 8, 16), torch.randn(1, 2, 1, 16)
    with pytest.raises(ValueError, match="k_new and v_new"):
        fused(q, c, c, torch.randn(1, 2, 2, 16), n)
    with pytest.raises(ValueError, match="multiple of kv heads"):
        fused(torch.randn(1, 3, 1, 16), c, c, n, n)
    with pytest.raises(TypeError, match="dtype"):
        fused(q, c.half(), c, n, n)
