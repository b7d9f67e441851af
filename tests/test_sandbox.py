"""The hostile battery: every candidate under tests/hostile/ is verified in one `verify_many` call that
goes on past each failure, and each is rejected by the check that should catch it."""

import shutil
from pathlib import Path

import pytest

from kernelgen.verify.sandbox import _signal_name, is_library_op, verify_many

HOSTILE = Path(__file__).resolve().parent / "hostile"

# case -> (check that must reject it, words its message must contain); "" = must pass
# The hang goes first so it waits out its timeout beside the rest of the battery, not after it. The timeout
# is wall time and includes importing torch, so it leaves room for a loaded 2-core test machine.
TIMEOUT = 45
EXPECTED = {
    "infinite_loop": ("sandbox", f"timed out after {TIMEOUT}s"),
    "correct": ("", ""),
    "import_os": ("static", "line 3: `import os`"),
    "open_file": ("static", "`secret = open('/etc/passwd').read()`"),
    "socket_connect": ("static", "import of 'socket'"),
    "dunder_import": ("static", "'__import__'"),
    "exec_string": ("static", "'exec'"),
    "abort_lambda_default": ("static", "lambda f=torch.os.abort"),
    "segfault": ("sandbox", "SIGSEGV"),
    "torch_reference": ("anticheat", "aten::sigmoid"),
    "cache_first_output": ("anticheat", "same output for two different inputs"),
    "identity": ("anticheat", "launched no Triton kernel"),
    "half_output": ("accuracy", "are NaN"),
    "pow2_only": ("accuracy", "non-power-of-two"),
    "contiguous_only": ("accuracy", "strided rows"),
}


def test_battery_is_complete():
    assert {p.name for p in HOSTILE.iterdir() if p.is_dir()} == set(EXPECTED)


@pytest.fixture(scope="module")
def battery(tmp_path_factory):
    # The correct candidate runs from a library-like folder (<root>/ops/correct) so its record is written;
    # the hostile ones stay where they are, outside any library, so nothing is written next to them.
    lib = tmp_path_factory.mktemp("lib") / "ops"
    shutil.copytree(HOSTILE / "correct", lib / "correct")
    folders = [lib / "correct" if name == "correct" else HOSTILE / name for name in EXPECTED]
    done = []
    verdicts = verify_many(folders, "interpreter", jobs=2, timeout=TIMEOUT, write=True, on_done=done.append)
    return dict(zip(EXPECTED, verdicts)), done, lib


@pytest.mark.parametrize("case", list(EXPECTED))
def test_hostile_candidate_is_rejected_by_the_right_check(battery, case):
    verdicts, _, _ = battery
    v = verdicts[case]
    check, words = EXPECTED[case]
    assert v.op == case
    assert v.check == check, f"{case}: {v.check}: {v.message}"
    assert v.passed is (check == "")
    assert words in v.message, v.message
    assert len(v.message) < 2100  # short enough to hand to an LLM


def test_run_goes_on_past_every_failure(battery):
    verdicts, done, _ = battery
    assert sorted(v.op for v in done) == sorted(EXPECTED)  # every candidate reported, in whatever order
    assert list(verdicts) == [v.op for v in verdicts.values()]  # results in the order asked


def test_record_is_written_only_for_library_ops_and_has_no_speed_figure(battery):
    import json

    verdicts, _, lib = battery
    rec = json.loads((lib / "correct" / "verified" / "interpreter.json").read_text())
    assert rec["passed"] is True and rec["source_hash"] == verdicts["correct"].source_hash
    assert not {"performance", "speedup_vs_eager", "speedup_vs_compile", "min_speedup_vs_eager"} & set(rec)
    assert rec["accuracy"] and all(row["passed"] for row in rec["accuracy"])
    assert not any((HOSTILE / name / "verified").exists() for name in EXPECTED)


def test_crash_verdict_names_the_signal():
    assert _signal_name(-11) == "SIGSEGV"
    assert _signal_name(-6) == "SIGABRT"
    assert _signal_name(137) == "SIGKILL"
    assert _signal_name(1) == ""


def test_library_op_folders_are_recognised(tmp_path):
    assert is_library_op(tmp_path / "ops" / "x")
    assert not is_library_op(HOSTILE / "correct")
