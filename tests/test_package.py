"""Packaging promises: what `import kernelgen` loads, and the interpreter self-test."""

import subprocess
import sys

import pytest

from kernelgen.errors import BackendError


def test_import_kernelgen_loads_only_torch_and_triton():
    code = (
        "import sys, kernelgen; kernelgen.ops.rms_norm; "
        "print(sorted(m for m in ('chromadb', 'langgraph', 'openai', 'typer', 'rich', 'matplotlib') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_interpreter_self_test_passes_on_this_triton(interpreter):
    from kernelgen.backends.interpreter_probe import loops_work

    assert loops_work() is None


def test_broken_interpreter_loops_give_one_clear_error(monkeypatch, interpreter):
    from kernelgen.backends import interpreter as module

    monkeypatch.setattr(module, "_probe_result", "TypeError('only 0-dimensional arrays')")
    with pytest.raises(BackendError, match=r"cannot run loops with NumPy .*install numpy<2.3"):
        module.InterpreterBackend().prepare()
