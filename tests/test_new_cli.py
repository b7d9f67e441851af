"""`kernelgen new / runs / resume` end to end, on the interpreter, into temporary libraries.

The LLM is a real chat-completions server on 127.0.0.1 with scripted answers (tests/llm_server.py) reached
through the real `openai` client; the composer path needs no server at all. Verification runs through the
real sandbox (one subprocess per candidate), with --trials 1 where the test is about the pipeline.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from llm_server import ScriptedLLM
from typer.testing import CliRunner

from kernelgen.cli import app

# An op no composer word covers, so the LLM writes its spec (reference included) and its kernel.
REQUEST = "zorbify the activations"
SPEC = '''name = "zorbify"
description = "Softsign of every element: y = x / (1 + |x|)."
tags = ["pointwise", "activation", "softsign"]
reference = """
def reference(x):
    return x / (1 + x.abs())
"""
dtypes = ["float32"]

[signature]
function = "zorbify"
outputs = ["y"]

[[inputs]]
name = "x"
shape = ["M", "N"]

[shapes]
test = [{ M = 3, N = 50 }]
bench = [{ M = 1024, N = 4096 }]

[model]
bytes = "2 * M * N * elem"
flops = "3 * M * N"
'''
KERNEL = '''import torch
import triton
import triton.language as tl


@triton.jit
def _zorbify_rows(x_ptr, y_ptr, stride_x_row, stride_x_col, stride_y_row, N, BLOCK_N: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    for start in range(0, N, BLOCK_N):
        offsets = start + tl.arange(0, BLOCK_N)
        mask = offsets < N
        x = tl.load(x_ptr + row * stride_x_row + offsets * stride_x_col, mask=mask, other=0.0).to(tl.float32)
        y = x / (1.0 + tl.abs(x))
        tl.store(y_ptr + row * stride_y_row + offsets, y.to(y_ptr.dtype.element_ty), mask=mask)


def zorbify(x):
    N = x.shape[-1]
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if y.numel() == 0:
        return y
    x2 = x if x.dim() == 2 else x.view(-1, N)  # any leading dims, seen as rows
    block = min(triton.next_power_of_2(N), 1024)
    _zorbify_rows[(x2.shape[0],)](x2, y, x2.stride(0), x2.stride(1), N, N, BLOCK_N=block)
    return y
'''
BROKEN = KERNEL.replace("def zorbify(x):", "def zorbify(x)")  # does not compile
# Launches a kernel for show, then returns the reference computed by torch: the anti-cheat must see it.
CHEAT = KERNEL.replace("    return y\n", "    return x / (1 + x.abs())\n")
assert BROKEN != KERNEL and CHEAT != KERNEL


def answer(kernel: str, spec: str | None = None) -> str:
    text = "Here is the op.\n"
    if spec:
        text += f"```toml\n{spec}```\n"
    return text + f"```python\n{kernel}```\n"


@pytest.fixture
def env(monkeypatch, tmp_path):
    for var in ("OPENAI_API_KEY", "KERNELGEN_BASE_URL", "KERNELGEN_MODEL", "OPENAI_BASE_URL", "KERNELGEN_LIBRARY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KERNELGEN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("KERNELGEN_LLM_BACKOFF", "0.05")
    return monkeypatch


def cli(*args: str) -> tuple[int, dict | list | None, str]:
    """Run the CLI in this process with --json; returns (exit code, parsed stdout, stderr)."""
    res = CliRunner().invoke(app, [*args, "--json"])
    if res.exception and not isinstance(res.exception, SystemExit):
        raise res.exception
    try:
        doc = json.loads(res.stdout) if res.stdout.strip() else None
    except json.JSONDecodeError:
        doc = None
    return res.exit_code, doc, res.stderr


def op_folders(library: Path) -> list[str]:
    ops = library / "ops"
    return sorted(p.name for p in ops.iterdir()) if ops.is_dir() else []


def assert_complete_op(folder: Path, backend: str = "interpreter") -> dict:
    from kernelgen.library import load_op, op_status

    op = load_op(folder)
    assert not op.broken, op.error
    assert op_status(op, backend)["status"] == "verified"
    return op.record(backend)


# ---- 1. repair --------------------------------------------------------------------------------------
def test_llm_candidate_that_does_not_compile_is_repaired_and_merged(env, tmp_path):
    lib = tmp_path / "lib"
    with ScriptedLLM([answer(BROKEN, SPEC), answer(KERNEL)]) as srv:
        env.setenv("KERNELGEN_BASE_URL", srv.url)
        code, res, err = cli("new", REQUEST, "--library", str(lib), "--backend", "interpreter",
                             "--candidates", "1", "--rounds", "2", "--trials", "1")
        prompts = srv.user_prompts()
    assert code == 0, err
    assert res["status"] == "merged" and res["spec_origin"] == "llm" and res["winner"] == "llm-1.r1"
    first, fixed = res["candidates"]
    assert (first["id"], first["passed"], first["backends"]["interpreter"]["check"]) == ("llm-1", False, "static")
    assert "syntax error" in first["backends"]["interpreter"]["message"]
    assert (fixed["parent"], fixed["round"], fixed["passed"]) == ("llm-1", 1, True)
    # the repair prompt carried the failing source and the verdict message
    assert len(prompts) == 2 and "def zorbify(x)\n" in prompts[1] and "syntax error" in prompts[1]
    assert op_folders(lib) == ["zorbify"]
    assert (lib / "ops" / "zorbify" / "kernel.py").read_text() == KERNEL
    assert_complete_op(lib / "ops" / "zorbify")
    # the merged op is a working library op
    env.setenv("KERNELGEN_LIBRARY", str(lib))
    import kernelgen

    x = torch.randn(5, 77)
    torch.testing.assert_close(kernelgen.ops.zorbify(x), x / (1 + x.abs()))


# ---- 2. anti-cheat ----------------------------------------------------------------------------------
def test_llm_kernel_that_computes_with_torch_is_rejected_by_anticheat_and_not_merged(env, tmp_path):
    lib = tmp_path / "lib"
    with ScriptedLLM([answer(CHEAT, SPEC)]) as srv:
        env.setenv("KERNELGEN_BASE_URL", srv.url)
        code, res, err = cli("new", REQUEST, "--library", str(lib), "--backend", "interpreter",
                             "--candidates", "1", "--rounds", "0", "--trials", "1")
    assert code == 1
    assert res["status"] == "failed" and res["winner"] is None and res["merged"] is None
    verdict = res["candidates"][0]["backends"]["interpreter"]
    assert verdict["check"] == "anticheat" and "computes with torch ops" in verdict["message"]
    assert not lib.exists() or op_folders(lib) == []


# ---- 3. retries -------------------------------------------------------------------------------------
def test_server_errors_and_rate_limits_429_are_retried_with_backoff_and_the_run_completes(env, tmp_path):
    # One run for both kinds of transient answer (the default 3 retries take all three).
    lib = tmp_path / "lib"
    with ScriptedLLM([(500, "overloaded"), (500, "overloaded"), (429, "rate limited"), answer(KERNEL, SPEC)]) as srv:
        env.setenv("KERNELGEN_BASE_URL", srv.url)
        code, res, err = cli("new", REQUEST, "--library", str(lib), "--backend", "interpreter",
                             "--candidates", "1", "--rounds", "0", "--trials", "1", "--dry-run")
        statuses = srv.statuses
    assert statuses == [500, 500, 429, 200]
    assert code == 0, err
    assert res["llm"]["attempts"] == ["HTTP 500: overloaded", "HTTP 500: overloaded", "HTTP 429: rate limited",
                                      "HTTP 200"]
    assert res["status"] == "dry-run" and res["winner"] == "llm-1" and res["candidates"][0]["passed"]
    assert not lib.exists()  # --dry-run: everything but the merge


# ---- 4. server down ---------------------------------------------------------------------------------
def test_server_down_gives_a_clear_message_and_the_composer_candidate_is_merged(env, tmp_path):
    lib = tmp_path / "lib"
    # Bound but never listening, and held for the whole run: connections are refused, and no other process
    # can take the port in the meantime (closing it first would race with whoever binds it next).
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        env.setenv("KERNELGEN_BASE_URL", f"http://127.0.0.1:{port}/v1")
        env.setenv("KERNELGEN_LLM_RETRIES", "1")
        code, res, err = cli("new", "add + relu", "--library", str(lib), "--backend", "interpreter", "--trials", "1")
    assert code == 0, err
    assert res["llm"]["enabled"] and "connection refused" in res["llm"]["error"]
    note = next(m for m in res["messages"] if m.startswith("LLM unavailable"))
    assert f"127.0.0.1:{port}" in note and "continuing with the composer candidate" in note
    assert "LLM unavailable" in err  # shown while the run goes on
    assert res["status"] == "merged" and res["winner"] == "composer"
    assert [c["id"] for c in res["candidates"]] == ["composer"]
    assert op_folders(lib) == [res["name"]]
    assert_complete_op(lib / "ops" / res["name"])


# ---- 5. SIGKILL during verification, then resume ---------------------------------------------------
def _children(pid: int) -> list[int]:
    """Child processes of `pid`, whichever of its threads started them (Linux /proc)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def test_run_killed_during_verification_is_finished_by_resume(env, tmp_path):
    lib = tmp_path / "lib"
    child_env = dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="200")
    cmd = [sys.executable, "-m", "kernelgen.cli", "new", "fused rmsnorm + residual", "--library", str(lib),
           "--backend", "interpreter", "--trials", "1", "--no-llm"]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=child_env)
    run_id, seen = None, []
    for line in proc.stdout:
        seen.append(line)
        if run_id is None and line.startswith("run "):
            run_id = line.split()[1]
        if "on interpreter: running" in line:
            break
    assert run_id and proc.poll() is None, "".join(seen)
    deadline = time.monotonic() + 30
    while not (workers := _children(proc.pid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert workers, "the sandbox worker never started"
    time.sleep(0.5)  # the worker is verifying now
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    for pid in workers:  # the worker lives in its own session: end it too, it is ours
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    killed_at = time.monotonic()
    assert proc.returncode == -signal.SIGKILL
    assert op_folders(lib) == []

    code, listed, _ = cli("runs")
    row = next(r for r in listed if r["run_id"] == run_id)
    assert (row["status"], row["next"]) == ("interrupted", "verify") and row["name"]  # named in `understand`

    time.sleep(3)  # dead time: not part of the run's time
    resume_started = time.monotonic()
    code, res, err = cli("resume", run_id)
    assert code == 0, err
    assert res["status"] == "merged" and res["resumed"] is True and res["name"] == row["name"]
    # before the kill: at most the time from start to kill; after: the resume itself
    assert res["wall_s"] < (killed_at - started) + (time.monotonic() - resume_started), res["wall_s"]
    assert op_folders(lib) == [res["name"]]  # exactly one op folder, no .tmp-* or .old-* leftovers
    assert_complete_op(lib / "ops" / res["name"])
    code, listed, _ = cli("runs")
    row = next(r for r in listed if r["run_id"] == run_id)
    assert (row["status"], row["next"]) == ("merged", "")
    # resuming a finished run does nothing and says so
    code, again, err = cli("resume", run_id)
    assert code == 0 and again["resumed"] is False and "already finished" in err


# ---- 6. the main job --------------------------------------------------------------------------------
def test_main_job_fused_rmsnorm_residual_with_no_api_key(env, tmp_path):
    lib = tmp_path / "lib"
    exe = Path(sys.executable).with_name("kernelgen")
    cmd = [str(exe) if exe.exists() else sys.executable, *([] if exe.exists() else ["-m", "kernelgen.cli"]),
           "new", "fused rmsnorm + residual", "--library", str(lib), "--json"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    print(f"kernelgen new 'fused rmsnorm + residual': {wall:.1f} s wall")  # shown with -s; not asserted
    assert res["status"] == "merged" and res["winner"] == "composer" and not res["llm"]["enabled"]
    for stage in ("understand", "retrieve", "generate", "verify", "select", "merge", "report"):
        assert f"▸ {stage}" in proc.stderr
    name = res["name"]
    assert op_folders(lib) == [name] and res["merged"] == str(lib / "ops" / name)
    record = assert_complete_op(lib / "ops" / name)
    assert record["passed"] and {r["dtype"] for r in record["accuracy"]} == {"float32", "float16", "bfloat16"}

    # the new op is a library op: listed as verified, callable, right on fresh inputs
    code, listed, _ = cli("list", "--library", str(lib), "--backend", "interpreter")
    assert next(r for r in listed if r["name"] == name)["backends"]["interpreter"]["status"] == "verified"
    env.setenv("KERNELGEN_LIBRARY", str(lib))
    import kernelgen

    x, r, w = torch.randn(6, 300), torch.randn(6, 300), torch.randn(300)
    y, h = getattr(kernelgen.ops, name)(x, r, w)  # eps: PyTorch's default, as the words did not give one
    torch.testing.assert_close(h, x + r)
    torch.testing.assert_close(y, torch.nn.functional.rms_norm(x + r, (300,), w), atol=1e-5, rtol=1e-5)
    env.delenv("KERNELGEN_LIBRARY")

    # the same request again: the op is there, so it is reused, nothing is generated
    before = (lib / "ops" / name / "kernel.py").stat().st_mtime_ns
    code, again, _ = cli("new", "fused rmsnorm + residual", "--library", str(lib))
    assert code == 0 and again["status"] == "reused" and again["candidates"] == []
    assert str(lib / "ops" / name) == again["reuse"]["path"]
    # --replace: the new candidate passes but nothing here measures speed, so the passing op stays
    code, kept, _ = cli("new", "fused rmsnorm + residual", "--library", str(lib), "--replace", "--trials", "1")
    assert code == 0 and kept["status"] == "kept-existing" and "not shown faster" in kept["decision"]
    assert (lib / "ops" / name / "kernel.py").stat().st_mtime_ns == before and op_folders(lib) == [name]


# ---- no reuse on a search score alone (request 15) ---------------------------------------------------
def test_rotary_embedding_request_is_not_reused_on_search_score_only_suggested(env, tmp_path):
    """The composer cannot read "rotary embedding", so there is no reference to prove an op computes it:
    nothing is reused (a search score is not proof), the top hits are shown as suggestions."""
    lib = tmp_path / "lib"
    code, res, err = cli("new", "rotary embedding", "--library", str(lib))
    assert code == 2 and "cannot understand the request" in err
    assert res["status"] == "not-understood" and res["reuse"] is None and res["candidates"] == []
    assert res["hits"][0]["name"] == "rotary_embedding"
    assert any("nothing is reused" in m and "rotary_embedding" in m for m in res["messages"])
    assert not lib.exists()  # nothing generated, nothing written


# ---- user errors ------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, words", [
    (["new", "add + relu", "--name", "Bad-Name"], "lower_snake_case"),
    (["new", "add + relu", "--backend", "tpu9000"], "unknown backend 'tpu9000'"),
    (["new", "add + relu", "--llm"], "--llm needs KERNELGEN_BASE_URL"),
    (["new", "  "], "the request is empty"),
    (["resume", "no-such-run"], "no run 'no-such-run'"),
    (["new", "add + relu", "--llm", "--candidates", "1"], "KERNELGEN_LLM_TIMEOUT must be a non-negative float"),
])
def test_user_errors_exit_2_with_one_line(env, tmp_path, args, words):
    if "KERNELGEN_LLM_TIMEOUT" in words:
        env.setenv("KERNELGEN_BASE_URL", "http://127.0.0.1:9/v1")
        env.setenv("KERNELGEN_LLM_TIMEOUT", "soon")
    code, res, err = cli(*args, "--library", str(tmp_path / "lib")) if args[0] == "new" else cli(*args)
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "lib").exists()


def test_request_nobody_understands_without_an_llm_exits_2_and_writes_nothing(env, tmp_path):
    lib = tmp_path / "lib"
    code, res, err = cli("new", "frobnicate the quux", "--library", str(lib))
    assert code == 2 and res["status"] == "not-understood"
    assert "cannot understand the request" in err and "KERNELGEN_BASE_URL" in err
    assert not lib.exists()
