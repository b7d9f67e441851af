"""GELU-and-mul, the gate of GeGLU MLPs (Gemma, T5 v1.1): y = gelu(a) * b, exact (erf) or tanh-approximate.

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
# (275.2 vs 279.5 us) and ties at 4096x4096, where it is still 4096 programs for 132 SMs.
BLOCK_N_MAX = 4096
BYTES_PER_THREAD = 32
APPROXIMATIONS = ("none", "tanh")


@triton.jit
def _gelu_and_mul_kernel(a_ptr, b_ptr, y_ptr, stride_a_row, stride_a_col, stride_b_row, stride_b_col, N,
                         APPROX_TANH: tl.constexpr, BLOCK_N: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offsets = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = offsets < N
    a = tl.load(a_ptr + row * stride_a_row + offsets * stride_a_col, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + row * stride_b_row + offsets * stride_b_col, mask=mask, other=0.0).to(tl.float32)
    if APPROX_TANH:
        # 0.5 * a * (1 + tanh(z)) == a * sigmoid(2z), z = sqrt(2/pi) * (a + 0.044715 a^3): no tanh needed
        z2 = 1.5957691216057308 * (a + 0.044715 * a * a * a)
        g = a / (1.0 + tl.exp(-z2))
    else:
        g = 0.5 * a * (1.0 + tl.erf(a * 0.7071067811865476))
    tl.store(y_ptr + row * N + offsets, (g * b).to(y_ptr.dtype.element_ty), mask=mask)


FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _num_warps(block_n: int, elem_size: int) -> int:
    return max(1, min(8, block_n * elem_size // (BYTES_PER_THREAD * 32)))


def _as_rows(t: torch.Tensor, name: str) -> torch.Tensor:
    if t.dim() == 2:
        return t
    try:
        return t.view(-1, t.shape[-1])
    except RuntimeError:
        raise ValueError(f"gelu_and_mul: the leading dims of {name} cannot be viewed as rows without a copy") from None


def gelu_and_mul(a, b=None, approximate="none", *, max_block=None):
    """gelu(a, approximate) * b for a, b of the same shape [..., N] and dtype (float32/float16/bfloat16);
    approximate is "none" (erf) or "tanh", as in torch.nn.functional.gelu.

    With b=None, a is x [..., 2N] and is split in halves: returns gelu(x[..., :N]) * x[..., N:], [..., N]."""
    if approximate not in APPROXIMATIONS:
        raise ValueError(f"gelu_and_mul: approximate must be 'none' or 'tanh', got {approximate!r}")
    if not isinstance(a, torch.Tensor) or a.dtype not in FLOAT_DTYPES:
        raise TypeError(f"gelu_and_mul: a must be a float32/float16/bfloat16 tensor, "
                        f"got {getattr(a, 'dtype', type(a))}")
    if a.dim() == 0:
        raise ValueError("gelu_and_mul: a must have at least one dimension")
    if b is None:
        if a.shape[-1] % 2:
            raise ValueError(f"gelu_and_mul: with b=None the last dim of a must be even (2N), got {a.shape[-1]}")
        rows = _as_rows(a, "a")
        half = a.shape[-1] // 2
        a2, b2, out_shape = rows[:, :half], rows[:, half:], tuple(a.shape[:-1]) + (half,)
    else:
        if not isinstance(b, torch.Tensor) or b.dtype not in FLOAT_DTYPES:
            raise TypeError(f"gelu_and_mul: b must be a float32/float16/bfloat16 tensor or None, "
                            f"got {getattr(b, 'dtype', type(b))}")
        if b.dtype != a.dtype:
            raise TypeError(f"gelu_and_mul: b must have a's dtype {a.dtype}, got {b.dtype}")
        if b.shape != a.shape:
            raise ValueError(f"gelu_and_mul: b must have a's shape {tuple(a.shape)}, got {tuple(b.shape)}")
        if b.device != a.device:
            raise ValueError(f"gelu_and_mul: b is on {b.device} but a is on {a.device}")
        a2, b2, out_shape = _as_rows(a, "a"), _as_rows(b, "b"), tuple(a.shape)
    y = torch.empty(out_shape, dtype=a.dtype, device=a.device)
    M, N = a2.shape
    if M == 0 or N == 0:
        return y
    block_n = min(_next_power_of_2(N), BLOCK_N_MAX, max_block or BLOCK_N_MAX)
    grid = (M, _cdiv(N, block_n))
    _gelu_and_mul_kernel[grid](a2, b2, y, a2.stride(0), a2.stride(1), b2.stride(0), b2.stride(1), N,
                               APPROX_TANH=approximate == "tanh", BLOCK_N=block_n,
                               num_warps=_num_warps(block_n, a.element_size()))
    return y
