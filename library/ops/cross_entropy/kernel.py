"""Cross entropy of logits [N, V] against class indices [N], mean over the rows whose target is not ignored:
loss = mean_i (logsumexp(x_i) - x_i[t_i]) over rows with t_i != ignore_index (the causal-LM loss).

Two launches. The row kernel reads each row of logits once: an online logsumexp over blocks of BLOCK_V
(running max m and running sum s of exp(x - m), rescaled when the max grows), plus one load of the target's
logit; it writes a float32 loss per row (0 for an ignored row) and whether the row counted. The mean kernel
(one program) sums both and divides. The logits are never upcast or copied: a [N, V] bf16 input is read
once, where `F.cross_entropy(logits.float(), ...)` writes and reads a float32 copy and a log-softmax.

Targets outside [0, V) other than ignore_index are ignored like it (PyTorch raises a device-side error for
them; a kernel cannot raise, and reading their logit would be out of bounds). With every row ignored the
mean is 0/0 = NaN, as in PyTorch. Arithmetic is in float32; the loss is cast once at the store.
"""

import torch
import triton
import triton.language as tl


# Host-side arithmetic in plain Python: triton.next_power_of_2 and triton.cdiv are constexpr functions
# whose calls from the host cost about 10 us each, more than a small kernel takes on the GPU.
def _next_power_of_2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


MAX_BLOCK_V = 8192  # logits per loop step (16 KB of bf16): few steps for a 32K vocabulary, no spills at 8 warps
MEAN_BLOCK = 1024  # row losses summed per step by the mean kernel


@triton.jit(do_not_specialize=["ignore_index"])
def _cross_entropy_rows(x_ptr, t_ptr, loss_ptr, valid_ptr, stride_x_row, stride_x_col, stride_t, V, ignore_index,
                        BLOCK_V: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_x_row
    offsets = tl.arange(0, BLOCK_V)
    x = tl.load(x_row + offsets * stride_x_col, mask=offsets < V, other=float("-inf")).to(tl.float32)
    m = tl.max(x, axis=0)
    s = tl.sum(tl.exp(x - m), axis=0)
    for start in range(BLOCK_V, V, BLOCK_V):
        offsets = start + tl.arange(0, BLOCK_V)
        x = tl.load(x_row + offsets * stride_x_col, mask=offsets < V, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, axis=0))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)
        m = m_new
    target = tl.load(t_ptr + row * stride_t)
    valid = (target != ignore_index) & (target >= 0) & (target < V)
    safe = tl.where(valid, target, 0).to(tl.int64)
    x_t = tl.load(x_row + safe * stride_x_col).to(tl.float32)
    loss = tl.where(valid, m + tl.log(s) - x_t, 0.0)
    tl.store(loss_ptr + row, loss)
    tl.store(valid_ptr + row, valid.to(tl.float32))


@triton.jit
def _mean_of_valid(loss_ptr, valid_ptr, out_ptr, N, BLOCK: tl.constexpr):
    total = tl.zeros([BLOCK], dtype=tl.float32)
    count = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, N, BLOCK):
        offsets = start + tl.arange(0, BLOCK)
        mask = offsets < N
        total += tl.load(loss_ptr + offsets, mask=mask, other=0.0)
        count += tl.load(valid_ptr + offsets, mask=mask, other=0.0)
    mean = tl.sum(total, axis=0) / tl.sum(count, axis=0)
    tl.store(out_ptr, mean.to(out_ptr.dtype.element_ty))


FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INDEX_DTYPES = (torch.int64, torch.int32)


def cross_entropy(logits, targets, ignore_index=-100, *, float32_loss=False, max_block=None):
    """Mean cross entropy of logits [N, V] (float32/float16/bfloat16, rows may be strided) against targets [N]
    (int64 or int32 class indices), skipping targets equal to ignore_index. Returns a 0-dim tensor in the
    logits' dtype (float32 with float32_loss=True, as after an upcast of the logits)."""
    if not isinstance(logits, torch.Tensor) or logits.dtype not in FLOAT_DTYPES:
        raise TypeError(f"cross_entropy: logits must be a float32/float16/bfloat16 tensor, "
                        f"got {getattr(logits, 'dtype', type(logits))}")
    if not isinstance(targets, torch.Tensor) or targets.dtype not in INDEX_DTYPES:
        raise TypeError(f"cross_entropy: targets must be an int64 or int32 tensor, "
                        f"got {getattr(targets, 'dtype', type(targets))}")
    if logits.dim() != 2 or targets.dim() != 1 or targets.shape[0] != logits.shape[0]:
        raise ValueError(f"cross_entropy: expected logits [N, V] and targets [N], got {tuple(logits.shape)} "
                         f"and {tuple(targets.shape)}")
    if targets.device != logits.device:
        raise ValueError(f"cross_entropy: targets are on {targets.device} but logits on {logits.device}")
    N, V = logits.shape
    out = torch.empty((), dtype=torch.float32 if float32_loss else logits.dtype, device=logits.device)
    row_loss = torch.empty((N,), dtype=torch.float32, device=logits.device)
    row_valid = torch.empty((N,), dtype=torch.float32, device=logits.device)
    if N > 0 and V > 0:
        block_v = min(_next_power_of_2(V), MAX_BLOCK_V, max_block or MAX_BLOCK_V)
        num_warps = max(1, min(8, block_v * logits.element_size() // (16 * 32)))
        _cross_entropy_rows[(N,)](logits, targets, row_loss, row_valid, logits.stride(0), logits.stride(1),
                                  targets.stride(0), V, int(ignore_index), BLOCK_V=block_v, num_warps=num_warps)
    else:
        N = 0  # no logits: every row is ignored, the mean is NaN
    _mean_of_valid[(1,)](row_loss, row_valid, out, N, BLOCK=MEAN_BLOCK, num_warps=4)
    return out


def aten_cross_entropy_loss(self, target, weight=None, reduction=1, ignore_index=-100, label_smoothing=0.0):
    """aten::cross_entropy_loss: the mean over class indices without weights or label smoothing; anything else
    (class probabilities as targets, weights, smoothing, sum or no reduction, a batch of sequences) goes to
    ATen."""
    if weight is not None or reduction != 1 or label_smoothing != 0.0:
        return NotImplemented
    if not isinstance(self, torch.Tensor) or self.dtype not in FLOAT_DTYPES or self.dim() != 2:
        return NotImplemented
    if not isinstance(target, torch.Tensor) or target.dtype not in INDEX_DTYPES or target.dim() != 1:
        return NotImplemented
    try:
        return cross_entropy(self, target, ignore_index)
    except (TypeError, ValueError):
        return NotImplemented
