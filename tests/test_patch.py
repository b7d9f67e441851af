"""kernelgen.patch(model) on tiny Hugging Face models (random weights, nothing downloaded), kernels on Triton's
interpreter: which modules are served by which library op (launch counts), logits against the unpatched
model, and unpatch() giving back bit-identical eager results.

Tolerances as in tests/test_models.py: float32 atol = rtol = 1e-5 (our kernels reduce in another order,
a few ulps per op); bfloat16 atol = rtol = 1.6e-2 (our kernels round once where HF rounds after each
elementwise op: about one bf16 ulp per op, carried through 2 layers).
"""

from __future__ import annotations

import pytest
import torch
import transformers

import kernelgen
from kernelgen.verify.guard import count_launches

TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=128, vocab_size=128, max_position_embeddings=256)
FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 16}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {}),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", {"head_dim": 16}),
}
TOL = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (1.6e-2, 1.6e-2)}
L = TINY["num_hidden_layers"]


def build(family, dtype=torch.float32, seed=0):
    config_name, model_name, extra = FAMILIES[family]
    torch.manual_seed(seed)
    config = getattr(transformers, config_name)(**TINY, **extra)
    model = getattr(transformers, model_name)(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:  # HF initializes norm weights to a constant, which would not test them
                p.copy_(0.2 * torch.randn_like(p) + (0.0 if family == "gemma" else 1.0))
    return model.to(dtype).eval()


def run(model, ids):
    with torch.inference_mode():
        out = model(input_ids=ids, labels=ids)
    return out.logits, out.loss


def _ids(seed, batch=2, seq=8):
    return torch.randint(0, TINY["vocab_size"], (batch, seq), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family, dtype", [("llama", torch.float32), ("qwen2", torch.float32),
                                           ("qwen3", torch.float32), ("mistral", torch.float32),
                                           ("gemma", torch.float32), ("llama", torch.bfloat16)])
def test_patched_model_is_served_by_library_ops_and_unpatch_restores_it(family, dtype, rng_seed, interpreter):
    model = build(family, dtype, seed=rng_seed)
    ids = _ids(rng_seed + 1)
    ref_logits, ref_loss = run(model, ids)
    default = kernelgen.patch(model, backend="interpreter", policy="all")["patched"]
    assert "decode_attention" not in default  # decode attention is opt-in
    # the fused cache append is not: it routes the attention implementation to kernelgen's
    assert default["decode_attention_append"] == L and model.config._attn_implementation == "kernelgen_decode"
    from kernelgen.patch_models import LIBRARY_OPS

    info = kernelgen.patch(model, backend="interpreter", policy="all", include=list(LIBRARY_OPS))
    act = "gelu_and_mul" if family == "gemma" else "silu_and_mul"
    extra_norms = 2 * L if family == "qwen3" else 0  # q_norm and k_norm in every attention
    assert info["patched"] == {"fused_add_rms_norm": L, "rms_norm": 2 * L + 1 + extra_norms, act: L,
                               "rotary_embedding": L, "cross_entropy": 1, "decode_attention": L,
                               "decode_attention_append": L}, info
    assert model.config._attn_implementation == "kernelgen_decode"
    with count_launches() as launches:
        logits, loss = run(model, ids)
    act_kernel = "_gelu_and_mul_kernel" if family == "gemma" else "_silu_and_mul_kernel"
    # per layer: the input norm (+ q/k norms), one fused residual+norm, one gated activation, one RoPE;
    # then the final norm and the loss (row losses + their mean)
    assert dict(launches.launches) == {"_rms_norm_row": L + 1 + extra_norms, "_fused_add_rms_norm_row": L,
                                       act_kernel: L, "_rotary_kernel": L, "_cross_entropy_rows": 1,
                                       "_mean_of_valid": 1}
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(logits, ref_logits, atol=atol, rtol=rtol, msg=lambda m: f"seed {rng_seed}: {m}")
    assert loss.dtype == ref_loss.dtype == torch.float32
    torch.testing.assert_close(loss, ref_loss, atol=atol, rtol=rtol)

    kernelgen.unpatch(model)
    with count_launches() as launches:
        logits, loss = run(model, ids)
    assert launches.total_launches == 0
    assert torch.equal(logits, ref_logits) and torch.equal(loss, ref_loss)
    assert not any("forward" in m.__dict__ or "_kernelgen_add_into" in m.__dict__ for m in model.modules())
    assert model.config._attn_implementation == "sdpa"


def test_rope_is_served_only_inside_patched_models(rng_seed, interpreter):
    patched, plain = build("llama", seed=rng_seed), build("llama", seed=rng_seed + 1)
    module = __import__(type(patched).__module__, fromlist=["x"])
    original = module.apply_rotary_pos_emb
    kernelgen.patch(patched, backend="interpreter", policy="all", include=["rotary_embedding"])
    assert module.apply_rotary_pos_emb is not original
    ids = _ids(rng_seed)
    with count_launches() as launches:
        run(plain, ids)
    assert launches.total_launches == 0
    with count_launches() as launches:
        run(patched, ids)
    assert dict(launches.launches) == {"_rotary_kernel": L}
    kernelgen.unpatch(patched)
    assert module.apply_rotary_pos_emb is original


def test_calls_that_need_gradients_run_the_original_code(rng_seed, interpreter):
    model = build("qwen2", seed=rng_seed)
    ids = _ids(rng_seed)
    ref = model(input_ids=ids, labels=ids)
    kernelgen.patch(model, backend="interpreter", policy="all")
    with count_launches() as launches:
        out = model(input_ids=ids, labels=ids)  # autograd on: the parameters need gradients
    assert launches.total_launches == 0
    assert torch.equal(out.logits, ref.logits)
    out.loss.backward()
    assert model.model.layers[0].mlp.gate_proj.weight.grad is not None
    kernelgen.unpatch(model)


def test_verified_policy_uses_only_ops_with_fresh_passing_records(rng_seed, interpreter, tmp_path, monkeypatch):
    from kernelgen.library import get_op, op_status

    model = build("llama", seed=rng_seed)
    from kernelgen.patch_models import LIBRARY_OPS

    info = kernelgen.patch(model, backend="interpreter", include=list(LIBRARY_OPS))
    for name in ("rms_norm", "fused_add_rms_norm", "silu_and_mul", "rotary_embedding", "cross_entropy",
                 "decode_attention", "decode_attention_append"):
        status = op_status(get_op(name), "interpreter")["status"]
        if status == "verified":
            assert info["patched"].get(name), (name, info)
        else:
            assert info["skipped"][name] == f"{status} on interpreter", info
    kernelgen.unpatch(model)


def test_patch_twice_and_bad_arguments(rng_seed, interpreter):
    model = build("llama", seed=rng_seed)
    kernelgen.patch(model, backend="interpreter", policy="all")
    again = kernelgen.patch(model, backend="interpreter", policy="all", exclude=["cross_entropy"])
    assert "cross_entropy" not in again["patched"]
    assert "_loss_function" not in model.__dict__  # the first patch was undone before the second
    kernelgen.unpatch(model)
    assert not any("forward" in m.__dict__ for m in model.modules())
    with pytest.raises(ValueError, match="policy"):
        kernelgen.patch(model, backend="interpreter", policy="fast")
    with pytest.raises(ValueError, match="unknown op"):
        kernelgen.patch(model, backend="interpreter", include=["softmax"])


def _adds_and_addmms(fn) -> tuple[int, int]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    names = [e.name for e in prof.events()]
    return names.count("aten::add"), names.count("aten::addmm_")


def test_the_mlp_residual_is_added_by_the_down_projection_unless_a_hook_watches(rng_seed, interpreter):
    """The decoder layer's `residual + mlp(x)`: in place into the fused kernel's fresh residual by the down
    projection's GEMM (no add); with a forward hook on the MLP the MLP's own forward runs (and the add)."""
    model = build("llama", seed=rng_seed)
    ids = _ids(rng_seed + 1)
    ref_logits, _ = run(model, ids)
    kernelgen.patch(model, backend="interpreter", policy="all")
    try:
        adds, addmms = _adds_and_addmms(lambda: run(model, ids))
        assert addmms == L, addmms
        logits, _ = run(model, ids)
        torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)
        seen = []
        handle = model.model.layers[0].mlp.register_forward_hook(lambda m, i, o: seen.append(o.shape))
        try:
            hooked = _adds_and_addmms(lambda: run(model, ids))
            assert seen and hooked == (adds + 1, L - 1), (hooked, adds)
            torch.testing.assert_close(run(model, ids)[0], ref_logits, atol=1e-5, rtol=1e-5)
        finally:
            handle.remove()
    finally:
        kernelgen.unpatch(model)
