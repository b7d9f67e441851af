"""Scratch folders in the system temp dir, named after the process that owns them, and their cleanup.

A process killed with SIGKILL cannot remove its scratch folders. Each one is named
`kernelgen-<kind>-<pid>-<random>` (see `scratch_prefix`), so the next kernelgen command can tell a leftover
(its process is gone) from a folder another run is still using, and removes only the leftovers.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

KINDS = ("verify", "reference", "regen", "ray")
LEFTOVER_RE = re.compile(r"^kernelgen-(?:" + "|".join(KINDS) + r")-(\d+)-")


def scratch_prefix(kind: str) -> str:
    """The prefix for a scratch folder of this process: tempfile.TemporaryDirectory(prefix=scratch_prefix(...))."""
    assert kind in KINDS, kind
    return f"kernelgen-{kind}-{os.getpid()}-"


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive, and not ours to judge
        return True
    return True


def clean_leftovers(tmp: str | Path | None = None) -> list[Path]:
    """Remove this user's scratch folders whose owning process has ended; returns what was removed."""
    removed = []
    root = Path(tmp or tempfile.gettempdir())
    try:
        entries = list(root.iterdir())
    except OSError:
        return removed
    uid = os.getuid() if hasattr(os, "getuid") else None
    for entry in entries:
        m = LEFTOVER_RE.match(entry.name)
        if m is None or int(m.group(1)) == os.getpid():
            continue
        try:
            st = entry.lstat()
        except OSError:
            continue
        if not entry.is_dir() or entry.is_symlink() or (uid is not None and st.st_uid != uid):
            continue
        if not pid_alive(int(m.group(1))):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed
