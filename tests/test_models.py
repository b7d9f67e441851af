"""Real models end to end: Hugging Face Llama and Qwen2 (tiny configs, random weights, nothing downloaded) with
kernelgen's ATen overrides on Triton's interpreter. Logits match eager, and every library op the model calls
is served by our kernel (launch counts per kernel, call counters per op).

Tolerances on the logits, against the unmodified model in eager mode:
- float32: atol = rtol = 1e-5. Our kernels reduce in float32 like ATen, in another order: a few float32 ulps
  per op (1.6e-7 seen), carried through 2 layers and the LM head; 1e-5 leaves room without hiding a wrong row.
- bfloat16: atol = rtol = 1.6e-2, about 4 bf16 ulps at |logit| ~ 1 (bf16 has 8 mantissa bits, ulp 2^-8 at
  [1, 2)). Our rms_norm rounds x * rstd * w to bf16 once; ATen rounds x * rstd to bf16, then the product with
  the weight: one ulp apart per element (3.9e-3 seen), which the next matmuls carry on.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import transformers  # noqa: E402,F401  (in the test extra: a missing install fails, never skips)

import kernelgen
from kernelgen.verify.guard import count_launches

_path = Path(__file__).resolve().parents[1] / "examples" / "llama_qwen_enable.py"
_spec = importlib.util.spec_from_file_location("llama_qwen_enable", _path)
example = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(example)

TOL = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (1.6e-2, 1.6e-2)}
LAYERS = example.TINY["num_hidden_layers"]
# kernel launched -> (op counter, launches per forward): two norms per decoder layer plus the final one, one
# attention softmax per layer (eager attention), and the loss over all positions: F.cross_entropy is served
# whole by the cross_entropy op (row losses, then their mean), so its log_softmax never runs.
EXPECTED = {"_rms_norm_row": ("rms_norm", 2 * LAYERS + 1), "_softmax_row": ("softmax", LAYERS),
            "_cross_entropy_rows": ("cross_entropy", 1), "_mean_of_valid": ("cross_entropy", 1)}


def _ids(model, seed, batch=2, seq=8):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.config.vocab_size, (batch, seq), generator=g)


@pytest.mark.parametrize("family, dtype", [("llama", torch.float32), ("qwen2", torch.float32),
                                           ("llama", torch.bfloat16)])
def test_every_covered_op_is_served_and_logits_match_eager(family, dtype, rng_seed, interpreter):
    model = example.build(family, dtype, seed=rng_seed)
    routed = example.with_torch_rms_norm(model)  # the model author's change: norms through F.rms_norm
    ids = _ids(model, rng_seed + 1)
    ref_logits, ref_loss = example.forward(model, ids)  # the unmodified model, eager

    enabled = kernelgen.enable(backend="interpreter", policy="all")
    assert {"rms_norm", "softmax", "cross_entropy"} <= set(enabled)
    with count_launches() as launches:
        logits, loss = example.forward(routed, ids)
    st = kernelgen.status()["interpreter"]

    for kernel, (op, n) in EXPECTED.items():
        assert launches.launches[kernel] == n, (kernel, dict(launches.launches))
        assert st["calls"].get(op) == n, (op, st)  # one call of cross_entropy makes its two launches
    assert launches.total_launches == sum(n for _, n in EXPECTED.values())
    assert not st["fallbacks"], st  # every call of a covered op was ours, none handed back to ATen
    atol, rtol = TOL[dtype]
    assert logits.dtype == ref_logits.dtype and logits.shape == ref_logits.shape
    torch.testing.assert_close(logits, ref_logits, atol=atol, rtol=rtol, msg=lambda m: f"seed {rng_seed}: {m}")
    torch.testing.assert_close(loss, ref_loss, atol=atol, rtol=rtol)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_model_as_shipped_reaches_softmax_and_the_loss_but_not_rms_norm(family, rng_seed, interpreter):
    # LlamaRMSNorm / Qwen2RMSNorm compute the norm with pow/mean/rsqrt: no aten::rms_norm call to serve.
    model = example.build(family, seed=rng_seed)
    ids = _ids(model, rng_seed + 1)
    ref_logits, _ = example.forward(model, ids)
    kernelgen.enable(backend="interpreter", policy="all")
    with count_launches() as launches:
        logits, _ = example.forward(model, ids)
    assert dict(launches.launches) == {"_softmax_row": LAYERS, "_cross_entropy_rows": 1, "_mean_of_valid": 1}
    assert "rms_norm" not in kernelgen.status()["interpreter"]["calls"]
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)


def test_sdpa_attention_has_no_softmax_call(rng_seed, interpreter):
    # The default attention (SDPA) is one fused ATen op: the softmax override never sees it.
    model = example.with_torch_rms_norm(example.build("qwen2", attn="sdpa", seed=rng_seed))
    ids = _ids(model, rng_seed + 1)
    ref_logits, _ = example.forward(model, ids)
    kernelgen.enable(backend="interpreter", policy="all", include=["rms_norm", "softmax"])
    with count_launches() as launches:
        logits, _ = example.forward(model, ids)
    assert dict(launches.launches) == {"_rms_norm_row": 2 * LAYERS + 1}
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_default_policy_on_the_interpreter_switches_nothing_on(family, rng_seed, interpreter):
    # `verified` needs a measured speedup over eager; the interpreter records accuracy only.
    model = example.with_torch_rms_norm(example.build(family, seed=rng_seed))
    ids = _ids(model, rng_seed + 1)
    ref_logits, ref_loss = example.forward(model, ids)
    assert kernelgen.enable(backend="interpreter") == []
    with count_launches() as launches:
        logits, loss = example.forward(model, ids)
    assert launches.total_launches == 0
    assert torch.equal(logits, ref_logits) and torch.equal(loss, ref_loss)


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_rms_norm_is_served_with_and_without_inference_mode(mode, interpreter, rng_seed):
    # Inference mode skips the autograd keys, where a composite op such as rms_norm is taken over.
    g = torch.Generator().manual_seed(rng_seed)
    x, w = torch.randn(6, 48, generator=g), torch.randn(48, generator=g)
    expected = F.rms_norm(x, (48,), w, 1e-6)
    kernelgen.enable(backend="interpreter", policy="all", include=["rms_norm"])
    with getattr(torch, mode)(), count_launches() as launches:
        got = F.rms_norm(x, (48,), w, 1e-6)
    assert launches.total_launches == 1 and kernelgen.status()["interpreter"]["calls"] == {"rms_norm": 1}
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1.3e-6, msg=lambda m: f"seed {rng_seed}: {m}")
