"""Stage `retrieve`: similar library ops (prompt examples and suggestions) and the reuse decision."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kernelgen.agents.state import _find_existing, _library, _load_spec_text, _opts, emit


def retrieve(state: dict) -> dict:
    """The k most similar library ops (prompt examples, and suggestions shown to the user), and the reuse
    decision. An op is reused only when it is proven to compute the request: its reference gives the
    request's reference outputs on random inputs (`same_reference`). Candidates are the op of the run's
    name in the target library and the search hits in it. A search score alone never reuses anything;
    with no request reference (the composer could not read it) there is no reuse, only suggestions.
    --replace turns reuse off (the run generates, and `select` decides whether the new op is better)."""
    opts, library = _opts(state), _library(state)
    hits: list[dict[str, Any]] = []
    notes: list[str] = []
    try:
        from kernelgen.retrieval.index import search

        for h in search(state["request"], k=5, library=[str(library)]):
            hits.append({"name": h.name, "score": round(float(h.score), 4), "path": str(h.path),
                         "aten": list(h.aten or []), "description": h.description})
    except Exception as exc:  # retrieval only improves prompts and suggestions; a run goes on without it
        notes.append(f"retrieval unavailable: {type(exc).__name__}: {exc}")
        emit("retrieve", notes[-1], "yellow")
    if hits:
        emit("retrieve", "similar ops: " + ", ".join(f"{h['name']} ({h['score']:.2f})" for h in hits[:3]))
    out: dict[str, Any] = {"hits": hits, "reuse": None, "messages": notes}
    existing = _find_existing(state.get("name"), library)
    out["existing"] = existing
    if opts.get("replace"):
        return out
    if not state.get("spec"):
        if hits:
            notes.append("no reference to compare with, so nothing is reused; similar library ops: "
                         + ", ".join(f"{h['name']} ({h['score']:.2f})" for h in hits[:3])
                         + " (call kernelgen.ops.<name> if one of them is what you meant)")
            emit("retrieve", notes[-1], "yellow")
        return out
    candidates = ([dict(existing, score=1.0)] if existing and not existing["broken"] else []) + hits
    same = _equivalent_hit(state, candidates, library)
    if same:
        by_name = existing is not None and same["name"] == existing["name"]
        out["reuse"] = {"name": same["name"], "path": same["path"], "score": same["score"],
                        "reason": (f"an op named {same['name']!r} is already in the library and computes the same "
                                   "thing" if by_name else f"the library op {same['name']!r} computes the same "
                                   "thing") + " (its reference gives the same outputs on random inputs)"}
        emit("retrieve", f"reusing {out['reuse']['name']}: {out['reuse']['reason']}", "green")
    elif existing:
        why = "is broken" if existing["broken"] else "computes something else"
        emit("retrieve", f"an op named {existing['name']!r} is in the library but {why}; the new op gets another "
                         "name at merge (or replaces it with --replace)", "yellow")
    return out


EQUIVALENT_SCORE = 0.2  # hits below this are not worth running a reference for


def _equivalent_hit(state: dict, hits: list[dict[str, Any]], library: Path) -> dict[str, Any] | None:
    """The first hit in the target library whose reference computes what the composed spec's does."""
    from kernelgen.library import load_op, ops_dir

    target = ops_dir(library).resolve() if library.is_dir() else None
    if target is None:
        return None
    composed = _load_spec_text(state["spec"])
    for hit in hits:
        # by name in the target library, not by the hit's path: the same op may also live in another root
        folder = target / hit["name"]
        if hit["score"] < EQUIVALENT_SCORE or not (folder / "spec.toml").is_file():
            continue
        op = load_op(folder)
        if op.spec is not None and same_reference(composed, op.spec):
            return dict(hit, path=str(folder))
    return None


def same_reference(a, b, seeds: tuple[int, ...] = (1, 2)) -> bool:
    """Whether two specs describe the same op: the same argument kinds and ranks, and `b`'s reference gives
    `a`'s outputs for `a`'s random inputs (float64, tight tolerance). A reference that fails means no.
    The request's reference is untrusted code, so both run behind the verifier's wall (in a plain process
    under --no-sandbox); raises `SandboxUnavailable` when a sandbox is needed and cannot start."""
    from kernelgen.verify.references import same_outputs
    from kernelgen.verify.sandbox import sandbox_disabled

    return same_outputs(a, b, seeds, sandbox=not sandbox_disabled())


def after_retrieve(state: dict) -> str:
    return "report" if state.get("reuse") else "generate"


