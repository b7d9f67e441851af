"""Launch-parameter sweep of the decode_attention op (flash-decoding) on a GPU, next to PyTorch's SDPA.

Shapes: the decode step of an 8B-class Llama (32 query heads, 8 kv heads, head dim 128, bfloat16, one new
token): batch 16 over a 2048-position cache (the main shape), batch 16 over 8192, and batch 1 over 2048.

Every config is first checked against F.scaled_dot_product_attention(enable_gqa=True) on the shape (max
abs error vs a float32 SDPA, bfloat16 tolerance), then timed as the GPU time of one call replayed from a
CUDA graph after an L2 flush (benchmarks/bench_launch_models.py's graph_device_us). Next to it: SDPA with
the default backend choice and, where selectable, cuDNN, flash and memory-efficient attention. Fraction of
copy bandwidth = (K + V + Q + O bytes) / time / the device's measured copy bandwidth.

The sweep is bounded: stage 1 tries every (block_s, num_warps, num_stages) on the main shape at the
default split target; stage 2 tries split targets (programs per call) on its 4 best; stage 3 the broadcast
product (use_dot=False) on the best; the other shapes then get the 6 best configs and the default. A
config that fails to compile or run is reported, not fatal; past --budget-s the rest is skipped (and said).

    python benchmarks/sweep_decode_attention.py --out sweep.json
    python benchmarks/sweep_decode_attention.py --device cpu --tiny --out sweep.json   # interpreter, checks only
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
import time
from pathlib import Path

if "--device" in sys.argv and sys.argv[sys.argv.index("--device") + 1] == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported

sys.path.insert(0, str(Path(__file__).resolve().parent))

MAIN = dict(B=16, Hq=32, Hkv=8, S=2048, D=128)
OTHERS = [dict(B=16, Hq=32, Hkv=8, S=8192, D=128), dict(B=1, Hq=32, Hkv=8, S=2048, D=128)]
TINY_MAIN = dict(B=2, Hq=4, Hkv=1, S=300, D=32)
TINY_OTHERS = [dict(B=1, Hq=4, Hkv=2, S=100, D=16)]
BLOCK_S = (64, 128, 256)
WARPS = (2, 4, 8)
STAGES = (1, 2, 3)
TARGETS = (132, 264, 528, 1056)  # programs per call: 1, 2, 4, 8 waves of 132 SMs
TOLERANCE = 2e-2  # bfloat16 output against float32 SDPA


def _inputs(shape, dtype, device, seed=0):
    import torch

    g = torch.Generator(device="cpu").manual_seed(seed)
    B, Hq, Hkv, S, D = (shape[k] for k in ("B", "Hq", "Hkv", "S", "D"))
    q = torch.randn(B, Hq, 1, D, generator=g).to(device=device, dtype=dtype)
    k = torch.randn(B, Hkv, S, D, generator=g).to(device=device, dtype=dtype)
    v = torch.randn(B, Hkv, S, D, generator=g).to(device=device, dtype=dtype)
    return q, k, v


def _bytes(shape, elem) -> int:
    return (2 * shape["B"] * shape["Hkv"] * shape["S"] * shape["D"] + 2 * shape["B"] * shape["Hq"] * shape["D"]) * elem


def _sdpa_variants(device):
    """name -> a function of (q, k, v) for SDPA's default choice and each backend that can be forced."""
    import torch.nn.functional as F

    def plain(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)

    out = {"sdpa (default)": plain}
    if device == "cpu":
        return out
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:
        return out
    for name in ("CUDNN_ATTENTION", "FLASH_ATTENTION", "EFFICIENT_ATTENTION"):
        backend = getattr(SDPBackend, name, None)
        if backend is None:
            continue

        def forced(q, k, v, backend=backend):
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)

        out[f"sdpa {name.lower()}"] = forced
    return out


class Sweep:
    def __init__(self, args):
        import torch

        from kernelgen.library import get_op

        self.args, self.device = args, args.device
        self.gpu = args.device != "cpu"
        # the plain launcher (no per-backend tuning file): every launch parameter comes from the sweep
        self.attend = get_op("decode_attention").launcher()
        self.dtype = torch.bfloat16
        self.deadline = time.monotonic() + args.budget_s
        self.bandwidth = None
        if self.gpu:
            from kernelgen.backends import get_backend

            be = get_backend("cuda")
            be.prepare()
            self.bandwidth = be.copy_bandwidth()  # GB/s
        self.rows: list[dict] = []
        self.failed: list[dict] = []
        self.skipped = 0

    def time_us(self, fn) -> float | None:
        if not self.gpu:
            return None
        from bench_launch_models import graph_device_us

        return graph_device_us(fn, reps=self.args.reps)

    @staticmethod
    def _expected(q, k, v):
        import torch.nn.functional as F

        return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), enable_gqa=True)

    def measure(self, label, shape, fn, inputs, expected, config=None) -> dict | None:
        """Check fn against SDPA, then time it; a row, or None when it failed (recorded)."""
        if time.monotonic() > self.deadline:
            self.skipped += 1
            return None
        q, k, v = inputs
        try:
            out = fn(q, k, v)
            err = float((out.float() - expected).abs().max())
            if not math.isfinite(err) or err > TOLERANCE:
                raise AssertionError(f"max abs error {err:.3g} over {TOLERANCE}")
            us = self.time_us(lambda: fn(q, k, v))
        except Exception as exc:  # noqa: BLE001 - a config that does not compile or is wrong is reported
            self.failed.append({"label": label, "shape": shape, "config": config,
                                "error": f"{type(exc).__name__}: {str(exc)[:300]}"})
            return None
        row = {"label": label, "shape": shape, "config": config, "max_abs_err": err, "us": us}
        if us is not None:
            gbps = _bytes(shape, q.element_size()) / (us * 1e-6) / 1e9
            row.update(gbps=round(gbps, 1), of_copy_bandwidth=round(gbps / self.bandwidth, 3))
        self.rows.append(row)
        return row

    def ours(self, shape, inputs, expected, config) -> dict | None:
        label = "decode_attention " + (" ".join(f"{k}={v}" for k, v in config.items()) or "(launcher defaults)")
        return self.measure(label, shape, lambda q, k, v: self.attend(q, k, v, **config), inputs, expected, config)

    def run(self) -> dict:
        main = TINY_MAIN if self.args.tiny else MAIN
        others = TINY_OTHERS if self.args.tiny else OTHERS
        inputs = _inputs(main, self.dtype, self.device)
        expected = self._expected(*inputs)
        for name, fn in _sdpa_variants(self.device).items():
            self.measure(name, main, fn, inputs, expected)
        self.ours(main, inputs, expected, {})
        grid = list(itertools.product(BLOCK_S, WARPS, STAGES))
        if self.args.tiny:
            grid = grid[:: max(1, len(grid) // 4)]  # the interpreter: a few configs, for the code path
        stage1 = []
        for block_s, warps, stages in grid:
            config = dict(block_s=block_s, num_warps=warps, num_stages=stages)
            row = self.ours(main, inputs, expected, config)
            if row:
                stage1.append(row)
        best = _best(stage1, 4)
        for row, target in itertools.product(best, TARGETS):
            self.ours(main, inputs, expected, {**row["config"], "target_programs": target})
        ours_main = [r for r in self.rows if r["config"] is not None and r["shape"] == main]
        top = _best(ours_main, 1)
        if top:
            self.ours(main, inputs, expected, {**top[0]["config"], "use_dot": False})
        ours_main = [r for r in self.rows if r["config"] is not None and r["shape"] == main]
        finalists = [r["config"] for r in _best(ours_main, 6) if r["config"]] + [{}]
        for shape in others:
            inputs = _inputs(shape, self.dtype, self.device, seed=1)
            expected = self._expected(*inputs)
            for name, fn in _sdpa_variants(self.device).items():
                self.measure(name, shape, fn, inputs, expected)
            for config in finalists:
                self.ours(shape, inputs, expected, config)
        return self.report(main, [main] + others)

    def report(self, main, shapes) -> dict:
        import torch

        table = {}
        for shape in shapes:
            rows = [r for r in self.rows if r["shape"] == shape]
            table[_shape_name(shape)] = sorted(rows, key=lambda r: (r["us"] is None, r["us"] or 0.0))
        return {"device": torch.cuda.get_device_name() if self.gpu else "cpu (interpreter: no timings)",
                "torch": torch.__version__, "copy_bandwidth_gbps": self.bandwidth,
                "main_shape": _shape_name(main), "shapes": table, "failed": self.failed,
                "skipped_after_budget": self.skipped, "budget_s": self.args.budget_s}


def _best(rows, n):
    timed = [r for r in rows if r.get("us") is not None]
    return sorted(timed, key=lambda r: r["us"])[:n] if timed else rows[:n]


def _shape_name(shape) -> str:
    return " ".join(f"{k}={v}" for k, v in shape.items())


def _print(result) -> None:
    print(f"device: {result['device']}, copy bandwidth {result['copy_bandwidth_gbps'] or '-'} GB/s")
    for name, rows in result["shapes"].items():
        print(f"\n{name} (bfloat16, one query token)")
        print(f"{'us':>9} {'GB/s':>7} {'of copy':>7} {'err':>8}  what")
        for r in rows:
            us = f"{r['us']:.1f}" if r["us"] is not None else "-"
            print(f"{us:>9} {r.get('gbps', '-'):>7} {r.get('of_copy_bandwidth', '-'):>7} {r['max_abs_err']:8.1e}  "
                  f"{r['label']}")
    for f in result["failed"]:
        print(f"FAILED {f['label']} on {_shape_name(f['shape'])}: {f['error']}")
    if result["skipped_after_budget"]:
        print(f"{result['skipped_after_budget']} measurements skipped past the {result['budget_s']} s budget")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="JSON file to write")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes (the CPU path through Triton's interpreter)")
    ap.add_argument("--reps", type=int, default=50, help="graph replays per timing (the median is kept)")
    ap.add_argument("--budget-s", type=float, default=150.0, help="stop starting measurements after this long")
    args = ap.parse_args()
    start = time.monotonic()
    result = Sweep(args).run()
    result["wall_s"] = round(time.monotonic() - start, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    _print(result)
    print(f"\nwrote {args.out} ({result['wall_s']} s)")


if __name__ == "__main__":
    main()
