"""Spec repair end to end: `kernelgen new --llm` against the loopback chat-completions server, on the
interpreter, into a temporary library. The LLM's first cross-entropy spec has a reference that raises on
its own inputs (targets out of range); that is a spec error, sent back as such, and the revised spec (index
targets) is verified and merged within --rounds 2."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from llm_answers import CE_ANSWER_BROKEN, CE_ANSWER_FIXED, CE_KERNEL, CE_REQUEST, CE_SPEC_BROKEN
from llm_server import ScriptedLLM
from typer.testing import CliRunner

from kernelgen.cli import app

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@pytest.fixture
def env(monkeypatch, tmp_path):
    for var in ("OPENAI_API_KEY", "KERNELGEN_BASE_URL", "KERNELGEN_MODEL", "OPENAI_BASE_URL", "KERNELGEN_LIBRARY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KERNELGEN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("KERNELGEN_LLM_BACKOFF", "0.05")
    return monkeypatch


def cli(*args: str) -> tuple[int, dict | None, str]:
    res = CliRunner().invoke(app, [*args, "--json"])
    if res.exception and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, (json.loads(res.stdout) if res.stdout.strip() else None), res.stderr


def test_broken_reference_is_a_spec_error_repaired_within_two_rounds_and_merged(env, tmp_path):
    lib = tmp_path / "lib"
    with ScriptedLLM([CE_ANSWER_BROKEN, CE_ANSWER_FIXED]) as srv:
        env.setenv("KERNELGEN_BASE_URL", srv.url)
        code, res, err = cli("new", CE_REQUEST, "--library", str(lib), "--backend", "interpreter",
                             "--candidates", "1", "--rounds", "2", "--trials", "1")
        prompts = srv.user_prompts()
    assert code == 0, err
    # the built-in library has a cross_entropy op (the mean loss): the merge never shadows it, so a suffix
    assert res["status"] == "merged" and res["spec_origin"] == "llm" and res["name"] == "cross_entropy_2"
    assert res["winner"] == "llm-1.r1" and res["rounds"] == 1
    first, fixed = res["candidates"]
    # the broken reference is filed as a spec error of the round, not as the kernel's accuracy failure
    verdict = first["backends"]["interpreter"]
    assert (first["id"], first["passed"], verdict["check"]) == ("llm-1", False, "spec")
    assert "reference raised on the spec's own inputs" in verdict["message"] and "IndexError" in verdict["message"]
    assert (fixed["parent"], fixed["round"], fixed["passed"]) == ("llm-1", 1, True)
    assert any("revised the spec" in m for m in res["messages"])
    assert "spec error" in err and "revised spec.toml" in err  # shown in the progress output
    # the second prompt was a spec repair: the problem, the spec and the kernel, and the fields it may use
    assert len(prompts) == 2
    assert "is wrong, so no kernel can be verified" in prompts[1] and "IndexError" in prompts[1]
    assert CE_SPEC_BROKEN.splitlines()[0] in prompts[1] and "def cross_entropy(" in prompts[1]
    assert 'fill = "index"' in prompts[1]
    # merged: the revised spec (index targets), the user's request, the kernel, a passing record
    folder = lib / "ops" / res["name"]
    spec = tomllib.loads((folder / "spec.toml").read_text())
    target = next(i for i in spec["inputs"] if i["name"] == "target")
    assert (target["fill"], target["high"], target["sentinel"], target["dtype"]) == ("index", "N", -100, "int64")
    assert spec["request"] == CE_REQUEST
    assert (folder / "kernel.py").read_text() == CE_KERNEL
    record = json.loads((folder / "verified" / "interpreter.json").read_text())
    assert record["passed"] is True
    # the merged op computes cross entropy (fresh inputs, a long strided row, ignored targets)
    env.setenv("KERNELGEN_LIBRARY", str(lib))
    import kernelgen

    logits = torch.randn(3, 1500)[:, :1300]
    target = torch.randint(0, 1300, (3,))
    target[1] = -100
    want = torch.nn.functional.cross_entropy(logits.double(), target, reduction="none")
    merged = getattr(kernelgen.ops, res["name"])
    torch.testing.assert_close(merged(logits, target, -100).double(), want, atol=1e-5, rtol=1e-5)
    assert merged(logits, target, -100)[1].item() == 0.0
