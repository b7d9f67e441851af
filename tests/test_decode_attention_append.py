"""decode_attention_append (attention fused with the KV-cache append): against torch.cat + SDPA on fresh random
inputs, float32 and bfloat16, strided cache and new-position views, grouped-query groups of 1 and 4, an empty
cache, no new positions, one and several splits, tl.dot and broadcast products, a few query positions with
the causal mask aligned to the end. The appended caches must be exactly the concatenation."""

from __future__ import annotations

import math

import pytest
import torch
from test_decode_attention import TOL, _cache_views
from test_decode_attention import _reference as attention_reference
from test_patch import TINY, L, build

from kernelgen.library import get_op


def _reference(q, k_cache, v_cache, k_new, v_new, scale):
    """SDPA (float64) over the concatenated caches, and the concatenations themselves."""
    k, v = torch.cat((k_cache, k_new), 2), torch.cat((v_cache, v_new), 2)
    return attention_reference(q, k, v, scale), k, v


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
    k_cache, v_cache = _cache_views(gen, B, Hkv, S, D, dtype)
    k_new, v_new = _cache_views(gen, B, Hkv, Sq, D, dtype)
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


def _model(family, seed):
    """The tiny Llama / Qwen2 of tests/test_patch.py (sdpa attention, 2 layers, 4 query and 2 kv heads)."""
    return build(family, seed=seed)


def _step(model, ids, cache, mask=None):
    """One decode step on a copy of `cache`: (logits, the copy's keys and values per layer, launches)."""
    import copy

    from kernelgen.verify.guard import count_launches

    cache = copy.deepcopy(cache)
    with torch.inference_mode(), count_launches() as launches:
        logits = model(input_ids=ids, attention_mask=mask, past_key_values=cache, use_cache=True).logits
    return logits, [(layer.keys, layer.values) for layer in cache.layers], dict(launches.launches)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_a_patched_decode_step_appends_and_attends_in_one_kernel(family, rng_seed, interpreter):
    """The step's DynamicCache update and attention go to decode_attention_append (one launch per layer, no
    decode_attention, the cache grown by exactly the new position); a padded batch's step (a mask) keeps the
    update and sdpa; unpatch() puts DynamicLayer.update back."""
    import transformers
    from transformers.cache_utils import DynamicLayer

    import kernelgen

    original_update = DynamicLayer.update
    model = _model(family, rng_seed)
    gen = torch.Generator().manual_seed(rng_seed)
    ids = torch.randint(0, TINY["vocab_size"], (2, 30), generator=gen)
    cache = transformers.DynamicCache(config=model.config)
    with torch.inference_mode():
        model(input_ids=ids[:, :-1], past_key_values=cache, use_cache=True)
    ref_logits, ref_cache, _ = _step(model, ids[:, -1:], cache)
    mask = torch.ones(2, 30, dtype=torch.long)
    mask[1, :4] = 0
    ref_masked, _, _ = _step(model, ids[:, -1:], cache, mask)

    info = kernelgen.patch(model, backend="interpreter", policy="all",
                           include=["rotary_embedding", "decode_attention_append"])
    try:
        assert info["patched"] == {"rotary_embedding": L, "decode_attention_append": L}, info
        assert DynamicLayer.update is not original_update
        logits, grown, launches = _step(model, ids[:, -1:], cache)
        assert launches == {"_rotary_kernel": L, "_append_split_kernel": L}, launches
        torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5, msg=lambda m: f"seed {rng_seed}: {m}")
        for layer, ((k, v), (rk, rv)) in enumerate(zip(grown, ref_cache)):
            assert k.shape == v.shape == rk.shape == (2, TINY["num_key_value_heads"], 30, 16)
            assert torch.equal(k[:, :, :29], rk[:, :, :29]) and torch.equal(v[:, :, :29], rv[:, :, :29])
            # the new position: RoPE by our kernel (a few ulps), and past layer 0 inputs that went through
            # the fused attention (another summation order than sdpa's)
            torch.testing.assert_close(k, rk, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(v, rv, atol=1e-5, rtol=1e-5)
            if layer == 0:
                assert torch.equal(v, rv)  # values are not rotated and layer 0's input is unchanged
        masked, _, launches = _step(model, ids[:, -1:], cache, mask)
        assert "_append_split_kernel" not in launches  # a mask: the model's own update and sdpa
        torch.testing.assert_close(masked, ref_masked, atol=1e-5, rtol=1e-5)
    finally:
        kernelgen.unpatch(model)
    assert DynamicLayer.update is original_update and model.config._attn_implementation == "sdpa"
    logits, _, launches = _step(model, ids[:, -1:], cache)
    assert launches == {} and torch.equal(logits, ref_logits)


@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "left-padded"])
def test_generate_gives_the_same_tokens_with_the_fused_append(padded, rng_seed, interpreter):
    """model.generate (greedy, 6 new tokens) on a patched model: the same tokens as unpatched; the unpadded
    batch's decode steps go through the fused append (one launch per layer and step), the padded one's
    (a mask) through the model's own update and sdpa."""
    import kernelgen
    from kernelgen.verify.guard import count_launches

    model = _model("llama", rng_seed)
    ids = torch.randint(0, TINY["vocab_size"], (2, 12), generator=torch.Generator().manual_seed(rng_seed))
    mask = torch.ones_like(ids)
    if padded:
        mask[1, :3] = 0

    def generate():
        with torch.inference_mode():
            return model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)

    expected = generate()
    kernelgen.patch(model, backend="interpreter", policy="all")
    try:
        with count_launches() as launches:
            got = generate()
    finally:
        kernelgen.unpatch(model)
    assert torch.equal(got, expected)
    assert launches.launches.get("_append_split_kernel", 0) == (0 if padded else 5 * L)  # 5 decode steps


def test_a_call_the_append_op_refuses_keeps_the_models_update(rng_seed, interpreter, monkeypatch):
    """The fused update hands a call the op refuses (it raises before writing) to DynamicLayer's own update:
    the step's logits and cache are the model's."""
    import transformers

    import kernelgen
    from kernelgen import patch_attention

    model = _model("llama", rng_seed)
    ids = torch.randint(0, TINY["vocab_size"], (2, 20), generator=torch.Generator().manual_seed(rng_seed))
    cache = transformers.DynamicCache(config=model.config)
    with torch.inference_mode():
        model(input_ids=ids[:, :-1], past_key_values=cache, use_cache=True)
    ref_logits, ref_cache, _ = _step(model, ids[:, -1:], cache)
    alone = kernelgen.patch(model, backend="interpreter", policy="all", include=["decode_attention_append"])
    assert "RoPE patch" in alone["skipped"]["decode_attention_append"]  # it takes the query from there
    assert model.config._attn_implementation == "sdpa"  # and nothing else needed the routing
    kernelgen.patch(model, backend="interpreter", policy="all", include=["rotary_embedding", "decode_attention_append"])
    try:
        attn = model.model.layers[0].self_attn
        _, servable = attn.__dict__[patch_attention._APPEND_ATTR]

        def refusing(*args):
            raise ValueError("decode_attention_append: refused for the test")

        for layer in model.model.layers:
            monkeypatch.setitem(layer.self_attn.__dict__, patch_attention._APPEND_ATTR, (refusing, servable))
        logits, grown, launches = _step(model, ids[:, -1:], cache)
        assert "_append_split_kernel" not in launches
        assert torch.equal(logits, ref_logits)
        assert all(torch.equal(k, rk) and torch.equal(v, rv) for (k, v), (rk, rv) in zip(grown, ref_cache))
    finally:
        kernelgen.unpatch(model)


def test_torch_compile_traces_a_patched_decode_step_in_one_graph(rng_seed, interpreter):
    """Under torch.compile the hand-over through thread-local state is skipped (the model's update and sdpa
    run inside the graph): one graph, no break, the unpatched step's logits."""
    import copy

    import transformers

    import kernelgen

    model = _model("llama", rng_seed)
    ids = torch.randint(0, TINY["vocab_size"], (2, 20), generator=torch.Generator().manual_seed(rng_seed))
    cache = transformers.DynamicCache(config=model.config)
    with torch.inference_mode():
        model(input_ids=ids[:, :-1], past_key_values=cache, use_cache=True)
        expected = model(input_ids=ids[:, -1:], past_key_values=copy.deepcopy(cache), use_cache=True).logits

    def step(c):
        return model(input_ids=ids[:, -1:], past_key_values=c, use_cache=True).logits

    kernelgen.patch(model, backend="interpreter", policy="all")
    try:
        torch._dynamo.reset()
        explained = torch._dynamo.explain(step)(copy.deepcopy(cache))
        assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
        with torch.inference_mode():
            got = torch.compile(step, backend="eager")(copy.deepcopy(cache))
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    finally:
        kernelgen.unpatch(model)
        torch._dynamo.reset()
