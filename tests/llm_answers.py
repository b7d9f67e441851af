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
description = """Cross entropy of each row of logits [M, N] against its integer class target: \
logsumexp(row) - row[target]; rows whose target is ignore_index give 0."""
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


GN_REQUEST = "group norm over channels of a [batch, channels, length] tensor with a learned weight and bias"

GN_KERNEL = '''import torch
import triton
import triton.language as tl


@triton.jit(do_not_specialize=["eps"])
def _group_norm_fwd(x_ptr, w_ptr, b_ptr, y_ptr, C, L, G, stride_b, stride_c, stride_l, eps,
                    BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    b = pid // G
    g = pid % G
    cg = C // G
    size = cg * L
    x_base = x_ptr + b * stride_b + g * cg * stride_c
    y_base = y_ptr + b * C * L + g * cg * L  # y is contiguous [B, C, L]
    # Pass 1: mean; pass 2: variance around it (two passes keep float32 accurate for large groups).
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, size, BLOCK):
        i = start + tl.arange(0, BLOCK)
        mask = i < size
        x = tl.load(x_base + (i // L) * stride_c + (i % L) * stride_l, mask=mask, other=0.0).to(tl.float32)
        acc += x
    mean = tl.sum(acc, axis=0) / size
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, size, BLOCK):
        i = start + tl.arange(0, BLOCK)
        mask = i < size
        x = tl.load(x_base + (i // L) * stride_c + (i % L) * stride_l, mask=mask, other=0.0).to(tl.float32)
        d = tl.where(mask, x - mean, 0.0)
        acc += d * d
    rstd = 1.0 / tl.sqrt(tl.sum(acc, axis=0) / size + eps)
    for start in range(0, size, BLOCK):
        i = start + tl.arange(0, BLOCK)
        mask = i < size
        c = g * cg + i // L
        x = tl.load(x_base + (i // L) * stride_c + (i % L) * stride_l, mask=mask, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + c, mask=mask, other=1.0).to(tl.float32)
        bias = tl.load(b_ptr + c, mask=mask, other=0.0).to(tl.float32)
        y = (x - mean) * rstd * w + bias
        tl.store(y_base + i, y.to(y_ptr.dtype.element_ty), mask=mask)


def group_norm(x, weight, bias, num_groups, eps=1e-5, max_block=4096):
    B, C, L = x.shape
    y = torch.empty((B, C, L), dtype=x.dtype, device=x.device)
    if B == 0 or C == 0 or L == 0:
        return y
    block = min(triton.next_power_of_2((C // num_groups) * L), max_block)
    _group_norm_fwd[(B * num_groups,)](x, weight, bias, y, C, L, num_groups, x.stride(0), x.stride(1),
                                       x.stride(2), eps, BLOCK=block)
    return y
'''

_GN_SPEC = '''name = "group_norm"
description = """Group normalization of x [B, C, L]: channels split into num_groups groups; each \
(batch, group) is normalized over its channels and positions, then scaled by weight[c] and shifted by bias[c]."""
tags = ["norm", "normalization", "group norm", "groupnorm"]
family = "norm"
reference = """
def reference(x, weight, bias, num_groups, eps):
    return F.group_norm(x, num_groups, weight, bias, eps)
"""
dtypes = ["float32"]

[signature]
function = "group_norm"
outputs = ["y"]

[[inputs]]
name = "x"
shape = ["B", "C", "L"]

[[inputs]]
name = "weight"
shape = ["C"]

[[inputs]]
name = "bias"
shape = ["C"]

[[inputs]]
name = "num_groups"
kind = "int"
value = 2

[[inputs]]
name = "eps"
kind = "float"
value = 1e-5

[shapes]
{row_col}test = [{{ B = 2, C = 4, L = 10 }}, {{ B = 3, C = 6, L = 33 }}]
bench = [{{ B = 32, C = 256, L = 4096 }}]

[model]
bytes = "2 * B * C * L * elem + 2 * C * elem"
flops = "8 * B * C * L"
'''
GN_SPEC_NO_DIMS = _GN_SPEC.format(row_col="")  # row_dim/col_dim default to M/N, which it has not
GN_SPEC = _GN_SPEC.format(row_col='row_dim = "B"\ncol_dim = "L"\n')

# First answer to the spec prompt: only the kernel (the model forgot the spec), with a usage block.
GN_ANSWER_KERNEL_ONLY = f"""Group norm reduces over (C / G) * L elements per (batch, group), so one program per
(batch, group) streams its elements three times: mean, variance, then the normalized output.

```python
{GN_KERNEL}```

Example:

```python
y = group_norm(torch.randn(2, 4, 10), torch.ones(4), torch.zeros(4), 2)
```
"""
# Second answer: the spec, but with the default row/column dims, which name no dim of [B, C, L].
GN_ANSWER_NO_DIMS = f"""Sorry about that. Here is spec.toml:

```toml
{GN_SPEC_NO_DIMS}```

and the kernel again:

```py
{GN_KERNEL}```
"""
# Third answer: the kernel first, then the spec with row_dim and col_dim, under list items.
GN_ANSWER = f"""Understood: the verifier varies `row_dim` and `col_dim`, so they must be dims of the inputs.

1. kernel.py (unchanged):

   ```python
{indent(GN_KERNEL, 3)}   ```

2. spec.toml, with `row_dim = "B"` (independent batches) and `col_dim = "L"` (each group runs along L):

   ```toml
{indent(GN_SPEC, 3)}   ```
"""
