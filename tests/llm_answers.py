"""Scripted LLM answers written the way a strong code model writes them: prose, several fenced blocks in
varying order, ```py fences, an excerpt indented under a list item before the full file, a usage snippet
after it. The cross-entropy kernel is a real, correct Triton kernel; the first spec's reference is broken
(its int64 targets get the default integer fill, in [-1000, 1000), out of range for the classes)."""

from __future__ import annotations

CE_REQUEST = "per-row cross entropy loss of logits against integer class targets"

CE_KERNEL = '''import torch
import triton
import triton.language as tl


@triton.jit
def _cross_entropy_fwd(logits_ptr, target_ptr, loss_ptr, stride_row, stride_col, stride_t, N, ignore_index,
                       BLOCK_N: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = logits_ptr + row * stride_row
    # Online log-sum-exp: a running max and a running sum per lane, rescaled when the max grows.
    m = tl.full([BLOCK_N], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK_N], dtype=tl.float32)
    for start in range(0, N, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        x = tl.load(base + cols * stride_col, mask=cols < N, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, x)
        m_safe = tl.where(m_new > float("-inf"), m_new, 0.0)  # lanes with no column yet: no inf - inf
        s = s * tl.exp(m - m_safe) + tl.exp(x - m_safe)
        m = m_new
    row_max = tl.max(m, axis=0)
    lse = row_max + tl.log(tl.sum(s * tl.exp(m - row_max), axis=0))
    t = tl.load(target_ptr + row * stride_t)
    valid = (t != ignore_index) & (t >= 0) & (t < N)
    x_t = tl.load(base + t * stride_col, mask=valid, other=0.0).to(tl.float32)
    loss = tl.where(valid, lse - x_t, 0.0)
    tl.store(loss_ptr + row, loss.to(loss_ptr.dtype.element_ty))


def cross_entropy(logits, target, ignore_index=-100, max_block=4096):
    M, N = logits.shape
    loss = torch.empty((M,), dtype=logits.dtype, device=logits.device)
    if M == 0:
        return loss
    block = min(triton.next_power_of_2(max(N, 1)), max_block)
    _cross_entropy_fwd[(M,)](logits, target, loss, logits.stride(0), logits.stride(1), target.stride(0), N,
                             ignore_index, BLOCK_N=block)
    return loss
'''

_CE_SPEC_HEAD = '''name = "cross_entropy"
description = "Cross entropy of each row of logits [M, N] against its integer class target: logsumexp(row) - row[target]; rows whose target is ignore_index give 0."
tags = ["loss", "cross entropy", "log softmax", "classification", "row"]
family = "loss"
reference = """
def reference(logits, target, ignore_index):
    return F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="none")
"""
dtypes = ["float32", "float16"]

[signature]
function = "cross_entropy"
outputs = ["loss"]

[[inputs]]
name = "logits"
shape = ["M", "N"]
dtype = "input"

[[inputs]]
name = "target"
shape = ["M"]
dtype = "int64"
'''
_CE_SPEC_TAIL = '''
[[inputs]]
name = "ignore_index"
kind = "int"
value = -100

[shapes]
{row_col}test = [{{ M = 4, N = 10 }}, {{ M = 3, N = 300 }}]
bench = [{{ M = 4096, N = 32000 }}, {{ M = 8192, N = 128256 }}]

[model]
bytes = "M * N * elem + M * 8 + M * elem"
flops = "3 * M * N"
'''
# The first spec: the targets carry no fill, so they get arbitrary integers and the reference raises.
CE_SPEC_BROKEN = _CE_SPEC_HEAD + _CE_SPEC_TAIL.format(row_col="")
# The repaired spec: class indices in [0, N), some of them the ignore_index.
CE_SPEC_FIXED = (_CE_SPEC_HEAD + 'fill = "index"\nhigh = "N"\nsentinel = -100\n'
                 + _CE_SPEC_TAIL.format(row_col='row_dim = "M"\ncol_dim = "N"\n'))


def indent(text: str, spaces: int) -> str:
    return "".join((" " * spaces + ln if ln.strip() else ln) for ln in text.splitlines(keepends=True))


# Spec prompt answer: prose, an excerpt with @triton.jit indented under a list item, the full kernel in a
# ```py fence, the spec after it, then a usage snippet.
CE_ANSWER_BROKEN = f"""Cross entropy over the class dimension is a row-wise reduction: each row needs the
log-sum-exp of its N logits and the logit of its target class.

**Plan**

1. Stream the row in blocks with an online log-sum-exp, so any N works:

   ```python
   @triton.jit
   def _lse_step(m, s, x):
       m_new = tl.maximum(m, x)
       return m_new, s * tl.exp(m - m_new) + tl.exp(x - m_new)
   ```

2. The loss of a row is `lse - logits[row, target[row]]`; ignored rows give 0.

Here is the complete `kernel.py`:

```py
{CE_KERNEL}```

And the spec:

```toml
{CE_SPEC_BROKEN}```

Usage:

```python
import torch
loss = cross_entropy(torch.randn(4, 10, device="cuda"), torch.randint(0, 10, (4,), device="cuda"))
```

The kernel computes in float32 and casts once at the store.
"""

# Spec repair answer: the kernel first this time, then the corrected spec, fenced under list items.
CE_ANSWER_FIXED = f"""You're right: the targets had no fill, so they were drawn from [-1000, 1000) and most
of them are not valid class indices for N classes; `F.cross_entropy` rejects them. The fix is in the spec:

- the targets are class indices: `fill = "index"` with `high = "N"`, and `sentinel = -100` so that the
  ignore_index path is exercised too;
- the kernel itself was fine and is unchanged:

  ```python
{indent(CE_KERNEL, 2)}  ```

- the corrected spec:

  ```toml
{indent(CE_SPEC_FIXED, 2)}  ```

With these inputs every target is in range or ignored, and the reference runs on all the shapes.
"""
