"""Reference files: a reference(...) function with INPUTS / SHAPES or get_inputs(), and KernelBench problems
(module parameters become inputs, sizes become named dims, test shapes are scaled down)."""

import math
import os
from pathlib import Path

import pytest
import torch

from kernelgen.frontends.reference_file import ReferenceFileError, load_reference_file, portable_source
from kernelgen.verify.static import check_reference

KERNELBENCH = Path(os.environ.get("KERNELGEN_KERNELBENCH")
                   or Path(__file__).resolve().parents[1].parent / "shared" / "kernelbench")
needs_kernelbench = pytest.mark.skipif(not KERNELBENCH.is_dir(),
                                       reason=f"the KernelBench problems are not at {KERNELBENCH}")

SILU_BIAS = '''import torch
import torch.nn.functional as F

INPUTS = {"x": ["M", "N"], "bias": ["N"]}
SHAPES = [{"M": 4, "N": 64}, {"M": 3, "N": 200}]
BENCH_SHAPES = [{"M": 4096, "N": 4096}]


def reference(x, bias):
    return F.silu(x + bias)
'''


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_reference_with_inputs_and_shapes(tmp_path):
    ref = load_reference_file(write(tmp_path, "silu_bias.py", SILU_BIAS))
    assert ref.origin == "file" and ref.name == "silu_bias" and ref.request.endswith("silu_bias.py")
    assert [(i.name, i.shape) for i in ref.inputs] == [("x", ("M", "N")), ("bias", ("N",))]
    assert ref.test_shapes == [{"M": 4, "N": 64}, {"M": 3, "N": 200}]
    assert ref.bench_shapes == [{"M": 4096, "N": 4096}]
    # the source is the file as written (its imports pass the reference check), less INPUTS / SHAPES
    assert "import torch.nn.functional as F" in ref.source and "INPUTS" not in ref.source and "SHAPES" not in ref.source
    assert check_reference(ref.source, "reference") is None
    x, b = torch.randn(3, 8), torch.randn(8)
    torch.testing.assert_close(ref.function()(x, b), (x + b) * torch.sigmoid(x + b))


def test_reference_with_get_inputs_names_equal_sizes_alike(tmp_path):
    text = ('def reference(x, w, s):\n    return x * w * s\n\n'
            'def get_inputs():\n    return [torch.randn(5, 7), torch.randn(1, 7), 2.0]\n')
    ref = load_reference_file(write(tmp_path, "scaled.py", text))
    assert [(i.name, i.kind, i.shape) for i in ref.inputs] == [
        ("x", "tensor", ("M", "N")), ("w", "tensor", ("1", "N")), ("s", "float", ())]
    assert ref.inputs[2].value == 2.0
    assert ref.test_shapes == [{"N": 7, "M": 5}]


@pytest.mark.parametrize("text, words", [
    ("x = 1\n", "defines neither reference(...) nor a KernelBench problem"),
    ("def reference(x):\n    return x\n", "needs its inputs: INPUTS + SHAPES, or get_inputs()"),
    ('INPUTS = {"y": ["M"]}\nSHAPES = [{"M": 2}]\ndef reference(x):\n    return x\n',
     "INPUTS must be a table with reference's parameters in order: x"),
    ('INPUTS = {"x": ["M", "N"]}\nSHAPES = [{"M": 2}]\ndef reference(x):\n    return x\n', "shape 0 misses N"),
    ("def reference(x:\n", "not valid Python"),
    ("raise RuntimeError('boom')\n", "running the file failed: RuntimeError: boom"),
])
def test_bad_reference_files_are_refused_in_one_line(tmp_path, text, words):
    with pytest.raises(ReferenceFileError) as err:
        load_reference_file(write(tmp_path, "bad.py", text))
    assert words in str(err.value) and "\n" not in str(err.value)


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(ReferenceFileError, match="cannot read the reference file"):
        load_reference_file(tmp_path / "nope.py")


def test_portable_source_keeps_allowed_imports_and_rewrites_other_torch_submodules():
    text = "import torch.nn as nn\nfrom torch.nn import functional as F2\nimport torch.distributions as D\n" \
           "import math\nx = 1\n"
    out = portable_source(text)
    assert out.splitlines() == ["import torch.nn as nn", "from torch.nn import functional as F2",
                                "D = torch.distributions", "import math", "x = 1"]


# ---- KernelBench -----------------------------------------------------------------------------------
@needs_kernelbench
def test_kernelbench_gemm_parameters_become_inputs_with_named_dims():
    ref = load_reference_file(KERNELBENCH / "level2" / "76_Gemm_Add_ReLU.py")
    assert ref.origin == "kernelbench" and ref.name == "kb_l2_76_gemm_add_relu"
    # forward's x, then the module's own bias and the Linear's weight, sizes named after the problem's globals
    # (in_features and out_features are both 8192: one dim, so both follow it)
    assert [(i.name, i.shape) for i in ref.inputs] == [
        ("x", ("batch_size", "in_features")), ("bias", ("in_features",)),
        ("gemm_weight", ("in_features", "in_features"))]
    assert ref.bench_shapes == [{"batch_size": 1024, "in_features": 8192}]
    assert all(s["batch_size"] * s["in_features"] <= 1 << 15 for s in ref.test_shapes)
    assert check_reference(ref.source, "reference") is None
    dims = ref.test_shapes[0]
    x = torch.randn(dims["batch_size"], dims["in_features"])
    b, w = torch.randn(dims["in_features"]), torch.randn(dims["in_features"], dims["in_features"])
    want = torch.clamp(torch.einsum("mk,nk->mn", x.double(), w.double()) + b.double(), min=0).float()
    torch.testing.assert_close(ref.function()(x, b, w), want, atol=1e-4, rtol=1e-4)


@needs_kernelbench
def test_kernelbench_conv_scales_down_and_runs_at_the_test_shape():
    ref = load_reference_file(KERNELBENCH / "level2" / "1_Conv2D_ReLU_BiasAdd.py")
    assert [i.name for i in ref.inputs] == ["x", "bias", "conv_weight", "conv_bias"]
    assert ref.inputs[2].shape[2:] == ("3", "3")  # the kernel size is not a size that scales
    from kernelgen.codegen.trace import example_inputs

    args = example_inputs(ref, ref.test_shapes[0])
    assert max(math.prod(a.shape) for a in args) <= 1 << 15
    x, bias, w, cb = args
    want = torch.relu(torch.nn.functional.conv2d(x, w, cb)) + bias
    torch.testing.assert_close(ref.function()(*args), want)


@needs_kernelbench
def test_kernelbench_batch_norm_runs_in_eval_mode_on_its_running_statistics():
    ref = load_reference_file(KERNELBENCH / "level1" / "33_BatchNorm.py")
    names = [i.name for i in ref.inputs]
    assert names == ["x", "bn_weight", "bn_bias", "bn_running_mean", "bn_running_var"]
    assert ref.inputs[4].fill == "positive"
    from kernelgen.codegen.trace import example_inputs

    x, w, b, mean, var = example_inputs(ref, ref.test_shapes[0])
    view = (1, -1, 1, 1)
    want = (x - mean.view(view)) / torch.sqrt(var.view(view) + 1e-5) * w.view(view) + b.view(view)
    torch.testing.assert_close(ref.function()(x, w, b, mean, var), want, atol=1e-5, rtol=1e-5)
