"""SiLU-and-mul, the gate of SwiGLU MLPs (Llama, Qwen, Mistral): y = silu(a) * b = a * sigmoid(a) * b.

Pointwise over rows. The grid is 2-D, rows x column blocks of BLOCK_N elements, so even a few long rows
spread over many programs; every element of a and b is read once and y written once. Inputs may be two
tensors a, b of the same shape, or one x [..., 2N] (b=None) split in halves a = x[..., :N], b = x[..., N:]
by views (the layout of a fused gate/up projection). Arithmetic is in float32; y is cast once at the store.
"""

import torch
import triton
import triton.language as tl


# Host-side arithmetic in plain Python: triton.next_power_of_2 and triton.cdiv are constexpr functions
# whose calls from the host cost about 10 us each, more than a small kernel takes on the GPU.
def _next_power_of_2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


# Column tile: up to 4096 elements, 32 bytes of each input per thread (8 warps for 16-bit data).
# Swept on the H100 (bf16, benchmarks/sweep_launch.py): 4096 beats 2048 by 1.5% at 16384x8192
# (274.8 vs 279.2 us) and ties at 4096x4096, where it is still 4096 programs for 132 SMs.
BLOCK_N_MAX = 4096
BYTES_PER_THREAD = 32


@triton.jit
def _silu_and_mul_kernel(a_ptr, b_ptr, y_ptr, stride_a_row, stride_a_col, stride_b_row, stride_b_col, N,
                         BLOCK_N: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offsets = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = offsets < N
    a = tl.load(a_ptr + row * stride_a_row + offsets * stride_a_col, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + row * stride_b_row + offsets * stride_b_col, mask=mask, other=0.0).to(tl.float32)
    y = a / (1.0 + tl.exp(-a)) * b  # exp(-a) = inf for very negative a gives -0, the right limit
    tl.store(y_ptr + row * N + offsets, y.to(y_ptr.dtype.element_ty), mask=mask)


FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _num_warps(block_n: int, elem_size: int) -> int:
    return max(1, min(8, block_n * elem_size // (BYTES_PER_THREAD * 32)))


def _as_rows(t: torch.Tensor, name: str) -> torch.Tensor:
    if t.dim() == 2:
        return t
    try:
        return t.view(-1, t.shape[-1])
    except RuntimeError:
        raise ValueError(f"silu_and_mul: the leading dims of {name} cannot be viewed as rows without a copy") from None


def silu_and_mul(a, b=None, *, max_block=None):
    """silu(a) * b for a, b of the same shape [..., N] and dtype (float32/float16/bfloat16).

    With b=None, a is x [..., 2N] and is split in halves: returns silu(x[..., :N]) * x[..., N:], [..., N]."""
    if not isinstance(a, torch.Tensor) or a.dtype not in FLOAT_DTYPES:
        raise TypeError(f"silu_and_mul: a must be a float32/float16/bfloat16 tensor, "
                        f"got {getattr(a, 'dtype', type(a))}")
    if a.dim() == 0:
        raise ValueError("silu_and_mul: a must have at least one dimension")
    if b is None:
        if a.shape[-1] % 2:
            raise ValueError(f"silu_and_mul: with b=None the last dim of a must be even (2N), got {a.shape[-1]}")
        rows = _as_rows(a, "a")
        half = a.shape[-1] // 2
        a2, b2, out_shape = rows[:, :half], rows[:, half:], tuple(a.shape[:-1]) + (half,)
    else:
        if not isinstance(b, torch.Tensor) or b.dtype not in FLOAT_DTYPES:
            raise TypeError(f"silu_and_mul: b must be a float32/float16/bfloat16 tensor or None, "
                            f"got {getattr(b, 'dtype', type(b))}")
        if b.dtype != a.dtype:
            raise TypeError(f"silu_and_mul: b must have a's dtype {a.dtype}, got {b.dtype}")
        if b.shape != a.shape:
            raise ValueError(f"silu_and_mul: b must have a's shape {tuple(a.shape)}, got {tuple(b.shape)}")
        if b.device != a.device:
            raise ValueError(f"silu_and_mul: b is on {b.device} but a is on {a.device}")
        a2, b2, out_shape = _as_rows(a, "a"), _as_rows(b, "b"), tuple(a.shape)
    # empty_like parses no shape/dtype/device arguments (about 1.5 us less per call on a small call); only
    # when y has a's shape and a is contiguous (its copy is contiguous, as y must be).
    if b is not None and a.is_contiguous():
        y = torch.empty_like(a)
    else:
        y = torch.empty(out_shape, dtype=a.dtype, device=a.device)
    M, N = a2.shape
    if M == 0 or N == 0:
        return y
    block_n = min(_next_power_of_2(N), BLOCK_N_MAX, max_block or BLOCK_N_MAX)
    grid = (M, _cdiv(N, block_n))
    _silu_and_mul_kernel[grid](a2, b2, y, a2.stride(0), a2.stride(1), b2.stride(0), b2.stride(1), N,
                               BLOCK_N=block_n, num_warps=_num_warps(block_n, a.element_size()))
    return y
