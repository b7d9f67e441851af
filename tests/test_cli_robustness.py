"""The CLI and its state as a new user meets them: copies of a library, a damaged runs database or cache,
piped output at 80 columns, killed and interrupted runs, re-verification and git, bad input, slow imports,
file modes, and the conveniences (--version, --help, runs --prune, the user library)."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kernelgen.cli import app
from kernelgen.library import builtin_library, load_op, merge_op, read_record, record_path, write_record

HOSTILE = Path(__file__).resolve().parent / "hostile"
NARROW = {"COLUMNS": "80"}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    from kernelgen.retrieval import close_all

    close_all()
    monkeypatch.setenv("KERNELGEN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("KERNELGEN_EMBEDDINGS", raising=False)
    yield tmp_path / "cache"
    close_all()


def invoke(*args: str, env: dict | None = None):
    result = CliRunner().invoke(app, list(args), env=env)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def copy_op(name: str, root: Path, new_name: str | None = None) -> Path:
    dest = root / "ops" / (new_name or name)
    shutil.copytree(builtin_library() / "ops" / name, dest, ignore=shutil.ignore_patterns("verified", "tune"))
    if new_name:
        spec = dest / "spec.toml"
        spec.write_text(spec.read_text().replace(f'name = "{name}"', f'name = "{new_name}"', 1))
    return dest


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


# ---- 1. search paths belong to the library searched, not to an identical copy ----------------------------
def test_identical_library_copies_each_get_their_own_paths(cache, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    copy_op("rms_norm", a, "zz_quokka_norm")
    shutil.copytree(a, b)
    found = {}
    for lib in (a, b):
        res = invoke("search", "zz quokka norm", "--library", str(lib), "--json")
        assert res.exit_code == 0, res.output
        found[lib] = json.loads(res.stdout)[0]
    assert found[a]["name"] == found[b]["name"] == "zz_quokka_norm"
    assert found[a]["path"] == str(a / "ops" / "zz_quokka_norm")
    assert found[b]["path"] == str(b / "ops" / "zz_quokka_norm")
    assert len(list((cache / "retrieval").iterdir())) == 1  # one shared index: the content is the same
    shutil.rmtree(a)
    res = invoke("search", "zz quokka norm", "--library", str(b), "--json")
    assert json.loads(res.stdout)[0]["path"] == str(b / "ops" / "zz_quokka_norm")
    for hit in json.loads(invoke("search", "rms norm", "--json").stdout):
        assert Path(hit["path"], "spec.toml").is_file()


# ---- 2. damaged state is moved aside with one line ------------------------------------------------------
def test_corrupt_runs_database_is_moved_aside_with_one_warning(cache, monkeypatch):
    cache.mkdir(parents=True)
    (cache / "runs.sqlite").write_bytes(b"definitely not sqlite " * 200)
    res = invoke("runs", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout) == []
    line = one_line(res.stderr)
    assert line.startswith("warning: the runs database") and "moved it to runs.sqlite.unreadable-" in line
    assert len(list(cache.glob("runs.sqlite.unreadable-*"))) == 1
    sqlite3.connect(cache / "runs.sqlite").execute("SELECT count(*) FROM kernelgen_runs").fetchone()
    again = invoke("resume", "no-such-run")  # the new database works, quietly
    assert again.exit_code == 2 and one_line(again.stderr) == "error: no run 'no-such-run' (see `kernelgen runs`)"


def test_retrieval_cache_that_is_a_file_is_moved_aside(cache):
    cache.mkdir(parents=True)
    (cache / "retrieval").write_text("not a folder\n")
    res = invoke("search", "rmsnorm", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)[0]["name"] == "rms_norm"
    assert "was not a folder" in one_line(res.stderr)
    assert (cache / "retrieval").is_dir() and len(list(cache.glob("retrieval.not-a-folder-*"))) == 1


def test_cache_folder_that_is_a_file_is_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("KERNELGEN_CACHE_DIR", str(tmp_path / "cachefile"))
    (tmp_path / "cachefile").write_text("x")
    for args in (["runs"], ["resume", "r1"], ["new", "add + relu", "--library", str(tmp_path / "lib")],
                 ["search", "softmax"]):
        res = invoke(*args)
        assert res.exit_code == 2 and "is a file" in one_line(res.stderr), args
    assert not (tmp_path / "lib").exists()


# ---- 3. piped output: nothing machine-readable is wrapped or cut ------------------------------------------
def test_compose_output_piped_through_tail_is_valid_toml():
    import tomllib

    cmd = [sys.executable, "-m", "kernelgen.cli", "compose", "matmul + bias + relu then clamp to [-1, 1]"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, **NARROW), timeout=120)
    assert proc.returncode == 0, proc.stderr
    doc = tomllib.loads("".join(proc.stdout.splitlines(keepends=True)[1:]))  # `| tail -n +2`
    spec_only = subprocess.run([*cmd, "--spec"], capture_output=True, text=True, env=dict(os.environ, **NARROW))
    assert tomllib.loads(spec_only.stdout) == doc
    assert len(max(doc["reference"].splitlines(), key=len)) <= 200 and "reference" in doc


def _fake_runs(n: int, request: str) -> list[str]:
    from kernelgen.agents import runs

    conn = runs.connect()
    ids = []
    for i in range(n):
        run_id = f"20261126-0{i}1234-abcd"
        runs.mark_run(conn, run_id, request=request, status="running")
        runs.mark_run(conn, run_id, status="failed", result={"name": f"a_rather_long_op_name_number_{i}"})
        ids.append(run_id)
    conn.close()
    return ids


def test_runs_table_at_80_columns_keeps_ids_whole_and_folds_requests(cache):
    words = [f"word{i}" for i in range(40)]
    ids = _fake_runs(2, " ".join(words))
    res = invoke("runs", env=NARROW)
    assert res.exit_code == 0, res.output
    assert "…" not in res.stdout
    for run_id in ids:
        assert run_id in res.stdout  # whole, on one line: pasteable into `kernelgen resume`
    assert all(w in res.stdout for w in words)  # the request folds, nothing is dropped
    tsv = invoke("runs", "--format", "tsv", env=NARROW).stdout.splitlines()
    assert tsv[0].split("\t") == ["run", "status", "next", "op", "request", "started"]
    assert [line.split("\t")[0] for line in tsv[1:]] == sorted(ids, reverse=True)
    assert tsv[1].split("\t")[4] == " ".join(words)


def test_verify_table_at_80_columns_shows_the_whole_message(tmp_path):
    res = invoke("verify", str(HOSTILE / "identity"), "--backend", "interpreter", "--trials", "1", "--out",
                 str(tmp_path / "out"), env=NARROW)
    assert res.exit_code == 1, res.output
    assert "…" not in res.stdout
    doc = json.loads((tmp_path / "out" / "report.json").read_text())  # the same run (the seed is in the message)
    message = doc["verdicts"][0]["message"].splitlines()[0]
    assert message.startswith("launched no Triton kernel")
    flat = " ".join(line.strip("│ ") for line in res.stdout.splitlines())
    assert all(word in flat for word in message.split())
    tsv = invoke("verify", str(HOSTILE / "identity"), "--backend", "interpreter", "--trials", "1", "--format",
                 "tsv").stdout.splitlines()
    assert tsv[0].split("\t") == ["op", "backend", "result", "check", "message", "vs eager", "vs compile", "time"]
    row = tsv[1].split("\t")
    assert row[:4] == ["identity", "interpreter", "FAIL", "anticheat"]
    assert row[4].split(" (seed")[0] == message.split(" (seed")[0] and len(row) == 8


def test_new_table_folds_long_messages_instead_of_cutting_them():
    from rich.console import Console

    from kernelgen.cli_runs import print_run

    message = "accuracy: float32 test {'M': 4, 'N': 64} (seed 1234): max abs error 3.2e-01 exceeds atol 1e-05 " \
              "at index (2, 17); the kernel reads past the end of the row"
    result = {"name": "zorbify", "backends": ["interpreter"], "winner": None, "status": "failed", "run_id": "r1",
              "candidates": [{"id": "llm-1", "origin": "llm", "round": 0,
                              "backends": {"interpreter": {"passed": False, "check": "accuracy",
                                                           "message": message}}}]}
    buf = io.StringIO()
    print_run(result, Console(file=buf, width=80))
    text = buf.getvalue()
    assert "…" not in text
    flat = " ".join(line.strip("│ ") for line in text.splitlines())
    assert all(word in flat for word in message.split())


def test_list_tsv_has_one_row_per_op():
    res = invoke("list", "--backend", "interpreter", "--format", "tsv")
    rows = [line.split("\t") for line in res.stdout.splitlines()]
    assert rows[0] == ["op", "library", "hides", "overrides", "interpreter", "reason", "path"]
    by_name = {r[0]: r for r in rows[1:]}
    assert by_name["rms_norm"][1:4] == ["built-in", "0", "aten::rms_norm"] and Path(by_name["rms_norm"][6]).is_dir()


# ---- 4. interrupted and killed runs ---------------------------------------------------------------------
def test_leftover_scratch_folders_of_dead_processes_are_removed(tmp_path):
    from kernelgen.scratch import clean_leftovers, scratch_prefix

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        gone = tmp_path / f"kernelgen-verify-{dead.pid}-abc"
        kept = tmp_path / f"kernelgen-verify-{alive.pid}-abc"
        mine = tmp_path / (scratch_prefix("verify") + "abc")
        other = tmp_path / "kernelgen-verify-notapid"
        for d in (gone, kept, mine, other):
            (d / "op").mkdir(parents=True)
        assert clean_leftovers(tmp_path) == [gone]
        assert not gone.exists() and kept.is_dir() and mine.is_dir() and other.is_dir()
        # the next command that verifies cleans the system temp dir the same way
        import tempfile

        leftover = Path(tempfile.gettempdir()) / f"kernelgen-verify-{dead.pid}-clitest"
        (leftover / "op").mkdir(parents=True, exist_ok=True)
        # (a candidate the static check refuses: the cleanup comes first, nothing needs to run after it)
        res = invoke("verify", str(HOSTILE / "exec_string"), "--backend", "interpreter", "--trials", "1",
                     "--no-write", "--json")
        assert res.exit_code == 1 and not leftover.exists()
        assert json.loads(res.stdout)["verdicts"][0]["check"] == "static"
    finally:
        alive.kill()
        alive.wait()


def _start_new(lib: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "kernelgen.cli", "new", "add + relu", "--library", str(lib), "--backend",
           "interpreter", "--trials", "1", "--no-llm", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="200"))
    run_id, seen = None, []
    for line in proc.stdout:
        seen.append(line)
        if run_id is None and line.startswith("run "):
            run_id = line.split()[1]
        if "▸ verify" in line:
            break
    assert run_id and proc.poll() is None, "".join(seen)
    return proc, run_id


def test_ctrl_c_says_how_to_resume_and_resume_does_not_count_the_pause(cache, tmp_path):
    lib = tmp_path / "lib"
    t0 = time.monotonic()
    proc, run_id = _start_new(lib)
    proc.send_signal(signal.SIGINT)
    rest = proc.stdout.read()
    proc.wait(timeout=60)
    assert proc.returncode == 130, rest
    assert f"interrupted; resume with: kernelgen resume {run_id}" in rest.splitlines()
    assert "Traceback" not in rest
    row = next(r for r in json.loads(invoke("runs", "--json").stdout) if r["run_id"] == run_id)
    assert row["status"] == "interrupted" and row["name"] == "add_relu" and row["next"]
    table = invoke("runs", env=NARROW).stdout
    assert "add_relu" in table and run_id in table
    pause = 6.0
    time.sleep(pause)
    res = invoke("resume", run_id, "--json")
    outer = time.monotonic() - t0
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout)
    assert result["status"] == "merged" and result["resumed"] is True
    mask = os.umask(0o022)
    os.umask(mask)
    merged = Path(result["merged"])  # the umask's modes, not mkdtemp's private 0700
    assert merged.stat().st_mode & 0o777 == 0o777 & ~mask
    assert (merged / "verified" / "interpreter.json").stat().st_mode & 0o777 == 0o666 & ~mask
    # the run's time is the two drives', not the pause between them
    assert 0 < result["wall_s"] < outer - pause, (result["wall_s"], outer)
    # the state says the run was resumed (a stage that finds its own earlier work may say so)
    from kernelgen.agents import graph, runs

    conn = runs.connect()
    values = graph.build_graph(runs.checkpointer(conn)).get_state({"configurable": {"thread_id": run_id}}).values
    conn.close()
    assert values["resumed"] is True and values["result"]["status"] == "merged"


def test_resume_of_a_killed_run_counts_time_up_to_its_last_checkpoint(cache, tmp_path):
    from kernelgen.agents import graph, runs

    lib = tmp_path / "lib"
    proc, run_id = _start_new(lib)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    conn = runs.connect()
    info = runs.get_run(conn, run_id)
    conn.close()
    assert info["status"] == "interrupted" and info["killed"] and info["active_s"] == 0.0
    snapshot = graph.build_graph(runs.checkpointer(runs.connect())).get_state({"configurable": {"thread_id": run_id}})
    spent = graph._time_before(info, snapshot)
    later = graph._time_before(dict(info, drive_started=info["drive_started"] - 3600), snapshot)
    assert 0 < spent < 120 and later == pytest.approx(spent + 3600)
    from kernelgen.scratch import clean_leftovers

    clean_leftovers()


# ---- 5. re-verifying leaves git clean ---------------------------------------------------------------------
def test_record_unchanged_but_for_wall_time_is_not_rewritten(tmp_path):
    op = tmp_path / "op"
    op.mkdir()
    rec = {"op": "x", "passed": True, "source_hash": "abc", "accuracy": [{"dtype": "float32", "passed": True}],
           "wall_s": 1.5}
    path = write_record(op, "interpreter", rec)
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    time.sleep(0.01)
    write_record(op, "interpreter", dict(rec, wall_s=9.25))
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before
    write_record(op, "interpreter", dict(rec, passed=False, wall_s=2.0))
    assert read_record(op, "interpreter")["passed"] is False and read_record(op, "interpreter")["wall_s"] == 2.0


def test_verifying_twice_keeps_the_record_byte_identical(tmp_path):
    lib = tmp_path / "lib" / "ops"
    shutil.copytree(HOSTILE / "correct", lib / "correct")
    first = invoke("verify", str(lib / "correct"), "--backend", "interpreter", "--trials", "1", "--json")
    assert first.exit_code == 0, first.output
    rows = json.loads(first.stdout)["verdicts"][0]["accuracy"]
    assert {r["calls"] for r in rows if r["case"].startswith("test ")} == {1}  # --trials 1: one run per spec shape
    record = record_path(lib / "correct", "interpreter")
    before = record.read_bytes()
    again = invoke("verify", str(lib / "correct"), "--backend", "interpreter", "--trials", "1")
    assert again.exit_code == 0 and record.read_bytes() == before


def test_no_write_leaves_no_record_and_trials_sets_the_number_of_runs(tmp_path):
    # (--trials 1 giving one run per spec shape is checked by test_verifying_twice_keeps_the_record_byte_identical)
    lib = tmp_path / "lib" / "ops"
    shutil.copytree(HOSTILE / "correct", lib / "correct")
    res = invoke("verify", str(lib / "correct"), "--backend", "interpreter", "--trials", "3", "--no-write", "--json")
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)["verdicts"][0]["accuracy"]
    assert not (lib / "correct" / "verified").exists()
    assert {r["calls"] for r in rows if r["case"].startswith("test ")} == {3}  # runs per spec shape


# ---- 6. bad input is rejected the same way everywhere ------------------------------------------------------
@pytest.mark.parametrize("command", [["list"], ["search", "softmax"], ["verify", "--all"],
                                     ["regen", "--backend", "interpreter"]])
@pytest.mark.parametrize("kind", ["missing", "file"])
def test_library_that_is_not_a_folder_is_rejected(command, kind, tmp_path):
    path = tmp_path / "lib"
    if kind == "file":
        path.write_text("x")
    res = invoke(*command, "--library", str(path))
    assert res.exit_code == 2
    why = "does not exist" if kind == "missing" else "is not a folder"
    assert one_line(res.stderr) == f"error: --library {path} {why}"


def test_dtypes_given_as_a_string_says_expected_a_list(tmp_path):
    from kernelgen.errors import SpecError
    from kernelgen.spec import load_spec

    spec = (HOSTILE / "correct" / "spec.toml").read_text().replace('dtypes = ["float32"]', 'dtypes = "float32"')
    (tmp_path / "spec.toml").write_text(spec)
    with pytest.raises(SpecError, match=r"field 'dtypes' must be a list of dtype names .*got str 'float32'"):
        load_spec(tmp_path)


def test_kernel_with_a_syntax_error_is_broken_and_enable_skips_it(tmp_path, monkeypatch, interpreter):
    import kernelgen
    from kernelgen.aten import BrokenOpWarning

    lib = tmp_path / "lib"
    bad = copy_op("softmax", lib, "zz_bad_softmax")
    (bad / "kernel.py").write_text((bad / "kernel.py").read_text() + "\ndef oops(:\n")
    raising = copy_op("log_softmax", lib, "zz_raising")
    (raising / "kernel.py").write_text("raise RuntimeError('no driver here')\n" + (raising / "kernel.py").read_text())
    monkeypatch.setenv("KERNELGEN_LIBRARY", str(lib))
    op = load_op(bad)
    assert op.broken and "syntax error" in op.error and "line" in op.error and "def oops(:" in op.error
    rows = {r["name"]: r for r in json.loads(invoke("list", "--json").stdout)}
    assert rows["zz_bad_softmax"]["broken"] and rows["zz_bad_softmax"]["backends"]["interpreter"]["status"] == "broken"
    with pytest.warns(BrokenOpWarning) as caught:
        on = kernelgen.enable(backend="interpreter", policy="all")
    messages = " ".join(str(w.message) for w in caught)
    assert "zz_bad_softmax" in messages and "zz_raising" in messages and "no driver here" in messages
    assert {"softmax", "rms_norm", "log_softmax"} <= set(on) and not {"zz_bad_softmax", "zz_raising"} & set(on)


# ---- 7. argument errors come back before anything heavy is imported ------------------------------------------
PROBE = """
import sys, time
t0 = time.perf_counter()
from kernelgen.cli import main
sys.argv = ["kernelgen", *sys.argv[1:]]
try:
    main()
except SystemExit as exc:
    code = exc.code
print(code, round(time.perf_counter() - t0, 3), sorted(m for m in ("torch", "chromadb", "langgraph", "triton")
                                                       if m in sys.modules), file=sys.stderr)
"""


@pytest.mark.parametrize("args", [["new", "  "], ["new", "add + relu", "--backend", "tpu9"],
                                  ["new", "add + relu", "--name", "Bad-Name"], ["list", "--backend", "tpu9"],
                                  ["verify", "rms_norm", "--backend", "tpu9"], ["search", " "],
                                  ["regen", "--backend", "tpu9"], ["compose", ""]])
def test_argument_errors_import_nothing_heavy(args):
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=60)
    code, seconds, heavy = proc.stderr.strip().splitlines()[-1].split(" ", 2)
    print(f"{' '.join(args)!r}: exit {code} in {seconds} s")
    assert code == "2" and heavy == "[]", proc.stderr
    assert proc.stderr.count("error:") == 1


# ---- 8. merged ops get the umask's modes ------------------------------------------------------------------
@pytest.mark.parametrize("umask, dir_mode, file_mode", [(0o022, 0o755, 0o644), (0o002, 0o775, 0o664)])
def test_merged_op_and_records_follow_the_umask(tmp_path, umask, dir_mode, file_mode):
    from kernelgen.spec import load_spec

    spec = load_spec(HOSTILE / "correct")
    old = os.umask(umask)
    try:
        dest = merge_op(tmp_path / "lib", spec, (HOSTILE / "correct" / "kernel.py").read_text(),
                        records={"interpreter": {"passed": True}})
        write_record(dest, "cuda", {"passed": True})
    finally:
        os.umask(old)
    assert dest.stat().st_mode & 0o777 == dir_mode
    for f in ("kernel.py", "spec.toml", "verified/interpreter.json", "verified/cuda.json"):
        assert (dest / f).stat().st_mode & 0o777 == file_mode, f


# ---- 9. conveniences --------------------------------------------------------------------------------------
def test_version_and_help_with_examples_and_readable_metavars():
    import kernelgen

    res = invoke("--version")
    assert res.exit_code == 0 and res.stdout.strip() == f"kernelgen {kernelgen.__version__}"
    for command in ("list", "backends", "search", "new", "compose", "runs", "resume", "verify", "regen"):
        text = invoke(command, "--help", env={"COLUMNS": "160"}).stdout
        assert "Example" in text, command
        assert "<list" not in text and "<bool>" not in text and "<text>" not in text, (command, text)


def test_runs_prune_forgets_finished_runs_and_keeps_interrupted_ones(cache):
    from kernelgen.agents import runs

    finished = _fake_runs(3, "add + relu")
    conn = runs.connect()
    runs.mark_run(conn, "20261126-090000-dead", request="softmax", status="running")
    conn.execute("UPDATE kernelgen_runs SET pid = 999999999 WHERE run_id = '20261126-090000-dead'")
    conn.commit()
    conn.close()
    for run_id in finished:
        runs.run_workdir(run_id).mkdir(parents=True)
    res = invoke("runs", "--prune", "--keep", "1", "--json")
    assert res.exit_code == 0, res.output
    assert sorted(json.loads(res.stdout)["removed"]) == sorted(finished)[:2]
    left = {r["run_id"]: r["status"] for r in json.loads(invoke("runs", "--json").stdout)}
    assert left == {finished[2]: "failed", "20261126-090000-dead": "interrupted"}
    assert not runs.run_workdir(finished[0]).exists() and runs.run_workdir(finished[2]).is_dir()


def test_new_without_library_in_an_installed_kernelgen_targets_the_user_library(tmp_path, monkeypatch):
    from kernelgen import library

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    user = tmp_path / "data" / "kernelgen" / "library"
    monkeypatch.setattr(library, "installed_package", lambda: True)
    assert library.default_target_library() == user
    monkeypatch.setattr(library, "installed_package", lambda: False)
    assert library.default_target_library() == builtin_library()
    monkeypatch.setenv("KERNELGEN_LIBRARY", str(tmp_path / "mine") + os.pathsep + str(tmp_path / "other"))
    assert library.default_target_library() == tmp_path / "mine"
    monkeypatch.delenv("KERNELGEN_LIBRARY")
    assert user not in library.library_roots()
    copy_op("rms_norm", user, "zz_user_norm")
    assert library.library_roots()[0] == user.resolve()
    assert "zz_user_norm" in {op.name for op in library.discover()}


def test_verification_status_line_shows_elapsed_seconds():
    from rich.console import Console

    from kernelgen.cli_runs import progress_listener

    buf = io.StringIO()
    listen = progress_listener(Console(file=buf, force_terminal=True, width=80))
    listen("verify", "composer on interpreter: running", "")
    time.sleep(1.3)  # the live line re-renders with the time so far
    listen("verify", "composer on interpreter: passed (1.3 s)", "green")
    out = buf.getvalue()
    assert "composer on interpreter: running (0 s)" in out and "composer on interpreter: running (1 s)" in out
    assert out.rstrip().endswith("composer on interpreter: passed (1.3 s)\x1b[0m")


# ---- 10. the lean install recipe stays in step with pyproject.toml -----------------------------------------
def test_lean_requirements_list_every_dependency_but_chromadb():
    import tomllib

    root = Path(__file__).resolve().parents[1]
    deps = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    lean = [line.strip() for line in (root / "requirements-lean.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    assert "chromadb" in " ".join(deps)
    assert [d for d in deps if not d.startswith("chromadb")] == lean[:len(deps) - 1]
    assert not any(line.startswith(("chromadb", "kubernetes", "onnxruntime", "tokenizers")) for line in lean)


def test_merge_leftovers_are_only_those_of_ended_processes(tmp_path):
    from kernelgen.library import merge_leftovers

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    names = [f".tmp-zz_op-{dead.pid}-k2j4", f".old-zz_op-{dead.pid}", ".tmp-zz_op-abcd1234",  # leftovers
             f".tmp-zz_op-{os.getpid()}-x1y2", f".old-zz_op-{os.getpid()}",  # a merge in progress here
             f".tmp-zz_op_two-{dead.pid}-k2j4"]  # another op
    for n in names:
        (tmp_path / n).mkdir()
    assert [p.name for p in merge_leftovers(tmp_path, "zz_op")] == sorted(names[:3])


# ---- 11. enable(): exclude=, library= and stale records --------------------------------------------------
def test_enable_exclude_library_and_stale_record_gating(tmp_path, interpreter, rng_seed):
    import torch
    import torch.nn.functional as F

    import kernelgen
    from kernelgen.library import source_hash

    on = kernelgen.enable(backend="interpreter", policy="all", exclude=["softmax"])
    assert "softmax" not in on and {"rms_norm", "log_softmax"} <= set(on)
    kernelgen.disable()

    lib = tmp_path / "lib"
    folder = copy_op("rms_norm", lib, "zz_norm")
    with pytest.raises(ValueError, match="zz_norm"):  # only reachable through library=
        kernelgen.enable(backend="interpreter", policy="correct", include=["zz_norm"])
    assert kernelgen.enable(backend="interpreter", policy="correct", include=["zz_norm"], library=[lib]) == []
    write_record(folder, "interpreter", {"passed": True, "source_hash": source_hash(folder, "interpreter")})
    assert kernelgen.enable(backend="interpreter", policy="correct", include=["zz_norm"], library=[lib]) == ["zz_norm"]
    g = torch.Generator().manual_seed(rng_seed)
    x, w = torch.randn(5, 40, generator=g), torch.randn(40, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(F.rms_norm(x, (40,), w, 1e-6), x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True)
                                                                                  + 1e-6) * w, atol=1e-5, rtol=1e-5)
    assert kernelgen.status()["interpreter"]["calls"] == {"zz_norm": 1}
    kernelgen.disable()
    (folder / "kernel.py").write_text((folder / "kernel.py").read_text() + "\n# edited after verification\n")
    assert kernelgen.enable(backend="interpreter", policy="correct", include=["zz_norm"], library=[lib]) == []
    assert kernelgen.enable(backend="interpreter", policy="all", include=["zz_norm"], library=[lib]) == ["zz_norm"]


def test_runs_database_of_an_earlier_kernelgen_gains_the_new_columns(cache):
    from kernelgen.agents import runs

    cache.mkdir(parents=True)
    old = sqlite3.connect(cache / "runs.sqlite")
    old.execute("CREATE TABLE kernelgen_runs (run_id TEXT PRIMARY KEY, request TEXT, pid INTEGER, status TEXT, "
                "created REAL, updated REAL, result TEXT)")
    old.execute("INSERT INTO kernelgen_runs VALUES ('r-old', 'softmax', 1, 'merged', 1, 2, '{\"name\": \"softmax\"}')")
    old.commit()
    old.close()
    conn = runs.connect()
    row = runs.get_run(conn, "r-old")
    conn.close()
    assert (row["status"], row["active_s"], row["result"]) == ("merged", 0.0, {"name": "softmax"})
    assert not list(cache.glob("runs.sqlite.unreadable-*"))


def test_backends_on_a_machine_without_nvidia_driver_imports_no_torch():
    from kernelgen.backends.cuda import _no_nvidia_driver

    probe = ("import sys, json, io, contextlib\nfrom kernelgen.cli import main\nsys.argv = ['kernelgen', 'backends', "
             "'--json']\nout = io.StringIO()\nwith contextlib.redirect_stdout(out):\n    try:\n        main()\n"
             "    except SystemExit:\n        pass\nprint(json.dumps({'torch': 'torch' in sys.modules, "
             "'rows': json.loads(out.getvalue())}))\n")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    rows = {r["name"]: r for r in doc["rows"]}
    assert rows["interpreter"]["available"] is True
    if _no_nvidia_driver():  # this machine: CUDA is known to be absent without asking torch
        assert doc["torch"] is False and rows["cuda"]["available"] is False
    else:  # a GPU machine: torch answers
        assert doc["torch"] is True


def test_sigterm_leaves_the_run_resumable_like_ctrl_c(cache, tmp_path):
    proc, run_id = _start_new(tmp_path / "lib")
    proc.send_signal(signal.SIGTERM)
    rest = proc.stdout.read()
    proc.wait(timeout=60)
    assert proc.returncode == 130 and f"interrupted; resume with: kernelgen resume {run_id}" in rest
    row = next(r for r in json.loads(invoke("runs", "--json").stdout) if r["run_id"] == run_id)
    assert row["status"] == "interrupted" and not row["killed"] and row["active_s"] > 0


def test_unknown_words_of_a_long_request_are_named_once_in_a_short_line():
    request = " ".join(["frobnicate"] * 300 + ["wibble"] * 300)
    res = invoke("compose", request)
    assert res.exit_code == 2
    line = one_line(res.stderr)
    assert len(line) < 400 and line.count("'frobnicate'") == 1 and line.count("'wibble'") == 1


def test_a_broken_folder_fails_the_check_of_the_file_at_fault(tmp_path):
    """load_op names the file that broke the folder; the verdict's check follows it, whatever the message says:
    a spec that does not validate is "spec" (even when kernel.py is missing too), a kernel that does not parse
    or is missing is "static"."""
    from kernelgen.verify.sandbox import static_verdict

    lib = tmp_path / "lib"
    bad_spec = copy_op("softmax", lib, "zz_bad_spec")
    text = (bad_spec / "spec.toml").read_text()
    (bad_spec / "spec.toml").write_text(text.replace('dtypes = ["float32"', 'dtypes = ["kernel.py"', 1))
    (bad_spec / "kernel.py").unlink()
    bad_kernel = copy_op("softmax", lib, "zz_bad_kernel")
    (bad_kernel / "kernel.py").write_text("def oops(:\n")
    no_kernel = copy_op("softmax", lib, "zz_no_kernel")
    (no_kernel / "kernel.py").unlink()
    # a candidate whose broken line reads like a spec problem, to be filed as the spec's failure
    posing = copy_op("softmax", lib, "zz_posing")
    (posing / "kernel.py").write_text(f"{posing / 'spec.toml'}: field 'dtypes' (:\n")
    expected = {bad_spec: ("spec.toml", "spec"), bad_kernel: ("kernel.py", "static"),
                no_kernel: ("kernel.py", "static"), posing: ("kernel.py", "static")}
    for folder, (file, check) in expected.items():
        op = load_op(folder)
        assert op.broken and op.broken_file == file, (folder.name, op.error)
        assert static_verdict(folder, "interpreter").check == check, folder.name
