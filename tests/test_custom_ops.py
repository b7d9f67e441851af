"""torch.compile(fullgraph=True) traces through `kernelgen.ops` calls: each library call is one custom-op node
(`torch.ops.kernelgen.NAME`), with a fake implementation giving the right output metadata. On the CPU the
custom ops run their kernels through Triton's interpreter."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import kernelgen
from kernelgen.custom_ops import schema_for
from kernelgen.library import get_op


def _graph_targets(fn, *args):
    """Compile fn with fullgraph=True, recording the ops of the captured graph."""
    targets = []

    def backend(gm, example_inputs):
        targets.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm.forward

    torch._dynamo.reset()
    out = torch.compile(fn, fullgraph=True, backend=backend)(*args)
    return out, targets


def test_fullgraph_traces_through_library_calls(interpreter):
    kernelgen.ops.reload()  # the first access to each op happens inside the compiled function
    x, w, gate, up = torch.randn(3, 64), torch.randn(64), torch.randn(3, 32), torch.randn(3, 32)

    def block(x, w, gate, up):
        h = kernelgen.ops.rms_norm(x * 2.0, w, 1e-6)
        return h.sum(-1, keepdim=True) + kernelgen.ops.silu_and_mul(gate, up)

    out, targets = _graph_targets(block, x, w, gate, up)
    assert "kernelgen.rms_norm.default" in targets and "kernelgen.silu_and_mul.default" in targets, targets
    ref = F.rms_norm(x * 2.0, (64,), w, 1e-6).sum(-1, keepdim=True) + F.silu(gate) * up
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_two_outputs_and_aot_autograd_backend(interpreter):
    q, k = torch.randn(5, 4, 16), torch.randn(5, 2, 16)
    cos, sin = torch.rand(5, 8) * 2 - 1, torch.rand(5, 8) * 2 - 1

    def rope(q, k, cos, sin):
        q2, k2 = kernelgen.ops.rotary_embedding(q, k, cos, sin)
        return q2 * 2, k2 + 1

    torch._dynamo.reset()
    got = torch.compile(rope, fullgraph=True, backend="aot_eager")(q, k, cos, sin)
    want = rope(q, k, cos, sin)
    for g, e in zip(got, want):
        assert g.shape == e.shape and g.dtype == e.dtype
        torch.testing.assert_close(g, e)


def test_fake_implementation_gives_output_metadata(interpreter):
    from torch._subclasses.fake_tensor import FakeTensorMode

    kernelgen.ops.silu_and_mul  # noqa: B018  (registers the custom op)
    with FakeTensorMode():
        x = torch.empty(3, 5, 64, dtype=torch.bfloat16)
        y = torch.ops.kernelgen.silu_and_mul(x)
    assert y.shape == (3, 5, 32) and y.dtype == torch.bfloat16


@pytest.mark.parametrize("name, expected", [
    ("rms_norm", "(Tensor x, Tensor? weight=None, float eps=1e-06) -> Tensor"),
    ("softmax", "(Tensor x, int dim=-1) -> Tensor"),
    ("rotary_embedding", "(Tensor q, Tensor k, Tensor cos, Tensor sin) -> (Tensor, Tensor)"),
])
def test_schema_from_launcher_signature_and_spec(name, expected):
    op = get_op(name)
    assert schema_for(op.spec, op.launcher()) == expected
