"""Where the host time of one small launch goes: ATen vs our launcher vs a bare Triton launch, plus a cProfile
of the launcher. On a launch-bound input (rms_norm / softmax of 16x4096 bf16) the GPU work is negligible, so
wall time per call is host time.

    python benchmarks/launch_profile.py          # on the GPU machine; prints a table and the profile
"""

from __future__ import annotations

import cProfile
import pstats

import torch
import triton
from launch_overhead import host_us  # this folder: the same host timing as the launch overhead table

from kernelgen.library import get_op

F = torch.nn.functional


def main() -> None:
    M, N = 16, 4096
    x = torch.randn(M, N, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(N, device="cuda", dtype=torch.bfloat16)
    y = torch.empty_like(x)
    rms_module = get_op("rms_norm").module("cuda")
    rms_norm, softmax = rms_module.rms_norm, get_op("softmax").launcher("cuda")

    def bare_launch():  # the rms_norm kernel launched directly: Triton's own dispatch, no launcher Python
        rms_module._rms_norm_row[(M,)](x, w, y, N, 1, N, N, 1e-6, HAS_WEIGHT=True, BLOCK_N=N, num_warps=8)

    rows = [("ATen F.rms_norm", lambda: F.rms_norm(x, (N,), w, 1e-6)),
            ("kernelgen rms_norm launcher", lambda: rms_norm(x, w, 1e-6)),
            ("bare Triton launch of its kernel", bare_launch),
            ("torch.empty_like (the output)", lambda: torch.empty_like(x)),
            ("ATen torch.softmax", lambda: torch.softmax(x, -1)),
            ("kernelgen softmax launcher", lambda: softmax(x))]
    print(f"host time per call, {M}x{N} bf16, triton {triton.__version__}, torch {torch.__version__}")
    for name, fn in rows:
        print(f"  {name:34s} {host_us(fn, (), calls=3000):7.1f} us")
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(3000):
        rms_norm(x, w, 1e-6)
    torch.cuda.synchronize()
    profile.disable()
    pstats.Stats(profile).sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main()
