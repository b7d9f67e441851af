"""NVIDIA GPUs through Triton's compiler."""

from __future__ import annotations

import os
import sys

from kernelgen.backends.base import Backend, triton_interpreting
from kernelgen.errors import BackendError

_bandwidth_cache: dict[str, float] = {}


def _no_nvidia_driver() -> bool:
    """True when this Linux machine (or container, or WSL) has no NVIDIA driver, so no CUDA device: known
    without importing torch, which takes seconds (`kernelgen backends` on a CPU machine). Elsewhere: False,
    and torch decides."""
    if not sys.platform.startswith("linux"):
        return False
    return not any(os.path.exists(p) for p in ("/dev/nvidiactl", "/proc/driver/nvidia/version", "/dev/dxg"))


class CudaBackend(Backend):
    name = "cuda"
    device = "cuda"
    dispatch_key = "CUDA"
    description = "NVIDIA GPU through Triton"

    def available(self) -> bool:
        if _no_nvidia_driver():
            return False
        import torch

        return torch.cuda.is_available() and torch.version.hip is None and not triton_interpreting()

    def prepare(self) -> None:
        if triton_interpreting():
            raise BackendError("the cuda backend cannot run in a process with TRITON_INTERPRET=1")

    def device_name(self) -> str:
        import torch

        return torch.cuda.get_device_name()

    def synchronize(self) -> None:
        import torch

        torch.cuda.synchronize()

    def bench(self, fn, warmup_ms: float = 25, rep_ms: float = 100) -> float:
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))

    def copy_bandwidth(self) -> float:
        """Device-to-device copy of 1 GiB, bytes read + written over the median time; cached per device."""
        import torch

        key = self.device_name()
        if key not in _bandwidth_cache:
            n = 1 << 30
            src = torch.empty(n, dtype=torch.uint8, device="cuda").random_()
            dst = torch.empty_like(src)
            ms = self.bench(lambda: dst.copy_(src), warmup_ms=50, rep_ms=300)
            _bandwidth_cache[key] = 2 * n / (ms * 1e-3) / 1e9
            del src, dst
            torch.cuda.empty_cache()
        return _bandwidth_cache[key]

    def tuning_space(self) -> list[dict[str, int]]:
        return [{"num_warps": w} for w in (2, 4, 8, 16)]
