"""The generation run as a langgraph `StateGraph`, checkpointed in SQLite after every node.

This file only wires the nodes (kernelgen/agents/nodes.py) and starts or resumes runs; a run's thread id
in the checkpointer is its run id, so `kernelgen resume RUN_ID` continues from the last finished node.
"""

from __future__ import annotations

import operator
import os
import time
from collections.abc import Callable
from typing import Annotated, Any, TypedDict

from kernelgen.agents import nodes
from kernelgen.agents import runs as runs_mod
from kernelgen.errors import KernelgenError

STAGES = ("understand", "retrieve", "generate", "verify", "repair", "select", "merge", "report")


class RunState(TypedDict, total=False):
    run_id: str
    request: str
    options: dict[str, Any]  # name, library, backends, candidates, rounds, trials, timeout, dry_run, replace...
    started: float
    name: str | None
    spec: str | None  # spec.toml text
    spec_origin: str | None  # "reference" (spec from the request's reference) | "composer" | "llm"
    spec_checks: dict[str, str]  # LLM spec hash -> the problem its reference showed on its inputs ("" = none)
    reference: dict[str, Any] | None  # the request's reference: source, notes, origin, request, name
    lowering: dict[str, Any] | None  # lowered, reason (why no template fits), trace_mode, ops (the ATen ops)
    composition: dict[str, Any] | None
    compose_error: str
    hits: list[dict[str, Any]]
    reuse: dict[str, Any] | None
    existing: dict[str, Any] | None
    llm: dict[str, Any]  # enabled, endpoint, model, error, attempts (never the key)
    candidates: list[dict[str, Any]]
    round: int
    winner: str | None
    decision: str
    keep_existing: bool
    merged: str | None
    result: dict[str, Any]
    messages: Annotated[list[str], operator.add]  # notes for the report, appended by any node
    resumed: bool  # set by `kernelgen resume`: a stage may find its own earlier work (e.g. a finished merge)


def _staged(name: str, fn: Callable[[dict], dict]) -> Callable[[dict], dict]:
    def node(state: dict) -> dict:
        nodes.emit(name, "", "stage")
        return fn(state)

    node.__name__ = name
    return node


def build_graph(checkpointer=None):
    from langgraph.graph import END, START, StateGraph

    g = StateGraph(RunState)
    for name in STAGES:
        g.add_node(name, _staged(name, getattr(nodes, name)))
    g.add_edge(START, "understand")
    g.add_edge("understand", "retrieve")
    g.add_conditional_edges("retrieve", nodes.after_retrieve, ["generate", "report"])
    g.add_conditional_edges("generate", nodes.after_generate, ["verify", "report"])
    g.add_conditional_edges("verify", nodes.after_verify, ["repair", "select"])
    g.add_edge("repair", "verify")
    g.add_edge("select", "merge")
    g.add_edge("merge", "report")
    g.add_edge("report", END)
    return g.compile(checkpointer=checkpointer)


def initial_state(request: str, options: dict[str, Any], run_id: str, llm: dict[str, Any]) -> dict[str, Any]:
    return {"run_id": run_id, "request": request, "options": options, "started": time.time(), "llm": llm,
            "candidates": [], "round": 0, "messages": []}


def llm_settings(enabled: bool) -> dict[str, Any]:
    from kernelgen.agents.llm import LLMConfig

    cfg = LLMConfig.from_env()
    return {"enabled": enabled, "endpoint": cfg.endpoint(), "model": cfg.model, "error": "", "attempts": []}


def with_reference(result: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """The run's result with the reference it was generated from (shown before generation, kept in the
    run record): `reference` (Python source), `notes`, and `lowering` (why no template fit, if none did)."""
    ref = values.get("reference") or {}
    result.setdefault("reference", ref.get("source"))
    result.setdefault("notes", list(ref.get("notes") or []))
    result.setdefault("lowering", values.get("lowering"))
    return result


def _drive(graph_input, run_id: str, request: str, listener, before_s: float = 0.0) -> dict[str, Any]:
    """Run the graph from its input or last checkpoint. The run's time (`wall_s`) is `before_s`, the time
    earlier drives of it spent running, plus this drive's: time while no process ran it is not counted."""
    conn = runs_mod.connect()
    try:
        app = build_graph(runs_mod.checkpointer(conn))
        config = {"configurable": {"thread_id": run_id}, "recursion_limit": 100}
        t0 = time.time()
        runs_mod.mark_run(conn, run_id, request=request, status="running", active_s=before_s)
        nodes.set_listener(listener)
        try:
            # durability="sync": each checkpoint is on disk before the next node starts, so a SIGKILL loses at
            # most the node that was running
            for _ in app.stream(graph_input, config, stream_mode="updates", durability="sync"):
                pass
        except BaseException as exc:
            status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "error"
            runs_mod.mark_run(conn, run_id, status=status, result={"error": f"{type(exc).__name__}: {exc}"},
                              active_s=before_s + time.time() - t0)
            raise
        finally:
            nodes.set_listener(None)
        values = app.get_state(config).values
        result = with_reference(dict(values.get("result") or {}), values)
        result["wall_s"] = round(before_s + time.time() - t0, 2)
        runs_mod.mark_run(conn, run_id, status=result.get("status", "done"), result=result,
                          active_s=result["wall_s"])
        return result
    finally:
        conn.close()


def _time_before(info: dict[str, Any], snapshot) -> float:
    """Seconds a run spent running before this resume. A drive that ended normally or by Ctrl-C recorded
    its time; a killed one did not, and counts up to its last checkpoint (the node it was in is redone)."""
    spent = float(info.get("active_s") or 0.0)
    if info.get("killed") and info.get("drive_started") and getattr(snapshot, "created_at", None):
        from datetime import datetime

        try:
            last = datetime.fromisoformat(snapshot.created_at).timestamp()
        except ValueError:
            return spent
        spent += max(0.0, last - float(info["drive_started"]))
    return spent


def start_run(request: str, options: dict[str, Any], llm: dict[str, Any], run_id: str | None = None,
              listener: nodes.Listener | None = None) -> dict[str, Any]:
    """Run the whole graph for `request`; returns the report node's result (plus run_id and wall_s)."""
    run_id = run_id or runs_mod.new_run_id()
    return _drive(initial_state(request, options, run_id, llm), run_id, request, listener)


def resume_run(run_id: str, listener: nodes.Listener | None = None) -> dict[str, Any]:
    """Continue a run from its last checkpoint (the interrupted node runs again; nodes are idempotent).
    A finished run is not run again: its result is returned as it was."""
    conn = runs_mod.connect()
    try:
        info = runs_mod.get_run(conn, run_id)
        if info["status"] == "running" and info["pid"] != os.getpid():
            raise KernelgenError(f"run {run_id!r} is still running (process {info['pid']}); "
                                 "resume it only once that process has ended")
        app = build_graph(runs_mod.checkpointer(conn))
        config = {"configurable": {"thread_id": run_id}}
        snapshot = app.get_state(config)
        if snapshot.values and snapshot.next and not snapshot.values.get("resumed"):
            _mark_resumed(app, config, snapshot)
    finally:
        conn.close()
    if not snapshot.values:
        raise KernelgenError(f"run {run_id!r} was interrupted before its first checkpoint; start it again")
    if not snapshot.next:
        result = snapshot.values.get("result") or info.get("result") or {}
        return dict(with_reference(dict(result), snapshot.values), resumed=False)
    return dict(_drive(None, run_id, info["request"], listener, _time_before(info, snapshot)), resumed=True)


def _mark_resumed(app, config: dict, snapshot) -> None:
    """Record in the run's state that it was resumed, so a stage that finds its own earlier work (a merged
    folder) can say so, while a fresh run that finds the same thing knows another run did it. The update
    re-evaluates the edges out of the last finished stage, which depend on the state alone: the next stage
    stays the same (checked)."""
    try:
        app.update_state(config, {"resumed": True})
    except Exception:  # e.g. no stage has finished yet: langgraph cannot tell which node the update is from
        return
    after = app.get_state(config).next
    if after != snapshot.next:  # never seen; resuming from a different stage would be wrong, so say so
        raise KernelgenError(f"resuming would run {after} instead of {snapshot.next}; please report this")


def prune_runs(keep: int = 0) -> list[str]:
    """Forget finished runs but the `keep` newest (see runs.prune_runs); returns the run ids removed."""
    conn = runs_mod.connect()
    try:
        return runs_mod.prune_runs(conn, keep)
    finally:
        conn.close()


def list_runs(limit: int = 50) -> list[dict[str, Any]]:
    """Recent runs, newest first, each with its status and the node it would run next ("" when finished)."""
    conn = runs_mod.connect()
    try:
        app = build_graph(runs_mod.checkpointer(conn))
        rows = runs_mod.list_runs(conn, limit)
        for row in rows:
            snap = app.get_state({"configurable": {"thread_id": row["run_id"]}})
            row["next"] = ",".join(snap.next) if snap.values else ""
            # an interrupted run has no result yet: its op name is in the last checkpoint
            row["name"] = (row.get("result") or {}).get("name") or (snap.values or {}).get("name") or ""
        return rows
    finally:
        conn.close()
