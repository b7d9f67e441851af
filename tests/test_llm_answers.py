"""Reading LLM answers as strong code models write them (kernelgen/agents/answers.py): the full kernel.py
among excerpts and usage snippets, fences indented under list items, ```py fences, blocks in any order,
and a message saying what is missing when a block is not there."""

from __future__ import annotations

import pytest
from llm_answers import CE_ANSWER_BROKEN, CE_ANSWER_FIXED, CE_KERNEL, CE_SPEC_BROKEN, CE_SPEC_FIXED, indent
from llm_server import ScriptedLLM

from kernelgen.agents.answers import code_blocks, missing_kernel, missing_spec, parse_answer


def test_the_full_kernel_is_taken_not_the_excerpt_before_it_nor_the_usage_after_it():
    got = parse_answer(CE_ANSWER_BROKEN)
    assert got["spec"] == CE_SPEC_BROKEN
    assert got["kernel"] == CE_KERNEL  # not the indented `_lse_step` excerpt, which also has @triton.jit
    langs = [lang for lang, _ in code_blocks(CE_ANSWER_BROKEN)]
    assert langs == ["python", "py", "toml", "python"]


def test_fences_indented_under_list_items_are_dedented_in_either_order():
    got = parse_answer(CE_ANSWER_FIXED)
    assert got["kernel"] == CE_KERNEL and got["spec"] == CE_SPEC_FIXED


def test_the_launcher_decides_between_two_complete_files():
    other = CE_KERNEL.replace("def cross_entropy(", "def xent(")
    text = f"First try:\n```python\n{CE_KERNEL}```\nA variant with another name:\n```python\n{other}```\n"
    assert parse_answer(text, function="cross_entropy")["kernel"] == CE_KERNEL
    assert parse_answer(text, function="xent")["kernel"] == other
    # with the spec in the answer, its [signature] function is the launcher to look for
    assert parse_answer(text + f"```toml\n{CE_SPEC_FIXED}```")["kernel"] == CE_KERNEL


def test_unlabelled_blocks_and_an_answer_cut_off_mid_block():
    text = f"The spec:\n```\n{CE_SPEC_FIXED}```\nThe kernel:\n```\n{CE_KERNEL}"  # never closed
    got = parse_answer(text)
    assert got["spec"] == CE_SPEC_FIXED and got["kernel"] == CE_KERNEL
    assert code_blocks("~~~py\nx = 1\n~~~\n") == [("py", "x = 1\n")]
    indented = "    ```python\n    def f():\n        return 1\n    ```"
    assert code_blocks(indented) == [("python", "def f():\n    return 1\n")]


def test_what_is_missing_is_said():
    python_only = f"Here you go:\n\n```python\n{CE_KERNEL}```\n\nUsage:\n```py\nprint(1)\n```\n"
    assert parse_answer(python_only)["spec"] is None
    assert missing_spec(python_only) == "the answer has no ```toml block with spec.toml (it has 2 python blocks)"
    # counted per language (```py and ```python3 are python)
    assert "(it has 2 python, 1 json blocks)" in missing_spec("```py\na\n```\n```json\n{}\n```\n```python3\nb\n```")
    assert missing_kernel("I cannot do that.", "cross_entropy") == (
        "the answer has no ```python block with kernel.py defining cross_entropy(...) "
        "(it has no fenced code block at all)")
    assert parse_answer("no code here") == {"kernel": None, "spec": None}


@pytest.fixture
def env(monkeypatch, tmp_path):
    for var in ("OPENAI_API_KEY", "KERNELGEN_BASE_URL", "KERNELGEN_MODEL", "OPENAI_BASE_URL", "KERNELGEN_LIBRARY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KERNELGEN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("KERNELGEN_LLM_BACKOFF", "0.01")
    return monkeypatch


def test_generate_takes_the_launcher_block_of_answers_from_the_server(env, tmp_path):
    """Through the loopback server: a candidate prompt for a known spec whose answer has prose, an indented
    excerpt, the kernel in a ```py fence and a usage block after it."""
    from kernelgen.agents import nodes
    from kernelgen.agents.generate import _accept_llm_spec

    spec_text, name = _accept_llm_spec(CE_SPEC_FIXED, None, "cross entropy")
    excerpt = "@triton.jit\ndef step(m, x):\n    return tl.maximum(m, x)\n"
    answer = (f"Two observations first:\n\n1. The row is streamed:\n\n   ```python\n{indent(excerpt, 3)}"
              f"   ```\n\nThe file:\n\n```py\n{CE_KERNEL}```\n\nCall it like this:\n\n```python\n"
              "loss = cross_entropy(logits, target)\n```\n")
    state = {"run_id": "p1", "request": "cross entropy", "name": name, "spec": spec_text, "spec_origin": "llm",
             "options": {"library": str(tmp_path / "lib"), "backends": ["interpreter"], "candidates": 2},
             "candidates": [], "hits": []}
    with ScriptedLLM([answer, "Sorry, I need more details about the shapes."]) as srv:
        env.setenv("KERNELGEN_BASE_URL", srv.url)
        state["llm"] = {"enabled": True}
        out = nodes.generate(state)
    llm1, llm2 = out["candidates"]
    assert llm1["kernel"] == CE_KERNEL and not llm1["error"]
    assert llm2["error"] == ("the answer has no ```python block with kernel.py defining cross_entropy(...) "
                             "(it has no fenced code block at all)")


@pytest.mark.parametrize("name", ["spec_fields", "spec_retry", "repair_spec"])
def test_new_prompt_templates_render_with_their_placeholders(name):
    from kernelgen.agents import llm as llm_mod

    keys = llm_mod.prompt_placeholders(name)
    assert keys  # each takes values
    text = llm_mod.render(name, **{k: f"<{k.upper()}>" for k in keys})
    assert all(f"<{k.upper()}>" in text for k in keys)
    with pytest.raises(KeyError, match="has no value"):
        llm_mod.render(name)
