"""kernelgen.enable() on Hugging Face Llama and Qwen2, on the CPU (Triton's interpreter), nothing downloaded.

    python examples/llama_qwen_enable.py

Both models are built from tiny configs with random weights. Each is run three ways and the logits compared:

1. eager: the model exactly as `transformers` builds it (the reference);
2. `kernelgen.enable(backend="interpreter")` with the default policy `verified`: on the interpreter this switches
   on nothing, because the interpreter records accuracy only and `verified` also asks for a measured speedup
   over eager (which only an accelerator gives). The logits are bit-identical to eager;
3. `kernelgen.enable(backend="interpreter", policy="all")`: every library op that overrides an ATen overload,
   for development. On a GPU you would call `kernelgen.enable()` and get the ops verified faster there.

What a transformers forward reaches (transformers 5.x; see README "Using kernelgen in a real model"):

- softmax (`aten::_softmax`): only with `attn_implementation="eager"`, whose attention calls
  `F.softmax(scores, dim=-1, dtype=float32)`. The default SDPA attention is one fused ATen op with no softmax
  call of its own, so nothing of ours runs there. We ask for eager attention below for that reason.
- cross_entropy (`aten::cross_entropy_loss`): when `labels=` is passed, the causal-LM loss (`F.cross_entropy`,
  mean over class indices) is served whole by the fused op, so its log_softmax never runs.
- rms_norm (`aten::rms_norm`): not with the models as shipped. LlamaRMSNorm and Qwen2RMSNorm compute the norm
  by hand (`pow`, `mean`, `rsqrt`, `mul`), so no `aten::rms_norm` call happens and kernelgen cannot see it.
  A model author who wants the library kernel can use `torch.nn.RMSNorm` (it calls `F.rms_norm`): the
  `with_torch_rms_norm()` below does that on a copy of the model, with the same weights and eps. That is a
  change to the model, made by its author, not something kernelgen does: kernelgen patches no module or
  function, it only registers ATen kernels. The unmodified model stays the reference.
- layer_norm: neither model has a LayerNorm.

The norm weights are drawn at random (transformers initializes them to ones, which would not test the weight).
"""

from __future__ import annotations

import copy
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports triton: kernels run on CPU tensors

import torch  # noqa: E402

TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=128, vocab_size=128, max_position_embeddings=256)
FAMILIES = ("llama", "qwen2")


def build(family: str, dtype: torch.dtype = torch.float32, attn: str = "eager", seed: int = 0, **overrides):
    """A causal LM of `family` from a config, random weights (norm weights too), in eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    config_cls, model_cls = {"llama": (LlamaConfig, LlamaForCausalLM),
                             "qwen2": (Qwen2Config, Qwen2ForCausalLM)}[family]
    torch.manual_seed(seed)
    model = model_cls(config_cls(**{**TINY, **overrides}, attn_implementation=attn))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.2 * torch.randn_like(p))
    return model.to(dtype).eval()


def with_torch_rms_norm(model):
    """A copy of `model` whose hand-written RMSNorm modules are `torch.nn.RMSNorm` with the same weight and eps.

    Same math (x * rsqrt(mean(x^2) + eps) computed in float32, cast back, times the weight), but through
    `F.rms_norm`, i.e. `aten::rms_norm`, which ATen overrides such as kernelgen's can serve."""
    model = copy.deepcopy(model)
    for name, mod in list(model.named_modules()):
        if type(mod).__name__.endswith("RMSNorm") and not isinstance(mod, torch.nn.RMSNorm):
            w = mod.weight
            norm = torch.nn.RMSNorm(w.shape[0], eps=mod.variance_epsilon, device=w.device, dtype=w.dtype)
            norm.weight = w
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent), attr, norm)
    return model


def forward(model, ids):
    """Logits and loss (labels = the inputs, so the loss runs too), without autograd: our
    kernels are forward-only and a call that needs gradients goes to ATen."""
    with torch.inference_mode():
        out = model(input_ids=ids, labels=ids)
    return out.logits, out.loss


def run(family: str, dtype: torch.dtype = torch.float32, batch: int = 2, seq: int = 8) -> dict:
    """Eager vs verified policy vs policy='all' on one model; launch counts per kernel and calls per op."""
    import kernelgen
    from kernelgen.verify.guard import count_launches

    model = build(family, dtype)
    routed = with_torch_rms_norm(model)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq))
    ref_logits, ref_loss = forward(model, ids)

    with kernelgen.use(backend="interpreter") as on_default, count_launches() as w_default:
        default_logits, _ = forward(model, ids)

    result = {"family": family, "dtype": str(dtype).removeprefix("torch."), "default_enabled": on_default,
              "default_launches": w_default.total_launches,
              "default_bit_identical": torch.equal(default_logits, ref_logits)}
    for label, m in (("as shipped", model), ("torch.nn.RMSNorm", routed)):
        with kernelgen.use(backend="interpreter", policy="all"), count_launches() as w:
            logits, loss = forward(m, ids)
            st = kernelgen.status()["interpreter"]
        result[label] = {
            "launches": dict(w.launches), "calls": st["calls"], "fallbacks": st["fallbacks"],
            "max_abs_diff": (logits.float() - ref_logits.float()).abs().max().item(),
            "loss": loss.item(), "ref_loss": ref_loss.item(), "logits": logits,
        }
    result["ref_logits"] = ref_logits
    return result


def main() -> None:
    for family in FAMILIES:
        for dtype in (torch.float32, torch.bfloat16):
            r = run(family, dtype)
            print(f"== {family} {r['dtype']} (batch 2, 8 tokens, eager attention, labels passed)")
            print(f"   default policy 'verified' on the interpreter: enabled {r['default_enabled']}, "
                  f"{r['default_launches']} launches, logits bit-identical to eager: {r['default_bit_identical']}")
            for label in ("as shipped", "torch.nn.RMSNorm"):
                v = r[label]
                print(f"   policy='all', norms {label:17s}: launches {v['launches']}")
                print(f"   {'':38s} calls {v['calls']}, fallbacks {v['fallbacks']}")
                print(f"   {'':38s} max |logits - eager| = {v['max_abs_diff']:.3g}, "
                      f"loss {v['loss']:.5f} (eager {v['ref_loss']:.5f})")


if __name__ == "__main__":
    main()
