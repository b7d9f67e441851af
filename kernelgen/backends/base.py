"""The `Backend` protocol: what kernelgen needs to know about a chip to run, verify and time kernels on it.

A new chip is one module defining a `Backend` subclass plus an entry point in the `kernelgen.backends`
group (see README, "Adding a backend"). Differences between chips are data here (dtypes, block limits,
tuning space), never forks of the kernel source.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:  # torch is imported where a backend runs kernels, not to list backends
    import torch


def triton_interpreting() -> bool | None:
    """True/False once Triton is imported (its mode is fixed then), None while it is not imported yet."""
    if "triton" not in sys.modules:
        return None
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


class Backend:
    name: ClassVar[str] = ""
    device: ClassVar[str] = "cpu"  # torch device type of the tensors kernels take
    dispatch_key: ClassVar[str] = "CPU"  # torch.library dispatch key the ATen overrides register on
    interpret: ClassVar[bool] = False  # run @triton.jit kernels through Triton's CPU interpreter
    measures_performance: ClassVar[bool] = True  # False: accuracy only, never a speed figure
    dtypes: ClassVar[tuple[str, ...]] = ("float32", "float16", "bfloat16")
    max_block_size: ClassVar[int] = 65536  # largest BLOCK a single program may hold in registers
    description: ClassVar[str] = ""

    def available(self) -> bool:
        raise NotImplementedError

    def prepare(self) -> None:
        """Make this process ready to run kernels here (called before the first kernel is imported).
        Raise BackendError with the reason when it cannot be."""

    def device_name(self) -> str:
        raise NotImplementedError

    def synchronize(self) -> None:
        pass

    def bench(self, fn: Callable[[], Any], warmup_ms: float = 25, rep_ms: float = 100) -> float:
        """Median wall time of fn() in milliseconds (host clock; GPU backends override with events)."""
        fn()
        self.synchronize()
        times = []
        deadline = time.perf_counter() + rep_ms / 1e3
        while len(times) < 5 or time.perf_counter() < deadline:
            t0 = time.perf_counter()
            fn()
            self.synchronize()
            times.append((time.perf_counter() - t0) * 1e3)
            if len(times) >= 1000:
                break
        return statistics.median(times)

    def copy_bandwidth(self) -> float:
        """Measured device-to-device copy bandwidth in GB/s, counting bytes read plus written."""
        raise NotImplementedError

    def tuning_space(self) -> list[dict[str, int]]:
        """Launch parameters worth trying on this backend (used when re-tuning an op for it)."""
        return [{"num_warps": w} for w in (4, 8)]

    def supports_dtype(self, dtype: torch.dtype | str) -> bool:
        name = dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")
        return name in self.dtypes

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "device": self.device,
            "dispatch_key": self.dispatch_key,
            "available": self.available(),
            "interpret": self.interpret,
            "dtypes": list(self.dtypes),
            "max_block_size": self.max_block_size,
            "description": self.description,
        }

    def __repr__(self) -> str:
        return f"<Backend {self.name}>"
