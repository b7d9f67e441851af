"""Each check of the verifier on a small candidate that only it catches: a correct SiLU kernel and variants
of it with one bug each, all verified in one sandboxed `verify_many` run (float32, 2 trials)."""

import shutil
import textwrap
from pathlib import Path

import pytest

from kernelgen.verify.sandbox import verify_many
from kernelgen.verify.wall import sandbox_problem

SPEC = '''
name = "{name}"
description = "SiLU over rows."
reference = """
def reference(x):
    return x * torch.sigmoid(x)
"""
dtypes = ["float32"]

[signature]
function = "silu"
outputs = ["y"]

[[inputs]]
name = "x"
shape = ["M", "N"]

[shapes]
test = [{{ M = 4, N = 64 }}]
bench = [{{ M = 64, N = 64 }}]
'''

KERNEL = '''
import torch
import triton
import triton.language as tl


@triton.jit
def _silu_rows(x_ptr, y_ptr, stride_x_row, stride_x_col, N, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    for start in range(0, N, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < N
        x = tl.load(x_ptr + row * stride_x_row + cols * stride_x_col, mask=mask, other=0.0).to(tl.float32)
        y = x / (1.0 + tl.exp(-x))
        tl.store(y_ptr + row * N + cols, y.to(y_ptr.dtype.element_ty), mask=mask)


def silu(x, *, max_block=None):
    N = x.shape[-1]
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if y.numel() == 0:
        return y
    x2 = x if x.dim() == 2 else x.view(-1, N)
    block = min(1024, max_block or 1024)
    _silu_rows[(x2.shape[0],)](x2, y, x2.stride(0), x2.stride(1), N, BLOCK=block)
    return y
'''

# name -> (replacements on KERNEL, check that must reject it, words in its message)
VARIANTS = {
    "correct": ([], "", ""),
    "output_aliases_input": ([("_silu_rows[(x2.shape[0],)](x2, y,", "_silu_rows[(x2.shape[0],)](x2, x2,"),
                              ("BLOCK=block)\n    return y", "BLOCK=block)\n    return x")], "outputs",
                             "shares storage with input"),
    "bf16_output": ([("y = torch.empty(x.shape, dtype=x.dtype,", "y = torch.empty(x.shape, dtype=torch.bfloat16,")],
                    "outputs", "dtype bfloat16, expected float32"),
    "decays_input": ([("        tl.store(y_ptr + row * N + cols, y.to(y_ptr.dtype.element_ty), mask=mask)",
                       "        tl.store(y_ptr + row * N + cols, y.to(y_ptr.dtype.element_ty), mask=mask)\n"
                       "        tl.store(x_ptr + row * stride_x_row + cols * stride_x_col, x * 0.999, mask=mask)")],
                     "inputs", "changed during the call"),
    "reused_buffer": ([("def silu(x, *, max_block=None):\n    N = x.shape[-1]\n"
                        "    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)",
                        "@functools.lru_cache\ndef _buffer(shape, dtype, device):\n"
                        "    return torch.empty(shape, dtype=dtype, device=device)\n\n\n"
                        "def silu(x, *, max_block=None):\n    N = x.shape[-1]\n"
                        "    y = _buffer(x.shape, x.dtype, x.device)"),
                       ("import torch\n", "import functools\nimport torch\n")],
                      # the cache is state between calls: refused before it runs (the run-time rule on an earlier
                      # call's output is tested in test_verify_compare.py)
                      "static", "functools.lru_cache is not allowed"),
    "wrong_above_256": ([("        y = x / (1.0 + tl.exp(-x))",
                          "        y = tl.where(tl.abs(x) > 256, 0.0, x / (1.0 + tl.exp(-x)))")],
                        "accuracy", "large magnitude"),
    "only_2d": ([("    x2 = x if x.dim() == 2 else x.view(-1, N)", "    x2 = x")], "accuracy", "several leading dims"),
    "ignores_column_stride": ([("cols * stride_x_col", "cols")], "accuracy", "transposed"),
    "broken_default": ([("block = min(1024, max_block or 1024)", "block = min(1024, max_block or 3)")],
                       "accuracy", ""),
    "torch_in_grid": ([("_silu_rows[(x2.shape[0],)](x2, y,",
                        "_silu_rows[lambda meta: (x2.shape[0] + 0 * int(x2.sigmoid().sum() > 0),)](x2, y,")],
                      "anticheat", "aten::"),
    "getattr_reflection": ([("    N = x.shape[-1]\n    y =",
                             "    N = x.shape[-1]\n    f = getattr(torch, 'o' + 's')\n    y =")],
                           "static", "getattr"),
    "module_state": ([("def silu(", "_CALLS = [0]\n\n\ndef silu(")], "static", "mutable constant"),
}


def _folder(root: Path, name: str, kernel: str, spec: str = SPEC) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "kernel.py").write_text(kernel)
    (folder / "spec.toml").write_text(spec.format(name=name))
    return folder


@pytest.fixture(scope="module")
def verdicts(tmp_path_factory):
    if sandbox_problem():
        pytest.skip(sandbox_problem())
    root = tmp_path_factory.mktemp("cands")
    folders = []
    for name, (edits, _, _) in VARIANTS.items():
        kernel = KERNEL
        for old, new in edits:
            assert old in kernel, (name, old)
            kernel = kernel.replace(old, new)
        folders.append(_folder(root, name, textwrap.dedent(kernel)))
    result = verify_many(folders, "interpreter", jobs=2, trials=2, timeout=120)
    yield {v.op: v for v in result}
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_each_bug_is_caught_by_its_check(verdicts, name):
    _, check, words = VARIANTS[name]
    v = verdicts[name]
    assert v.check == check, f"{name}: {v.check}: {v.message}"
    assert v.passed is (check == "")
    assert words in v.message
    if check not in ("static", "spec"):
        assert v.sandboxed and not v.trusted_reference


def test_correct_candidate_covers_every_case(verdicts):
    v = verdicts["correct"]
    cases = {r["case"].split(" {")[0] for r in v.accuracy}
    assert {"strided rows", "transposed", "several leading dims", "large magnitude", "zero and constant rows",
            "one row", "non-power-of-two", "longer than one block", "zero rows", "repeated calls",
            "ghost replay"} <= cases
