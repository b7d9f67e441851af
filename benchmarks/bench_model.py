"""Models end to end: one model, several ways of making it faster, side by side (part `models` of
benchmarks/bench_launch_models.py).

    python benchmarks/bench_model.py --out DIR [--models llama qwen2] [--quick]   # alone, on the GPU

Models: transformers' LlamaForCausalLM and Qwen2ForCausalLM from configs (hidden 4096, 8 layers, 32/8 heads,
intermediate 14336, vocab 32000; random bf16 weights, norm weights drawn too), as in bench_model_enable.py. Phases:
prefill (1 x 2048 tokens, no cache), decode (batch 16, one token on a 2048-position KV cache, the cache put
back after every step) and the same decode step captured in a CUDA graph and replayed.

Modes (eager first: the float32 reference logits it computes are shared with the others through a file):
- eager: the model as built;
- patch: kernelgen.patch(model) (RMSNorm, residual+norm, SwiGLU, RoPE; the loss is not in these phases);
- liger: Liger-Kernel's apply_liger_kernel_to_llama / _qwen2 on this model instance (rms_norm, swiglu, rope);
- gems: FlagGems `use_gems()` (if importable); when it fails (a broadcasting mul crashed on Hopper with an
  illegal memory access), again in a fresh process with `mul` excluded, and the first failure is recorded
  (for a later model of the same run, straight to the retry).

Every (model, mode) runs in its own subprocess: a kernel that faults poisons its CUDA context, and with it
every later mode of the same process; in a subprocess the fault is that mode's reported error only.

Timing: prefill with do_bench (median, L2 flushed). Decode and the decode graph are timed the same way: 20
back-to-back steps between two CUDA events after a sync (a serving loop's step time: host cost included
for the eager step, the replay alone for the graph); `decode_do_bench` keeps do_bench's median of one eager
step for comparison. transformers takes another path while a CUDA graph is captured (it treats capture as
tracing: a materialized mask, K and V repeated to every head, masked attention), so the graph is captured
with that detection off and records the eager step's kernels (`_capture_as_eager`); in eager mode the
graph as transformers captures it by itself is timed too (decode_graph_transformers_capture), and the
kernels of one eager step and of one replay are listed from the profiler.

Accuracy: logits of each mode and phase against the same model run in float32 before the cast (mean and max
absolute error), next to eager's; the graph replay's logits against the same mode without the graph.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FULL = dict(hidden_size=4096, num_hidden_layers=8, num_attention_heads=32, num_key_value_heads=8,
            intermediate_size=14336, vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5)
TINY = dict(hidden_size=64, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=128, vocab_size=128, max_position_embeddings=64, rms_norm_eps=1e-5)
CLASSES = {"llama": ("LlamaConfig", "LlamaForCausalLM", "apply_liger_kernel_to_llama"),
           "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", "apply_liger_kernel_to_qwen2")}
MODES = ("eager", "patch", "patch_attention", "liger", "gems")  # gems last: the slowest to compile, and it faults
# The package a mode needs: where it is not installed the mode is skipped without starting a child for it
# (a child imports torch and transformers and builds the model before it would find out).
MODE_PACKAGES = {"liger": "liger_kernel", "gems": "flag_gems"}
DEADLINE: float | None = None  # time.time() past which the remaining modes are skipped (set by the caller)
STEPS = 20  # back-to-back decode steps per timing
GEMS_FAILED: list = []  # [model, error] once use_gems() failed in this run


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


def steady_ms(fn, steps=STEPS, repeats=3) -> float:
    """Best of `repeats` of: `steps` back-to-back calls between two CUDA events, per call."""
    import torch

    fn()
    best = float("inf")
    for _ in range(repeats):
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(steps):
            fn()
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) / steps)
    return best


@contextlib.contextmanager
def _capture_as_eager():
    """transformers treats CUDA stream capture as tracing: it then skips the host-side checks that let the
    eager decode step drop its attention mask, so the captured step materializes a [16, 1, 1, 2049] mask,
    repeats K and V to all 32 heads (one 280 us copy per tensor and layer on an H200) and runs masked
    attention, 2.6 ms more GPU work than the eager step. Within this block transformers sees no capture, so
    the graph records the eager step's own kernels. Safe: a check that needed a host sync would fail the
    capture loudly rather than record something else."""
    try:
        from transformers.utils import import_utils
    except ImportError:
        yield None
        return
    original = getattr(import_utils, "is_cuda_stream_capturing", None)
    if original is None:
        yield None
        return
    import_utils.is_cuda_stream_capturing = lambda: False
    try:
        yield "transformers.utils.import_utils.is_cuda_stream_capturing reported False during the capture"
    finally:
        import_utils.is_cuda_stream_capturing = original


def _graph(fn, as_eager=True):
    """fn captured in a CUDA graph: (replay, the static output, a note on how it was captured)."""
    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with _capture_as_eager() if as_eager else contextlib.nullcontext() as note:
        with torch.cuda.graph(graph):
            out = fn()
    return graph.replay, out, note


def kernel_table(fn, top=12) -> list:
    """The GPU kernels of one call of fn, from the profiler: [name, count, total us], the longest first."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    rows = [(e.key[:90], e.count, round(e.device_time_total, 1)) for e in prof.key_averages()
            if e.device_time_total > 0]
    rows = sorted(rows, key=lambda r: -r[2])
    # the rest summed in one row, so the table adds up to the GPU time of the call
    rest = rows[top:]
    return rows[:top] + ([("(all other kernels)", sum(r[1] for r in rest), round(sum(r[2] for r in rest), 1))]
                         if rest else [])


def _enter_mode(mode, model, family, backend, policy, gems_exclude=()):
    """Switch the mode on; returns (exit function, details)."""
    import kernelgen

    if mode == "eager":
        return (lambda: None), {}
    if mode in ("patch", "patch_attention"):  # patch_attention: decode attention too (opt-in in patch())
        from kernelgen.patch_models import LIBRARY_OPS

        include = list(LIBRARY_OPS) if mode == "patch_attention" else None
        info = kernelgen.patch(model, backend=backend, policy=policy, include=include)
        return (lambda: kernelgen.unpatch(model)), info
    if mode == "gems":
        import flag_gems

        details = {"flag_gems": getattr(flag_gems, "__version__", "?")}
        if not gems_exclude:
            ctx = flag_gems.use_gems()
        else:
            for kw in ("exclude", "unused"):
                try:
                    ctx = flag_gems.use_gems(**{kw: list(gems_exclude)})
                    break
                except TypeError:
                    continue
            else:
                raise RuntimeError("this FlagGems' use_gems() takes no exclusion list")
            details["excluded"] = list(gems_exclude)
        ctx.__enter__()
        return (lambda: ctx.__exit__(None, None, None)), details
    if mode == "liger":
        import liger_kernel
        import liger_kernel.transformers as lt

        apply = getattr(lt, CLASSES[family][2])
        apply(rope=True, rms_norm=True, swiglu=True, cross_entropy=False, fused_linear_cross_entropy=False,
              model=model)
        return (lambda: None), {"liger_kernel": getattr(liger_kernel, "__version__", "?")}
    raise ValueError(mode)


def run_mode(family, mode, device, backend, tiny, quick, policy, refs_path: Path, gems_exclude=()) -> dict:
    """One model in one mode (in this process): errors vs the float32 reference, timings."""
    import torch
    from bench_model_enable import cast_cache, errors, make_inputs, phase_fns

    cfg = TINY if tiny else FULL
    prefill, batch = (8, 2) if tiny else (2048, 16)
    model = build(family, cfg, torch.float32, device)
    prefill_ids, decode_ids, cache = make_inputs(model, cfg, prefill, batch, device)
    fns = phase_fns(model, prefill_ids, decode_ids, cache, prefill)
    if refs_path.exists():
        references = torch.load(refs_path, map_location=device)
    else:  # the first mode computes the float32 references for all
        references = {phase: fn() for phase, fn in fns.items()}
        torch.save(references, refs_path)
    for p in model.parameters():
        p.data = p.data.to(torch.bfloat16 if device == "cuda" else torch.float32)
    cast_cache(cache, model.dtype)
    timer = _timer(device, quick, tiny)
    cuda = device == "cuda" and not tiny
    row = {}
    try:
        leave, row["details"] = _enter_mode(mode, model, family, backend, policy, gems_exclude)
    except Exception as exc:  # noqa: BLE001 - an optional package missing or failing to apply
        return {"skipped": f"{type(exc).__name__}: {str(exc)[:300]}"}
    try:
        logits = {phase: fn() for phase, fn in fns.items()}
        row["errors"] = {phase: errors(logits[phase], references[phase]) for phase in fns}
        row["logits_finite"] = {phase: bool(torch.isfinite(logits[phase]).all()) for phase in fns}
        row["ms"] = {"prefill": timer(fns["prefill"])}
        row["ms"]["decode"] = steady_ms(fns["decode"]) if cuda else timer(fns["decode"])
        if cuda:
            row["ms"]["decode_do_bench"] = timer(fns["decode"])
            try:
                replay, static, row["graph_capture"] = _graph(fns["decode"])
                replay()
                torch.cuda.synchronize()
                row["graph_max_abs_diff_vs_eager_step"] = (static.float() - logits["decode"].float()).abs().max().item()
                row["errors"]["decode_graph"] = errors(static, references["decode"])
                row["ms"]["decode_graph"] = steady_ms(replay)
                if mode in ("eager", "patch"):
                    row["kernels_decode_graph"] = kernel_table(replay, top=20)
                    row["kernels_prefill"] = kernel_table(fns["prefill"], top=20)
                if mode == "eager":
                    row["kernels_decode"] = kernel_table(fns["decode"])
                    # the graph as transformers captures it by itself, for the record
                    replay_own, _, _ = _graph(fns["decode"], as_eager=False)
                    row["ms"]["decode_graph_transformers_capture"] = steady_ms(replay_own)
            except Exception as exc:  # noqa: BLE001
                row["graph_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    except Exception as exc:  # noqa: BLE001 - reported for this mode (a fault also ends this process)
        row["error"] = f"{type(exc).__name__}: {str(exc)[:500]}"
    finally:
        try:
            leave()
        except Exception:  # noqa: BLE001 - a faulted context fails here too; the error is recorded above
            pass
    return row


def _child(family, mode, args, refs_path: Path, gems_exclude=()) -> dict:
    """run_mode in a fresh process; its row, or the reason there is none."""
    # A child started before the deadline may finish past it, by at most a minute.
    timeout = 300 if DEADLINE is None else max(30, int(DEADLINE - time.time()) + 60)
    with tempfile.TemporaryDirectory() as tmp:
        row_path = Path(tmp) / "row.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--one", family, mode, "--row-out", str(row_path),
               "--refs", str(refs_path), "--device", args["device"], "--patch-policy", args["policy"]]
        cmd += ["--tiny"] * args["tiny"] + ["--quick"] * args["quick"]
        if gems_exclude:
            cmd += ["--gems-exclude", *gems_exclude]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                  env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout} s"}
        if row_path.exists():
            return json.loads(row_path.read_text())
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-6:]
        return {"error": f"exit code {proc.returncode}: " + " | ".join(tail)[-600:]}


def run_family(family, device, backend, tiny, quick, policy) -> dict:
    cfg = TINY if tiny else FULL
    out = {"config": cfg, "prefill": 8 if tiny else 2048, "decode_batch": 2 if tiny else 16, "modes": {}}
    args = {"device": device, "policy": policy, "tiny": tiny, "quick": quick}
    eager_ms = {}
    with tempfile.TemporaryDirectory() as tmp:
        refs = Path(tmp) / "references.pt"
        for mode in MODES:
            if DEADLINE is not None and time.time() > DEADLINE:
                out["modes"][mode] = {"skipped": "time budget of the part spent (--part-budget-s)"}
                continue
            package = MODE_PACKAGES.get(mode)
            if package and importlib.util.find_spec(package) is None:
                row = {"skipped": f"ModuleNotFoundError: No module named {package!r}"}
            elif mode == "gems" and GEMS_FAILED:
                # use_gems() faulted on an earlier model of this run: straight to the retry, said so
                row = _child(family, mode, args, refs, gems_exclude=("mul",))
                row["gems_full_failed"] = f"not retried here; on {GEMS_FAILED[0]}: {GEMS_FAILED[1]}"
            else:
                row = _child(family, mode, args, refs)
            failed = "error" in row or "graph_error" in row or not all(row.get("logits_finite", {True: True}).values())
            if mode == "gems" and failed and "gems_full_failed" not in row:
                first = row.get("error") or row.get("graph_error") or "logits not finite (NaN or inf)"
                GEMS_FAILED[:] = [family, first[:200]]
                row = _child(family, mode, args, refs, gems_exclude=("mul",))
                row["gems_full_failed"] = first
            if mode == "eager":
                eager_ms = dict(row.get("ms", {}))
            row["speedup"] = {k: eager_ms[k] / v for k, v in row.get("ms", {}).items() if k in eager_ms and v}
            out["modes"][mode] = row
            print(f"models {family} {mode}: " + ", ".join(f"{k} {v:.3f} ms ({row['speedup'].get(k, 0):.2f}x)"
                                                           for k, v in row.get("ms", {}).items())
                  + (f" [{row.get('error') or row.get('graph_error')}]" if row.get("error") or row.get("graph_error")
                     else "") + (f" (use_gems() failed first: {row['gems_full_failed'][:200]})"
                                 if row.get("gems_full_failed") else ""), flush=True)
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

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="writes DIR/bench_model.json")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny models (the CPU path through Triton's interpreter)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--patch-policy", default="all", choices=("verified", "all"))
    ap.add_argument("--models", nargs="*", default=list(CLASSES), choices=list(CLASSES))
    ap.add_argument("--one", nargs=2, metavar=("FAMILY", "MODE"), help=argparse.SUPPRESS)  # a child process
    ap.add_argument("--row-out", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--refs", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--gems-exclude", nargs="*", default=[], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from kernelgen.backends import get_backend

    backend = "cuda" if args.device == "cuda" else "interpreter"
    get_backend(backend).prepare()
    if args.one:
        row = run_mode(*args.one, args.device, backend, args.tiny, args.quick, args.patch_policy, args.refs,
                       tuple(args.gems_exclude))
        args.row_out.write_text(json.dumps(row, default=str))
        return
    if args.out is None:
        ap.error("--out is required")
    result = part_models(args.device, backend, args.tiny, args.quick, args.patch_policy, args.models)
    result["command"] = "python benchmarks/bench_model.py " + " ".join(sys.argv[1:])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_model.json").write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {args.out / 'bench_model.json'}")


if __name__ == "__main__":
    main()
