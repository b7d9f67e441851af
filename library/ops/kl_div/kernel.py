"""Kullback-Leibler divergence, pointwise l = xlogy(t, t) - t * x (t * log(t), taken as 0 where t = 0, minus
t * x) for a target of probabilities, or l = exp(t) * (t - x) for a target of log-probabilities (log_target);
loss = sum(l) / numel (reduction "mean") or sum(l) ("sum": F.kl_div's "batchmean" divides that by the batch
size in Python, after ATen).

Eager PyTorch (a composite op) runs xlogy, a multiply, a subtract and the reduction as separate kernels,
each writing a full-size temporary; here both tensors are read once. Up to SINGLE_PROGRAM_MAX elements one
program does everything (one launch, what decode-size calls need); above it, a grid of at most
MAX_PROGRAMS programs each sums a fixed set of blocks into a float32 partial, and one small program sums
the partials in order and scales them. No atomics: the same inputs always give the same bits. Arithmetic
is in float32; the loss is cast once, to the input's dtype as ATen returns it.

Inputs of any shape are read as rows [M, N] (a view, never a copy): contiguous ones as one flat range,
others (strided rows, a transposed matrix) through their row and column strides.
"""

import torch
import triton
import triton.language as tl


# Host-side arithmetic in plain Python: triton.next_power_of_2 and triton.cdiv are constexpr functions
# whose calls from the host cost about 10 us each, more than a small kernel takes on the GPU.
def _next_power_of_2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


# One program, one launch, up to SINGLE_PROGRAM_MAX elements, in at most two blocks of SINGLE_BLOCK: a
# block is one round of loads (32 values per thread at 8 warps, all issued before the first is used),
# so a decode-size call waits for memory about twice, where a second launch would cost more.
SINGLE_PROGRAM_MAX = 16384
SINGLE_BLOCK = 8192
MAX_PROGRAMS = 1024  # partial sums of the two-kernel path: about 8 programs of 8 warps per SM on an H100
WARPS = 8
REDUCTIONS = ("mean", "sum")


@triton.jit(do_not_specialize=["scale"])
def _kl_div_blocks(x_ptr, t_ptr, out_ptr, numel, N, stride_x_row, stride_x_col, stride_t_row, stride_t_col, scale,
                   BLOCK: tl.constexpr, FLAT: tl.constexpr, LOG_TARGET: tl.constexpr, FINAL: tl.constexpr):
    pid = tl.program_id(0)
    step = tl.num_programs(0).to(tl.int64) * BLOCK
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(pid.to(tl.int64) * BLOCK, numel, step):
        offsets = start + tl.arange(0, BLOCK)
        mask = offsets < numel
        if FLAT:
            x_offsets = offsets
            t_offsets = offsets
        else:
            row = offsets // N
            col = offsets - row * N
            x_offsets = row * stride_x_row + col * stride_x_col
            t_offsets = row * stride_t_row + col * stride_t_col
        x = tl.load(x_ptr + x_offsets, mask=mask, other=0.0).to(tl.float32)
        t = tl.load(t_ptr + t_offsets, mask=mask, other=0.0).to(tl.float32)
        if LOG_TARGET:
            loss = tl.exp(t) * (t - x)
            loss = tl.where(mask, loss, 0.0)  # a masked lane has t = 0: exp(0) * (0 - 0) is 0 anyway
        else:
            # xlogy(t, t): 0 where t == 0 (masked lanes too; log(1) keeps log(0) out of it), NaN for a NaN or
            # negative t as in ATen
            loss = t * tl.log(tl.where(t == 0.0, 1.0, t)) - t * x
        acc += loss
    total = tl.sum(acc, axis=0)
    if FINAL:  # one program covered everything: the loss itself
        tl.store(out_ptr, (total * scale).to(out_ptr.dtype.element_ty))
    else:
        tl.store(out_ptr + pid, total)


@triton.jit(do_not_specialize=["scale"])
def _sum_partials(partial_ptr, out_ptr, programs, scale, BLOCK: tl.constexpr):
    offsets = tl.arange(0, BLOCK)
    partial = tl.load(partial_ptr + offsets, mask=offsets < programs, other=0.0)
    tl.store(out_ptr, (tl.sum(partial, axis=0) * scale).to(out_ptr.dtype.element_ty))


FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _as_rows(t, name):
    if t.dim() == 2:
        return t
    try:
        return t.view(1, 1) if t.dim() == 0 else t.view(-1, t.shape[-1])
    except RuntimeError:
        raise ValueError(f"kl_div: {name}'s leading dims cannot be viewed as rows without a copy") from None


def kl_div(input, target, *, reduction="mean", log_target=False):
    """Mean (or, with reduction="sum", the sum) over all elements of target * (log(target) - input), or of
    exp(target) * (target - input) with log_target. input (log-probabilities) and target: float32/float16/
    bfloat16 tensors of one shape and dtype (any layout that views as rows). Returns a 0-dim tensor in that
    dtype; the mean of no elements is NaN, as in PyTorch."""
    if not isinstance(input, torch.Tensor) or input.dtype not in FLOAT_DTYPES:
        raise TypeError(f"kl_div: input must be a float32/float16/bfloat16 tensor, "
                        f"got {getattr(input, 'dtype', type(input))}")
    if not isinstance(target, torch.Tensor) or target.dtype != input.dtype:
        raise TypeError(f"kl_div: target must be a tensor of the input's dtype {input.dtype}, "
                        f"got {getattr(target, 'dtype', type(target))}")
    if target.shape != input.shape or target.device != input.device:
        raise ValueError(f"kl_div: target {tuple(target.shape)} on {target.device} must match input "
                         f"{tuple(input.shape)} on {input.device}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"kl_div: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    x = _as_rows(input, "input")
    t = _as_rows(target, "target")
    numel = input.numel()
    N = x.shape[1]
    if reduction == "sum":
        scale = 1.0
    else:
        scale = 1.0 / numel if numel else float("nan")
    log_target = bool(log_target)
    out = torch.empty((), dtype=input.dtype, device=input.device)
    flat = input.is_contiguous() and target.is_contiguous()
    per_thread = 16 // input.element_size()  # 16 bytes per thread per load
    if numel <= SINGLE_PROGRAM_MAX:
        block = min(SINGLE_BLOCK, max(per_thread * 32, _next_power_of_2(numel)))
        warps = max(1, min(WARPS, block // (per_thread * 32)))
        _kl_div_blocks[(1,)](x, t, out, numel, N, x.stride(0), x.stride(1), t.stride(0), t.stride(1), scale,
                             BLOCK=block, FLAT=flat, LOG_TARGET=log_target, FINAL=True,
                             num_warps=warps)
        return out
    block = per_thread * 32 * WARPS
    programs = min(MAX_PROGRAMS, (numel + block - 1) // block)
    partial = torch.empty((programs,), dtype=torch.float32, device=input.device)
    _kl_div_blocks[(programs,)](x, t, partial, numel, N, x.stride(0), x.stride(1), t.stride(0), t.stride(1), 1.0,
                                BLOCK=block, FLAT=flat, LOG_TARGET=log_target, FINAL=False, num_warps=WARPS)
    _sum_partials[(1,)](partial, out, programs, scale, BLOCK=MAX_PROGRAMS, num_warps=4)
    return out


def aten_kl_div(self, target, reduction=1, log_target=False):
    """aten::kl_div: mean (1) and sum (2, also what F.kl_div's "batchmean" calls) of an input and a target of
    one shape and float dtype, log_target or not; no reduction (0), broadcasting, mixed dtypes and inputs
    that do not view as rows go to ATen."""
    if reduction not in (1, 2) or not isinstance(self, torch.Tensor) or not isinstance(target, torch.Tensor):
        return NotImplemented
    if self.dtype not in FLOAT_DTYPES or target.dtype != self.dtype or target.shape != self.shape:
        return NotImplemented
    try:
        return kl_div(self, target, reduction=REDUCTIONS[reduction - 1], log_target=log_target)
    except ValueError:
        return NotImplemented
