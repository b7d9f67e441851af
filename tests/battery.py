"""The hostile battery under tests/hostile/: what each candidate folder expects (its expect.toml), a scratch
place to verify copies of them in, and the traces an escaped candidate would leave behind.

Every folder holds kernel.py, spec.toml and expect.toml:

    check = "outputs"        # the check that must reject it; "" for a candidate that must pass
    words = "..."            # optional: a phrase the verdict message must contain
    why = "..."              # one line: the bug or the attack
    [trigger]                # bug candidates only: the conditions under which it is wrong (tests/test_hostile_bugs.py)

Attack candidates that get to run try to prove it: a file named KERNELGEN_HOSTILE_MARKER_<case> in $HOME, in the
parent of their working directory, in /tmp and next to their kernel.py, and a `sleep` whose argv[0] is that name.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

HOSTILE = Path(__file__).resolve().parent / "hostile"
REPO = HOSTILE.parents[1]
MARKER = "KERNELGEN_HOSTILE_MARKER"
# The checks a verdict can name; "" = the candidate must pass.
CHECKS = ("", "static", "spec", "sandbox", "accuracy", "outputs", "inputs", "adapter", "anticheat", "performance")
# Checks whose candidates are plain bugs (safe to import in-process), each with a [trigger] that shows it wrong.
BUG_CHECKS = ("accuracy", "outputs", "inputs", "adapter", "spec")
EXPECTS = ("wrong", "raises", "dtype", "shape", "alias", "input_changed", "earlier_output_changed", "aten_mismatch")
# Wall time per candidate: it includes starting Python and importing torch and triton on a loaded 2-core machine.
TIMEOUT = 60
BATTERY_TIMEOUT = 1800  # one run over the whole battery (about 3 minutes on 2 cores today)
# Candidates verified side by side. The two hangs spin a core each until TIMEOUT: with 2 jobs they would hold
# both cores for a minute; with 4 the rest of the battery goes on beside them (wall time, not CPU, ends them).
BATTERY_JOBS = 4


@dataclass(frozen=True)
class Expectation:
    case: str
    check: str
    why: str
    words: str = ""
    trigger: dict[str, Any] = field(default_factory=dict)

    @property
    def passes(self) -> bool:
        return self.check == ""


def _load(folder: Path) -> Expectation:
    doc = tomllib.loads((folder / "expect.toml").read_text())
    unknown = set(doc) - {"check", "words", "why", "trigger"}
    if unknown:
        raise ValueError(f"{folder.name}/expect.toml: unknown fields {sorted(unknown)}")
    check = doc["check"]
    if check not in CHECKS:
        raise ValueError(f"{folder.name}/expect.toml: check {check!r} is not one of {CHECKS}")
    trigger = doc.get("trigger", {})
    if trigger and trigger.get("expect") not in EXPECTS:
        raise ValueError(f"{folder.name}/expect.toml: trigger.expect must be one of {EXPECTS}")
    return Expectation(folder.name, check, doc["why"], doc.get("words", ""), trigger)


def expectations() -> dict[str, Expectation]:
    """Every candidate folder's expectation, the sandbox cases first: the hangs then wait out their timeout
    beside the rest of the battery instead of after it."""
    found = [_load(p) for p in sorted(HOSTILE.iterdir()) if p.is_dir() and not p.name.startswith((".", "_"))]
    found.sort(key=lambda e: e.check != "sandbox")
    return {e.case: e for e in found}


def bug_cases() -> list[str]:
    """Plain bugs, safe to import in-process: the bug checks' candidates, and those the static check refuses for
    the state their bug lives in (they keep their [trigger], which shows the bug is real)."""
    return [c for c, e in expectations().items() if e.check in BUG_CHECKS or (e.check == "static" and e.trigger)]


@dataclass(frozen=True)
class Scratch:
    """Where one battery run happens: its own HOME, working directory, TMPDIR and a copy of the battery (an escaped
    candidate writing next to its kernel.py then writes into the copy, never into the repository)."""

    root: Path
    home: Path
    work: Path
    tmp: Path
    battery: Path

    def env(self) -> dict[str, str]:
        return {"HOME": str(self.home), "TMPDIR": str(self.tmp), "KERNELGEN_CACHE_DIR": str(self.root / "cache")}


def make_scratch(root: Path) -> Scratch:
    s = Scratch(root, root / "home", root / "work", root / "tmp", root / "battery")
    for d in (s.home, s.work, s.tmp):
        d.mkdir(parents=True)
    for case in expectations():
        shutil.copytree(HOSTILE / case, s.battery / case, ignore=shutil.ignore_patterns("__pycache__", "verified"))
    return s


def marker_files(scratch: Scratch) -> list[Path]:
    """Marker files anywhere a candidate could have put them: the scratch HOME, working directory and TMPDIR, the
    battery copy and the repository's battery, and /tmp itself."""
    found: list[Path] = []
    for top in (scratch.home, scratch.work, scratch.tmp, scratch.battery, HOSTILE):
        found += [p for p in top.rglob(f"{MARKER}*")]
    found += list(Path("/tmp").glob(f"{MARKER}*"))
    return sorted(set(found))


def marker_processes(home: Path) -> list[tuple[int, str]]:
    """(pid, command line) of every process whose argv holds the marker and that was started with this run's
    scratch HOME (a battery run beside this one, or a stale one, has another)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if MARKER not in argv:
                continue
            env = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"HOME={home}".encode() in env:
            found.append((int(entry.name), argv.strip()))
    return found


def clear_traces(scratch: Scratch | None = None) -> tuple[list[str], list[str]]:
    """Remove the marker files and end the marker processes a battery run left in `scratch` (they are that run's
    own children's children). Returns what was found, as text, for the assertion that nothing was. Without a
    scratch: only stale marker files in /tmp, before a run."""
    if scratch is None:
        files, procs = list(Path("/tmp").glob(f"{MARKER}*")), []
    else:
        files, procs = marker_files(scratch), marker_processes(scratch.home)
    for pid, _ in procs:
        try:
            # A candidate's sleep started in a session of its own leads its group: end the group with it.
            if os.getpgid(pid) == pid:
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    for f in files:
        f.unlink(missing_ok=True)
    return [str(f) for f in files], [f"{pid}: {argv}" for pid, argv in procs]


def verified_folders(scratch: Scratch) -> list[Path]:
    """Records written into a battery folder (the copy or the repository's): none may be, they are no library."""
    return sorted(p for top in (scratch.battery, HOSTILE) for p in top.glob("*/verified"))
