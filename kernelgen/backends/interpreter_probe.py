"""A one-launch self-test of Triton's interpreter, run once per process by the interpreter backend.

Some Triton/NumPy pairs cannot run a loop whose bound is a kernel argument under the interpreter (seen:
Triton 3.6 with NumPy 2.4 fails with "only 0-dimensional arrays can be converted to Python scalars";
NumPy 2.2 works, and Triton 3.9 works with NumPy 2.5). Every looped kernel would then fail verification
with that cryptic message; the probe turns it into one clear error up front.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _sum_loop(x_ptr, out_ptr, N, BLOCK: tl.constexpr):
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, N, BLOCK):
        offsets = start + tl.arange(0, BLOCK)
        acc += tl.load(x_ptr + offsets, mask=offsets < N, other=0.0)
    tl.store(out_ptr, tl.sum(acc, axis=0))


def loops_work() -> str | None:
    """None when a runtime-bounded loop runs correctly, else why it does not."""
    x = torch.arange(1, 40, dtype=torch.float32)
    out = torch.empty(1)
    try:
        _sum_loop[(1,)](x, out, x.numel(), BLOCK=16)
    except Exception as exc:  # the interpreter wraps the real error; its text is what helps
        return str(exc).splitlines()[0][:200]
    if out.item() != float(x.sum()):
        return f"a looped reduction returned {out.item()} instead of {float(x.sum())}"
    return None
