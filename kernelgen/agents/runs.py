"""Where runs live: the SQLite checkpointer of the graph, a small table of runs, and per-run work folders.

`<cache>/runs.sqlite` holds langgraph's checkpoints (one thread per run, keyed by the run id) and our
`kernelgen_runs` table (request, pid, status, timestamps), so `kernelgen runs` can say which runs finished
and which were interrupted (status "running" but the process that owned it is gone).
`<cache>/runs/<run_id>/<candidate>/` holds each candidate as an op folder for the sandbox.
The cache is KERNELGEN_CACHE_DIR, else ~/.cache/kernelgen.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import time
from pathlib import Path
from typing import Any

from kernelgen.errors import KernelgenError


class RunNotFound(KernelgenError):
    """No run with that id in the runs database."""


def cache_dir() -> Path:
    root = os.environ.get("KERNELGEN_CACHE_DIR")
    path = Path(root).expanduser() if root else Path.home() / ".cache" / "kernelgen"
    path.mkdir(parents=True, exist_ok=True)
    return path


def runs_db() -> Path:
    return cache_dir() / "runs.sqlite"


def run_workdir(run_id: str) -> Path:
    return cache_dir() / "runs" / run_id


def new_run_id() -> str:
    """Sortable by start time, unique enough for one machine: 20261123-184512-3f9a."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


def connect() -> sqlite3.Connection:
    # langgraph's SqliteSaver may be used from its worker threads; sqlite serialises access itself.
    conn = sqlite3.connect(str(runs_db()), check_same_thread=False, timeout=30)
    conn.execute(
        "CREATE TABLE IF NOT EXISTS kernelgen_runs (run_id TEXT PRIMARY KEY, request TEXT, pid INTEGER, "
        "status TEXT, created REAL, updated REAL, result TEXT)"
    )
    conn.commit()
    return conn


def checkpointer(conn: sqlite3.Connection):
    from langgraph.checkpoint.sqlite import SqliteSaver

    saver = SqliteSaver(conn)
    saver.setup()
    return saver


def mark_run(conn: sqlite3.Connection, run_id: str, *, request: str | None = None, status: str,
             result: dict[str, Any] | None = None) -> None:
    now = time.time()
    row = conn.execute("SELECT run_id FROM kernelgen_runs WHERE run_id = ?", (run_id,)).fetchone()
    if row is None:
        conn.execute("INSERT INTO kernelgen_runs VALUES (?, ?, ?, ?, ?, ?, ?)",
                     (run_id, request or "", os.getpid(), status, now, now, None))
    else:
        conn.execute("UPDATE kernelgen_runs SET pid = ?, status = ?, updated = ?, result = COALESCE(?, result) "
                     "WHERE run_id = ?",
                     (os.getpid(), status, now, json.dumps(result) if result is not None else None, run_id))
    conn.commit()


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def get_run(conn: sqlite3.Connection, run_id: str) -> dict[str, Any]:
    row = conn.execute("SELECT run_id, request, pid, status, created, updated, result FROM kernelgen_runs "
                       "WHERE run_id = ?", (run_id,)).fetchone()
    if row is None:
        raise RunNotFound(f"no run {run_id!r} (see `kernelgen runs`)")
    return _row(row)


def _row(row) -> dict[str, Any]:
    run_id, request, pid, status, created, updated, result = row
    if status == "running" and not _alive(pid):
        status = "interrupted"  # its process died (killed, crashed, machine restarted): resumable
    return {"run_id": run_id, "request": request, "status": status, "pid": pid, "created": created,
            "updated": updated, "result": json.loads(result) if result else None}


def list_runs(conn: sqlite3.Connection, limit: int = 50) -> list[dict[str, Any]]:
    rows = conn.execute("SELECT run_id, request, pid, status, created, updated, result FROM kernelgen_runs "
                        "ORDER BY created DESC LIMIT ?", (limit,)).fetchall()
    return [_row(r) for r in rows]
