"""Where runs live: the SQLite checkpointer of the graph, a small table of runs, and per-run work folders.

`<cache>/runs.sqlite` holds langgraph's checkpoints (one thread per run, keyed by the run id) and our
`kernelgen_runs` table (request, pid, status, timestamps, time spent running), so `kernelgen runs` can say
which runs finished and which were interrupted (status "running" but the process that owned it is gone).
`<cache>/runs/<run_id>/<candidate>/` holds each candidate as an op folder for the sandbox.
The cache is KERNELGEN_CACHE_DIR, else $XDG_CACHE_HOME/kernelgen, else ~/.cache/kernelgen.

A runs database that SQLite cannot read (a truncated copy, garbage written over it) is moved aside with a
`RunsDatabaseWarning` and a fresh one is started: the old runs cannot be resumed, new ones work.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sqlite3
import time
import warnings
from pathlib import Path
from typing import Any

from kernelgen.errors import KernelgenError
from kernelgen.scratch import pid_alive

COLUMNS = ("run_id", "request", "pid", "status", "created", "updated", "result", "active_s", "drive_started")
# what --prune forgets; not "error" (a crash in a stage: resumable once the cause is fixed)
FINISHED = ("merged", "reused", "dry-run", "kept-existing", "failed", "not-understood", "done")


class RunNotFound(KernelgenError):
    """No run with that id in the runs database."""


class RunsDatabaseWarning(UserWarning):
    """The runs database could not be read and was moved aside."""


def cache_dir() -> Path:
    root = os.environ.get("KERNELGEN_CACHE_DIR")
    xdg = os.environ.get("XDG_CACHE_HOME")
    if root:
        path = Path(root).expanduser()
    else:
        path = (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "kernelgen"
    if path.exists() and not path.is_dir():
        raise KernelgenError(f"the cache folder {path} is a file (set KERNELGEN_CACHE_DIR elsewhere)")
    path.mkdir(parents=True, exist_ok=True)
    return path


def runs_db() -> Path:
    return cache_dir() / "runs.sqlite"


def run_workdir(run_id: str) -> Path:
    return cache_dir() / "runs" / run_id


def new_run_id() -> str:
    """Sortable by start time, unique enough for one machine: 20261123-184512-3f9a."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


def _open(path: Path) -> sqlite3.Connection:
    # langgraph's SqliteSaver may be used from its worker threads; sqlite serialises access itself.
    conn = sqlite3.connect(str(path), check_same_thread=False, timeout=30)
    try:
        # quick_check reads every page: a damaged file fails here, not halfway through a run
        ok = conn.execute("PRAGMA quick_check(1)").fetchone()
        if ok is None or ok[0] != "ok":
            raise sqlite3.DatabaseError(f"integrity check: {ok[0] if ok else 'no answer'}")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS kernelgen_runs (run_id TEXT PRIMARY KEY, request TEXT, pid INTEGER, "
            "status TEXT, created REAL, updated REAL, result TEXT, active_s REAL DEFAULT 0, drive_started REAL)"
        )
        have = {row[1] for row in conn.execute("PRAGMA table_info(kernelgen_runs)")}
        for column, decl in (("active_s", "REAL DEFAULT 0"), ("drive_started", "REAL")):
            if column not in have:  # a database from an earlier kernelgen
                conn.execute(f"ALTER TABLE kernelgen_runs ADD COLUMN {column} {decl}")
        conn.commit()
    except BaseException:
        conn.close()
        raise
    return conn


def connect() -> sqlite3.Connection:
    path = runs_db()
    try:
        return _open(path)
    except sqlite3.DatabaseError as exc:  # includes "file is not a database" and OperationalError
        aside = path.with_name(f"runs.sqlite.unreadable-{time.strftime('%Y%m%d-%H%M%S')}")
        try:
            os.replace(path, aside)
        except OSError as move_error:
            raise KernelgenError(f"the runs database {path} is unreadable ({exc}) and cannot be moved aside: "
                                 f"{move_error}") from None
        for suffix in ("-wal", "-shm", "-journal"):  # SQLite's side files belong to the bad database
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        warnings.warn(f"the runs database {path} was unreadable ({exc}); moved it to {aside.name} and started "
                      "a new one", RunsDatabaseWarning, stacklevel=2)
        return _open(path)


def checkpointer(conn: sqlite3.Connection):
    from langgraph.checkpoint.sqlite import SqliteSaver

    saver = SqliteSaver(conn)
    saver.setup()
    return saver


def mark_run(conn: sqlite3.Connection, run_id: str, *, request: str | None = None, status: str,
             result: dict[str, Any] | None = None, active_s: float | None = None) -> None:
    """Insert or update a run. Status "running" starts a drive of this process (its start time is kept,
    for the time spent running); `active_s` replaces the time spent running before."""
    now = time.time()
    row = conn.execute("SELECT run_id FROM kernelgen_runs WHERE run_id = ?", (run_id,)).fetchone()
    started = now if status == "running" else None
    if row is None:
        conn.execute(f"INSERT INTO kernelgen_runs ({', '.join(COLUMNS)}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     (run_id, request or "", os.getpid(), status, now, now, None, active_s or 0.0, started))
    else:
        conn.execute("UPDATE kernelgen_runs SET pid = ?, status = ?, updated = ?, result = COALESCE(?, result), "
                     "active_s = COALESCE(?, active_s), drive_started = COALESCE(?, drive_started) WHERE run_id = ?",
                     (os.getpid(), status, now, json.dumps(result) if result is not None else None, active_s,
                      started, run_id))
    conn.commit()


def _select(where: str = "", tail: str = "") -> str:
    return f"SELECT {', '.join(COLUMNS)} FROM kernelgen_runs {where} {tail}"


def get_run(conn: sqlite3.Connection, run_id: str) -> dict[str, Any]:
    row = conn.execute(_select("WHERE run_id = ?"), (run_id,)).fetchone()
    if row is None:
        raise RunNotFound(f"no run {run_id!r} (see `kernelgen runs`)")
    return _row(row)


def _row(row) -> dict[str, Any]:
    run_id, request, pid, status, created, updated, result, active_s, drive_started = row
    killed = status == "running" and not pid_alive(pid)
    if killed:
        status = "interrupted"  # its process died (killed, crashed, machine restarted): resumable
    return {"run_id": run_id, "request": request, "status": status, "killed": killed, "pid": pid, "created": created,
            "updated": updated, "result": json.loads(result) if result else None, "active_s": active_s or 0.0,
            "drive_started": drive_started}


def list_runs(conn: sqlite3.Connection, limit: int | None = 50) -> list[dict[str, Any]]:
    rows = conn.execute(_select(tail="ORDER BY created DESC LIMIT ?"), (-1 if limit is None else limit,)).fetchall()
    return [_row(r) for r in rows]


def prune_runs(conn: sqlite3.Connection, keep: int = 0) -> list[str]:
    """Forget finished runs (all but the `keep` newest of them): their row, checkpoints and work folder.
    Running and interrupted runs are kept (they can still be resumed). Returns the run ids removed."""
    finished = [r["run_id"] for r in list_runs(conn, None) if r["status"] in FINISHED]
    doomed = finished[keep:]
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    for run_id in doomed:
        conn.execute("DELETE FROM kernelgen_runs WHERE run_id = ?", (run_id,))
        for table in ("checkpoints", "writes"):  # langgraph's SqliteSaver tables, keyed by thread id
            if table in tables:
                conn.execute(f"DELETE FROM {table} WHERE thread_id = ?", (run_id,))
        conn.commit()
        shutil.rmtree(run_workdir(run_id), ignore_errors=True)
    if doomed:
        try:
            conn.execute("VACUUM")  # give the space back; not possible while another run writes: next time
        except sqlite3.OperationalError:
            pass
    return doomed
