"""Part `models` of benchmarks/bench_launch_models.py: one model, several ways of making it faster, side by side.

    python benchmarks/bench_model_modes.py --out DIR [--models llama qwen2] [--quick]   # alone, on the GPU

Models: transformers' LlamaForCausalLM and Qwen2ForCausalLM from configs (hidden 4096, 8 layers, 32/8 heads,
intermediate 14336, vocab 32000; random bf16 weights, norm weights drawn too), as in bench_model.py. Phases:
prefill (1 x 2048 tokens, no cache), decode (batch 16, one token on a 2048-position KV cache, the cache put
back after every step) and the same decode step captured in a CUDA graph and replayed.

Modes, in this order (Liger's patch cannot be undone, so it comes last):
- eager: the model as built;
- patch: kernelgen.patch(model) (RMSNorm, residual+norm, SwiGLU, RoPE; the loss is not in these phases);
- gems: FlagGems `use_gems()` (if importable); when the forward fails under it, again without `mul` (a
  broadcasting mul failed on Hopper), and the reason is recorded;
- liger: Liger-Kernel's apply_liger_kernel_to_llama / _qwen2 on this model instance (rms_norm, swiglu, rope).

Accuracy: logits of each mode and phase against the same model run in float32 before the cast (mean and max
absolute error), next to eager's; the graph replay's logits against the same mode without the graph.
"""

from __future__ import annotations

import time

FULL = dict(hidden_size=4096, num_hidden_layers=8, num_attention_heads=32, num_key_value_heads=8,
            intermediate_size=14336, vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5)
TINY = dict(hidden_size=64, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=128, vocab_size=128, max_position_embeddings=64, rms_norm_eps=1e-5)
CLASSES = {"llama": ("LlamaConfig", "LlamaForCausalLM", "apply_liger_kernel_to_llama"),
           "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", "apply_liger_kernel_to_qwen2")}
MODES = ("eager", "patch", "gems", "liger")
DEADLINE: float | None = None  # time.time() past which the remaining modes are skipped (set by the caller)


def build(family: str, cfg: dict, dtype, device: str):
    import torch
    import transformers

    config_name, model_name, _ = CLASSES[family]
    torch.manual_seed(0)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = getattr(transformers, model_name)(getattr(transformers, config_name)(
                **cfg, attn_implementation="sdpa"))
    finally:
        torch.set_default_dtype(prev)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.2 * torch.randn_like(p))
    return model.eval()


def _timer(device, quick, tiny):
    if device == "cuda" and not tiny:
        from triton.testing import do_bench

        return lambda fn: float(do_bench(fn, warmup=50 if quick else 200, rep=200 if quick else 600,
                                         return_mode="median"))

    def host_ms(fn):
        fn()
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3

    return host_ms


def _graph(fn):
    """fn captured in a CUDA graph: (replay, the static output)."""
    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph.replay, out


def _enter_mode(mode, model, family, backend, policy):
    """Switch the mode on; returns (exit function, details)."""
    import kernelgen

    if mode == "eager":
        return (lambda: None), {}
    if mode == "patch":
        info = kernelgen.patch(model, backend=backend, policy=policy)
        return (lambda: kernelgen.unpatch(model)), info
    if mode == "gems":
        import flag_gems

        ctx = flag_gems.use_gems()
        ctx.__enter__()
        return (lambda: ctx.__exit__(None, None, None)), {"flag_gems": getattr(flag_gems, "__version__", "?")}
    if mode == "liger":
        import liger_kernel
        import liger_kernel.transformers as lt

        apply = getattr(lt, CLASSES[family][2])
        apply(rope=True, rms_norm=True, swiglu=True, cross_entropy=False, fused_linear_cross_entropy=False,
              model=model)
        return (lambda: None), {"liger_kernel": getattr(liger_kernel, "__version__", "?")}
    raise ValueError(mode)


def _gems_without_mul():
    import flag_gems

    for kw in ("unused", "exclude"):
        try:
            ctx = flag_gems.use_gems(**{kw: ["mul"]})
            ctx.__enter__()
            return lambda: ctx.__exit__(None, None, None)
        except TypeError:
            continue
    raise RuntimeError("this FlagGems' use_gems() takes no exclusion list")


def run_family(family, device, backend, tiny, quick, policy) -> dict:
    import torch
    from bench_model import cast_cache, errors, make_inputs, phase_fns

    cfg = TINY if tiny else FULL
    prefill, batch = (8, 2) if tiny else (2048, 16)
    model = build(family, cfg, torch.float32, device)
    prefill_ids, decode_ids, cache = make_inputs(model, cfg, prefill, batch, device)
    fns = phase_fns(model, prefill_ids, decode_ids, cache, prefill)
    references = {phase: fn() for phase, fn in fns.items()}
    for p in model.parameters():
        p.data = p.data.to(torch.bfloat16 if device == "cuda" else torch.float32)
    cast_cache(cache, model.dtype)
    timer = _timer(device, quick, tiny)
    out = {"config": cfg, "prefill": prefill, "decode_batch": batch, "modes": {}}
    eager_ms = {}
    for mode in MODES:
        row = {}
        if DEADLINE is not None and time.time() > DEADLINE:
            out["modes"][mode] = {"skipped": "time budget of the part spent (--part-budget-s)"}
            continue
        try:
            leave, row["details"] = _enter_mode(mode, model, family, backend, policy)
        except Exception as exc:  # noqa: BLE001 - an optional package missing or failing to apply
            out["modes"][mode] = {"skipped": f"{type(exc).__name__}: {exc}"}
            continue
        try:
            try:
                logits = {phase: fn() for phase, fn in fns.items()}
            except Exception as exc:  # noqa: BLE001
                if mode != "gems":
                    raise
                leave()
                row["gems_full_failed"] = f"{type(exc).__name__}: {str(exc)[:300]}"
                leave = _gems_without_mul()
                row["gems_excluded"] = ["mul"]
                logits = {phase: fn() for phase, fn in fns.items()}
            row["errors"] = {phase: errors(logits[phase], references[phase]) for phase in fns}
            row["ms"] = {phase: timer(fn) for phase, fn in fns.items()}
            if device == "cuda" and not tiny:
                try:
                    replay, static = _graph(fns["decode"])
                    replay()
                    torch.cuda.synchronize()
                    row["graph_matches_eager_run"] = bool(torch.allclose(static.float(), logits["decode"].float(),
                                                                         atol=1e-2, rtol=1e-2))
                    row["ms"]["decode_graph"] = timer(replay)
                except Exception as exc:  # noqa: BLE001
                    row["graph_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        except Exception as exc:  # noqa: BLE001
            row["error"] = f"{type(exc).__name__}: {str(exc)[:500]}"
        finally:
            leave()
        if mode == "eager":
            eager_ms = dict(row.get("ms", {}))
        row["speedup"] = {k: eager_ms[k] / v for k, v in row.get("ms", {}).items() if k in eager_ms and v}
        out["modes"][mode] = row
        print(f"models {family} {mode}: " + ", ".join(f"{k} {v:.3f} ms ({row['speedup'].get(k, 0):.2f}x)"
                                                       for k, v in row.get("ms", {}).items())
              + (f" [{row.get('error') or row.get('graph_error')}]" if row.get("error") or row.get("graph_error")
                 else ""), flush=True)
    del model, cache, fns
    if device == "cuda":
        torch.cuda.empty_cache()
    return out


def part_models(device, backend, tiny, quick, policy, families) -> dict:
    try:
        import transformers
    except ImportError as exc:
        return {"skipped": f"transformers is not installed ({exc})"}
    out = {"transformers": transformers.__version__, "patch_policy": policy, "families": {}}
    for family in families:
        out["families"][family] = run_family(family, device, backend, tiny, quick, policy)
    return out


def main() -> None:
    import argparse
    import json
    import os
    import sys
    from pathlib import Path

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="writes DIR/bench_model_modes.json")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny models (the CPU path through Triton's interpreter)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--patch-policy", default="all", choices=("verified", "all"))
    ap.add_argument("--models", nargs="*", default=list(CLASSES), choices=list(CLASSES))
    args = ap.parse_args()
    if args.device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from kernelgen.backends import get_backend

    backend = "cuda" if args.device == "cuda" else "interpreter"
    get_backend(backend).prepare()
    result = part_models(args.device, backend, args.tiny, args.quick, args.patch_policy, args.models)
    result["command"] = "python benchmarks/bench_model_modes.py " + " ".join(sys.argv[1:])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_model_modes.json").write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {args.out / 'bench_model_modes.json'}")


if __name__ == "__main__":
    main()
