"""The spec the LLM writes: retried with its problem when unusable, row/column dims that name the spec's
own dims (so the edge cases run), index inputs, a reference checked on its own inputs in a child process,
spec repair when it fails, relevant prompt examples, and LLM retries shown in the progress output. Answers
come from the loopback chat-completions server, written as strong code models write them."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from llm_answers import (
    CE_KERNEL,
    CE_SPEC_BROKEN,
    CE_SPEC_FIXED,
    GN_ANSWER,
    GN_ANSWER_KERNEL_ONLY,
    GN_ANSWER_NO_DIMS,
    GN_KERNEL,
    GN_REQUEST,
)
from llm_server import ScriptedLLM
from typer.testing import CliRunner

from kernelgen.agents import nodes
from kernelgen.agents.check import _spec_key
from kernelgen.agents.generate import _accept_llm_spec, _examples, cut_at_functions
from kernelgen.cli import app
from kernelgen.errors import SpecError
from kernelgen.spec import FILLS, FIXED_DTYPES, INPUT_KINDS, OpSpec, dump_spec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@pytest.fixture
def env(monkeypatch, tmp_path):
    for var in ("OPENAI_API_KEY", "KERNELGEN_BASE_URL", "KERNELGEN_MODEL", "OPENAI_BASE_URL", "KERNELGEN_LIBRARY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KERNELGEN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("KERNELGEN_LLM_BACKOFF", "0.01")
    return monkeypatch


def cli(*args: str) -> tuple[int, dict | None, str]:
    res = CliRunner().invoke(app, [*args, "--json"])
    if res.exception and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, (json.loads(res.stdout) if res.stdout.strip() else None), res.stderr


def spec_of(text: str) -> OpSpec:
    return OpSpec.from_dict(tomllib.loads(text), "<test>")


# ---- 1 and 3: spec answers retried with their problem; row/col dims of the spec's own dims ----------
def test_unusable_spec_answers_are_retried_and_group_norm_edge_cases_run_on_its_dims(env, tmp_path):
    lib = tmp_path / "lib"
    with ScriptedLLM([GN_ANSWER_KERNEL_ONLY, GN_ANSWER_NO_DIMS, GN_ANSWER]) as srv:
        env.setenv("KERNELGEN_BASE_URL", srv.url)
        code, res, err = cli("new", GN_REQUEST, "--library", str(lib), "--backend", "interpreter",
                             "--candidates", "1", "--rounds", "2", "--trials", "1")
        prompts = srv.user_prompts()
    assert code == 0, err
    assert res["status"] == "merged" and res["winner"] == "llm-1" and res["name"] == "group_norm"
    assert len(prompts) == 3
    # a python-only answer: the retry says what was missing
    assert "could not be used: the answer has no ```toml block with spec.toml (it has 2 python blocks)" in prompts[1]
    # default row/col dims that name no dim of [B, C, L]: sent back with the dims it has
    assert "row_dim = 'M' and col_dim = 'N' name no dim of the inputs (dims: ['B', 'C', 'L'])" in prompts[2]
    assert "try 3 of 3" in err
    # the prompt told how to name them for such dims
    assert 'group norm over x [B, C, L]: row_dim = "B", col_dim = "L"' in prompts[0]
    folder = lib / "ops" / "group_norm"
    spec = tomllib.loads((folder / "spec.toml").read_text())
    assert (spec["shapes"]["row_dim"], spec["shapes"]["col_dim"]) == ("B", "L")
    assert spec["request"] == GN_REQUEST and (folder / "kernel.py").read_text() == GN_KERNEL
    # the edge cases ran on the spec's own dims (B = 1 and 0 rows, L non-power-of-two and long)
    record = json.loads((folder / "verified" / "interpreter.json").read_text())
    cases = {row["case"].split(" {")[0]: row["dims"] for row in record["accuracy"] if "dims" in row}
    assert cases["one row"]["B"] == 1 and cases["zero rows"]["B"] == 0
    assert cases["non-power-of-two"]["L"] == 777 and cases["longer than one block"]["L"] > 1024


def test_spec_retries_are_bounded_by_rounds(env, tmp_path):
    with ScriptedLLM([GN_ANSWER_KERNEL_ONLY, GN_ANSWER_NO_DIMS, GN_ANSWER]) as srv:
        env.setenv("KERNELGEN_BASE_URL", srv.url)
        code, res, err = cli("new", GN_REQUEST, "--library", str(tmp_path / "lib"), "--backend", "interpreter",
                             "--candidates", "1", "--rounds", "1", "--trials", "1")
        assert len(srv.requests) == 2  # the first answer and one retry
    assert code == 2 and res["status"] == "not-understood"
    assert "name no dim of the inputs" in res["llm"]["error"] and "(after 2 answers)" in res["llm"]["error"]
    assert not (tmp_path / "lib").exists()


def test_accepted_spec_keeps_the_request_and_the_name_the_user_gave():
    text, name = _accept_llm_spec(CE_SPEC_FIXED, "my_xent", "the user's words")
    spec = spec_of(text)
    assert (name, spec.name, spec.request) == ("my_xent", "my_xent", "the user's words")
    with pytest.raises(SpecError, match="has no ```toml block"):
        _accept_llm_spec(None, None, "r")


# ---- 2: index inputs ----------------------------------------------------------------------------------
def test_index_inputs_stay_in_range_and_take_the_sentinel(rng_seed):
    from kernelgen.verify.inputs import make_inputs

    spec = spec_of(CE_SPEC_FIXED)
    target = spec.inputs[1]
    assert (target.fill, target.high, target.sentinel) == ("index", "N", -100)
    logits, tgt, ignore = make_inputs(spec, {"M": 64, "N": 7}, "float32", "cpu", rng_seed)
    assert tgt.dtype == torch.int64 and tgt.shape == (64,) and ignore == -100
    kept = tgt[tgt != -100]
    assert kept.numel() and int(kept.min()) >= 0 and int(kept.max()) < 7
    assert 0 < int((tgt == -100).sum()) < 64  # the ignore_index path is exercised, not everywhere
    assert len(set(kept.tolist())) > 1  # random, not a constant
    # an integer `high` and no sentinel
    doc = tomllib.loads(CE_SPEC_FIXED)
    doc["inputs"][1].update(high=5)
    del doc["inputs"][1]["sentinel"]
    got = make_inputs(OpSpec.from_dict(doc), {"M": 200, "N": 9}, "float32", "cpu", rng_seed)[1]
    assert int(got.min()) >= 0 and int(got.max()) < 5
    # the fields survive a save and load
    again = spec_of(dump_spec(spec))
    assert again.inputs[1] == target


@pytest.mark.parametrize("change, message", [
    ({"dtype": "input"}, "must be one of ('int32', 'int64') for fill = \"index\""),
    ({"high": "K"}, "'inputs[1].high' must name a dim of the inputs' shapes ['M', 'N'] or be a positive integer"),
    ({"high": 0}, "must be a dim name or a positive integer, got 0"),
    ({"sentinel": 1.5}, "'inputs[1].sentinel' must be an integer"),
    ({"fill": "randn"}, "'inputs[1].high' only applies to fill = \"index\""),
])
def test_index_inputs_are_validated(change, message):
    doc = tomllib.loads(CE_SPEC_FIXED)
    doc["inputs"][1].update(change)
    with pytest.raises(SpecError) as info:
        OpSpec.from_dict(doc, "<llm>")
    assert message in str(info.value)
    doc = tomllib.loads(CE_SPEC_FIXED)
    del doc["inputs"][1]["high"]
    with pytest.raises(SpecError, match="'inputs\\[1\\].high' is missing"):
        OpSpec.from_dict(doc, "<llm>")


def test_the_spec_prompt_documents_every_field_value_and_its_example_is_a_sound_spec(env, tmp_path):
    from kernelgen.agents.generate import _spec_prompt
    from kernelgen.agents.llm import prompts_dir
    from kernelgen.agents.spec_checks import reference_problem

    _, prompt = _spec_prompt({"request": "r", "options": {"library": str(tmp_path)}, "hits": []})
    for value in FILLS + FIXED_DTYPES + INPUT_KINDS:
        assert f'"{value}"' in prompt, value
    for word in ("high", "sentinel", "row_dim", "col_dim", "[tolerance.<dtype>]", "reason"):
        assert word in prompt
    example = (prompts_dir() / "spec_example.toml").read_text()
    assert example in prompt
    spec = spec_of(example)
    index = [i for i in spec.inputs if i.fill == "index"]
    assert index and index[0].dtype == "int64" and index[0].sentinel is not None
    assert (spec.row_dim, spec.col_dim) != ("M", "N") and spec.tolerances
    assert reference_problem(example) == ""  # it runs on its own inputs, every edge case included


# ---- 1: references checked on their own inputs, in a child process ----------------------------------
def test_reference_problems_are_found_in_a_child_process():  # (one child start each, about a second)
    from kernelgen.agents.spec_checks import reference_problem

    problem = reference_problem(CE_SPEC_BROKEN)
    assert "reference raised on the spec's own inputs" in problem and "IndexError" in problem
    nan = CE_SPEC_FIXED.replace('F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="none")',
                                'torch.log(logits).sum(dim=1)')
    assert "gives NaN in" in reference_problem(nan) and "choose fills inside it" in reference_problem(nan)
    two = CE_SPEC_FIXED.replace('reduction="none")', 'reduction="none"), logits')
    assert "returns 2 output(s) but [signature] outputs names 1" in reference_problem(two)
    hostile = CE_SPEC_FIXED.replace('    return F.cross', '    __import__("os").system("true")\n    return F.cross')
    assert reference_problem(hostile).startswith("the spec's reference fails the static check")
    missing = reference_problem(CE_SPEC_FIXED.replace("F.cross_entropy", "F.no_such_op"))
    assert "AttributeError" in missing and "no_such_op" in missing


def test_the_reference_never_runs_in_the_kernelgen_process(monkeypatch):
    from kernelgen.agents.spec_checks import reference_problem
    from kernelgen.verify import inputs

    def refuse(*args, **kwargs):
        raise AssertionError("an LLM-written reference was compiled in the parent")

    monkeypatch.setattr(inputs, "reference_function", refuse)
    assert "IndexError" in reference_problem(CE_SPEC_BROKEN)  # found, by the child


def test_a_spec_repair_answer_without_a_spec_is_sent_back_as_a_spec_error(env, tmp_path):
    spec_text, name = _accept_llm_spec(CE_SPEC_BROKEN, None, "cross entropy")
    problem = "the spec's reference raised on the spec's own inputs (test, seed 1): IndexError: Target 7"
    state = {"run_id": "s1", "request": "cross entropy", "name": name, "spec": spec_text, "spec_origin": "llm",
             "options": {"library": str(tmp_path / "lib"), "backends": ["interpreter"], "rounds": 2},
             "llm": {"enabled": True}, "round": 0,
             "spec_checks": {_spec_key(spec_text): problem},
             "candidates": [{"id": "llm-1", "origin": "llm", "round": 0, "parent": "", "kernel": CE_KERNEL,
                             "error": "", "verdicts": {"interpreter": {"passed": False, "check": "spec",
                                                                       "message": problem}}}]}
    kernel_only = f"The kernel is correct as it is:\n\n```python\n{CE_KERNEL}```\n"
    with ScriptedLLM([kernel_only]) as srv:
        env.setenv("KERNELGEN_BASE_URL", srv.url)
        assert nodes.after_verify(state) == "repair"
        out = nodes.repair(state)
        prompt = srv.user_prompts()[0]
    assert "IndexError: Target 7" in prompt and "Fix the spec" in prompt
    assert "spec" not in out  # nothing usable came back: the spec is unchanged
    new = out["candidates"][-1]
    assert (new["id"], new["parent"], new["error_check"]) == ("llm-1.r1", "llm-1", "spec")
    assert "no ```toml block with spec.toml (it has 1 python block)" in new["error"]
    state.update(out)
    verdict = nodes.verify(state)["candidates"][-1]["verdicts"]["interpreter"]
    assert verdict["check"] == "spec" and not verdict["passed"]


# ---- 5: prompt examples -------------------------------------------------------------------------------
def test_examples_are_relevant_whole_functions_of_the_matching_family(tmp_path):
    from kernelgen.library import builtin_library

    ops = builtin_library() / "ops"

    def hit(name, score):
        return {"name": name, "score": score, "path": str(ops / name)}

    # unrelated hits (0.07 and below) are left out; the conventions example says it is only that
    text = _examples({"request": "cosine similarity of rows", "hits": [hit("rotary_embedding", 0.07)]})
    assert "rotary_embedding" not in text and "shows the conventions only" in text
    # a norm request: norm ops pass at a lower score, and come before a better-scored op of another family
    state = {"request": "group norm over channels", "hits": [hit("softmax", 0.2), hit("layer_norm", 0.1),
                                                            hit("bias_gelu", 0.1)]}
    text = _examples(state)
    assert text.index("layer_norm/kernel.py") < text.index("softmax/kernel.py") and "bias_gelu" not in text
    # the spec's family decides when the spec is known
    text = _examples({"request": "x", "hits": [hit("softmax", 0.3), hit("rms_norm", 0.06)]}, family="norm")
    assert text.index("rms_norm/kernel.py") < text.index("softmax/kernel.py")
    # long files are cut between top-level blocks, never inside a function
    source = (ops / "rotary_embedding" / "kernel.py").read_text()
    cut = cut_at_functions(source, 1500)
    assert len(cut) < len(source) and cut.endswith("# ... (the rest of this file is left out)\n")
    kept = cut.rsplit("# ...", 1)[0].rstrip() + "\n"
    assert source.startswith(kept) and source[len(kept):].lstrip("\n")[:1] in ("@", "d", "c", "_")
    compile(kept, "cut", "exec")  # whole statements only
    assert cut_at_functions("x = 1\n", 100) == "x = 1\n"
    # a module docstring spanning lines stays whole; a decorator stays with its function
    doc = '"""Kernels.\nSecond line of the docstring.\n"""\n\nimport triton\n\n\n@triton.jit\ndef k(x):\n    pass\n'
    cut = cut_at_functions(doc + "\n\ndef launcher(x):\n    return x\n" + "# pad\n" * 20, len(doc) + 5)
    assert cut == doc.rstrip() + "\n# ... (the rest of this file is left out)\n"


# ---- 6: LLM retries in the progress output ------------------------------------------------------------
def test_llm_retries_are_shown_in_the_progress_output(env, tmp_path):
    seen: list[tuple[str, str]] = []
    spec_text, name = _accept_llm_spec(CE_SPEC_FIXED, None, "cross entropy")
    state = {"run_id": "p1", "request": "cross entropy", "name": name, "spec": spec_text, "spec_origin": "llm",
             "options": {"library": str(tmp_path / "lib"), "backends": ["interpreter"], "candidates": 1},
             "candidates": [], "hits": [], "llm": {"enabled": True}}
    with ScriptedLLM([(500, "overloaded"), (503, "warming up"), f"Here:\n```py\n{CE_KERNEL}```\n"]) as srv:
        env.setenv("KERNELGEN_BASE_URL", srv.url)
        nodes.set_listener(lambda stage, msg, style: seen.append((stage, msg)))
        try:
            out = nodes.generate(state)
        finally:
            nodes.set_listener(None)
    retries = [m for s, m in seen if s == "generate" and "retry" in m]
    assert retries == ["LLM attempt 1 failed (HTTP 500: overloaded); retry 1 of 3 in 0.01 s",
                       "LLM attempt 2 failed (HTTP 503: warming up); retry 2 of 3 in 0.02 s"]
    assert out["candidates"][0]["kernel"] == CE_KERNEL


def test_a_spec_repair_revises_the_spec_once_and_carries_the_rounds_other_candidates(env, tmp_path):
    from llm_answers import CE_ANSWER_FIXED

    spec_text, name = _accept_llm_spec(CE_SPEC_BROKEN, None, "cross entropy")
    problem = "the spec's reference raised on the spec's own inputs (test, seed 1): IndexError: Target 7"
    failed = {"interpreter": {"passed": False, "check": "spec", "message": problem}}
    other_kernel = CE_KERNEL.replace("max_block=4096", "max_block=2048")
    state = {"run_id": "s2", "request": "cross entropy", "name": name, "spec": spec_text, "spec_origin": "llm",
             "options": {"library": str(tmp_path / "lib"), "backends": ["interpreter"], "rounds": 2},
             "llm": {"enabled": True}, "round": 0, "spec_checks": {_spec_key(spec_text): problem},
             "candidates": [{"id": f"llm-{i}", "origin": "llm", "round": 0, "parent": "", "kernel": k, "error": "",
                             "verdicts": dict(failed)} for i, k in ((1, CE_KERNEL), (2, other_kernel))]}
    with ScriptedLLM([CE_ANSWER_FIXED]) as srv:
        env.setenv("KERNELGEN_BASE_URL", srv.url)
        out = nodes.repair(state)
        assert len(srv.requests) == 1  # one spec repair for the round, not one per candidate
    revised = spec_of(out["spec"])
    assert revised.inputs[1].fill == "index" and revised.request == "cross entropy"
    new1, new2 = out["candidates"][2:]
    assert (new1["id"], new1["parent"], new1["kernel"]) == ("llm-1.r1", "llm-1", CE_KERNEL)
    assert (new2["id"], new2["parent"], new2["kernel"]) == ("llm-2.r1", "llm-2", other_kernel)
    assert not new1["verdicts"] and not new2["verdicts"]  # both verified next, against the revised spec
    assert out["round"] == 1 and any("revised the spec" in m for m in out["messages"])
