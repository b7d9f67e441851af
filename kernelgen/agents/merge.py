"""Stages `select`, `merge` and `report`: the winner, its atomic merge into the library, the run's result."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from kernelgen.agents.check import _accelerators, candidate_folder, passes
from kernelgen.agents.state import _first_line, _library, _load_spec_text, _opts, emit


def _speed(cand: dict, backend: str) -> float:
    from kernelgen.verify.verdict import Verdict

    v = cand["verdicts"].get(backend) or {}
    return Verdict.from_dict({"op": "", "backend": backend, **v}).speedup_vs_eager or 0.0


def select(state: dict) -> dict:
    """Winner: among candidates that pass on every selected backend, the fastest on the first backend that
    measures speed; with none (interpreter only), the first passing one. With --replace and an existing op
    of that name, the new op must also beat it (see `replace_decision`)."""
    backends = _opts(state).get("backends") or []
    passing = [c for c in state.get("candidates") or [] if passes(c, backends)]
    if not passing:
        emit("select", "no candidate passed verification; nothing will be merged", "red")
        return {"winner": None, "decision": "no candidate passed verification"}
    accel = _accelerators(backends)
    winner = max(passing, key=lambda c: _speed(c, accel[0])) if accel else passing[0]
    decision = f"{winner['id']} passes on {', '.join(backends)}"
    if accel:
        decision += f"; fastest on {accel[0]} ({_speed(winner, accel[0]):.2f}x vs eager)"
    existing = state.get("existing")
    if existing and _opts(state).get("replace"):
        ok, why = replace_decision(existing, winner, backends)
        if not ok:
            emit("select", f"keeping the existing {existing['name']}: {why}", "yellow")
            return {"winner": winner["id"], "decision": f"kept the existing op: {why}", "keep_existing": True}
        decision += f"; replaces the existing op: {why}"
    emit("select", f"winner: {decision}", "green")
    return {"winner": winner["id"], "decision": decision, "keep_existing": False}


def replace_decision(existing: dict, winner: dict, backends: list[str]) -> tuple[bool, str]:
    """Replace only when the new op passes (it does: it won) and is faster than the existing one on a
    backend where both were timed, or when the existing op has no fresh passing record on any selected
    backend. With nothing timed (interpreter only) a passing existing op stays."""
    from kernelgen.library import load_op, op_status

    if existing.get("broken"):
        return True, "the existing op is broken"
    op = load_op(Path(existing["path"]))
    if op.broken:
        return True, f"the existing op is broken: {op.error}"
    statuses = {b: op_status(op, b) for b in backends}
    for b in _accelerators(backends):
        old, new = statuses[b].get("speedup"), _speed(winner, b)
        if statuses[b]["status"] == "verified" and old and new:
            if new > old:
                return True, f"{new:.2f}x vs eager on {b} beats {old:.2f}x"
            return False, f"the new op ({new:.2f}x vs eager on {b}) is not faster than the existing one ({old:.2f}x)"
    if not any(s["status"] == "verified" for s in statuses.values()):
        return True, "the existing op has no fresh passing record on " + ", ".join(backends)
    return False, "the existing op passes and no backend here measures speed, so the new one is not shown faster"


# ---- merge -----------------------------------------------------------------------------------------
def _winner(state: dict) -> dict | None:
    return next((c for c in state.get("candidates") or [] if c["id"] == state.get("winner")), None)


def _holds_ops(library: Path) -> bool:
    """Whether `library` already has a layout: an ops/ folder, or op folders directly inside (kept as is)."""
    if (library / "ops").is_dir():
        return True
    return library.is_dir() and any((p / "spec.toml").is_file() for p in library.iterdir() if p.is_dir())


def _merged_before(library: Path, spec, kernel: str) -> Path | None:
    """The op folder that already holds this kernel and spec, under the spec's name or a suffixed one."""
    from kernelgen.library import ops_dir
    from kernelgen.spec import load_spec

    if not library.is_dir():
        return None
    want = dict(spec.to_dict(), name="")
    for name in [spec.name] + [f"{spec.name}_{k}" for k in range(2, 10)]:
        folder = ops_dir(library) / name
        if (folder / "kernel.py").is_file() and (folder / "kernel.py").read_text() == kernel:
            try:
                if dict(load_spec(folder / "spec.toml").to_dict(), name="") == want:
                    return folder
            except Exception:
                continue
    return None


def _who_merged(state: dict) -> str:
    """Whose merge a finished op folder is: this run's own, before it was interrupted (only a resumed run can
    say so), or another run's that merged the same op meanwhile."""
    return "merged before an interruption" if state.get("resumed") else "another run merged the same op meanwhile"


def merge(state: dict) -> dict:
    """Write the winner into <library>/ops/<name>/ atomically, with a verification record per backend,
    then refresh the search index. Idempotent: a folder that already holds exactly this kernel and spec
    (a merge that finished before an interruption) counts as merged; leftovers of an interrupted merge
    of this op (.tmp-<name>-*, .old-<name>-*) are removed first."""
    from kernelgen.library import merge_op, ops_dir, source_hash
    from kernelgen.verify.verdict import Verdict

    opts = _opts(state)
    winner = _winner(state)
    if winner is None or state.get("keep_existing"):
        return {"merged": None}
    library = _library(state)
    if opts.get("dry_run"):
        emit("merge", f"dry run: {state['name']} would be merged into {ops_dir(library)}", "yellow")
        return {"merged": None}
    spec = _load_spec_text(state["spec"])
    out: dict[str, Any] = {"messages": []}
    before = _merged_before(library, spec, winner["kernel"])
    if before is not None:  # finished before an interruption (perhaps under a suffixed name), or another run's
        emit("merge", f"{before} already holds this op ({_who_merged(state)})", "green")
        return {"merged": str(before), "name": before.name}
    from kernelgen.library import NameTaken, free_name

    try:
        name, why = free_name(spec.name, library, replace=bool(opts.get("replace")), fixed=bool(opts.get("name")))
    except NameTaken as exc:
        emit("merge", str(exc), "red")
        return {"merged": None, "messages": [f"not merged: {exc}"]}
    if why:  # never shadow an op kernelgen.ops already resolves: a suffixed name (the launcher keeps its own)
        spec.name = name
        out.update(name=name, messages=[why])
        emit("merge", why, "yellow")
    if not _holds_ops(library):
        (library / "ops").mkdir(parents=True, exist_ok=True)  # a new or empty library gets the standard layout
    parent = ops_dir(library)
    dest = parent / spec.name
    if parent.is_dir():
        from kernelgen.library import merge_leftovers

        for n in {spec.name, state.get("name") or spec.name}:  # the run's name and the free one it merges under
            for leftover in merge_leftovers(parent, n):  # only merges whose process has ended
                shutil.rmtree(leftover, ignore_errors=True)
    staged = candidate_folder(state, winner)
    if dest.is_dir() and source_hash(dest) == source_hash(staged):
        emit("merge", f"{dest} already holds this op ({_who_merged(state)})", "green")
        return {"merged": str(dest)}
    if dest.exists() and not opts.get("replace"):
        msg = f"{dest} appeared during the run; not replaced (use --replace)"
        emit("merge", msg, "red")
        return {"merged": None, "messages": out["messages"] + [msg]}
    from kernelgen.backends import get_backend

    records = {b: Verdict.from_dict(v).to_record(speed=get_backend(b).measures_performance)
               for b, v in winner["verdicts"].items()}
    path = merge_op(library, spec, winner["kernel"], records, replace=bool(opts.get("replace")))
    emit("merge", f"merged {spec.name} into {path}", "green")
    out["merged"] = str(path)
    try:
        from kernelgen.retrieval.index import search

        search(spec.name, k=1, library=[str(library)])  # the index rebuilds when the library hash changes
    except Exception as exc:
        out["messages"].append(f"search index not refreshed: {type(exc).__name__}: {exc}")
        emit("merge", out["messages"][-1], "yellow")
    return out


# ---- report ----------------------------------------------------------------------------------------
def report(state: dict) -> dict:
    """The run's result as plain data (the CLI prints it as a table or JSON)."""
    opts = _opts(state)
    backends = opts.get("backends") or []
    cands = []
    for c in state.get("candidates") or []:
        row = {"id": c["id"], "origin": c["origin"], "round": c["round"], "parent": c["parent"],
               "passed": passes(c, backends), "backends": {}}
        for b, v in c["verdicts"].items():
            from kernelgen.verify.verdict import Verdict

            sp = Verdict.from_dict({"op": "", "backend": b, **v}).speedup_vs_eager if v.get("passed") else None
            row["backends"][b] = {"passed": bool(v.get("passed")), "check": v.get("check", ""),
                                  "message": _first_line(v.get("message", ""), 300), "speedup_vs_eager": sp}
        cands.append(row)
    if state.get("reuse"):
        status = "reused"
    elif state.get("merged"):
        status = "merged"
    elif state.get("winner") and opts.get("dry_run"):
        status = "dry-run"
    elif state.get("winner") and state.get("keep_existing"):
        status = "kept-existing"
    elif not state.get("spec"):
        status = "not-understood"
    else:
        status = "failed"
    llm = dict(state.get("llm") or {})
    result = {
        "run_id": state.get("run_id"),
        "request": state.get("request"),
        "status": status,
        "name": (state.get("reuse") or {}).get("name") or state.get("name"),
        "spec_origin": state.get("spec_origin"),
        "summary": (state.get("composition") or {}).get("summary", ""),
        "compose_error": state.get("compose_error", ""),
        "reuse": state.get("reuse"),
        "winner": state.get("winner"),
        "decision": state.get("decision", ""),
        "merged": state.get("merged"),
        "library": str(_library(state)),
        "backends": backends,
        "candidates": cands,
        "hits": [{"name": h["name"], "score": h["score"]} for h in state.get("hits") or []],
        "llm": {"enabled": bool(llm.get("enabled")), "endpoint": llm.get("endpoint"), "model": llm.get("model"),
                "error": llm.get("error", ""), "attempts": llm.get("attempts", [])},
        "messages": list(state.get("messages") or []),
        "rounds": int(state.get("round", 0)),
    }
    emit("report", f"status: {status}", "green" if status in ("merged", "reused", "dry-run") else "red")
    return {"result": result}


