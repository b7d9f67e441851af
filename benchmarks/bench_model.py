"""A Llama-style model end to end: latency of prefill and decode with and without kernelgen.enable().

    python benchmarks/bench_model.py --out DIR                 # on the GPU machine: writes DIR/bench_model.json
    python benchmarks/bench_model.py --apply DIR/bench_model.json   # anywhere: the "bench_model" section of
                                                                    # benchmarks/RESULTS.md
    python benchmarks/bench_model.py --tiny --device cpu --out /tmp/bm   # the same code path on the CPU
                                                                    # (tiny config, Triton's interpreter)

The model is transformers' LlamaForCausalLM built from a config (hidden 4096, 8 layers, 32 heads, 8 KV heads,
intermediate 14336, vocab 32000) with random bf16 weights; nothing is downloaded. Two phases:

- prefill: batch 1, 2048 tokens, no cache;
- decode: batch 16, one new token per sequence on a KV cache of 2048 positions (a DynamicCache filled with
  random keys and values, passed as past_key_values). The cache is cut back to 2048 after every step, so
  each timed step sees the same cache; the step's torch.cat of the cache is part of what is timed, as it is
  in transformers' own decoding.

Three model variants, because what kernelgen can replace depends on how the model calls PyTorch:

- `shipped`: the model as transformers builds it (SDPA attention, hand-written LlamaRMSNorm): no ATen op
  kernelgen overrides is called in the forward;
- `rmsnorm`: the norms swapped for torch.nn.RMSNorm with the same weights (a model-side change: it calls
  F.rms_norm, i.e. aten::rms_norm), SDPA attention;
- `rmsnorm+eager_attn`: as `rmsnorm`, with attn_implementation="eager" (its attention calls softmax).

Each variant and phase is timed in modes `eager` (no kernelgen), `verified` (`kernelgen.enable()`, the default
policy) and `correct` (`kernelgen.enable(policy="correct")`), with `triton.testing.do_bench` medians (CUDA
events), alternating the modes over --rounds rounds and keeping each mode's best median. Each mode's logits
are compared with the eager logits of the same variant (bf16: atol = rtol = 5e-2, see TOL) and the Triton
launches and kernelgen call counters of one forward are recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
SECTION = "bench_model"
sys.path.insert(0, str(HERE))

FULL = dict(hidden_size=4096, num_hidden_layers=8, num_attention_heads=32, num_key_value_heads=8,
            intermediate_size=14336, vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5)
TINY = dict(hidden_size=64, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=128, vocab_size=128, max_position_embeddings=64, rms_norm_eps=1e-5)
VARIANTS = {"shipped": (False, "sdpa"), "rmsnorm": (True, "sdpa"), "rmsnorm+eager_attn": (True, "eager")}
# bf16 through 8 layers: our kernels round once where ATen rounds twice (rms_norm) or reduce in another order;
# one bf16 ulp at |x| ~ 1 is 2^-8 = 3.9e-3 and such differences are carried by every later matmul.
TOL = {"bfloat16": (5e-2, 5e-2), "float32": (1e-4, 1e-4)}
# Slower than eager by more than this counts as slower (run-to-run noise of a whole-model median).
NOISE = 0.02


def build_model(cfg: dict, dtype, device: str):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build in bf16 directly: no float32 copy of 2B parameters
    try:
        with torch.device(device):
            model = LlamaForCausalLM(LlamaConfig(**cfg, attn_implementation="sdpa"))
    finally:
        torch.set_default_dtype(prev)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:  # transformers initializes norms to ones: draw them so the weight matters
                p.copy_(1 + 0.2 * torch.randn_like(p))
    return model.eval()


def use_torch_rms_norm(model) -> int:
    """Swap the hand-written RMSNorm modules for torch.nn.RMSNorm with the same weight and eps, in place."""
    import torch

    n = 0
    for name, mod in list(model.named_modules()):
        if type(mod).__name__.endswith("RMSNorm") and not isinstance(mod, torch.nn.RMSNorm):
            norm = torch.nn.RMSNorm(mod.weight.shape[0], eps=mod.variance_epsilon, device=mod.weight.device,
                                    dtype=mod.weight.dtype)
            norm.weight = mod.weight
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent), attr, norm)
            n += 1
    return n


def make_inputs(model, cfg: dict, prefill: int, decode_batch: int, device: str):
    """Prefill ids [1, prefill]; decode ids [decode_batch, 1] with a random KV cache of `prefill` positions."""
    import torch
    from transformers import DynamicCache

    g = torch.Generator(device=device).manual_seed(1)
    prefill_ids = torch.randint(0, cfg["vocab_size"], (1, prefill), device=device, generator=g)
    decode_ids = torch.randint(0, cfg["vocab_size"], (decode_batch, 1), device=device, generator=g)
    head_dim = cfg["hidden_size"] // cfg["num_attention_heads"]
    cache = DynamicCache()
    for layer in range(cfg["num_hidden_layers"]):
        shape = (decode_batch, cfg["num_key_value_heads"], prefill, head_dim)
        k = torch.randn(shape, device=device, dtype=model.dtype, generator=g)
        v = torch.randn(shape, device=device, dtype=model.dtype, generator=g)
        cache.update(k, v, layer)
    return prefill_ids, decode_ids, cache


def phase_fns(model, prefill_ids, decode_ids, cache, prefill: int):
    import torch

    position = torch.full((decode_ids.shape[0], 1), prefill, device=decode_ids.device)
    cache_position = torch.tensor([prefill], device=decode_ids.device)

    def run_prefill():
        with torch.inference_mode():
            return model(input_ids=prefill_ids, use_cache=False).logits

    def run_decode():
        with torch.inference_mode():
            logits = model(input_ids=decode_ids, past_key_values=cache, position_ids=position,
                           cache_position=cache_position, use_cache=True).logits
        cache.crop(-1)  # back to `prefill` positions (a negative crop works in transformers 4.x and 5.x)
        return logits

    return {"prefill": run_prefill, "decode": run_decode}


def enable_mode(mode: str, backend: str):
    import kernelgen

    kernelgen.disable()
    if mode == "eager":
        return []
    policy = {"verified": "verified", "correct": "correct", "all": "all"}[mode]
    return kernelgen.enable(backend=backend, policy=policy)


def check(logits, ref, dtype_name: str) -> dict:
    import torch

    atol, rtol = TOL[dtype_name]
    diff = (logits.float() - ref.float()).abs()
    ok = bool(torch.all(diff <= atol + rtol * ref.float().abs()))
    return {"max_abs_diff": diff.max().item(), "ref_max_abs": ref.float().abs().max().item(), "passed": ok,
            "atol": atol, "rtol": rtol}


def run(args) -> dict:
    import torch

    import kernelgen
    from kernelgen.backends import get_backend
    from kernelgen.verify.engine import versions
    from kernelgen.verify.guard import count_launches

    backend = get_backend(args.backend)
    backend.prepare()
    cfg = TINY if args.tiny else FULL
    dtype = getattr(torch, args.dtype)
    started = time.time()
    model = build_model(cfg, dtype, args.device)
    prefill_ids, decode_ids, cache = make_inputs(model, cfg, args.prefill, args.decode_batch, args.device)
    fns = phase_fns(model, prefill_ids, decode_ids, cache, args.prefill)
    bundle = {
        "command": "python benchmarks/bench_model.py " + " ".join(sys.argv[1:]),
        "backend": backend.name, "device": backend.device_name(), "versions": versions(),
        "transformers": __import__("transformers").__version__, "config": cfg, "dtype": args.dtype,
        "prefill": args.prefill, "decode_batch": args.decode_batch, "modes": args.modes, "variants": [],
    }
    for variant in args.variants:
        swap, attn = VARIANTS[variant]
        if swap:
            use_torch_rms_norm(model)  # variants are in order: once swapped, the later ones keep it
        if hasattr(model, "set_attn_implementation"):
            model.set_attn_implementation(attn)
        else:  # older transformers read the config at every forward
            model.config._attn_implementation = attn
        entry = {"variant": variant, "attn": attn, "torch_rms_norm": swap, "phases": {}}
        for phase, fn in fns.items():
            per_mode, ref = {}, None
            for mode in args.modes:
                enabled = enable_mode(mode, backend.name)
                with count_launches() as launches:
                    logits = fn()
                backend.synchronize()
                st = kernelgen.status().get(backend.name, {})
                if ref is None:
                    ref = logits.clone()
                per_mode[mode] = {"enabled": enabled, "launches": dict(launches.launches),
                                  "calls": st.get("calls", {}), "fallbacks": st.get("fallbacks", {}),
                                  "check": check(logits, ref, args.dtype), "ms": None}
            for _ in range(args.rounds):  # alternate the modes: drifts in clock or temperature hit all alike
                for mode in args.modes:
                    enable_mode(mode, backend.name)
                    ms = backend.bench(fn, warmup_ms=args.warmup_ms, rep_ms=args.rep_ms)
                    prev = per_mode[mode]["ms"]
                    per_mode[mode]["ms"] = ms if prev is None else min(prev, ms)
            kernelgen.disable()
            eager_ms = per_mode["eager"]["ms"]
            for r in per_mode.values():
                r["speedup"] = eager_ms / r["ms"]
                r["slower"] = r["ms"] > eager_ms * (1 + NOISE)
            entry["phases"][phase] = per_mode
            summary = ", ".join(f"{m} {r['ms']:.3f} ms ({r['speedup']:.3f}x, calls {r['calls']}, "
                                f"check {'ok' if r['check']['passed'] else 'FAIL'})" for m, r in per_mode.items())
            print(f"{variant:20s} {phase:8s} {summary}", flush=True)
        bundle["variants"].append(entry)
    bundle["wall_s"] = time.time() - started
    return bundle


def _calls(r: dict) -> str:
    parts = [f"{op} x{n}" for op, n in sorted(r["calls"].items())]
    parts += [f"{op} fell back x{n}" for op, n in sorted(r["fallbacks"].items())]
    return ", ".join(parts) or "none"


def render(bundle: dict) -> str:
    v, c = bundle["versions"], bundle["config"]
    modes = bundle["modes"]
    lines = [
        "## A Llama-style model end to end (bench_model)",
        "",
        f"Command: `{bundle['command']}` (then `--apply`). Device: {bundle['device']}; torch {v['torch']}, "
        f"triton {v['triton']}, transformers {bundle['transformers']}. Whole run: {bundle['wall_s']:.0f} s.",
        "",
        f"LlamaForCausalLM from a config, random {bundle['dtype']} weights: hidden {c['hidden_size']}, "
        f"{c['num_hidden_layers']} layers, {c['num_attention_heads']} heads / {c['num_key_value_heads']} KV heads, "
        f"intermediate {c['intermediate_size']}, vocab {c['vocab_size']}. Prefill: batch 1, {bundle['prefill']} "
        f"tokens. Decode: batch {bundle['decode_batch']}, 1 token on a KV cache of {bundle['prefill']} positions. "
        "Times are `triton.testing.do_bench` medians of the whole forward in ms (best of the rounds); "
        "`verified` = `kernelgen.enable()`, `correct` = `kernelgen.enable(policy=\"correct\")`. Calls: what "
        "kernelgen served in one forward (and handed back to ATen). Check: logits vs the eager logits "
        "of the same variant.",
        "",
        "| variant | phase | " + " | ".join(f"{m} ms" for m in modes) + " | "
        + " | ".join(f"{m} calls" for m in modes if m != "eager") + " | check (max abs diff) |",
        "|---|---|" + "---:|" * len(modes) + "---|" * (len(modes) - 1) + "---|",
    ]
    slower = []
    for entry in bundle["variants"]:
        for phase, per_mode in entry["phases"].items():
            times = []
            for m in modes:
                r = per_mode[m]
                times.append(f"{r['ms']:.3f}" + ("" if m == "eager" else f" ({r['speedup']:.2f}x)"))
                if m == "verified" and r["slower"]:
                    eager = per_mode["eager"]["ms"]
                    slower.append(f"{entry['variant']} {phase}: {r['ms']:.3f} ms vs eager {eager:.3f}")
            calls = [_calls(per_mode[m]) for m in modes if m != "eager"]
            checks = ", ".join(f"{m} {'ok' if per_mode[m]['check']['passed'] else 'FAIL'} "
                               f"{per_mode[m]['check']['max_abs_diff']:.2g}" for m in modes if m != "eager")
            lines.append(f"| {entry['variant']} | {phase} | " + " | ".join(times) + " | " + " | ".join(calls)
                         + f" | {checks} |")
    lines += ["", "Variants: `shipped` = the model as transformers builds it (SDPA attention, hand-written "
              "LlamaRMSNorm: no overridden ATen op is called); `rmsnorm` = norms swapped for torch.nn.RMSNorm "
              "with the same weights (calls aten::rms_norm); `rmsnorm+eager_attn` = also "
              "attn_implementation=\"eager\" (its attention calls aten::_softmax). Check tolerance: "
              f"atol = rtol = {TOL[bundle['dtype']][0]} ({bundle['dtype']})."]
    if slower:
        lines += ["", f"**The default policy was slower than eager (by more than {NOISE:.0%}):**",
                  *[f"- {s}" for s in slower]]
    else:
        lines += ["", f"The default policy (`verified`) was nowhere slower than eager by more than {NOISE:.0%}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="a tiny config (1 layer, hidden 64) to check the code path")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--backend", help="kernelgen backend (default: cuda on a GPU, interpreter on the CPU)")
    ap.add_argument("--dtype", default="bfloat16", choices=sorted(TOL))
    ap.add_argument("--prefill", type=int, help="prefill tokens = decode cache length (default 2048; tiny: 8)")
    ap.add_argument("--decode-batch", type=int, help="decode batch (default 16; tiny: 2)")
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--modes", nargs="*", help="eager verified correct [all] (default: eager verified correct; "
                    "tiny adds all, since the interpreter has no speed records)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--warmup-ms", type=float, default=100)
    ap.add_argument("--rep-ms", type=float, default=1000)
    ap.add_argument("--out", type=Path, help="write bench_model.json here instead of applying it")
    ap.add_argument("--apply", type=Path, help="write a bench_model.json measured elsewhere into RESULTS.md")
    args = ap.parse_args()
    if args.apply:
        from bench_ops import update_section

        update_section(RESULTS, SECTION, render(json.loads(args.apply.read_text())))
        return
    if args.device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported
    args.backend = args.backend or ("cuda" if args.device.startswith("cuda") else "interpreter")
    args.prefill = args.prefill or (8 if args.tiny else 2048)
    args.decode_batch = args.decode_batch or (2 if args.tiny else 16)
    args.modes = args.modes or ["eager", "verified", "correct"] + (["all"] if args.tiny else [])
    args.variants = [v for v in VARIANTS if v in args.variants]  # the norm swap is one-way: shipped goes first
    if args.modes[0] != "eager":
        ap.error("--modes must start with eager (the reference)")
    if args.tiny:
        args.rep_ms, args.warmup_ms, args.rounds = min(args.rep_ms, 50), min(args.warmup_ms, 10), 1
    bundle = run(args)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bench_model.json").write_text(json.dumps(bundle, indent=1, default=str))
    else:
        from bench_ops import update_section

        update_section(RESULTS, SECTION, render(bundle))
    print(render(bundle))


if __name__ == "__main__":
    main()
