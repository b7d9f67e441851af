"""Huber loss: with d = |input - target|, l = 0.5 d^2 where d < delta, delta (d - 0.5 delta) elsewhere;
loss = sum(l) / numel (reduction "mean") or sum(l) ("sum").

Eager PyTorch writes the full-size elementwise loss to memory and reduces it in a second kernel; here both
tensors are read once. Up to SINGLE_PROGRAM_MAX elements one program does everything (one launch, what
decode-size calls need); above it, a grid of at most MAX_PROGRAMS programs each sums a fixed set of blocks
into a float32 partial, and one small program sums the partials in order and scales them. No atomics: the
same inputs always give the same bits. Arithmetic is in float32; the loss is cast once, to the input's
dtype as ATen returns it.

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


@triton.jit(do_not_specialize=["delta", "scale"])
def _huber_blocks(a_ptr, b_ptr, out_ptr, numel, N, stride_a_row, stride_a_col, stride_b_row, stride_b_col, delta,
                  scale, BLOCK: tl.constexpr, FLAT: tl.constexpr, FINAL: tl.constexpr):
    pid = tl.program_id(0)
    step = tl.num_programs(0).to(tl.int64) * BLOCK
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(pid.to(tl.int64) * BLOCK, numel, step):
        offsets = start + tl.arange(0, BLOCK)
        mask = offsets < numel
        if FLAT:
            a_offsets = offsets
            b_offsets = offsets
        else:
            row = offsets // N
            col = offsets - row * N
            a_offsets = row * stride_a_row + col * stride_a_col
            b_offsets = row * stride_b_row + col * stride_b_col
        a = tl.load(a_ptr + a_offsets, mask=mask, other=0.0).to(tl.float32)
        b = tl.load(b_ptr + b_offsets, mask=mask, other=0.0).to(tl.float32)
        d = tl.abs(a - b)  # masked lanes: d = 0, loss 0
        acc += tl.where(d < delta, 0.5 * d * d, delta * (d - 0.5 * delta))
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
        raise ValueError(f"huber_loss: {name}'s leading dims cannot be viewed as rows without a copy") from None


def huber_loss(input, target, delta=1.0, *, reduction="mean"):
    """Mean (or, with reduction="sum", the sum) of the Huber loss of input - target over all elements.
    input and target: float32/float16/bfloat16 tensors of one shape and dtype (any layout that views as
    rows); delta > 0. Returns a 0-dim tensor in that dtype; the mean of no elements is NaN, as in PyTorch."""
    if not isinstance(input, torch.Tensor) or input.dtype not in FLOAT_DTYPES:
        raise TypeError(f"huber_loss: input must be a float32/float16/bfloat16 tensor, "
                        f"got {getattr(input, 'dtype', type(input))}")
    if not isinstance(target, torch.Tensor) or target.dtype != input.dtype:
        raise TypeError(f"huber_loss: target must be a tensor of the input's dtype {input.dtype}, "
                        f"got {getattr(target, 'dtype', type(target))}")
    if target.shape != input.shape or target.device != input.device:
        raise ValueError(f"huber_loss: target {tuple(target.shape)} on {target.device} must match input "
                         f"{tuple(input.shape)} on {input.device}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"huber_loss: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if not delta > 0:
        raise ValueError(f"huber_loss: delta must be positive, got {delta!r}")
    a = _as_rows(input, "input")
    b = _as_rows(target, "target")
    numel = input.numel()
    N = a.shape[1]
    if reduction == "sum":
        scale = 1.0
    else:
        scale = 1.0 / numel if numel else float("nan")
    delta = float(delta)
    out = torch.empty((), dtype=input.dtype, device=input.device)
    flat = input.is_contiguous() and target.is_contiguous()
    per_thread = 16 // input.element_size()  # 16 bytes per thread per load
    if numel <= SINGLE_PROGRAM_MAX:
        block = min(SINGLE_BLOCK, max(per_thread * 32, _next_power_of_2(numel)))
        warps = max(1, min(WARPS, block // (per_thread * 32)))
        _huber_blocks[(1,)](a, b, out, numel, N, a.stride(0), a.stride(1), b.stride(0), b.stride(1), delta, scale,
                            BLOCK=block, FLAT=flat, FINAL=True, num_warps=warps)
        return out
    block = per_thread * 32 * WARPS
    programs = min(MAX_PROGRAMS, (numel + block - 1) // block)
    partial = torch.empty((programs,), dtype=torch.float32, device=input.device)
    _huber_blocks[(programs,)](a, b, partial, numel, N, a.stride(0), a.stride(1), b.stride(0), b.stride(1), delta,
                               1.0, BLOCK=block, FLAT=flat, FINAL=False, num_warps=WARPS)
    _sum_partials[(1,)](partial, out, programs, scale, BLOCK=MAX_PROGRAMS, num_warps=4)
    return out


def aten_huber_loss(self, target, reduction=1, delta=1.0):
    """aten::huber_loss: mean (1) and sum (2) of an input and a target of one shape and float dtype; no
    reduction (0), broadcasting, mixed dtypes, a delta ATen rejects and inputs that do not view as rows go
    to ATen."""
    if reduction not in (1, 2) or not isinstance(self, torch.Tensor) or not isinstance(target, torch.Tensor):
        return NotImplemented
    if self.dtype not in FLOAT_DTYPES or target.dtype != self.dtype or target.shape != self.shape:
        return NotImplemented
    try:
        return huber_loss(self, target, delta, reduction=REDUCTIONS[reduction - 1])
    except ValueError:
        return NotImplemented
