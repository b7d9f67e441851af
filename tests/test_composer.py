"""Composer: the requests of shared/requests.md and their variations parse to one graph each, every composed
kernel passes the verifier on the interpreter, and a request it cannot read is refused with what it understood."""

import pytest
import torch
from typer.testing import CliRunner

from kernelgen.frontends.composer import ComposeError, compose, vocabulary
from kernelgen.library import load_kernel_module
from kernelgen.verify.accuracy import check_accuracy

# request -> variations that must mean the same thing
REQUESTS = {
    "fused rmsnorm + residual": ["residual add then rms norm", "add skip connection and rmsnorm",
                                 "rms_norm with residual"],
    "silu and mul": ["swiglu", "silu(a) * b", "silu then multiply"],
    "gelu and mul (tanh approximation)": ["gelu tanh and mul", "geglu with tanh approximation"],
    "residual add then layernorm": ["layer norm + residual", "add skip connection followed by layer_norm"],
    "scaled softmax": ["softmax with scale", "scale then softmax"],
    "bias add + gelu": ["gelu(x + bias)", "add bias then gelu"],
    "log softmax": ["log_softmax over the last dim", "logsoftmax"],
    "add + relu": ["relu(a + b)", "add then relu"],
    "causal masked softmax": ["softmax with a causal mask", "causal softmax"],
    "matmul + bias + relu": ["matmul bias relu", "gemm with bias followed by relu"],
    "clamp then square": ["clip then square", "clamp followed by squared"],
    "mean over the last dim": ["row mean", "average over the last dimension"],
    "rms norm then silu": ["rmsnorm followed by silu", "rms_norm -> swish"],
    "dequantize int8 with per-row scale": ["int8 dequantize per row scale", "dequant int8 rowwise scale"],
}
DTYPES = ["float16", "bfloat16"]


@pytest.mark.parametrize("request_text", list(REQUESTS))
def test_variations_parse_to_the_same_graph(request_text):
    graph = compose(request_text).graph
    for variation in REQUESTS[request_text]:
        assert compose(variation).graph == graph, variation


def _launcher(comp, tmp_path):
    folder = comp.write(tmp_path / comp.spec.name)
    assert sorted(p.name for p in folder.iterdir()) == ["kernel.py", "spec.toml"]
    return getattr(load_kernel_module(folder / "kernel.py", comp.spec.name), comp.spec.function)


@pytest.mark.parametrize("n, request_text", list(enumerate(REQUESTS)))
def test_composed_kernel_passes_the_verifier_on_the_interpreter(n, request_text, interpreter, tmp_path):
    comp = compose(request_text)
    # float32 everywhere, and the half types in turn so every dtype is exercised across the set
    dtypes = [d for d in ("float32", DTYPES[n % 2]) if d in comp.spec.dtypes]
    result = check_accuracy(comp.spec, _launcher(comp, tmp_path), interpreter, trials=2, dtypes=dtypes)
    assert result.passed, f"{comp.summary}: {result.message}"
    cases = {r["case"].split(" {")[0] for r in result.rows}
    assert {"one row", "non-power-of-two", "longer than one block", "strided rows", "zero rows"} <= cases


def test_request_meanings_match_requests_md():
    assert compose("fused rmsnorm + residual").summary == (
        "h1 = x + residual -> r = rms_norm(h1, weight, eps) -> (y=r, h=h1)")
    assert compose("silu and mul").summary == "h1 = silu(a) -> h2 = h1 * b -> (y=h2)"
    assert compose("matmul + bias + relu").summary == "mm = a @ b -> h1 = mm + bias -> h2 = relu(h1) -> (y=h2)"
    spec = compose("dequantize int8 with per-row scale").spec
    assert [(i.name, i.shape, i.dtype, i.fill) for i in spec.inputs] == [
        ("x", ("M", "N"), "int8", "int8"), ("scale", ("M",), "input", "positive")]
    assert compose("causal masked softmax").spec.inputs[0].shape == ("B", "H", "M", "N")


def test_numbers_in_the_request_become_scalar_defaults():
    spec = compose("clamp to [-0.5, 0.25] then square").spec
    assert {i.name: i.value for i in spec.inputs if i.kind == "float"} == {"lo": -0.5, "hi": 0.25}
    spec = compose("softmax with scale 0.25").spec
    assert [i.value for i in spec.inputs if i.name == "scale"] == [0.25]
    spec = compose("rms norm eps 1e-5 then silu").spec
    assert [i.value for i in spec.inputs if i.name == "eps"] == [1e-5]


def test_names_are_derived_or_given():
    assert compose("fused rmsnorm + residual").spec.name == "add_rms_norm_residual"
    assert compose("swiglu").spec.name == "silu_mul"
    assert compose("swiglu", name="my_swiglu").spec.function == "my_swiglu"
    with pytest.raises(ComposeError, match="lower_snake_case"):
        compose("swiglu", name="Bad Name")


def test_add_relu_broadcasts_a_row_vector_and_strided_rows(interpreter, tmp_path):
    add_relu = _launcher(compose("add + relu"), tmp_path)
    a = torch.randn(5, 300)[:, :130]
    b = torch.randn(130)
    torch.testing.assert_close(add_relu(a, b), torch.relu(a + b))
    b2 = torch.randn(5, 1)
    torch.testing.assert_close(add_relu(a, b2), torch.relu(a + b2))


def test_looped_softmax_matches_single_block(interpreter, tmp_path):
    softmax = _launcher(compose("scaled softmax"), tmp_path)
    x = torch.randn(3, 700)
    torch.testing.assert_close(softmax(x, 0.3, max_block=128), softmax(x, 0.3), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(softmax(x, 0.3), torch.softmax(x.double() * 0.3, -1).float(), atol=1e-6, rtol=1e-5)


def test_unparseable_request_says_what_was_understood_and_the_vocabulary():
    with pytest.raises(ComposeError) as info:
        compose("frobnicate the softmax with a wibble")
    msg = str(info.value)
    assert "Understood: softmax" in msg and "'frobnicate'" in msg and "'wibble'" in msg
    for word in ("rms_norm", "silu", "matmul", "then"):
        assert word in msg
    assert {"reductions", "pointwise", "matmul", "modifiers"} <= set(vocabulary())


def test_rotary_is_pointed_at_the_library_op():
    with pytest.raises(ComposeError, match="rotary_embedding"):
        compose("rotary embedding")


def test_two_reductions_are_refused():
    with pytest.raises(ComposeError, match="at most one row reduction"):
        compose("softmax then layer norm")


def test_cli_compose_writes_the_folder_or_nothing(tmp_path):
    from kernelgen.cli import app

    runner = CliRunner()
    out = tmp_path / "op"
    res = runner.invoke(app, ["compose", "bias add + gelu", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["kernel.py", "spec.toml"]
    bad = tmp_path / "bad"
    res = runner.invoke(app, ["compose", "frobnicate the tensor", "--out", str(bad)])
    assert res.exit_code == 2
    assert not bad.exists()
