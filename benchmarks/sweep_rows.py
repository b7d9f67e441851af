"""Sweep num_warps for the row kernels of rms_norm at the benchmark shapes, next to a plain copy of the
same number of bytes (the ceiling a memory-bound kernel of that size can reach). Prints a table.

    python benchmarks/sweep_rows.py
"""

import functools

import torch
import triton
from triton.testing import do_bench

from kernelgen.library import get_op


def rotating_ms(fn, inputs) -> float:
    state = {"i": 0}

    def call():
        state["i"] += 1
        return fn(inputs[state["i"] % len(inputs)])

    return do_bench(call, return_mode="median")


def launch_rms(mod, w, y, M, N, warps, x):
    block = triton.next_power_of_2(N)
    mod._rms_norm_row[(M,)](x, w, y, N, 1, N, N, 1e-6, HAS_WEIGHT=True, BLOCK_N=block, num_warps=warps)


def main() -> None:
    mod = get_op("rms_norm").module()
    big = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    big2 = torch.empty_like(big)
    bw = 2 * big.numel() / (do_bench(functools.partial(big2.copy_, big), return_mode="median") * 1e-3) / 1e9
    del big, big2
    for M, N in [(4096, 4096), (16384, 8192)]:
        xs = [torch.randn(M, N, device="cuda", dtype=torch.bfloat16) for _ in range(4)]
        w = torch.randn(N, device="cuda", dtype=torch.bfloat16)
        y = torch.empty_like(xs[0])
        nbytes = 2 * M * N * 2
        copy_ms = rotating_ms(y.copy_, xs)
        print(f"{M}x{N} bf16: copy of the same bytes {copy_ms * 1e3:.1f} us = {nbytes / copy_ms / 1e6 / bw:.2f} of bw")
        for warps in (2, 4, 8, 16, 32):
            ms = rotating_ms(functools.partial(launch_rms, mod, w, y, M, N, warps), xs)
            print(f"  num_warps={warps:2d}: {ms * 1e3:7.1f} us  bw {(nbytes + 2 * N) / ms / 1e6 / bw:.2f}")


if __name__ == "__main__":
    main()
