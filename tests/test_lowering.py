"""Reference -> trace -> fusion graph -> kernel: what each traced reference lowers to, refusals that name the
first ATen op without a template, and generated kernels judged against hand-written PyTorch expressions
(written here, independently of the reference source the kernel was generated from)."""

import math

import pytest
import torch

from kernelgen.codegen.from_reference import generate
from kernelgen.codegen.trace import trace_reference
from kernelgen.frontends.reference import Reference
from kernelgen.library import load_kernel_module
from kernelgen.spec import InputSpec
from kernelgen.verify.accuracy import check_accuracy

ROWS = [{"M": 4, "N": 64}, {"M": 3, "N": 200}]


def ref(body: str, inputs: dict, shapes=None, name="op") -> Reference:
    args = ", ".join(inputs)
    specs = [InputSpec(k, "tensor", tuple(v)) if isinstance(v, (list, tuple)) else
             InputSpec(k, "float", value=v) for k, v in inputs.items()]
    source = f"def reference({args}):\n" + "\n".join("    " + line for line in body.strip().splitlines()) + "\n"
    return Reference(request=body, origin="formula", source=source, inputs=specs, outputs=["y"],
                     test_shapes=shapes or ROWS, name=name)


def launcher(gen, tmp_path):
    folder = gen.write(tmp_path / gen.spec.name)
    return getattr(load_kernel_module(folder / "kernel.py", gen.spec.name), gen.spec.function)


def randn(*shape):
    return torch.randn(*shape, dtype=torch.float32)


# ---- what each reference lowers to -----------------------------------------------------------------
LOWERED = [
    ("return F.silu(x + bias)", {"x": ["M", "N"], "bias": ["N"]}, "h1 = x + bias -> h2 = silu(h1) -> (y=h2)"),
    ("return torch.softmax(x * 0.5, dim=-1)", {"x": ["M", "N"]}, "h1 = x * 0.5 -> r = softmax(h1) -> (y=r)"),
    ("return F.rms_norm(x, (x.shape[-1],), w, 1e-6)", {"x": ["M", "N"], "w": ["N"]},
     "r = rms_norm(x, 9.999999974752427e-07) -> h1 = r * w -> (y=h1)"),
    ("return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5)", {"x": ["M", "N"]},
     "r = rms_norm(x, 1e-05) -> (y=r)"),
    ("return F.normalize(x, dim=-1)", {"x": ["M", "N"]}, "r = l2_normalize(x, 1e-12) -> (y=r)"),
    ("return x - torch.logsumexp(x, dim=-1, keepdim=True)", {"x": ["M", "N"]}, "r = log_softmax(x) -> (y=r)"),
    ("return F.layer_norm(x, (x.shape[-1],), w, b, 1e-5)", {"x": ["M", "N"], "w": ["N"], "b": ["N"]},
     "r = layer_norm(x, w, b, 1e-05) -> (y=r)"),
    ("return x.var(-1)", {"x": ["M", "N"]}, "r = var(x) -> (y=r)"),
    ("return torch.relu(F.linear(x, w, b))", {"x": ["M", "K"], "w": ["N", "K"], "b": ["N"]},
     "mm = x @ w -> h1 = mm + b -> h2 = relu(h1) -> (y=h2)"),
    ("return torch.clamp(x, -1.0, 1.0) ** 2", {"x": ["M", "N"]},
     "h1 = clamp(x, -1.0, 1.0) -> h2 = square(h1) -> (y=h2)"),
]


@pytest.mark.parametrize("body, inputs, summary", LOWERED, ids=[c[0][7:40] for c in LOWERED])
def test_reference_lowers_to_the_expected_graph(body, inputs, summary):
    shapes = [{"M": 16, "K": 32, "N": 24}] if "K" in str(inputs) else None
    gen = generate(ref(body, inputs, shapes))
    assert gen.lowered, gen.refusal
    assert gen.summary == summary
    assert gen.spec.reference == ref(body, inputs).source  # the reference is the given one, not regenerated


def test_linear_weight_is_used_transposed_and_bias_is_per_column():
    gen = generate(ref("return torch.relu(F.linear(x, w, b))", {"x": ["M", "K"], "w": ["N", "K"], "b": ["N"]},
                       [{"M": 16, "K": 32, "N": 24}]))
    assert {i.name: i.role for i in gen.graph.inputs} == {"x": "lhs", "w": "rhs_t", "b": "cols"}
    assert "w_t = w.t()" in gen.kernel_source


REFUSED = [
    ("return F.conv2d(x, w)", {"x": ["B", "C", "H", "W"], "w": ["O", "C", "3", "3"]},
     [{"B": 2, "C": 3, "H": 8, "W": 9, "O": 4}], "aten.convolution.default: no convolution template yet"),
    ("return x.sum(0)", {"x": ["M", "N"]}, None, "aten.sum.dim_IntList: reduction over dim [0] of a 2-d tensor, "
                                                 "not the last dim: no template yet"),
    ("return x.var(-1, unbiased=False)", {"x": ["M", "N"]}, None,
     "aten.var.correction: variance with correction=0"),
    ("return torch.cumsum(x, -1)", {"x": ["M", "N"]}, None, "aten.cumsum.default: no scan template yet"),
    ("return torch.softmax(x, -1).sum(-1)", {"x": ["M", "N"]}, None,
     "aten.sum.dim_IntList: a second reduction"),
    ("return x + 1, x * 2", {"x": ["M", "N"]}, None, "2 outputs"),
    ("return x.pow(1.7)", {"x": ["M", "N"]}, None, "aten.pow.Tensor_Scalar: power 1.7 has no template"),
    ("return (x @ w).t()", {"x": ["M", "K"], "w": ["K", "N"]}, [{"M": 8, "K": 4, "N": 6}], "aten.t.default"),
    ("return x @ w + x", {"x": ["N", "N"], "w": ["N", "N"]}, [{"N": 8}], "input x is a matmul operand"),
]


@pytest.mark.parametrize("body, inputs, shapes, reason", REFUSED, ids=[c[0][7:30] for c in REFUSED])
def test_what_does_not_fit_is_refused_naming_the_op(body, inputs, shapes, reason):
    gen = generate(ref(body, inputs, shapes))
    assert not gen.lowered and gen.kernel_source is None
    assert gen.refusal.startswith(reason), gen.refusal
    assert gen.spec.reference == ref(body, inputs).source  # the spec is still there for an LLM to write to


def test_trace_uses_symbolic_sizes_and_records_the_aten_ops():
    trace = trace_reference(ref("return F.silu(x + bias)", {"x": ["M", "N"], "bias": ["N"]}))
    assert trace.mode == "symbolic"
    assert trace.ops() == ["aten.add.Tensor", "aten.silu.default"]


# ---- generated kernels against hand-written expressions --------------------------------------------
def _sigmoid(t):
    return 1 / (1 + torch.exp(-t))


KERNELS = [
    ("return F.silu(x + bias)", {"x": ["M", "N"], "bias": ["N"]}, [(5, 70), (70,)],
     lambda x, b: (x + b) * _sigmoid(x + b)),
    ("return F.rms_norm(x, (x.shape[-1],), w, 1e-6)", {"x": ["M", "N"], "w": ["N"]}, [(5, 300), (300,)],
     lambda x, w: x / torch.sqrt((x * x).sum(-1, keepdim=True) / x.shape[-1] + 1e-6) * w),
    ("return torch.softmax(x * 0.5, dim=-1)", {"x": ["M", "N"]}, [(6, 130)],
     lambda x: torch.exp(0.5 * x - (0.5 * x).max(-1, keepdim=True).values)
     / torch.exp(0.5 * x - (0.5 * x).max(-1, keepdim=True).values).sum(-1, keepdim=True)),
    ("return F.normalize(x, dim=-1)", {"x": ["M", "N"]}, [(3, 90)],
     lambda x: x / torch.sqrt((x * x).sum(-1, keepdim=True))),
    ("return x.var(-1)", {"x": ["M", "N"]}, [(7, 33)],
     lambda x: ((x - x.mean(-1, keepdim=True)) ** 2).sum(-1) / (x.shape[-1] - 1)),
    ("return torch.relu(F.linear(x, w, b))", {"x": ["M", "K"], "w": ["N", "K"], "b": ["N"]},
     [(17, 40), (24, 40), (24,)], lambda x, w, b: torch.clamp(torch.einsum("mk,nk->mn", x, w) + b, min=0)),
    ("return x.amax(-1, keepdim=True) * 2.0", {"x": ["M", "N"]}, [(2, 3, 45)],
     lambda x: torch.stack([row.max() for row in x.reshape(-1, 45)]).reshape(2, 3, 1) * 2),
    ("return torch.logsumexp(x + y, dim=-1)", {"x": ["M", "N"], "y": ["M", "N"]}, [(4, 80), (4, 80)],
     lambda x, y: torch.log(torch.exp(x + y).sum(-1))),
]


@pytest.mark.parametrize("body, inputs, shapes, expected", KERNELS, ids=[c[0][7:40] for c in KERNELS])
def test_generated_kernel_computes_the_hand_written_expression(body, inputs, shapes, expected, tmp_path):
    test = [{"M": 16, "K": 32, "N": 24}] if "K" in str(inputs) else None
    gen = generate(ref(body, inputs, test))
    fn = launcher(gen, tmp_path)
    args = [randn(*s) for s in shapes]
    got = fn(*args)
    want = expected(*[a.double() for a in args]).float()
    torch.testing.assert_close(got, want, atol=2e-5, rtol=2e-5)
    assert not torch.equal(got, fn(*[randn(*s) for s in shapes]))  # the output depends on the input


def test_scalar_input_is_the_launchers_argument(tmp_path):
    gen = generate(ref("return x * alpha + 1.0", {"x": ["M", "N"], "alpha": 0.5}))
    assert gen.summary == "h1 = x * alpha -> h2 = h1 + 1.0 -> (y=h2)"
    fn = launcher(gen, tmp_path)
    x = randn(3, 40)
    torch.testing.assert_close(fn(x, 0.5), x * 0.5 + 1.0)
    torch.testing.assert_close(fn(x, 3.0), x * 3.0 + 1.0)  # the value passed, not the one traced


def test_selu_and_elu_and_hardsigmoid_kernels(tmp_path):
    gen = generate(ref("return torch.selu(x) + F.elu(x, 0.3) + F.hardsigmoid(x)", {"x": ["M", "N"]}))
    fn = launcher(gen, tmp_path)
    x = randn(4, 50).double()
    alpha, scale = 1.6732632423543772, 1.0507009873554805
    selu = scale * torch.where(x > 0, x, alpha * (torch.exp(x) - 1))
    elu = torch.where(x > 0, x, 0.3 * (torch.exp(x) - 1))
    hsig = torch.clamp(x / 6 + 0.5, 0, 1)
    torch.testing.assert_close(fn(x.float()), (selu + elu + hsig).float(), atol=2e-6, rtol=2e-6)


@pytest.mark.parametrize("body, inputs, test", [
    ("return F.silu(x + bias)", {"x": ["M", "N"], "bias": ["N"]}, None),
    ("return torch.relu(F.linear(x, w, b))", {"x": ["M", "K"], "w": ["N", "K"], "b": ["N"]},
     [{"M": 16, "K": 32, "N": 24}]),
])
def test_generated_op_passes_the_verifier_with_its_edge_cases(body, inputs, test, interpreter, tmp_path):
    gen = generate(ref(body, inputs, test))
    result = check_accuracy(gen.spec, launcher(gen, tmp_path), interpreter, trials=1, dtypes=["float32"])
    assert result.passed, result.message
    cases = {r["case"].split(" {")[0] for r in result.rows}
    assert {"one row", "non-power-of-two", "zero rows"} <= cases


def test_bytes_model_is_written_in_the_references_dims():
    gen = generate(ref("return F.silu(x + bias)", {"x": ["M", "N"], "bias": ["N"]}))
    assert gen.spec.bytes_model == "M * N * elem + N * elem + M * N * elem"
    assert gen.spec.bytes_moved({"M": 2, "N": 3}, 4) == 4 * (6 + 3 + 6)
    assert math.isclose(gen.spec.flops({"M": 2, "N": 3}), 2 * 6)


def test_eps_scalar_reaches_the_kernel_through_the_decomposed_norm(tmp_path):
    gen = generate(ref("return F.rms_norm(x, (x.shape[-1],), w, eps)", {"x": ["M", "N"], "w": ["N"], "eps": 1e-6}))
    assert gen.summary == "r = rms_norm(x, eps) -> h1 = r * w -> (y=h1)"
    fn = launcher(gen, tmp_path)
    x, w = randn(3, 40), randn(40)
    want = x / torch.sqrt((x * x).mean(-1, keepdim=True) + 0.5) * w
    torch.testing.assert_close(fn(x, w, 0.5), want, atol=1e-5, rtol=1e-5)  # the eps passed, not the traced


def test_a_scalar_folded_into_a_computed_constant_is_refused():
    gen = generate(ref("return x * (1.0 / alpha)", {"x": ["M", "N"], "alpha": 4.0}))
    assert gen.refusal.startswith("scalar input alpha does not reach the kernel as an argument")
    # a constant that only happens to equal the scalar's value is not the scalar
    gen = generate(ref("return x * alpha + 1.0", {"x": ["M", "N"], "alpha": 1.0}))
    assert not gen.lowered and gen.refusal.startswith("scalar input alpha does not reach")


CAUSAL = ('h = x.masked_fill(torch.ones(x.shape[-2:], dtype=torch.bool, device=x.device)'
          '.triu(x.shape[-1] - x.shape[-2] + 1), float("-inf"))\nreturn torch.softmax(h, dim=-1)')


@pytest.mark.parametrize("dims", [{"B": 2, "H": 3, "M": 5, "N": 9}, {"B": 2, "H": 3, "M": 8, "N": 8}])
def test_causal_mask_before_softmax_is_the_causal_template(dims, tmp_path):
    gen = generate(ref(CAUSAL, {"x": ["B", "H", "M", "N"]}, [dims]))
    assert gen.summary == "h1 = causal_mask(x, j > i -> -inf) -> r = softmax(h1) -> (y=r)", gen.refusal
    fn = launcher(gen, tmp_path)
    x = randn(2, 3, 4, 11)  # 4 queries over 11 keys: query i sees keys j <= i + 7
    i, j = torch.arange(4)[:, None], torch.arange(11)[None, :]
    e = torch.where(j <= i + 7, torch.exp(x.double() - x.double().max(-1, keepdim=True).values), 0.0)
    torch.testing.assert_close(fn(x), (e / e.sum(-1, keepdim=True)).float(), atol=1e-6, rtol=1e-5)


def test_a_triangular_mask_of_another_diagonal_is_not_taken_for_causal():
    body = 'return torch.softmax(x.masked_fill(torch.ones(x.shape[-2:], dtype=torch.bool).triu(2), -1e9), -1)'
    gen = generate(ref(body, {"x": ["M", "N"]}, [{"M": 5, "N": 9}]))
    assert not gen.lowered and gen.refusal.startswith("aten.ones.default")


def test_int8_dequantize_with_a_per_row_scale(tmp_path):
    inputs = [InputSpec("q", "tensor", ("M", "N"), "int8", "int8"), InputSpec("scale", "tensor", ("M",))]
    reference = Reference(request="dequantize", origin="formula", source="def reference(q, scale):\n"
                          "    return q.float() * scale[:, None]\n", inputs=inputs, outputs=["y"],
                          test_shapes=ROWS)
    gen = generate(reference)
    assert {i.name: (i.role, i.dtype) for i in gen.graph.inputs} == {"q": ("rows", "int8"),
                                                                      "scale": ("per_row", "input")}
    q = torch.randint(-128, 128, (5, 70), dtype=torch.int8)
    scale = torch.rand(5) + 0.1
    got = launcher(gen, tmp_path)(q, scale)
    want = torch.stack([torch.tensor([float(v) for v in row]) * s for row, s in zip(q, scale)])
    torch.testing.assert_close(got, want)


def test_matmul_spec_widens_float32_tolerance_with_a_reason_and_varies_output_dims():
    gen = generate(ref("return F.linear(x, w)", {"x": ["M", "K"], "w": ["N", "K"]}, [{"M": 16, "K": 32, "N": 24}]))
    tol = gen.spec.tolerances["float32"]
    assert (tol.atol, tol.rtol) == (1e-4, 1e-4) and "grows with K" in tol.reason
    assert (gen.spec.row_dim, gen.spec.col_dim) == ("M", "N")
    square = generate(ref("return x @ w", {"x": ["N", "N"], "w": ["N", "N"]}, [{"N": 16}]))
    assert square.spec.col_dim == "-"  # no column edge case that would square the operands
