"""`kernelgen new / compose --reference FILE` end to end on the interpreter, into temporary libraries: the
reference is shown and kept (JSON, run record, merged spec), and the merged kernel computes the hand-written
expression."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from kernelgen.cli import app

KERNELBENCH = Path(os.environ.get("KERNELGEN_KERNELBENCH")
                   or Path(__file__).resolve().parents[1].parent / "shared" / "kernelbench")

SILU_BIAS = '''import torch
import torch.nn.functional as F

INPUTS = {"x": ["M", "N"], "bias": ["N"]}
SHAPES = [{"M": 4, "N": 64}, {"M": 3, "N": 200}]
BENCH_SHAPES = [{"M": 4096, "N": 4096}]


def reference(x, bias):
    return F.silu(x + bias)
'''
CONV = '''INPUTS = {"x": ["B", "C", "H", "W"], "w": ["O", "C", "3", "3"]}
SHAPES = [{"B": 2, "C": 3, "H": 8, "W": 9, "O": 4}]


def reference(x, w):
    return F.conv2d(x, w)
'''


@pytest.fixture
def env(monkeypatch, tmp_path):
    for var in ("OPENAI_API_KEY", "KERNELGEN_BASE_URL", "KERNELGEN_MODEL", "OPENAI_BASE_URL", "KERNELGEN_LIBRARY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KERNELGEN_CACHE_DIR", str(tmp_path / "cache"))
    return monkeypatch


def cli(*args: str) -> tuple[int, dict | None, str]:
    res = CliRunner().invoke(app, [*args, "--json"])
    if res.exception and not isinstance(res.exception, SystemExit):
        raise res.exception
    doc = json.loads(res.stdout) if res.stdout.strip().startswith("{") else None
    return res.exit_code, doc, res.stderr


def merged_op(folder: Path):
    from kernelgen.library import load_op, op_status

    op = load_op(folder)
    assert not op.broken, op.error
    assert op_status(op, "interpreter")["status"] == "verified"
    return op


def test_new_with_a_reference_file_shows_keeps_and_merges_it(env, tmp_path):
    path = tmp_path / "silu_bias.py"
    path.write_text(SILU_BIAS)
    lib = tmp_path / "lib"
    code, doc, err = cli("new", "--reference", str(path), "--library", str(lib), "--backend", "interpreter",
                         "--trials", "1")
    assert code == 0, (doc, err)
    assert doc["status"] == "merged" and doc["name"] == "silu_bias"
    assert "understood as:" in err and "return F.silu(x + bias)" in err  # shown before generating
    assert "def reference(x, bias):\n    return F.silu(x + bias)" in doc["reference"]
    assert doc["notes"] == ["inputs and shapes from the file's INPUTS / SHAPES"]
    assert doc["lowering"]["lowered"] and doc["lowering"]["trace_mode"] == "symbolic"
    op = merged_op(lib / "ops" / "silu_bias")
    assert op.spec.reference.strip() == doc["reference"].strip() and op.spec.request == str(path)
    # the run record keeps the reference too
    from kernelgen.agents import runs as runs_mod

    conn = runs_mod.connect()
    try:
        record = runs_mod.get_run(conn, doc["run_id"])
    finally:
        conn.close()
    assert "return F.silu(x + bias)" in record["result"]["reference"]
    # the merged kernel against the hand-written expression, on fresh inputs
    x, b = torch.randn(5, 130), torch.randn(130)
    got = op.launcher()(x, b)
    torch.testing.assert_close(got, (x + b) * torch.sigmoid(x + b), atol=1e-6, rtol=1e-5)


@pytest.mark.skipif(not KERNELBENCH.is_dir(), reason=f"the KernelBench problems are not at {KERNELBENCH}")
def test_new_with_a_kernelbench_problem_merges_a_verified_op(env, tmp_path):
    lib = tmp_path / "lib"
    code, doc, err = cli("new", "--reference", str(KERNELBENCH / "level1" / "23_Softmax.py"), "--library",
                         str(lib), "--backend", "interpreter", "--trials", "1")
    assert code == 0, (doc, err)
    assert doc["status"] == "merged" and doc["name"] == "kb_l1_23_softmax"
    assert "torch.func.functional_call(model" in doc["reference"]
    op = merged_op(lib / "ops" / "kb_l1_23_softmax")
    assert [i.shape for i in op.spec.inputs] == [("batch_size", "dim")]
    assert op.spec.bench_shapes == [{"batch_size": 4096, "dim": 393216}]
    x = torch.randn(3, 500)
    e = torch.exp(x - x.max(dim=1, keepdim=True).values)
    torch.testing.assert_close(op.launcher()(x), e / e.sum(dim=1, keepdim=True), atol=1e-6, rtol=1e-5)


def test_a_reference_no_template_fits_is_refused_with_the_op_and_nothing_is_written(env, tmp_path):
    path = tmp_path / "conv.py"
    path.write_text(CONV)
    lib = tmp_path / "lib"
    code, doc, err = cli("new", "--reference", str(path), "--library", str(lib), "--backend", "interpreter")
    assert code == 1
    assert doc["status"] == "failed" and doc["candidates"] == []
    assert doc["lowering"]["reason"] == "aten.convolution.default: no convolution template yet"
    assert "no kernel: no template fits the reference: aten.convolution.default" in err
    assert "return F.conv2d(x, w)" in doc["reference"]
    assert not lib.exists() or not any(lib.rglob("spec.toml"))


def test_compose_with_a_reference_file(env, tmp_path):
    path = tmp_path / "silu_bias.py"
    path.write_text(SILU_BIAS)
    code, doc, _ = cli("compose", "--reference", str(path), "--out", str(tmp_path / "op"))
    assert code == 0
    assert doc["lowered"] and doc["summary"] == "h1 = x + bias -> h2 = silu(h1) -> (y=h2)"
    assert "return F.silu(x + bias)" in doc["reference"] and doc["notes"]
    assert doc["spec"]["reference"] == doc["reference"] + ("" if doc["reference"].endswith("\n") else "\n")
    assert sorted(p.name for p in (tmp_path / "op").iterdir()) == ["kernel.py", "spec.toml"]
    conv = tmp_path / "conv.py"
    conv.write_text(CONV)
    code, doc, _ = cli("compose", "--reference", str(conv), "--out", str(tmp_path / "conv_op"))
    assert code == 1 and not doc["lowered"] and doc["refusal"].startswith("aten.convolution.default")
    assert not (tmp_path / "conv_op").exists()


@pytest.mark.parametrize("args, words", [
    (["new", "--reference", "/nonexistent/ref.py"], "no such file"),
    (["new", "relu", "--reference", "REF"], "either a request or --reference FILE, not both"),
    (["new", "--reference", "BAD"], "defines neither reference(...) nor a KernelBench problem"),
    (["compose", "--reference", "BAD"], "defines neither reference(...) nor a KernelBench problem"),
    (["new"], "the request is empty"),
])
def test_reference_user_errors_exit_2_with_one_line(env, tmp_path, args, words):
    (tmp_path / "ref.py").write_text(SILU_BIAS)
    (tmp_path / "bad.py").write_text("x = 1\n")
    args = [str(tmp_path / "ref.py") if a == "REF" else str(tmp_path / "bad.py") if a == "BAD" else a
            for a in args]
    res = CliRunner().invoke(app, [*args, "--library", str(tmp_path / "lib")] if args[0] == "new" else args)
    assert res.exit_code == 2, res.output
    assert words in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "lib").exists()


def test_text_front_end_reference_goes_through_trace_and_lower(env, tmp_path):
    """The contract of the text front end: `to_reference(request, name)` gives a Reference, which `new` and
    `compose` show, trace and lower exactly as a reference file (stubbed here with a hand-written one)."""
    from kernelgen.agents import understand
    from kernelgen.frontends.composer import ComposeError
    from kernelgen.frontends.reference import Reference
    from kernelgen.spec import InputSpec

    def to_reference(request: str, name: str | None = None) -> Reference:
        if request != "y = silu(x + bias)":
            raise ComposeError(f"cannot read {request!r}")
        return Reference(request=request, origin="formula", source="def reference(x, bias):\n"
                         "    return F.silu(x + bias)\n", inputs=[InputSpec("x", "tensor", ("M", "N")),
                                                               InputSpec("bias", "tensor", ("N",))],
                         outputs=["y"], test_shapes=[{"M": 4, "N": 64}], name=name or "silu_of_sum",
                         notes=["bias broadcasts over the rows"])

    env.setattr(understand, "text_front_end", lambda: to_reference)
    code, doc, _ = cli("compose", "y = silu(x + bias)")
    assert code == 0 and doc["lowered"] and doc["notes"] == ["bias broadcasts over the rows"]
    lib = tmp_path / "lib"
    code, doc, err = cli("new", "y = silu(x + bias)", "--library", str(lib), "--backend", "interpreter",
                         "--trials", "1")
    assert code == 0, (doc, err)
    assert doc["status"] == "merged" and doc["name"] == "silu_of_sum" and "# bias broadcasts over the rows" in err
    op = merged_op(lib / "ops" / "silu_of_sum")
    assert op.spec.request == "y = silu(x + bias)" and "F.silu(x + bias)" in op.spec.reference
    code, doc, err = cli("new", "frobnicate", "--library", str(lib), "--backend", "interpreter")
    assert code == 2 and "cannot read 'frobnicate'" in err


FLIP = '''INPUTS = {"x": ["M", "N"]}
SHAPES = [{"M": 3, "N": 50}]


def reference(x):
    return x.flip(-1)
'''
FLIP_KERNEL = '''import torch
import triton
import triton.language as tl


@triton.jit
def _flip_rows(x_ptr, y_ptr, stride_x_row, stride_x_col, stride_y_row, N, BLOCK_N: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    for start in range(0, N, BLOCK_N):
        offsets = start + tl.arange(0, BLOCK_N)
        mask = offsets < N
        x = tl.load(x_ptr + row * stride_x_row + (N - 1 - offsets) * stride_x_col, mask=mask, other=0.0)
        tl.store(y_ptr + row * stride_y_row + offsets, x, mask=mask)


def flip_last(x):
    N = x.shape[-1]
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if y.numel() == 0:
        return y
    x2 = x if x.dim() == 2 else x.view(-1, N)  # rows of any leading dims (a view: no copy)
    y2 = y.view(-1, N)
    block = min(triton.next_power_of_2(N), 1024)
    _flip_rows[(x2.shape[0],)](x2, y2, x2.stride(0), x2.stride(1), y2.stride(0), N, BLOCK_N=block)
    return y
'''


def test_with_an_llm_a_reference_no_template_fits_gets_an_llm_kernel_for_its_own_spec(env, tmp_path):
    from llm_server import ScriptedLLM

    path = tmp_path / "flip_last.py"
    path.write_text(FLIP)
    lib = tmp_path / "lib"
    with ScriptedLLM([f"Here it is.\n```python\n{FLIP_KERNEL}```\n"]) as srv:
        env.setenv("KERNELGEN_BASE_URL", srv.url)
        code, doc, err = cli("new", "--reference", str(path), "--library", str(lib), "--backend", "interpreter",
                             "--candidates", "1", "--rounds", "0", "--trials", "1")
        prompts = srv.user_prompts()
    assert code == 0, (doc, err)
    assert doc["status"] == "merged" and doc["spec_origin"] == "reference" and doc["winner"] == "llm-1"
    assert doc["lowering"]["reason"] == "aten.flip.default: no template yet"
    # the LLM was asked for a kernel only, with the reference's spec (the file's reference in it)
    assert len(prompts) == 1 and "x.flip(-1)" in prompts[0]
    op = merged_op(lib / "ops" / "flip_last")
    # the file's reference, less its INPUTS / SHAPES declarations
    assert op.spec.reference.strip() == "def reference(x):\n    return x.flip(-1)"
    x = torch.randn(4, 70)
    torch.testing.assert_close(op.launcher()(x), x[:, torch.arange(69, -1, -1)])


