"""The hostile battery: every candidate folder under tests/hostile/ is verified by one `kernelgen verify` command,
run in a subprocess from a scratch HOME, working directory and TMPDIR. Nothing may kill the run; each candidate must
get a verdict, be rejected by the check its expect.toml names (the correct ones pass), and leave nothing behind: no
marker file, no marker process, no `verified/` record. The command is `verify_many` behind the CLI, so this one
run checks both (the battery takes minutes on 2 cores: it runs once for the whole suite)."""

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from battery import (
    BATTERY_JOBS,
    BATTERY_TIMEOUT,
    CHECKS,
    HOSTILE,
    MARKER,
    REPO,
    TIMEOUT,
    Scratch,
    clear_traces,
    expectations,
    make_scratch,
    verified_folders,
)

from kernelgen.verify.sandbox import _signal_name, is_library_op
from kernelgen.verify.verdict import Verdict

EXPECTED = expectations()
# The whole battery runs in the module fixture, charged to the first test that uses it: minutes on 2 cores.
pytestmark = pytest.mark.timeout(BATTERY_TIMEOUT)
# The attacks and bug classes of the issue that the battery must hold, each in a folder of its own.
REQUIRED_CASES = (
    "stack_gi_frame", "stack_f_globals_compare", "stack_f_builtins_verdict", "traceback_frame", "getattr_os_system",
    "setsid_child", "kill_parent", "torch_library_impl", "python_dispatch_off", "python_dispatch_detect",
    "grid_compute", "numpy_host", "reference_load_time", "alias_input", "input_overwritten", "weight_decay",
    "output_buffer_reused", "bf16_output", "half_square_overflow", "dropped_eps", "only_2d", "ignores_col_stride",
    "broken_default_path", "adapter_drops_weight", "autotune_after_n_calls", "wrong_one_in_500",
    "spec_wide_tolerance", "spec_reference_disagrees_aten", "spec_dtypes_narrow", "spec_row_dim_missing",
    "correct", "correct_rms_norm_nd", "correct_two_outputs", "correct_logsumexp_bf16",
)


def test_battery_is_complete():
    assert len(EXPECTED) >= 45
    assert set(REQUIRED_CASES) <= set(EXPECTED), sorted(set(REQUIRED_CASES) - set(EXPECTED))
    held = {e.check for e in EXPECTED.values()}
    assert set(CHECKS) - {"performance"} <= held, sorted(set(CHECKS) - held)
    for case in EXPECTED:
        assert {"kernel.py", "spec.toml", "expect.toml"} <= {p.name for p in (HOSTILE / case).iterdir()}, case
        assert EXPECTED[case].why.strip(), case


@dataclass(frozen=True)
class BatteryRun:
    proc: subprocess.CompletedProcess
    verdicts: dict[str, Verdict]  # by case: the report's n-th verdict is the n-th folder's
    lib: Path
    scratch: Scratch
    traces: tuple[list[str], list[str]]  # (marker files, marker processes) found after the run


@pytest.fixture(scope="module")
def battery(tmp_path_factory) -> BatteryRun:
    # The correct candidate runs from a library-like folder (<root>/lib/ops/correct) so its record is written; the
    # others run from the scratch copy of the battery, outside any library, so nothing may be written next to them
    # (the other correct controls among them pass there without a record).
    clear_traces()  # what an earlier, interrupted run may have left
    scratch = make_scratch(tmp_path_factory.mktemp("battery"))
    lib = scratch.root / "lib" / "ops"
    shutil.copytree(HOSTILE / "correct", lib / "correct", ignore=shutil.ignore_patterns("__pycache__"))
    folders = [lib / "correct" if case == "correct" else scratch.battery / case for case in EXPECTED]
    env = {**os.environ, **scratch.env(), "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "kernelgen.cli", "verify", *map(str, folders), "--backend", "interpreter",
           "--jobs", str(BATTERY_JOBS), "--timeout", str(TIMEOUT), "--format", "json"]
    try:
        proc = subprocess.run(cmd, cwd=scratch.work, env=env, capture_output=True, text=True,
                              timeout=BATTERY_TIMEOUT - 60)
    finally:
        traces = clear_traces(scratch)  # look, then clean up
    try:
        verdicts = [Verdict.from_dict(d) for d in json.loads(proc.stdout)["verdicts"]]
    except ValueError as exc:
        raise AssertionError(f"no JSON report: exit {proc.returncode}; stderr tail: {proc.stderr[-2000:]}") from exc
    return BatteryRun(proc, dict(zip(EXPECTED, verdicts)), lib, scratch, traces)


@pytest.mark.parametrize("case", list(EXPECTED))
def test_hostile_candidate_is_rejected_by_the_right_check(battery, case):
    v, want = battery.verdicts[case], EXPECTED[case]
    assert v.op == case
    assert v.check == want.check, f"{case} ({want.why}): {v.check or 'passed'}: {v.message}"
    assert v.passed is want.passes
    assert want.words in v.message, v.message
    assert len(v.message) < 2100  # short enough to hand to an LLM


def test_run_goes_on_past_every_failure(battery):
    """Nothing kills the run: it exits 1 (some candidates failed) with every verdict, in the order asked, and
    reports each candidate as it finishes (verify_many's on_done: one stderr line each, in whatever order)."""
    assert battery.proc.returncode == 1, f"exit {battery.proc.returncode}: {battery.proc.stderr[-2000:]}"
    assert [v.op for v in battery.verdicts.values()] == list(EXPECTED)  # every result, in the order asked
    done = re.findall(r"^(\w+): (pass|FAIL \w+) \(\d+\.\d s\)$", battery.proc.stderr, flags=re.MULTILINE)
    assert sorted(op for op, _ in done) == sorted(EXPECTED), battery.proc.stderr[-2000:]
    for op, mark in done:
        v = battery.verdicts[op]
        assert mark == ("pass" if v.passed else f"FAIL {v.check}"), (op, mark)


def test_nothing_outlives_the_run_or_escapes_the_scratch_dir(battery):
    files, processes = battery.traces
    assert not processes, f"processes left by candidates: {processes}"
    assert not files, f"marker files written outside the worker's scratch dir: {files}"
    assert not verified_folders(battery.scratch), "a verified/ record was written into the battery"


def test_record_is_written_only_for_library_ops_and_has_no_speed_figure(battery):
    rec = json.loads((battery.lib / "correct" / "verified" / "interpreter.json").read_text())
    assert rec["passed"] is True and rec["source_hash"] == battery.verdicts["correct"].source_hash
    assert not {"performance", "speedup_vs_eager", "speedup_vs_compile", "min_speedup_vs_eager"} & set(rec)
    assert rec["accuracy"] and all(row["passed"] for row in rec["accuracy"])


def test_crash_verdict_names_the_signal():
    assert _signal_name(-11) == "SIGSEGV"
    assert _signal_name(-6) == "SIGABRT"
    assert _signal_name(137) == "SIGKILL"
    assert _signal_name(1) == ""


def test_library_op_folders_are_recognised(tmp_path):
    assert is_library_op(tmp_path / "ops" / "x")
    assert not is_library_op(HOSTILE / "correct")


def test_trace_checks_see_what_an_escaped_candidate_leaves(tmp_path):
    """The checks above can fail: a marker process started with the run's scratch HOME and marker files in the
    battery copy and in /tmp are found (and ended, removed); a marker process of another HOME is not this run's."""
    import os
    import time

    scratch = make_scratch(tmp_path / "run")
    quiet = [(os.POSIX_SPAWN_OPEN, fd, "/dev/null", os.O_RDWR, 0) for fd in (0, 1, 2)]
    ours = os.posix_spawn("/bin/sleep", [f"{MARKER}_selftest", "60"], {**os.environ, "HOME": str(scratch.home)},
                          file_actions=quiet, setsid=True)
    other = os.posix_spawn("/bin/sleep", [f"{MARKER}_elsewhere", "60"], {**os.environ, "HOME": str(tmp_path)},
                           file_actions=quiet)
    try:
        planted = [scratch.battery / "correct" / f"{MARKER}_selftest", Path("/tmp") / f"{MARKER}_selftest_{ours}"]
        for f in planted:
            f.touch()
        time.sleep(0.2)  # let the children exec, so their argv is the marker
        files, procs = clear_traces(scratch)
        assert sorted(files) == sorted(str(f) for f in planted) and not any(f.exists() for f in planted)
        assert [p.split(":")[0] for p in procs] == [str(ours)]
        assert os.waitpid(ours, 0)[1] != 0  # ended by a signal
        assert clear_traces(scratch) == ([], [])
    finally:
        os.kill(other, 9)
        os.waitpid(other, 0)


def test_candidates_replay_in_python_and_build_nothing(tmp_path, monkeypatch):
    """A verification child would compile the C++ replay again in its own HOME: it keeps Python replays."""
    from kernelgen.verify.sandbox import child_env

    monkeypatch.setenv("KERNELGEN_LEAN_REPLAY", "1")
    env = child_env(tmp_path, interpret=False)
    assert env["KERNELGEN_LEAN_REPLAY"] == "0" and env["HOME"].startswith(str(tmp_path))
