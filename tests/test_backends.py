"""Backends: built-ins, and a plugin registered through the `kernelgen.backends` entry-point group."""

import json
import sys
import textwrap

import pytest
import torch
from typer.testing import CliRunner

from kernelgen import backends
from kernelgen.cli import app
from kernelgen.errors import BackendError

PLUGIN = textwrap.dedent(
    """
    from kernelgen.backends.interpreter import InterpreterBackend

    class TinyChip(InterpreterBackend):
        '''A constrained chip: interpreter-based, no bf16, small blocks.'''
        name = "tinychip"
        dtypes = ("float32", "float16")
        max_block_size = 256
        description = "test plugin"
    """
)


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    (tmp_path / "tinychip_plugin.py").write_text(PLUGIN)
    dist = tmp_path / "tinychip_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tinychip-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[kernelgen.backends]\ntinychip = tinychip_plugin:TinyChip\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    backends._instances.pop("tinychip", None)
    yield
    backends._instances.pop("tinychip", None)
    sys.modules.pop("tinychip_plugin", None)


def test_plugin_backend_is_listed_and_selectable(plugin, interpreter):
    assert "tinychip" in backends.backend_names()
    chip = backends.get_backend("tinychip")
    assert chip.available() and chip.max_block_size == 256 and not chip.supports_dtype(torch.bfloat16)
    listed = json.loads(CliRunner().invoke(app, ["backends", "--json"]).stdout)
    assert any(b["name"] == "tinychip" and b["max_block_size"] == 256 for b in listed)
    result = CliRunner().invoke(app, ["list", "--backend", "tinychip", "--json"])
    assert result.exit_code == 0 and "tinychip" in json.loads(result.stdout)[0]["backends"]


def test_plugin_backend_runs_the_verifier_within_its_constraints(plugin, interpreter):
    from kernelgen.library import get_op
    from kernelgen.verify.accuracy import check_accuracy

    op = get_op("rms_norm")
    result = check_accuracy(op.spec, op.launcher(), backends.get_backend("tinychip"), trials=1)
    assert result.passed, result.message
    assert {r["dtype"] for r in result.rows} == {"float32", "float16"}


def test_unknown_backend_raises_backend_error():
    with pytest.raises(BackendError, match="unknown backend"):
        backends.get_backend("nope")


def test_cuda_backend_is_unavailable_under_the_interpreter(interpreter):
    assert not backends.get_backend("cuda").available()
    assert backends.default_backend() is None
