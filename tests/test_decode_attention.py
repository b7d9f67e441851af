"""decode_attention (flash-decoding over a KV cache): the kernel against SDPA on fresh random inputs (float32
and bfloat16, grouped-query groups of 1 and 4, cache views that are not contiguous, caches shorter than a
tile and not a multiple of one, one and several splits, tl.dot and broadcast products, a few query positions
with the causal mask aligned to the cache's end), and kernelgen.patch() routing a decode step of tiny
Llama / Qwen2 models to it while prefill, padded batches and unpatched models keep sdpa."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import transformers

import kernelgen
from kernelgen.library import get_op
from kernelgen.patch_models import LIBRARY_OPS
from kernelgen.verify.guard import count_launches

TOL = {torch.float32: (1e-5, 1.3e-6), torch.bfloat16: (1.6e-2, 1e-2)}


def _reference(q, k, v, scale):
    Sq, S = q.shape[-2], k.shape[-2]
    visible = torch.ones(Sq, S, dtype=torch.bool).tril(S - Sq)
    return F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=visible, scale=scale,
                                          enable_gqa=True)


def _cache_views(gen, B, Hkv, S, D, dtype):
    """k: a slice of a longer, wider cache buffer; v: a [B, S, Hkv, D + 5] buffer seen as [B, Hkv, S, D]."""
    k = torch.randn(B, Hkv, S + 9, D + 8, generator=gen).to(dtype)[:, :, 4:S + 4, 3:D + 3]
    v = torch.randn(B, S, Hkv, D + 5, generator=gen).to(dtype)[..., :D].transpose(1, 2)
    assert S == 0 or (not k.is_contiguous() and not v.is_contiguous())  # an empty view is contiguous
    return k, v


CASES = [  # B, Hq, Hkv, Sq, S, D, launch options
    (2, 4, 2, 1, 37, 16, {}),  # a cache shorter than one tile
    (2, 4, 1, 1, 300, 64, {"block_s": 64}),  # group of 4, not a multiple of the tile, several splits
    (2, 4, 4, 1, 130, 32, {"block_s": 32, "splits": 1}),  # group of 1, one split: no combine kernel
    (1, 8, 2, 3, 150, 16, {"block_s": 16, "splits": 3}),  # three query positions, causal to the cache's end
    (2, 4, 1, 1, 200, 16, {"block_s": 32, "use_dot": False}),  # broadcast products instead of tl.dot
    (1, 4, 1, 2, 90, 32, {"block_s": 16, "use_dot": False, "splits": 4}),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("B, Hq, Hkv, Sq, S, D, opts", CASES)
def test_decode_attention_matches_sdpa_on_cache_views(B, Hq, Hkv, Sq, S, D, opts, dtype, rng_seed, interpreter):
    attend = get_op("decode_attention").launcher()
    gen = torch.Generator().manual_seed(rng_seed)
    q = torch.randn(B, Hq, Sq, D, generator=gen).to(dtype)
    k, v = _cache_views(gen, B, Hkv, S, D, dtype)
    with count_launches() as launches:
        out = attend(q, k, v, **opts)  # scale: the default 1 / sqrt(D)
    assert launches.total_launches == (1 if opts.get("splits") == 1 or S <= 64 else 2)
    assert out.shape == (B, Hq, Sq, D) and out.dtype == dtype and out.is_contiguous()
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(out.double(), _reference(q, k, v, 1 / math.sqrt(D)).to(dtype).double(),
                               atol=atol, rtol=rtol, msg=lambda m: f"seed {rng_seed}: {m}")


def test_decode_attention_scale_and_split_count_do_not_change_the_result(rng_seed, interpreter):
    attend = get_op("decode_attention").launcher()
    gen = torch.Generator().manual_seed(rng_seed)
    q, k, v = (torch.randn(1, 4, 1, 16, generator=gen), torch.randn(1, 2, 100, 16, generator=gen),
               torch.randn(1, 2, 100, 16, generator=gen))
    ref = _reference(q, k, v, 0.7)
    for splits in (1, 2, 7):
        torch.testing.assert_close(attend(q, k, v, 0.7, block_s=16, splits=splits).double(), ref,
                                   atol=1e-5, rtol=1.3e-6)


def test_decode_attention_refuses_what_it_does_not_compute(interpreter):
    attend = get_op("decode_attention").launcher()
    q, k = torch.randn(1, 3, 1, 16), torch.randn(1, 2, 8, 16)
    with pytest.raises(ValueError, match="multiple"):
        attend(q, k, k)
    with pytest.raises(TypeError, match="one dtype"):
        attend(torch.randn(1, 2, 1, 16), k.bfloat16(), k)
    with pytest.raises(ValueError, match="must hold"):
        attend(torch.randn(1, 2, 9, 16), k, k)  # more query positions than cached ones
    with pytest.raises(ValueError, match="4 dims"):
        attend(torch.randn(2, 1, 16), k, k)


# ---- kernelgen.patch(): decode steps of tiny models ----------------------------------------------------

TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
            intermediate_size=128, vocab_size=128, max_position_embeddings=256)
L = TINY["num_hidden_layers"]


def _model(family, seed):
    config_cls, model_cls = {"llama": ("LlamaConfig", "LlamaForCausalLM"),
                             "qwen2": ("Qwen2Config", "Qwen2ForCausalLM")}[family]
    torch.manual_seed(seed)
    config = getattr(transformers, config_cls)(**TINY, attn_implementation="sdpa")
    return getattr(transformers, model_cls)(config).eval()


def _decode(model, ids, attention_mask=None):
    """Prefill all but the last token, then one decode step on a DynamicCache: (prefill logits, step logits,
    kernel launches of the step by kernel name, of the prefill)."""
    mask = attention_mask
    with torch.inference_mode():
        with count_launches() as prefill:
            first = model(input_ids=ids[:, :-1], attention_mask=None if mask is None else mask[:, :-1],
                          cache=transformers.DynamicCache(config=model.config), use_cache=True)
        with count_launches() as step:
            out = model(input_ids=ids[:, -1:], attention_mask=mask, cache=first.past_key_values, use_cache=True)
    return first.logits, out.logits, dict(step.launches), dict(prefill.launches)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_patched_decode_step_runs_the_kernel_and_matches_sdpa(family, rng_seed, interpreter):
    model = _model(family, rng_seed)
    ids = torch.randint(0, TINY["vocab_size"], (2, 70), generator=torch.Generator().manual_seed(rng_seed))
    ref_prefill, ref_step, _, _ = _decode(model, ids)
    info = kernelgen.patch(model, backend="interpreter", policy="all", include=["decode_attention"])
    assert info["patched"] == {"decode_attention": L}, info
    assert model.config._attn_implementation == "kernelgen_decode"
    prefill, step, step_launches, prefill_launches = _decode(model, ids)
    assert prefill_launches == {}  # prefill (69 query tokens) went to sdpa
    assert step_launches.get("_split_kernel") == L  # one per layer, over the 70 cached positions
    assert torch.equal(prefill, ref_prefill)
    torch.testing.assert_close(step, ref_step, atol=1e-5, rtol=1e-5, msg=lambda m: f"seed {rng_seed}: {m}")

    kernelgen.unpatch(model)
    assert model.config._attn_implementation == "sdpa"
    assert not any("_kernelgen_decode_attention" in m.__dict__ for m in model.modules())
    _, again, step_launches, _ = _decode(model, ids)
    assert step_launches == {} and torch.equal(again, ref_step)


def test_fully_patched_bfloat16_decode_step(rng_seed, interpreter):
    """Every patch at once (norms, fused residual, SwiGLU, RoPE, decode attention, the fused cache append) on a
    bf16 decode step: one launch per layer of each kernel and logits within bf16 tolerance of sdpa's."""
    model = _model("llama", rng_seed).to(torch.bfloat16)
    ids = torch.randint(0, TINY["vocab_size"], (2, 40), generator=torch.Generator().manual_seed(rng_seed))
    _, ref_step, _, _ = _decode(model, ids)
    kernelgen.patch(model, backend="interpreter", policy="all", include=list(LIBRARY_OPS))
    _, step, step_launches, _ = _decode(model, ids)
    # the fused cache append serves the step's attention: decode_attention's own kernel is not launched
    assert step_launches == {"_rms_norm_row": L + 1, "_fused_add_rms_norm_row": L, "_silu_and_mul_kernel": L,
                             "_rotary_kernel": L, "_append_split_kernel": L}
    torch.testing.assert_close(step.float(), ref_step.float(), atol=1.6e-2, rtol=1.6e-2,
                               msg=lambda m: f"seed {rng_seed}: {m}")
    kernelgen.unpatch(model)


def test_a_padded_batch_decode_step_goes_to_sdpa(rng_seed, interpreter):
    model = _model("llama", rng_seed)
    ids = torch.randint(0, TINY["vocab_size"], (2, 12), generator=torch.Generator().manual_seed(rng_seed))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, :3] = 0  # left padding: sdpa gets a mask tensor, which our function never inspects
    _, ref_step, _, _ = _decode(model, ids, mask)
    kernelgen.patch(model, backend="interpreter", policy="all", include=["decode_attention"])
    _, step, step_launches, _ = _decode(model, ids, mask)
    assert step_launches == {}
    torch.testing.assert_close(step, ref_step, atol=1e-6, rtol=1e-6)
    kernelgen.unpatch(model)


def test_models_on_other_attention_implementations_are_not_routed(rng_seed, interpreter):
    model = _model("llama", rng_seed)
    model.set_attn_implementation("eager")
    info = kernelgen.patch(model, backend="interpreter", policy="all", include=["decode_attention"])
    assert info["patched"] == {} and "'eager'" in info["skipped"]["decode_attention"]
    assert model.config._attn_implementation == "eager"
    kernelgen.unpatch(model)


def test_custom_op_schema_and_fake_outputs(interpreter):
    """torch.compile sees the op as torch.ops.kernelgen.decode_attention: an optional float scale in its
    schema, and fake outputs from the launcher run without launches."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from kernelgen.custom_ops import schema_for

    op = get_op("decode_attention")
    assert schema_for(op.spec, op.launcher()) == "(Tensor q, Tensor k, Tensor v, float? scale=None) -> Tensor"
    kernelgen.ops.decode_attention  # noqa: B018  (registers the custom op)
    with FakeTensorMode():
        q, k = torch.empty(16, 32, 1, 128, dtype=torch.bfloat16), torch.empty(16, 8, 2049, 128, dtype=torch.bfloat16)
        out = torch.ops.kernelgen.decode_attention(q, k, k, None)
    assert out.shape == (16, 32, 1, 128) and out.dtype == torch.bfloat16


def test_sweep_script_checks_every_config_on_the_interpreter(tmp_path):
    """The GPU sweep's code path with tiny shapes on the CPU: every config is checked against SDPA (no
    timings there), none fails, and the JSON names the shapes."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(root))
    out = tmp_path / "sweep.json"
    proc = subprocess.run([sys.executable, str(root / "benchmarks" / "sweep_decode_attention.py"), "--device", "cpu",
                           "--tiny", "--out", str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert not result["failed"] and not result["skipped_after_budget"]
    assert len(result["shapes"]) == 2
    for rows in result["shapes"].values():
        labels = {r["label"] for r in rows}
        assert "sdpa (default)" in labels and "decode_attention (launcher defaults)" in labels
        assert all(r["max_abs_err"] <= 2e-2 for r in rows)
