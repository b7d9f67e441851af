"""rotary_embedding (NeoX-style RoPE on q and k): every dtype against an upcast reference, edge shapes,
strided heads, grouped-query head counts, tables of another dtype, and bad input."""

import pytest
import torch

from kernelgen.library import get_op
from kernelgen.verify.guard import count_launches


def _reference(q, k, cos, sin):
    c, s = torch.cat((cos, cos), -1)[:, None, :], torch.cat((sin, sin), -1)[:, None, :]

    def rotate_half(x):
        x1, x2 = x.chunk(2, -1)
        return torch.cat((-x2, x1), -1)

    return q * c + rotate_half(q) * s, k * c + rotate_half(k) * s


def _tables(T, R, dtype=torch.float32):
    # Real RoPE tables: angle = position * inv_freq
    inv_freq = 1.0 / (10000 ** (torch.arange(R, dtype=torch.float64) / R))
    angles = torch.arange(T, dtype=torch.float64)[:, None] * inv_freq[None, :] + torch.rand(T, 1, dtype=torch.float64)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def test_rotary_embedding_matches_reference_on_every_dtype_and_edge_shape(assert_library_op_verifies):
    assert_library_op_verifies("rotary_embedding")


def test_rotary_embedding_grouped_query_heads_in_one_launch(interpreter):
    rope = get_op("rotary_embedding").launcher()
    T, Hq, Hk, D = 5, 6, 2, 32
    q, k = torch.randn(T, Hq, D, dtype=torch.bfloat16), torch.randn(T, Hk, D, dtype=torch.bfloat16)
    cos, sin = _tables(T, D // 2)  # float32 tables with bf16 q/k, as many models keep them
    with count_launches() as launches:
        q_out, k_out = rope(q, k, cos, sin)
    assert launches.total_launches == 1
    assert q_out.dtype == k_out.dtype == torch.bfloat16 and q_out.shape == q.shape and k_out.shape == k.shape
    q_ref, k_ref = _reference(q.double(), k.double(), cos.double(), sin.double())
    torch.testing.assert_close(q_out.double(), q_ref, atol=2e-2, rtol=1.6e-2)
    torch.testing.assert_close(k_out.double(), k_ref, atol=2e-2, rtol=1.6e-2)


def test_rotary_embedding_reads_heads_from_a_fused_qkv_buffer(interpreter):
    # q and k as views into one [T, Hq + 2 * Hk, D] projection output: token stride != heads * D.
    rope = get_op("rotary_embedding").launcher()
    T, Hq, Hk, D = 4, 4, 2, 16
    qkv = torch.randn(T, Hq + 2 * Hk, D)
    q, k = qkv[:, :Hq], qkv[:, Hq:Hq + Hk]
    cos, sin = _tables(T, D // 2)
    q_out, k_out = rope(q, k, cos, sin)
    q_ref, k_ref = _reference(q.double(), k.double(), cos.double(), sin.double())
    torch.testing.assert_close(q_out.double(), q_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(k_out.double(), k_ref, atol=1e-5, rtol=1e-5)


def test_rotary_embedding_with_small_tiles_matches_one_tile(interpreter):
    rope = get_op("rotary_embedding").launcher()
    T, Hq, Hk, D = 3, 9, 3, 16
    q, k = torch.randn(T, Hq, D), torch.randn(T, Hk, D)
    cos, sin = _tables(T, D // 2)
    small = rope(q, k, cos, sin, max_block=16)  # 2 heads per program
    whole = rope(q, k, cos, sin)
    for a, b in zip(small, whole):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_rotary_embedding_keeps_the_norm_of_each_rotated_pair(interpreter):
    # A rotation: (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin) keeps x1^2 + x2^2 per pair.
    rope = get_op("rotary_embedding").launcher()
    q, k = torch.randn(3, 2, 8, dtype=torch.float64).float(), torch.randn(3, 1, 8).float()
    cos, sin = _tables(3, 4)
    q_out, _ = rope(q, k, cos, sin)
    norm_in = q[..., :4] ** 2 + q[..., 4:] ** 2
    norm_out = q_out[..., :4] ** 2 + q_out[..., 4:] ** 2
    torch.testing.assert_close(norm_out, norm_in, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "args, exc, words",
    [
        ((torch.randn(2, 3, 8), torch.randn(2, 1, 8), torch.randn(2, 3), torch.randn(2, 4)), ValueError, "cos must"),
        ((torch.randn(2, 3, 7), torch.randn(2, 1, 7), torch.randn(2, 3), torch.randn(2, 3)), ValueError, "even"),
        ((torch.randn(2, 3, 8), torch.randn(3, 1, 8), torch.randn(2, 4), torch.randn(2, 4)), ValueError, "k must"),
        ((torch.randn(2, 3, 8), torch.randn(2, 1, 8), torch.randn(2, 4), torch.randn(2, 5)), ValueError, "sin must"),
        ((torch.randn(6, 8), torch.randn(2, 1, 8), torch.randn(2, 4), torch.randn(2, 4)), ValueError, "q must have 3"),
        ((torch.randint(0, 3, (2, 3, 8)), torch.randn(2, 1, 8), torch.randn(2, 4), torch.randn(2, 4)), TypeError, "q"),
        ((torch.randn(2, 3, 8), torch.randn(2, 1, 8), torch.randn(2, 4).double(), torch.randn(2, 4)), TypeError,
         "cos"),
    ],
)
def test_rotary_embedding_rejects_bad_input_before_launch(args, exc, words, interpreter):
    rope = get_op("rotary_embedding").launcher()
    with count_launches() as launches, pytest.raises(exc, match=words):
        rope(*args)
    assert launches.total_launches == 0
