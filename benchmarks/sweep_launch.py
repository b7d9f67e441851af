"""Sweep the launch parameters of library ops and composed kernels at the large benchmark shapes (bf16).

Each launcher picks its tile and warp count from module-level names (`_num_warps`, `TILE_ELEMS`,
`BLOCK_N_MAX`, `BYTES_PER_THREAD`); this script overrides them one setting at a time, times the launcher
exactly as `bench_ops.py` does (do_bench median, rotated inputs), and prints each setting's time next to
the shipped default's. It checks nothing for accuracy: a setting worth keeping goes into the kernel source
and through `bench_ops.py` / `bench_composer.py`, which verify before they time.

    python benchmarks/sweep_launch.py --out DIR        # on the GPU machine: DIR/sweep_launch.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import torch
from triton.testing import do_bench

from kernelgen.library import get_op, load_kernel_module, merge_op
from kernelgen.verify.performance import input_sets, rotating

MIN_NUMEL = 4096 * 4096  # smaller shapes time the host, not the launch parameters


def warps(*counts: int) -> list[dict]:
    return [{"num_warps": w} for w in counts]


def grid(**choices: tuple) -> list[dict]:
    keys = list(choices)
    return [dict(zip(keys, values)) for values in itertools.product(*choices.values())]


# (library op name or "compose:<request>", settings to try)
TARGETS: list[tuple[str, list[dict]]] = [
    ("layer_norm", warps(4, 8, 16)),
    ("softmax", warps(4, 8, 16)),
    ("log_softmax", warps(4, 8, 16)),
    ("fused_add_rms_norm", warps(4, 8, 16)),
    ("silu_and_mul", grid(BLOCK_N_MAX=(1024, 2048, 4096), BYTES_PER_THREAD=(16, 32, 64))),
    ("gelu_and_mul", grid(BLOCK_N_MAX=(1024, 2048, 4096), BYTES_PER_THREAD=(16, 32, 64))),
    ("compose:bias add + gelu", grid(TILE_ELEMS=(2048, 4096, 8192), num_warps=(4, 8, 16))),
    ("compose:silu and mul", grid(TILE_ELEMS=(2048, 4096, 8192), num_warps=(4, 8, 16))),
    ("compose:add + relu", grid(TILE_ELEMS=(2048, 4096, 8192), num_warps=(4, 8, 16))),
    ("compose:clamp then square", grid(TILE_ELEMS=(2048, 4096, 8192), num_warps=(4, 8, 16))),
    ("compose:causal masked softmax", warps(1, 2, 4, 8, 16)),
    ("compose:scaled softmax", warps(2, 4, 8, 16)),
    ("compose:rms norm then silu", warps(2, 4, 8, 16)),
    ("compose:residual add then layernorm", warps(2, 4, 8, 16)),
    ("compose:mean over the last dim", warps(2, 4, 8, 16)),
]


def load_target(target: str, workdir: Path):
    """(spec, kernel module) of a library op or of a freshly composed kernel."""
    if target.startswith("compose:"):
        from kernelgen.frontends.composer import compose

        comp = compose(target.split(":", 1)[1])
        folder = merge_op(workdir, comp.spec, comp.kernel_source)
        return comp.spec, load_kernel_module(folder / "kernel.py", f"sweep_{comp.spec.name}")
    op = get_op(target)
    return op.spec, op.module()


def apply(module, setting: dict) -> dict:
    """Override module names for one setting; returns what to restore."""
    saved = {}
    for key, value in setting.items():
        name = "_num_warps" if key == "num_warps" else key
        saved[name] = getattr(module, name)
        setattr(module, name, (lambda *_a, _w=value, **_k: _w) if key == "num_warps" else value)
    return saved


def time_launcher(launcher, sets) -> float:
    return do_bench(rotating(launcher, sets), warmup=10, rep=60, return_mode="median")


def sweep(targets, workdir: Path) -> list[dict]:
    rows = []
    for target, settings in targets:
        spec, module = load_target(target, workdir)
        launcher = getattr(module, spec.function)
        for dims in spec.bench_shapes:
            sets = input_sets(spec, dims, "bfloat16", "cuda", 0)
            if max(a.numel() for a in sets[0] if isinstance(a, torch.Tensor)) < MIN_NUMEL:
                continue
            shape = "x".join(str(v) for v in dims.values())
            default_ms = time_launcher(launcher, sets)
            row = {"target": target, "shape": shape, "default_us": default_ms * 1e3, "settings": []}
            for setting in settings:
                saved = apply(module, setting)
                try:
                    ms = time_launcher(launcher, sets)
                    row["settings"].append({"setting": setting, "us": ms * 1e3})
                except Exception as exc:  # a setting that does not compile is a result, not a crash
                    row["settings"].append({"setting": setting, "error": str(exc).splitlines()[0][:160]})
                finally:
                    for name, value in saved.items():
                        setattr(module, name, value)
            timed = [s for s in row["settings"] if "us" in s]
            best = min(timed, key=lambda s: s["us"]) if timed else None
            row["best"] = best
            print(f"{target:40s} {shape:16s} default {row['default_us']:7.1f} us | " + "  ".join(
                f"{_label(s['setting'])}={s['us']:.1f}" if "us" in s else f"{_label(s['setting'])}=ERR"
                for s in row["settings"]) + (f" | best {_label(best['setting'])}" if best else ""), flush=True)
            rows.append(row)
    return rows


def _label(setting: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in setting.items())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--only", nargs="*", help="targets to sweep (default: all)")
    args = ap.parse_args()
    import tempfile

    targets = [t for t in TARGETS if not args.only or t[0] in args.only]
    t0 = time.time()
    rows = sweep(targets, Path(tempfile.mkdtemp(prefix="kernelgen-sweep-")))
    args.out.mkdir(parents=True, exist_ok=True)
    bundle = {"command": "python benchmarks/sweep_launch.py " + " ".join(sys.argv[1:]),
              "device": torch.cuda.get_device_name(), "torch": torch.__version__, "wall_s": time.time() - t0,
              "rows": rows}
    (args.out / "sweep_launch.json").write_text(json.dumps(bundle, indent=1))
    print(f"sweep: {len(rows)} target shapes in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
