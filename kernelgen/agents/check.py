"""Stages `verify` and `repair`: every candidate through the sandboxed verifier on every selected backend;
failing LLM candidates go back to the LLM with their verdicts for a bounded number of rounds."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from kernelgen.agents.generate import _contract, _system
from kernelgen.agents.runs import run_workdir
from kernelgen.agents.state import _candidate, _first_line, _llm_on, _opts, emit


def candidate_folder(state: dict, cand: dict) -> Path:
    """<cache>/runs/<run>/<candidate>/<op name>/ with kernel.py and spec.toml, rewritten each time (the
    folder name must match the spec's name for the loader)."""
    folder = run_workdir(state["run_id"]) / cand["id"] / state["name"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "kernel.py").write_text(cand["kernel"])
    (folder / "spec.toml").write_text(state["spec"])
    return folder


def verify(state: dict) -> dict:
    """Every candidate not yet verified, on every selected backend, through the sandbox."""
    from kernelgen.verify.sandbox import verify_candidate
    from kernelgen.verify.verdict import Verdict

    opts = _opts(state)
    backends = opts.get("backends") or []
    cands = [dict(c, verdicts=dict(c["verdicts"])) for c in state.get("candidates") or []]
    for cand in cands:
        for b in backends:
            if b in cand["verdicts"]:
                continue
            if cand["error"]:
                cand["verdicts"][b] = {"passed": False, "check": "static", "message": cand["error"],
                                       "backend": b, "op": state.get("name") or "", "candidate": cand["id"]}
                emit("verify", f"{cand['id']} on {b}: rejected: {cand['error']}", "red")
                continue
            emit("verify", f"{cand['id']} on {b}: running")
            t0 = time.perf_counter()
            try:
                verdict = verify_candidate(
                    candidate_folder(state, cand), b, timeout=float(opts.get("timeout", 120.0)),
                    perf=bool(opts.get("perf", True)), trials=int(opts.get("trials", 3)), write=False,
                    with_compile=bool(opts.get("with_compile", True)), candidate=cand["id"])
            except Exception as exc:  # the verifier failing on one candidate is that candidate's verdict
                verdict = Verdict.fail(state["name"], b, "sandbox", f"verifier error: {type(exc).__name__}: {exc}")
            verdict.candidate = cand["id"]
            cand["verdicts"][b] = verdict.to_dict()
            took = time.perf_counter() - t0
            if verdict.passed:
                sp = verdict.speedup_vs_eager
                extra = f", {sp:.2f}x vs eager" if sp else ""
                emit("verify", f"{cand['id']} on {b}: passed ({took:.1f} s{extra})", "green")
            else:
                emit("verify", f"{cand['id']} on {b}: failed {verdict.check}: {_first_line(verdict.message)}", "red")
    return {"candidates": cands}


def passes(cand: dict, backends: list[str]) -> bool:
    return bool(backends) and all((cand["verdicts"].get(b) or {}).get("passed") for b in backends)


def _accelerators(backends: list[str]) -> list[str]:
    from kernelgen.backends import get_backend

    return [b for b in backends if get_backend(b).measures_performance]


def _latest_failing_llm(state: dict) -> list[dict]:
    backends = _opts(state).get("backends") or []
    rnd = int(state.get("round", 0))
    return [c for c in state.get("candidates") or []
            if c["origin"] == "llm" and c["round"] == rnd and not passes(c, backends)]


def after_verify(state: dict) -> str:
    """Repair while rounds remain and an LLM candidate of the latest round failed — unless something
    already passes and no backend measures speed (a repaired kernel could not then win on anything)."""
    opts = _opts(state)
    backends = opts.get("backends") or []
    if not _llm_on(state) or int(state.get("round", 0)) >= int(opts.get("rounds", 0)):
        return "select"
    if not _latest_failing_llm(state):
        return "select"
    any_pass = any(passes(c, backends) for c in state.get("candidates") or [])
    if any_pass and not _accelerators(backends):
        return "select"
    return "repair"


# ---- repair ----------------------------------------------------------------------------------------
def _verdict_text(cand: dict) -> str:
    lines = []
    for b, v in cand["verdicts"].items():
        if v.get("passed"):
            lines.append(f"- {b}: passed")
        else:
            lines.append(f"- {b}: failed check '{v.get('check')}': {v.get('message', '')}")
    return "\n".join(lines)


def repair(state: dict) -> dict:
    """Each failing LLM candidate of the latest round goes back with its verdict messages; the answers are
    new candidates of the next round (the failed ones stay, with their verdicts, for the report)."""
    from kernelgen.agents import llm as llm_mod

    rnd = int(state.get("round", 0)) + 1
    cands = list(state.get("candidates") or [])
    llm_state = dict(state.get("llm") or {})
    out: dict[str, Any] = {"round": rnd, "messages": []}
    client = llm_mod.LLMClient()
    for cand in _latest_failing_llm(state):
        base = cand["id"].split(".r")[0]
        emit("repair", f"round {rnd}: {cand['id']} back to the LLM with its verdict")
        prompt = llm_mod.render("repair", request=state["request"], spec=state["spec"],
                                source=cand["kernel"] or "(no kernel.py was found in your answer)",
                                verdicts=_verdict_text(cand), contract=_contract())
        try:
            answer = llm_mod.parse_answer(client.complete(_system(), prompt))
        except llm_mod.LLMError as exc:
            llm_state["error"] = str(exc)
            out["messages"].append(f"LLM unavailable during repair: {exc}")
            emit("repair", out["messages"][-1], "yellow")
            break
        cands.append(_candidate(f"{base}.r{rnd}", "llm", answer.get("kernel"), round_=rnd, parent=cand["id"],
                                error="" if answer.get("kernel") else "the answer has no ```python block"))
    llm_state["attempts"] = list(llm_state.get("attempts") or []) + client.attempts
    out.update(candidates=cands, llm=llm_state)
    return out


