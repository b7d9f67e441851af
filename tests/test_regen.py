"""kernelgen regen: a plugin backend that behaves like a constrained new chip, and the library brought to it.

`tinychip` (defined here, registered through a dist-info entry point) runs kernels in Triton's interpreter
but, like a chip with small register files, rejects any launch whose BLOCK* constexpr exceeds 256 elements
("out of resources"); it has no bf16 and its own tuning space. The temporary library holds copies of
rms_norm and softmax (which respect `max_block` and must be kept), an op with a `block_size` launch
parameter that defaults too large (must be re-tuned), and an rms norm whose single-block kernel cannot fit
(must be regenerated through the composer as `variants/tinychip/kernel.py`).
"""

import dataclasses
import json
import shutil
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kernelgen import backends
from kernelgen.cli import app
from kernelgen.library import builtin_library, load_op, op_status, source_hash
from kernelgen.spec import load_spec, save_spec

PLUGIN = textwrap.dedent(
    '''
    from kernelgen.backends.interpreter import InterpreterBackend


    class TinyChip(InterpreterBackend):
        """A constrained chip emulated on the interpreter: no bf16, blocks of at most 256 elements."""

        name = "tinychip"
        dtypes = ("float32", "float16")
        max_block_size = 256
        description = "test plugin: constrained chip"

        def prepare(self):
            super().prepare()
            # Only ever called in a verifier worker process of this backend (the sandbox), so the check
            # below never leaks into a process that runs other backends.
            from triton.runtime.interpreter import InterpretedFunction

            run = InterpretedFunction.run
            if getattr(run, "tinychip", False):
                return
            limit = self.max_block_size

            def checked(fn, *args, grid, warmup, **kwargs):
                big = {k: v for k, v in kwargs.items() if k.startswith("BLOCK") and isinstance(v, int) and v > limit}
                if big:
                    raise RuntimeError(f"out of resources: {big} exceeds tinychip's {limit}-element blocks")
                return run(fn, *args, grid=grid, warmup=warmup, **kwargs)

            checked.tinychip = True
            InterpretedFunction.run = checked

        def tuning_space(self):
            return [{"block_size": 512}, {"block_size": 256}, {"block_size": 128}]
    '''
)

RELU_SQUARE_KERNEL = textwrap.dedent(
    '''
    """Squared ReLU, one program per (row, column tile)."""

    import torch
    import triton
    import triton.language as tl


    @triton.jit
    def _relu_square(x_ptr, y_ptr, stride_x_row, stride_x_col, N, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = cols < N
        x = tl.load(x_ptr + row * stride_x_row + cols * stride_x_col, mask=mask, other=0.0).to(tl.float32)
        r = tl.maximum(x, 0.0)
        tl.store(y_ptr + row * N + cols, (r * r).to(y_ptr.dtype.element_ty), mask=mask)


    def relu_square(x, *, block_size=1024):
        N = x.shape[-1]
        x2 = x.view(-1, N) if x.dim() != 2 else x
        y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        M = x2.shape[0]
        if M == 0 or N == 0:
            return y
        _relu_square[(M, (N + block_size - 1) // block_size)](x2, y, x2.stride(0), x2.stride(1), N, BLOCK=block_size)
        return y
    '''
)

RELU_SQUARE_SPEC = textwrap.dedent(
    '''
    name = "relu_square"
    description = "Squared ReLU of every element: y = relu(x)^2."
    tags = ["pointwise", "activation"]
    family = "activation"
    reference = """
    def reference(x):
        return torch.relu(x) ** 2
    """
    dtypes = ["float32", "float16", "bfloat16"]

    [signature]
    function = "relu_square"
    outputs = ["y"]

    [[inputs]]
    name = "x"
    shape = ["M", "N"]

    [shapes]
    test = [{ M = 3, N = 700 }]
    bench = [{ M = 64, N = 4096 }]

    [model]
    bytes = "2 * M * N * elem"
    flops = "2 * M * N"
    '''
)

# An rms norm that holds the whole row in one block: fine where blocks are large, too big for tinychip.
WIDE_RMS_KERNEL = textwrap.dedent(
    '''
    """RMS norm, the whole row in one block (no looped variant, no max_block)."""

    import torch
    import triton
    import triton.language as tl


    @triton.jit(do_not_specialize=["eps"])
    def _wide_rms(x_ptr, w_ptr, y_ptr, stride_x_row, stride_x_col, N, eps, BLOCK_N: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        offsets = tl.arange(0, BLOCK_N)
        mask = offsets < N
        x = tl.load(x_ptr + row * stride_x_row + offsets * stride_x_col, mask=mask, other=0.0).to(tl.float32)
        rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / N + eps)
        w = tl.load(w_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        tl.store(y_ptr + row * N + offsets, (x * rstd * w).to(y_ptr.dtype.element_ty), mask=mask)


    def wide_rms(x, weight, eps=1e-6):
        N = x.shape[-1]
        x2 = x.view(-1, N) if x.dim() != 2 else x
        y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        M = x2.shape[0]
        if M == 0 or N == 0:
            return y
        _wide_rms[(M,)](x2, weight, y, x2.stride(0), x2.stride(1), N, float(eps),
                        BLOCK_N=1 << max(0, N - 1).bit_length())
        return y
    '''
)


@pytest.fixture
def tinychip(tmp_path, monkeypatch):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "tinychip_regen_plugin.py").write_text(PLUGIN)
    dist = plugins / "tinychip_regen_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tinychip-regen-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[kernelgen.backends]\ntinychip = tinychip_regen_plugin:TinyChip\n")
    monkeypatch.syspath_prepend(str(plugins))
    # The verifier's worker processes find the plugin the way an installed one is found: on their path.
    monkeypatch.setenv("PYTHONPATH", str(plugins))
    backends._instances.pop("tinychip", None)
    yield "tinychip"
    backends._instances.pop("tinychip", None)
    sys.modules.pop("tinychip_regen_plugin", None)


def _library(tmp_path: Path) -> Path:
    lib = tmp_path / "lib"
    ops = lib / "ops"
    ops.mkdir(parents=True)
    for name in ("rms_norm", "softmax"):  # copies, with their cuda records
        shutil.copytree(builtin_library() / "ops" / name, ops / name)
    (ops / "relu_square").mkdir()
    (ops / "relu_square" / "kernel.py").write_text(RELU_SQUARE_KERNEL)
    (ops / "relu_square" / "spec.toml").write_text(RELU_SQUARE_SPEC)
    base = load_spec(builtin_library() / "ops" / "rms_norm" / "spec.toml")
    wide = dataclasses.replace(base, name="wide_rms", function="wide_rms", aten=[], request="rms norm",
                               test_shapes=[{"M": 3, "N": 300}])
    (ops / "wide_rms").mkdir()
    save_spec(wide, ops / "wide_rms" / "spec.toml")
    (ops / "wide_rms" / "kernel.py").write_text(WIDE_RMS_KERNEL)
    return lib


def _snapshot(lib: Path, keep: str) -> dict[str, bytes]:
    """Every file of the library except the ones `keep` (the regenerated backend) may write."""
    return {str(p.relative_to(lib)): p.read_bytes() for p in sorted(lib.rglob("*")) if p.is_file()
            and p.name != f"{keep}.json" and f"variants/{keep}" not in str(p)}


def test_regen_brings_the_library_to_a_constrained_plugin_chip(tinychip, interpreter, tmp_path):
    from kernelgen.verify.sandbox import verify_many

    lib = _library(tmp_path)
    ops = ["relu_square", "rms_norm", "softmax", "wide_rms"]
    # Every op passes on the interpreter (big blocks are fine there): those records must survive regen.
    pre = verify_many([lib / "ops" / n for n in ops], "interpreter", jobs=2, trials=1, write=True)
    assert all(v.passed for v in pre), [(v.op, v.message) for v in pre if not v.passed]
    before = _snapshot(lib, tinychip)

    out = tmp_path / "report"
    result = CliRunner().invoke(app, ["regen", "--backend", tinychip, "--library", str(lib), "--trials", "1",
                                      "--jobs", "2", "--out", str(out), "--no-llm", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    got = {o["op"]: o for o in doc["ops"]}
    # The verifier calls launchers with their defaults (as production does): on tinychip's small blocks the
    # library's rms_norm and softmax need the backend's max_block as their tuning.
    assert {n: got[n]["action"] for n in ops} == {
        "relu_square": "retuned", "rms_norm": "retuned", "softmax": "retuned", "wide_rms": "regenerated"}
    assert not got["relu_square"]["passed_before"] and "out of resources" in got["relu_square"]["before"]["message"]
    assert not got["wide_rms"]["passed_before"] and "out of resources" in got["wide_rms"]["before"]["message"]
    assert all(o["passed_after"] for o in got.values())
    assert doc["summary"]["passing_before"] == 0 and doc["summary"]["passing_after"] == 4

    # What was written: a tuning config for relu_square (its largest block that fits), a variant for wide_rms.
    tune = json.loads((lib / "ops" / "relu_square" / "tune" / "tinychip.json").read_text())
    assert tune["launch"] == {"block_size": 256}
    assert (lib / "ops" / "wide_rms" / "variants" / "tinychip" / "kernel.py").is_file()
    assert json.loads((lib / "ops" / "rms_norm" / "tune" / "tinychip.json").read_text())["launch"] == {"max_block": 256}
    assert not (lib / "ops" / "rms_norm" / "variants").exists()
    # Nothing else changed: kernels, specs, other backends' records are byte-identical and still fresh.
    assert _snapshot(lib, tinychip) == before
    for n in ops:
        op = load_op(lib / "ops" / n)
        assert op_status(op, "interpreter")["status"] == "verified", n
        assert op.record(tinychip)["source_hash"] == source_hash(op.path, tinychip)
    assert op_status(load_op(lib / "ops" / "rms_norm"), "cuda")["status"] == "verified"

    listed = CliRunner().invoke(app, ["list", "--backend", tinychip, "--library", str(lib), "--json"])
    assert listed.exit_code == 0, listed.output
    status = {o["name"]: o["backends"][tinychip]["status"] for o in json.loads(listed.stdout)}
    assert {n: status[n] for n in ops} == dict.fromkeys(ops, "verified")

    report = json.loads((out / "report.json").read_text())
    assert report["regen"]["summary"]["passing_after"] == 4
    assert "kernelgen regen on tinychip" in (out / "report.md").read_text()
    for png in ("regen.png", "speedup.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_variant_and_a_tuning_config_apply_only_to_their_backend(interpreter, tmp_path, rng_seed):
    """The library loader: `variants/<backend>/kernel.py` and `tune/<backend>.json` change what that backend
    runs and its source hash; the plain op (and every other backend) is untouched."""
    import torch

    lib = _library(tmp_path)
    op_path = lib / "ops" / "relu_square"
    plain = source_hash(op_path)
    assert source_hash(op_path, "interpreter") == plain  # no variant, no tuning: the old hash
    (op_path / "tune").mkdir()
    (op_path / "tune" / "tinychip.json").write_text(json.dumps({"launch": {"block_size": 64}}))
    assert source_hash(op_path, "tinychip") != plain and source_hash(op_path, "interpreter") == plain
    op = load_op(op_path)
    calls = []
    tuned, untouched = op.launcher("tinychip"), op.launcher()
    module = op.module("tinychip")
    kernel = module._relu_square
    original = kernel.run

    def spy(*args, **kwargs):
        calls.append(kwargs["BLOCK"])
        return original(*args, **kwargs)

    kernel.run = spy
    try:
        x = torch.randn(3, 200, generator=torch.Generator().manual_seed(rng_seed))
        torch.testing.assert_close(tuned(x), torch.relu(x) ** 2)
    finally:
        kernel.run = original
    assert calls == [64] and untouched is not tuned
    variant = op_path / "variants" / "tinychip" / "kernel.py"
    variant.parent.mkdir(parents=True)
    variant.write_text(RELU_SQUARE_KERNEL.replace("Squared ReLU,", "Squared ReLU (tinychip),"))
    fresh = load_op(op_path)
    assert "tinychip" in fresh.module("tinychip").__doc__ and "tinychip" not in fresh.module().__doc__
    assert source_hash(op_path, "interpreter") == plain


def test_regen_rejects_bad_usage_without_running(tinychip, tmp_path):
    lib = _library(tmp_path)
    runner = CliRunner()
    for args, words in ((["--backend", "nope"], "unknown backend"),
                        (["--backend", tinychip, "--executor", "slurm"], "--executor"),
                        (["--backend", tinychip, "--library", str(lib), "--ops", "nope"], "no op named"),
                        (["--backend", tinychip, "--jobs", "0"], "--jobs")):
        result = runner.invoke(app, ["regen", *args])
        assert result.exit_code == 2 and words in result.output, (args, result.output)
    assert not list(lib.rglob("tinychip.json"))


def test_ray_executor_gives_the_local_verdicts(interpreter, tmp_path):
    """verify_many_ray on a local Ray instance (started here) against verify_many: same verdicts, and the
    same records written by the driver."""
    import ray  # in the test extra: a missing install fails the test rather than skipping it

    from kernelgen.verify.ray_executor import verify_many_ray
    from kernelgen.verify.sandbox import verify_many

    lib = _library(tmp_path)
    folders = [lib / "ops" / "relu_square", lib / "ops" / "wide_rms"]
    (folders[1] / "kernel.py").write_text(WIDE_RMS_KERNEL.replace("* w).to(", "+ w).to("))  # a wrong answer
    local = verify_many(folders, "interpreter", jobs=2, trials=1)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = verify_many_ray(folders, "interpreter", trials=1, write=True)
    finally:
        ray.shutdown()
    assert [(v.op, v.passed, v.check) for v in remote] == [(v.op, v.passed, v.check) for v in local]
    assert [v.passed for v in remote] == [True, False] and remote[1].check == "accuracy"
    assert [v.source_hash for v in remote] == [v.source_hash for v in local]
    assert load_op(folders[0]).record("interpreter")["passed"] is True  # written by the driver
    assert load_op(folders[1]).record("interpreter")["passed"] is False


def test_regen_candidates_start_from_the_ops_own_reference():
    """regen's first candidate is what `kernelgen new` would generate from the op's reference (trace, lower,
    templates), named as the op's spec names its launcher; a reference no template fits gives a note saying
    why (softmax's `dim` decides what is computed, so it cannot be a kernel argument)."""
    import ast

    from kernelgen.regen import _reference_source

    notes: list[str] = []
    op = load_op(builtin_library() / "ops" / "rms_norm")
    source = _reference_source(op, notes)
    assert source is not None and notes == []
    defined = {n.name for n in ast.parse(source).body if isinstance(n, ast.FunctionDef)}
    defined |= {t.id for n in ast.parse(source).body if isinstance(n, ast.Assign) for t in n.targets
                if isinstance(t, ast.Name)}
    assert op.spec.function in defined
    assert _reference_source(load_op(builtin_library() / "ops" / "softmax"), notes) is None
    assert len(notes) == 1 and "scalar input dim decides what the reference computes" in notes[0]
