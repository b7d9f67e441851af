"""Stages `verify` and `repair`: every candidate through the sandboxed verifier on every selected backend;
failing LLM candidates go back to the LLM with their verdicts for a bounded number of rounds.

A spec the LLM wrote is checked first (its reference on its own inputs, in a child process): when that
fails, the round's candidates get a "spec" verdict without being run, and repair asks the LLM for a
corrected spec (reference, inputs, shapes) together with the kernel, rather than burning rounds on kernels.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

from kernelgen.agents.generate import _accept_llm_spec, _contract, _system, kernel_candidate, llm_client, spec_fields
from kernelgen.agents.runs import run_workdir
from kernelgen.agents.state import _candidate, _first_line, _llm_on, _load_spec_text, _opts, emit


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
    pending = any(b not in c["verdicts"] for c in cands for b in backends)
    problem, checks = _spec_problem(state) if pending else ("", dict(state.get("spec_checks") or {}))
    for cand in cands:
        for b in backends:
            if b in cand["verdicts"]:
                continue
            if problem or cand["error"]:
                check = "spec" if problem else cand.get("error_check") or "static"
                message = problem or cand["error"]
                cand["verdicts"][b] = {"passed": False, "check": check, "message": message,
                                       "backend": b, "op": state.get("name") or "", "candidate": cand["id"]}
                emit("verify", f"{cand['id']} on {b}: not run: {check} error: {_first_line(message)}", "red")
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
    return {"candidates": cands, "spec_checks": checks}


def _spec_key(spec_text: str) -> str:
    return hashlib.sha256(spec_text.encode()).hexdigest()[:16]


def _spec_problem(state: dict) -> tuple[str, dict[str, str]]:
    """The problem of the run's spec ("" when none), and the checks so far (spec hash -> problem). Only
    specs the LLM wrote are checked: the composer's and the user's references are trusted."""
    from kernelgen.agents.spec_checks import reference_problem

    checks = dict(state.get("spec_checks") or {})
    spec_text = state.get("spec")
    if state.get("spec_origin") != "llm" or not spec_text:
        return "", checks
    key = _spec_key(spec_text)
    if key not in checks:
        emit("verify", "running the LLM's reference on the spec's own inputs (in a child process)")
        timeout = min(float(_opts(state).get("timeout", 120.0)), 300.0)
        checks[key] = reference_problem(spec_text, timeout=timeout)
        if checks[key]:
            emit("verify", f"spec error: {_first_line(checks[key])}", "red")
    return checks[key], checks


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


def _failed(cand: dict) -> dict:
    """The first failing verdict of a candidate ({} when none failed)."""
    return next((v for v in cand["verdicts"].values() if not v.get("passed")), {})


def repair(state: dict) -> dict:
    """Each failing LLM candidate of the latest round goes back with its verdict messages; the answers are
    new candidates of the next round (the failed ones stay, with their verdicts, for the report). When the
    LLM's spec failed, one spec repair comes first: the LLM revises spec.toml and the kernel together; the
    round's other candidates are verified again, unchanged, against the revised spec."""
    from kernelgen.agents import llm as llm_mod

    rnd = int(state.get("round", 0)) + 1
    cands = list(state.get("candidates") or [])
    llm_state = dict(state.get("llm") or {})
    out: dict[str, Any] = {"round": rnd, "messages": []}
    client = llm_client("repair")
    failing = _latest_failing_llm(state)
    spec_text = state["spec"]
    try:
        spec_failed = [c for c in failing if _failed(c).get("check") == "spec"]
        # the spec changes only while nothing passes: a pass against the old spec must not be merged under
        # the new one
        backends = _opts(state).get("backends") or []
        if spec_failed and state.get("spec_origin") == "llm" and not any(passes(c, backends) for c in cands):
            first = spec_failed[0]
            new_cand, new_spec = _repair_spec(state, first, rnd, client)
            cands.append(new_cand)
            if new_spec:
                spec_text = out["spec"] = new_spec
                out["messages"].append(f"round {rnd}: the LLM revised the spec after: "
                                       f"{_first_line(_failed(first).get('message', ''))}")
            for other in spec_failed[1:]:
                cands.append(_candidate(f"{other['id'].split('.r')[0]}.r{rnd}", "llm", other["kernel"], round_=rnd,
                                        parent=other["id"], error=other["error"]))
            failing = [c for c in failing if c not in spec_failed]
        function = _load_spec_text(spec_text).function
        for cand in failing:
            base = cand["id"].split(".r")[0]
            emit("repair", f"round {rnd}: {cand['id']} back to the LLM with its verdict")
            prompt = llm_mod.render("repair", request=state["request"], spec=spec_text,
                                    source=cand["kernel"] or "(no kernel.py was found in your answer)",
                                    verdicts=_verdict_text(cand), contract=_contract())
            text = client.complete(_system(), prompt)
            cands.append(kernel_candidate(f"{base}.r{rnd}", text, function, round_=rnd, parent=cand["id"]))
    except llm_mod.LLMError as exc:
        llm_state["error"] = str(exc)
        out["messages"].append(f"LLM unavailable during repair: {exc}")
        emit("repair", out["messages"][-1], "yellow")
    llm_state["attempts"] = list(llm_state.get("attempts") or []) + client.attempts
    out.update(candidates=cands, llm=llm_state)
    return out


def _repair_spec(state: dict, cand: dict, rnd: int, client) -> tuple[dict, str | None]:
    """The LLM's corrected spec.toml and kernel.py for a spec that failed: (the new candidate, the new spec
    text or None). A revision that is missing or invalid becomes a candidate with a "spec" error, so the
    next round sends that problem back."""
    from kernelgen.agents import llm as llm_mod
    from kernelgen.agents.answers import missing_spec, parse_answer
    from kernelgen.errors import SpecError

    problem = "\n".join(f"- {b}: {v.get('message', '')}" for b, v in cand["verdicts"].items() if not v.get("passed"))
    emit("repair", f"round {rnd}: the spec goes back to the LLM with {cand['id']}: {_first_line(problem[2:])}")
    prompt = llm_mod.render("repair_spec", request=state["request"], spec=state["spec"], problem=problem,
                            source=cand["kernel"] or "(no kernel.py was found in your answer)",
                            spec_fields=spec_fields(f" (keep {state['name']!r})"), contract=_contract())
    text = client.complete(_system(), prompt)
    answer = parse_answer(text)
    cid = f"{cand['id'].split('.r')[0]}.r{rnd}"
    try:
        if not answer["spec"]:
            raise SpecError(missing_spec(text))
        new_spec, _ = _accept_llm_spec(answer["spec"], state["name"], state["request"])
    except SpecError as exc:
        emit("repair", f"the revised spec.toml is not usable: {exc}", "red")
        bad = _candidate(cid, "llm", answer["kernel"] or cand["kernel"], round_=rnd, parent=cand["id"],
                         error=f"the revised spec.toml is not usable: {exc}")
        return dict(bad, error_check="spec"), None
    emit("repair", f"round {rnd}: the LLM revised spec.toml", "green")
    if answer["kernel"]:
        return kernel_candidate(cid, text, _load_spec_text(new_spec).function, round_=rnd, parent=cand["id"]), new_spec
    # a spec-only answer: the kernel it had is verified again against the corrected spec
    return _candidate(cid, "llm", cand["kernel"], round_=rnd, parent=cand["id"], error=cand["error"]), new_spec
