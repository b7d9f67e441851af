"""The first calls after `kernelgen.enable()` on CUDA: what a new machine pays once (Triton's compile on the
first call, the C++ plan replay's build waited for by the first plan recorded) and what a later process pays.

    rm -rf ~/.cache/kernelgen/lean_replay; python benchmarks/first_calls.py; python benchmarks/first_calls.py

Prints one JSON line: seconds for enable() and for each of four F.softmax calls at 16x4096 bf16 (synchronized),
whether the build was running when enable() returned, the module, and the calls served.
"""

import json
import time

import torch
import torch.nn.functional as F

import kernelgen
from kernelgen import lean_replay


def main() -> None:
    x = torch.randn(16, 4096, device="cuda", dtype=torch.bfloat16)
    out = {}
    t = time.perf_counter()
    kernelgen.enable()
    out["enable_s"] = time.perf_counter() - t
    out["building_after_enable"] = lean_replay._lock.locked()
    for i in range(4):
        torch.cuda.synchronize()
        t = time.perf_counter()
        F.softmax(x, -1)
        torch.cuda.synchronize()
        out[f"call{i + 1}_s"] = time.perf_counter() - t
    out["module"] = str(lean_replay.module())
    out["error"] = lean_replay._built.get("error")
    out["served"] = kernelgen.status()["cuda"]["calls"]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
