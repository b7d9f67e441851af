"""The agent's parts on their own: the LLM client against a real loopback server, answer parsing, prompt
templates, the runs table, and the routing / selection rules of the graph's nodes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from llm_server import ScriptedLLM

from kernelgen.agents import llm as llm_mod
from kernelgen.agents import nodes, runs


@pytest.fixture
def env(monkeypatch, tmp_path):
    for var in ("OPENAI_API_KEY", "KERNELGEN_BASE_URL", "KERNELGEN_MODEL", "OPENAI_BASE_URL", "KERNELGEN_LIBRARY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KERNELGEN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("KERNELGEN_LLM_BACKOFF", "0.05")
    return monkeypatch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- LLM client ------------------------------------------------------------------------------------
def test_llm_client_retries_server_errors_with_backoff_then_returns_the_answer(env):
    with ScriptedLLM([(500, "overloaded"), (503, "warming up"), "```python\nx = 1\n```"]) as srv:
        env.setenv("KERNELGEN_BASE_URL", srv.url)
        env.setenv("KERNELGEN_MODEL", "scripted-model")
        client = llm_mod.LLMClient()
        t0 = time.perf_counter()
        text = client.complete("system", "write x")
        took = time.perf_counter() - t0
    assert llm_mod.parse_answer(text)["kernel"] == "x = 1\n"
    assert srv.statuses == [500, 503, 200]
    assert client.attempts == ["HTTP 500: overloaded", "HTTP 503: warming up", "HTTP 200"]
    assert took >= 0.05 + 0.1  # backoff 0.05 s, then doubled (a lower bound, not a timing assertion on speed)
    body = srv.requests[0]["body"]
    assert body["model"] == "scripted-model"
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert body["messages"][1]["content"] == "write x"


def test_llm_client_does_not_retry_a_refused_request(env):
    with ScriptedLLM([(401, "invalid api key"), "never sent"]) as srv:
        env.setenv("KERNELGEN_BASE_URL", srv.url)
        with pytest.raises(llm_mod.LLMError, match=r"refused the request \(HTTP 401: invalid api key\)"):
            llm_mod.LLMClient().complete("s", "u")
    assert srv.statuses == [401]


def test_llm_client_says_connection_refused_when_the_server_is_down(env):
    url = f"http://127.0.0.1:{free_port()}/v1"
    env.setenv("KERNELGEN_BASE_URL", url)
    env.setenv("KERNELGEN_LLM_RETRIES", "1")
    client = llm_mod.LLMClient()
    with pytest.raises(llm_mod.LLMError) as info:
        client.complete("s", "u")
    assert str(info.value) == f"the LLM endpoint {url} failed 2 times (last: connection refused)"
    assert client.attempts == ["connection refused", "connection refused"]


def test_llm_is_configured_by_a_key_or_an_endpoint(env):
    assert not llm_mod.llm_configured()
    env.setenv("KERNELGEN_BASE_URL", "http://127.0.0.1:1/v1")
    assert llm_mod.llm_configured()
    cfg = llm_mod.LLMConfig.from_env()
    assert cfg.api_key == "not-needed" and cfg.model == llm_mod.DEFAULT_MODEL
    env.delenv("KERNELGEN_BASE_URL")
    env.setenv("OPENAI_API_KEY", "sk-test")
    assert llm_mod.llm_configured() and llm_mod.LLMConfig.from_env().api_key == "sk-test"


# ---- answers and prompts ---------------------------------------------------------------------------
def test_parse_answer_takes_the_triton_block_and_the_toml_block():
    text = ("Sure.\n```toml\nname = \"x\"\n```\nA helper:\n```python\nprint('usage')\n```\n"
            "```python\nimport triton\n@triton.jit\ndef k(): pass\n```\n")
    got = llm_mod.parse_answer(text)
    assert got["spec"] == 'name = "x"\n'
    assert got["kernel"].startswith("import triton\n@triton.jit")
    assert llm_mod.parse_answer("no code here") == {"kernel": None, "spec": None}
    assert llm_mod.parse_answer("```py\na = 2\n```")["kernel"] == "a = 2\n"


@pytest.mark.parametrize("name", ["system", "contract", "generate", "repair", "spec"])
def test_every_prompt_template_renders_with_its_placeholders(name):
    keys = llm_mod.prompt_placeholders(name)
    values = {k: f"<{k.upper()}>" for k in keys}
    text = llm_mod.render(name, **values)
    for k in keys:
        assert f"<{k.upper()}>" in text
    if keys:
        with pytest.raises(KeyError, match="has no value"):
            llm_mod.render(name)


def test_prompt_values_with_braces_are_not_treated_as_placeholders():
    text = llm_mod.render("generate", request="r", spec="test = [{ M = 4 }] {request}", contract="c", examples="e")
    assert "test = [{ M = 4 }] {request}" in text


# ---- runs table ------------------------------------------------------------------------------------
def test_runs_table_reports_a_run_whose_process_died_as_interrupted(env):
    conn = runs.connect()
    runs.mark_run(conn, "r-done", request="a", status="running")
    runs.mark_run(conn, "r-done", status="merged", result={"name": "x"})
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    conn.execute("INSERT INTO kernelgen_runs (run_id, request, pid, status, created, updated, result) "
                 "VALUES ('r-dead', 'b', ?, 'running', 1, 1, NULL)", (dead.pid,))
    conn.commit()
    got = {r["run_id"]: r for r in runs.list_runs(conn)}
    assert got["r-done"]["status"] == "merged" and got["r-done"]["result"] == {"name": "x"}
    assert got["r-dead"]["status"] == "interrupted"
    with pytest.raises(runs.RunNotFound):
        runs.get_run(conn, "nope")
    conn.close()
    assert runs.runs_db() == Path(os.environ["KERNELGEN_CACHE_DIR"]) / "runs.sqlite"


# ---- node rules ------------------------------------------------------------------------------------
def cand(cid, origin="llm", rnd=0, **verdicts):
    return {"id": cid, "origin": origin, "round": rnd, "parent": "", "kernel": "k", "error": "",
            "verdicts": {b: v for b, v in verdicts.items()}}


def ok(speed=None):
    perf = [{"speedup_eager": speed}] if speed else []
    return {"passed": True, "check": "", "message": "", "performance": perf}


def bad(check="accuracy", message="differs"):
    return {"passed": False, "check": check, "message": message}


def test_select_takes_the_fastest_on_the_accelerator_among_candidates_passing_everywhere():
    state = {"options": {"backends": ["cuda", "interpreter"]}, "candidates": [
        cand("composer", "composer", cuda=ok(1.2), interpreter=ok()),
        cand("llm-1", cuda=ok(1.9), interpreter=ok()),
        cand("llm-2", cuda=ok(3.0), interpreter=bad()),  # fastest but fails the interpreter: out
    ]}
    out = nodes.select(state)
    assert out["winner"] == "llm-1" and "1.90x" in out["decision"]


def test_select_takes_the_first_passing_candidate_when_nothing_is_timed():
    state = {"options": {"backends": ["interpreter"]},
             "candidates": [cand("composer", "composer", interpreter=bad()), cand("llm-1", interpreter=ok()),
                            cand("llm-2", interpreter=ok())]}
    assert nodes.select(state)["winner"] == "llm-1"
    state["candidates"] = [cand("composer", "composer", interpreter=bad())]
    assert nodes.select(state)["winner"] is None


def test_repair_runs_only_while_rounds_remain_and_an_llm_candidate_of_the_last_round_failed():
    base = {"options": {"backends": ["interpreter"], "rounds": 2}, "llm": {"enabled": True}, "round": 0}
    failing = dict(base, candidates=[cand("llm-1", interpreter=bad())])
    assert nodes.after_verify(failing) == "repair"
    assert nodes.after_verify(dict(failing, round=2)) == "select"  # rounds used up
    assert nodes.after_verify(dict(failing, llm={"enabled": True, "error": "down"})) == "select"
    assert nodes.after_verify(dict(failing, llm={"enabled": False})) == "select"
    # something passes and nothing here measures speed: a repaired kernel could not win
    passing = dict(base, candidates=[cand("composer", "composer", interpreter=ok()), cand("llm-1", interpreter=bad())])
    assert nodes.after_verify(passing) == "select"
    # on an accelerator it could be faster: repair
    gpu = dict(base, options={"backends": ["cuda"], "rounds": 2},
               candidates=[cand("composer", "composer", cuda=ok(1.1)), cand("llm-1", cuda=bad())])
    assert nodes.after_verify(gpu) == "repair"


def test_replace_keeps_a_passing_existing_op_unless_the_new_one_is_faster(tmp_path):
    from kernelgen.library import builtin_library, merge_op
    from kernelgen.spec import load_spec

    src = builtin_library() / "ops" / "rms_norm"
    spec = load_spec(src / "spec.toml")
    record = {"passed": True, "speedup_vs_eager": 1.5, "device": "H100"}
    path = merge_op(tmp_path, spec, (src / "kernel.py").read_text(), {"cuda": record})
    existing = {"name": "rms_norm", "path": str(path), "broken": False}
    assert nodes.replace_decision(existing, cand("n", cuda=ok(2.0)), ["cuda"])[0] is True
    keep, why = nodes.replace_decision(existing, cand("n", cuda=ok(1.2)), ["cuda"])
    assert keep is False and "not faster" in why
    # only the interpreter selected: the existing op has no interpreter record, so the passing new op wins
    assert nodes.replace_decision(existing, cand("n", interpreter=ok()), ["interpreter"])[0] is True


def test_merge_is_atomic_and_idempotent_and_clears_leftovers_of_an_interrupted_merge(env, tmp_path):
    from kernelgen.library import builtin_library, load_op, op_status
    from kernelgen.spec import dump_spec, load_spec

    src = builtin_library() / "ops" / "rms_norm"
    spec_text = dump_spec(load_spec(src / "spec.toml"))
    lib = tmp_path / "lib"
    record = {"op": "rms_norm", "backend": "interpreter", "passed": True, "check": "", "message": ""}
    state = {"run_id": "r1", "name": "rms_norm", "spec": spec_text, "winner": "composer",
             "options": {"library": str(lib), "backends": ["interpreter"]},
             "candidates": [dict(cand("composer", "composer", interpreter=record),
                                 kernel=(src / "kernel.py").read_text())]}
    (lib / "ops" / ".tmp-rms_norm-abc").mkdir(parents=True)  # what a merge killed midway leaves
    (lib / "ops" / ".tmp-rms_norm-abc" / "kernel.py").write_text("partial")
    first = nodes.merge(state)
    # the built-in library resolves rms_norm already: the op is merged under the next free name, with a note
    assert first["name"] == "rms_norm_2" and "taken" in first["messages"][0]
    assert sorted(p.name for p in (lib / "ops").iterdir()) == ["rms_norm_2"]
    op = load_op(lib / "ops" / "rms_norm_2")
    assert op.spec.function == "rms_norm" and op_status(op, "interpreter")["status"] == "verified"
    mtime = (lib / "ops" / "rms_norm_2" / "kernel.py").stat().st_mtime_ns
    # resume re-runs merge after it had finished: recognised under its suffixed name, nothing rewritten
    again = nodes.merge(state)
    assert again["merged"] == first["merged"] and again["name"] == "rms_norm_2"
    assert (lib / "ops" / "rms_norm_2" / "kernel.py").stat().st_mtime_ns == mtime
    # dry run writes nothing
    dry = dict(state, options=dict(state["options"], library=str(tmp_path / "other"), dry_run=True))
    assert nodes.merge(dry)["merged"] is None and not (tmp_path / "other").exists()


def test_generate_asks_the_llm_with_the_composer_spec_and_retrieved_examples(env, tmp_path):
    from kernelgen.frontends.composer import compose
    from kernelgen.spec import dump_spec

    comp = compose("silu and mul")
    state = {"run_id": "g1", "request": "silu and mul", "name": comp.spec.name, "spec": dump_spec(comp.spec),
             "composition": {"kernel": comp.kernel_source, "summary": comp.summary},
             "options": {"library": str(tmp_path / "lib"), "backends": ["interpreter"], "candidates": 2},
             "hits": nodes.retrieve({"request": "silu and mul", "options": {"library": str(tmp_path / "lib")}})["hits"]}
    with ScriptedLLM(["```python\n# first\n```", "no code at all"]) as srv:
        env.setenv("KERNELGEN_BASE_URL", srv.url)
        state["llm"] = {"enabled": True}
        out = nodes.generate(state)
        prompts = srv.user_prompts()
    assert [c["id"] for c in out["candidates"]] == ["composer", "llm-1", "llm-2"]
    assert out["candidates"][1]["kernel"] == "# first\n" and not out["candidates"][1]["error"]
    # verified as a static failure, saying what the answer lacked
    assert out["candidates"][2]["error"] == ("the answer has no ```python block with kernel.py defining "
                                             f"{comp.spec.function}(...) (it has no fenced code block at all)")
    assert len(prompts) == 2
    assert f'function = "{comp.spec.function}"' in prompts[0]  # the spec it must satisfy
    assert "silu_and_mul/kernel.py" in prompts[0] and "@triton.jit" in prompts[0]  # the nearest library op
    assert out["llm"]["attempts"] == ["HTTP 200", "HTTP 200"]


def test_same_reference_tells_equal_ops_from_near_misses():
    from kernelgen.frontends.composer import compose
    from kernelgen.library import get_op

    silu = get_op("silu_and_mul").spec
    gelu = get_op("gelu_and_mul").spec  # exact (erf) GELU
    assert nodes.same_reference(compose("silu and mul").spec, silu)
    assert nodes.same_reference(compose("fused rmsnorm + residual").spec, get_op("fused_add_rms_norm").spec)
    assert not nodes.same_reference(compose("gelu and mul (tanh approximation)").spec, gelu)  # tanh != erf
    assert not nodes.same_reference(compose("silu and mul").spec, gelu)
    assert not nodes.same_reference(compose("residual add then layernorm").spec, get_op("layer_norm").spec)


def test_retrieve_reuses_an_equivalent_op_of_the_target_library_only(env, tmp_path):
    import shutil

    from kernelgen.frontends.composer import compose
    from kernelgen.library import builtin_library
    from kernelgen.spec import dump_spec

    comp = compose("silu and mul")
    assert comp.spec.name != "silu_and_mul"  # so the reuse below is by equivalence, not by name
    state = {"request": "silu and mul", "name": comp.spec.name, "spec": dump_spec(comp.spec),
             "options": {"library": str(tmp_path / "lib")}}
    # the built-in silu_and_mul is not in the target library: generate
    assert nodes.retrieve(state)["reuse"] is None
    shutil.copytree(builtin_library() / "ops" / "silu_and_mul", tmp_path / "lib" / "ops" / "silu_and_mul")
    reuse = nodes.retrieve(state)["reuse"]
    assert reuse["name"] == "silu_and_mul" and reuse["path"] == str(tmp_path / "lib" / "ops" / "silu_and_mul")
    assert "computes the same thing" in reuse["reason"]
    # --replace: no reuse, the run generates
    assert nodes.retrieve(dict(state, options=dict(state["options"], replace=True)))["reuse"] is None


def test_bad_llm_settings_are_named(env):
    from kernelgen.errors import KernelgenError

    env.setenv("KERNELGEN_LLM_RETRIES", "lots")
    with pytest.raises(KernelgenError, match="KERNELGEN_LLM_RETRIES must be a non-negative int, got 'lots'"):
        llm_mod.LLMConfig.from_env()


def test_retrieve_never_reuses_by_name_or_score_alone(env, tmp_path):
    """An op of the run's name that computes something else is not reused (the merge gives the new op another
    name); with no request reference nothing is reused, whatever the search score."""
    import shutil

    from kernelgen.frontends.composer import compose
    from kernelgen.library import builtin_library
    from kernelgen.spec import dump_spec

    lib = tmp_path / "lib"
    shutil.copytree(builtin_library() / "ops" / "gelu_and_mul", lib / "ops" / "gelu_and_mul")  # exact GELU
    tanh = compose("gelu and mul (tanh approximation)", name="gelu_and_mul")
    state = {"request": "gelu and mul (tanh approximation)", "name": "gelu_and_mul", "spec": dump_spec(tanh.spec),
             "options": {"library": str(lib)}}
    out = nodes.retrieve(state)
    assert out["existing"]["name"] == "gelu_and_mul" and out["reuse"] is None
    exact = compose("gelu and mul", name="gelu_and_mul")
    same = nodes.retrieve(dict(state, spec=dump_spec(exact.spec)))["reuse"]
    assert same["name"] == "gelu_and_mul" and "computes the same thing" in same["reason"]
    # no spec (the request was not understood): a perfect name match is still not proof
    none = nodes.retrieve({"request": "gelu and mul", "name": "gelu_and_mul", "spec": None,
                           "options": {"library": str(lib)}})
    assert none["reuse"] is None and any("nothing is reused" in m for m in none["messages"])
