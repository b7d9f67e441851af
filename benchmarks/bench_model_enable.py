"""A Llama-style model end to end: latency of prefill and decode with and without kernelgen.enable().

    python benchmarks/bench_model_enable.py --out DIR        # on the GPU machine: writes DIR/bench_model_enable.json
    python benchmarks/bench_model_enable.py --apply DIR/bench_model_enable.json   # anywhere: the
                                                             # "bench_model_enable" section of benchmarks/RESULTS.md
    python benchmarks/bench_model_enable.py --tiny --device cpu --out /tmp/bm   # the same code path on the CPU
                                                             # (tiny config, Triton's interpreter)

kernelgen.patch(), Liger-Kernel and FlagGems on the same models (and decode in a CUDA graph) are compared by
benchmarks/bench_model.py (part `models` of benchmarks/bench_launch_models.py), which uses the model, input
and accuracy helpers of this file.

The model is transformers' LlamaForCausalLM built from a config (hidden 4096, 8 layers, 32 heads, 8 KV heads,
intermediate 14336, vocab 32000) with random bf16 weights; nothing is downloaded. Two phases:

- prefill: batch 1, 2048 tokens, no cache;
- decode: batch 16, one new token per sequence on a KV cache of 2048 positions (a DynamicCache filled with
  random keys and values, passed as past_key_values). The cache's tensors are put back after every step, so
  every timed step is the same computation on the same (contiguous) cache; the step's torch.cat of the cache
  is part of what is timed, as it is in transformers' own decoding.

Three model variants, because what kernelgen can replace depends on how the model calls PyTorch:

- `shipped`: the model as transformers builds it (SDPA attention, hand-written LlamaRMSNorm): no ATen op
  kernelgen overrides is called in the forward;
- `rmsnorm`: the norms swapped for torch.nn.RMSNorm with the same weights (a model-side change: it calls
  F.rms_norm, i.e. aten::rms_norm), SDPA attention;
- `rmsnorm+eager_attn`: as `rmsnorm`, with attn_implementation="eager" (its attention calls softmax).

Each variant and phase is timed in modes `eager` (no kernelgen), `verified` (`kernelgen.enable()`, the default
policy), `by_size` (`kernelgen.enable(by_size=True)`: also ops that win on large inputs only, for those inputs)
and `correct` (`kernelgen.enable(policy="correct")`), with `triton.testing.do_bench` medians (CUDA
events) over --rounds rounds; the order of the modes turns by one every round (a drift of clocks or
temperature over a round hits every mode in every position) and each mode keeps its best median.

Accuracy: the model is built in float32 (float64 for a float32 run) first, and its logits for both phases are
the reference; then it is cast to the benchmarked dtype. A bf16 model differs from its float32 self by bf16
rounding carried through every layer, and a kernel that rounds once where ATen rounds twice moves single
logits by as much as eager's own error, so the check is relative to eager: a mode passes when its mean
absolute error against the reference is at most CHECK_FACTOR times eager's. The Triton launches and kernelgen
call counters of one forward are recorded too.
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
SECTION = "bench_model_enable"
sys.path.insert(0, str(HERE))

FULL = dict(hidden_size=4096, num_hidden_layers=8, num_attention_heads=32, num_key_value_heads=8,
            intermediate_size=14336, vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5)
TINY = dict(hidden_size=64, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=128, vocab_size=128, max_position_embeddings=64, rms_norm_eps=1e-5)
VARIANTS = {"shipped": (False, "sdpa"), "rmsnorm": (True, "sdpa"), "rmsnorm+eager_attn": (True, "eager")}
# The reference dtype for each benchmarked dtype, and how much larger than eager's a mode's mean absolute error
# against that reference may be: a kernel as exact as ATen's lands within a few percent of eager.
REFERENCE_DTYPE = {"bfloat16": "float32", "float16": "float32", "float32": "float64"}
CHECK_FACTOR = 1.1
# Slower than eager by more than this counts as slower (run-to-run noise of a whole-model median).
NOISE = 0.02


def build_model(cfg: dict, dtype, device: str):
    """The model with random weights in `dtype` (the reference dtype: it is cast down after the reference run)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
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


def _cache_tensors(cache) -> list:
    """The (keys, values) of every layer: `cache.layers` in transformers 5.x, key/value lists in 4.x."""
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache))


def _restore_cache(cache, saved: list) -> None:
    if hasattr(cache, "layers"):
        for layer, (k, v) in zip(cache.layers, saved):
            layer.keys, layer.values = k, v
    else:
        cache.key_cache[:], cache.value_cache[:] = [k for k, _ in saved], [v for _, v in saved]


def cast_cache(cache, dtype) -> None:
    """The cache's tensors cast to `dtype`, in place (the reference model's cache becomes the benchmark's)."""
    _restore_cache(cache, [(k.to(dtype), v.to(dtype)) for k, v in _cache_tensors(cache)])


def phase_fns(model, prefill_ids, decode_ids, cache, prefill: int):
    import torch

    position = torch.full((decode_ids.shape[0], 1), prefill, device=decode_ids.device)
    cache_position = torch.tensor([prefill], device=decode_ids.device)

    def run_prefill():
        with torch.inference_mode():
            return model(input_ids=prefill_ids, use_cache=False).logits

    def run_decode():
        saved = _cache_tensors(cache)
        with torch.inference_mode():
            logits = model(input_ids=decode_ids, past_key_values=cache, position_ids=position,
                           cache_position=cache_position, use_cache=True).logits
        _restore_cache(cache, saved)  # the same `prefill`-position cache for the next step
        return logits

    return {"prefill": run_prefill, "decode": run_decode}


def enable_mode(mode: str, backend: str):
    import kernelgen

    kernelgen.disable()
    if mode == "eager":
        return []
    kwargs = {"verified": {}, "by_size": {"by_size": True}, "correct": {"policy": "correct"},
              "all": {"policy": "all"}}[mode]
    return kernelgen.enable(backend=backend, **kwargs)


def errors(logits, reference) -> dict:
    """Mean and max absolute error of logits against the higher-precision reference."""
    diff = (logits.to(reference.dtype) - reference).abs()
    return {"mean_abs_err": diff.mean().item(), "max_abs_err": diff.max().item()}


def check(logits, eager_logits, reference) -> dict:
    err, eager_err = errors(logits, reference), errors(eager_logits, reference)
    return {**err, "eager_mean_abs_err": eager_err["mean_abs_err"], "eager_max_abs_err": eager_err["max_abs_err"],
            "max_abs_diff_vs_eager": (logits.float() - eager_logits.float()).abs().max().item(),
            "passed": err["mean_abs_err"] <= CHECK_FACTOR * eager_err["mean_abs_err"]}


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
    model = build_model(cfg, getattr(torch, REFERENCE_DTYPE[args.dtype]), args.device)
    prefill_ids, decode_ids, cache = make_inputs(model, cfg, args.prefill, args.decode_batch, args.device)
    fns = phase_fns(model, prefill_ids, decode_ids, cache, args.prefill)
    references = {phase: fn() for phase, fn in fns.items()}  # the same model and inputs, before the cast
    for param in model.parameters():  # buffers keep their dtype: rotary inv_freq stays float32, as it is in
        param.data = param.data.to(dtype)  # a model loaded with from_pretrained(dtype=...)
    cast_cache(cache, dtype)
    bundle = {
        "command": "python benchmarks/bench_model_enable.py " + " ".join(sys.argv[1:]),
        "backend": backend.name, "device": backend.device_name(), "versions": versions(),
        "transformers": __import__("transformers").__version__, "config": cfg, "dtype": args.dtype,
        "prefill": args.prefill, "decode_batch": args.decode_batch, "modes": args.modes, "variants": [],
        "reference_dtype": REFERENCE_DTYPE[args.dtype], "check_factor": CHECK_FACTOR, "rounds": args.rounds,
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
            per_mode, eager_logits = {}, None
            for mode in args.modes:
                enabled = enable_mode(mode, backend.name)
                with count_launches() as launches:
                    logits = fn()
                backend.synchronize()
                st = kernelgen.status().get(backend.name, {})
                if eager_logits is None:
                    eager_logits = logits.clone()
                per_mode[mode] = {"enabled": enabled, "launches": dict(launches.launches),
                                  "calls": st.get("calls", {}), "fallbacks": st.get("fallbacks", {}),
                                  "check": check(logits, eager_logits, references[phase]), "samples_ms": []}
            n = len(args.modes)
            for r in range(args.rounds):  # the order turns every round: a drift hits every mode in every place
                for mode in args.modes[r % n:] + args.modes[:r % n]:
                    enable_mode(mode, backend.name)
                    per_mode[mode]["samples_ms"].append(backend.bench(fn, warmup_ms=args.warmup_ms,
                                                                      rep_ms=args.rep_ms))
            kernelgen.disable()
            for r in per_mode.values():
                r["ms"] = min(r["samples_ms"])
            eager_ms = per_mode["eager"]["ms"]
            for r in per_mode.values():
                r["speedup"] = eager_ms / r["ms"]
                r["slower"] = r["ms"] > eager_ms * (1 + NOISE)
            entry["phases"][phase] = per_mode
            summary = ", ".join(f"{m} {r['ms']:.3f} ms ({r['speedup']:.3f}x, rounds "
                                f"{'/'.join(f'{x:.3f}' for x in r['samples_ms'])}, calls {r['calls']}, "
                                f"fallbacks {r['fallbacks']}, check {'ok' if r['check']['passed'] else 'FAIL'} "
                                f"{r['check']['mean_abs_err']:.3g})" for m, r in per_mode.items())
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
        "## A Llama-style model end to end (bench_model_enable)",
        "",
        f"Command: `{bundle['command']}` (then `--apply`). Device: {bundle['device']}; torch {v['torch']}, "
        f"triton {v['triton']}, transformers {bundle['transformers']}. Whole run: {bundle['wall_s']:.0f} s.",
        "",
        f"LlamaForCausalLM from a config, random {bundle['dtype']} weights: hidden {c['hidden_size']}, "
        f"{c['num_hidden_layers']} layers, {c['num_attention_heads']} heads / {c['num_key_value_heads']} KV heads, "
        f"intermediate {c['intermediate_size']}, vocab {c['vocab_size']}. Prefill: batch 1, {bundle['prefill']} "
        f"tokens. Decode: batch {bundle['decode_batch']}, 1 token on a KV cache of {bundle['prefill']} positions. "
        "Times are `triton.testing.do_bench` medians of the whole forward in ms (best of the rounds); "
        "`verified` = `kernelgen.enable()`, `by_size` = `kernelgen.enable(by_size=True)`, `correct` = "
        "`kernelgen.enable(policy=\"correct\")`. Calls: what "
        "kernelgen served in one forward (and handed back to ATen). Error: mean absolute error of the logits "
        f"against the same model in {bundle['reference_dtype']} (eager's own error first); a mode passes when "
        f"its error is at most {bundle['check_factor']}x eager's.",
        "",
        "| variant | phase | " + " | ".join(f"{m} ms" for m in modes) + " | "
        + " | ".join(f"{m} calls" for m in modes if m != "eager") + " | error vs reference |",
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
            checks = f"eager {per_mode['eager']['check']['mean_abs_err']:.3g}; " + ", ".join(
                f"{m} {per_mode[m]['check']['mean_abs_err']:.3g} {'ok' if per_mode[m]['check']['passed'] else 'FAIL'}"
                for m in modes if m != "eager")
            lines.append(f"| {entry['variant']} | {phase} | " + " | ".join(times) + " | " + " | ".join(calls)
                         + f" | {checks} |")
    first = bundle["variants"][0]["phases"]["prefill"] if bundle["variants"] else {}
    lines += ["", "Switched on: " + "; ".join(f"`{m}`: {', '.join(first[m]['enabled']) or 'nothing'}"
                                             for m in modes if m != "eager" and m in first) + "."]
    lines += ["", "Variants: `shipped` = the model as transformers builds it (SDPA attention, hand-written "
              "LlamaRMSNorm: no overridden ATen op is called); `rmsnorm` = norms swapped for torch.nn.RMSNorm "
              "with the same weights (calls aten::rms_norm); `rmsnorm+eager_attn` = also "
              "attn_implementation=\"eager\" (its attention calls aten::_softmax)."]
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
    ap.add_argument("--dtype", choices=sorted(REFERENCE_DTYPE),
                    help="default bfloat16; float32 with --tiny: Triton's interpreter truncates float32 -> bfloat16 "
                    "casts (the GPU rounds to nearest), which doubles the bf16 error of every kernel there")
    ap.add_argument("--prefill", type=int, help="prefill tokens = decode cache length (default 2048; tiny: 8)")
    ap.add_argument("--decode-batch", type=int, help="decode batch (default 16; tiny: 2)")
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--modes", nargs="*", help="eager verified by_size correct [all] (default: all but all; "
                    "tiny adds all, since the interpreter has no speed records)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup-ms", type=float, default=100)
    ap.add_argument("--rep-ms", type=float, default=1000)
    ap.add_argument("--out", type=Path, help="write bench_model_enable.json here instead of applying it")
    ap.add_argument("--apply", type=Path, help="write a bench_model_enable.json measured elsewhere into RESULTS.md")
    args = ap.parse_args()
    if args.apply:
        from bench_ops import update_section

        update_section(RESULTS, SECTION, render(json.loads(args.apply.read_text())))
        return
    if args.device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported
    args.backend = args.backend or ("cuda" if args.device.startswith("cuda") else "interpreter")
    args.dtype = args.dtype or ("float32" if args.tiny else "bfloat16")
    args.prefill = args.prefill or (8 if args.tiny else 2048)
    args.decode_batch = args.decode_batch or (2 if args.tiny else 16)
    args.modes = args.modes or ["eager", "verified", "by_size", "correct"] + (["all"] if args.tiny else [])
    args.variants = [v for v in VARIANTS if v in args.variants]  # the norm swap is one-way: shipped goes first
    if args.modes[0] != "eager":
        ap.error("--modes must start with eager (the reference)")
    if args.tiny:
        args.rep_ms, args.warmup_ms, args.rounds = min(args.rep_ms, 50), min(args.warmup_ms, 10), 1
    bundle = run(args)
    from bench_ops import save_or_apply, update_section

    save_or_apply(bundle, args.out, SECTION, lambda b: update_section(RESULTS, SECTION, render(b)))
    print(render(bundle))


if __name__ == "__main__":
    main()
