"""The nodes of the generation graph: plain functions `state -> partial state`, each testable alone.

    understand ─► retrieve ─► generate ─► verify ─► (repair ─► verify)* ─► select ─► merge ─► report
                     └── reuse an existing op ─────────────────────────────────────────────────► report

The state is plain data (str, int, float, bool, list, dict) so the SQLite checkpointer can store it, and a
node may run twice (`kernelgen resume` re-runs the node that was interrupted): nodes compute their output
from the state alone and write nothing outside the run's work folder, except `merge`, which is atomic and
recognises its own finished work. Progress goes to an optional listener (`set_listener`), never the state.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kernelgen.agents.runs import run_workdir
from kernelgen.errors import SpecError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# Reuse rule: when the composer cannot parse the request, an existing op whose retrieval score is at least
# this is taken to be what was asked for (the run reports it and generates nothing; --replace overrides).
# 0.4 from the offline embedding: right ops scored 0.45-0.61 ("RoPE", "rotary embedding", "silu and mul",
# "fused rmsnorm + residual"), the best wrong one 0.27 ("causal masked softmax" -> softmax).
REUSE_SCORE = 0.4
EXAMPLE_CHARS = 6000  # per retrieved op in a prompt: enough for a full kernel.py, bounded for small contexts

Listener = Callable[[str, str, str], None]  # (stage, message, style)
_listener: Listener | None = None


def set_listener(fn: Listener | None) -> None:
    global _listener
    _listener = fn


def emit(stage: str, message: str, style: str = "") -> None:
    if _listener is not None:
        _listener(stage, message, style)


def _opts(state: dict) -> dict[str, Any]:
    return state.get("options") or {}


def _library(state: dict) -> Path:
    from kernelgen.library import builtin_library

    lib = _opts(state).get("library")
    return Path(lib) if lib else builtin_library()


def _load_spec_text(text: str, source: str = "<generated spec.toml>"):
    from kernelgen.spec import OpSpec

    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{source}: not valid TOML: {exc}") from None
    return OpSpec.from_dict(doc, source)


def _find_existing(name: str | None, library: Path) -> dict[str, Any] | None:
    """The op folder `name` in the library the run merges into (an op of that name in another root, such
    as the built-in library seen from a user --library, is not in the way: the new one shadows it)."""
    from kernelgen.library import load_op, ops_dir

    if not name or not library.is_dir():
        return None
    path = ops_dir(library) / name
    if not path.is_dir():
        return None
    op = load_op(path)
    return {"name": op.name, "path": str(op.path), "broken": op.broken}


# ---- understand ------------------------------------------------------------------------------------
def short_compose_error(message: str) -> str:
    """The composer's message without its vocabulary listing (kept whole in the run's result)."""
    head = message.split(" Vocabulary --")[0].strip()
    return head if head == message.strip() else head + " (vocabulary: README, 'The composer')"


def understand(state: dict) -> dict:
    """Request -> OpSpec through the composer (deterministic, no network). When it cannot parse the
    request the spec is left to the LLM (in `generate`), or the run reuses what retrieval finds."""
    request, name = state["request"], _opts(state).get("name")
    emit("understand", f"request: {request!r}")
    from kernelgen.agents.composer import ComposeError, compose

    try:
        comp = compose(request, name=name)
    except ComposeError as exc:
        emit("understand", f"composer: {short_compose_error(str(exc))}", "yellow")
        return {"composition": None, "compose_error": str(exc), "name": name, "spec": None}
    from kernelgen.spec import dump_spec

    spec_text = dump_spec(comp.spec)
    emit("understand", f"composer: {comp.summary} -> op {comp.spec.name!r}", "green")
    return {
        "composition": {"kernel": comp.kernel_source, "summary": comp.summary},
        "compose_error": "",
        "name": comp.spec.name,
        "spec": spec_text,
        "spec_origin": "composer",
    }


# ---- retrieve --------------------------------------------------------------------------------------
def retrieve(state: dict) -> dict:
    """The k most similar library ops (prompt examples), and the reuse decision:
    - the op's name (from --name or the composer) is already in the library: reuse it;
    - a similar op of the target library has a reference that computes the same as the composed one;
    - the composer could not parse the request and the top hit scores >= REUSE_SCORE: reuse that op.
    --replace turns both off (the run generates, and `select` decides whether the new op is better)."""
    opts, library = _opts(state), _library(state)
    hits: list[dict[str, Any]] = []
    notes: list[str] = []
    try:
        from kernelgen.retrieval.index import search

        for h in search(state["request"], k=5, library=[str(library)]):
            hits.append({"name": h.name, "score": round(float(h.score), 4), "path": str(h.path),
                         "aten": list(h.aten or []), "description": h.description})
    except Exception as exc:  # retrieval only improves prompts and reuse; a run goes on without it
        notes.append(f"retrieval unavailable: {type(exc).__name__}: {exc}")
        emit("retrieve", notes[-1], "yellow")
    if hits:
        emit("retrieve", "similar ops: " + ", ".join(f"{h['name']} ({h['score']:.2f})" for h in hits[:3]))
    out: dict[str, Any] = {"hits": hits, "reuse": None, "messages": notes}
    existing = _find_existing(state.get("name"), library)
    out["existing"] = existing
    if opts.get("replace"):
        return out
    same = _equivalent_hit(state, hits, library) if state.get("spec") and not existing else None
    if existing and not existing["broken"]:
        out["reuse"] = {"name": existing["name"], "path": existing["path"], "score": 1.0,
                        "reason": f"an op named {existing['name']!r} is already in the library"}
    elif same:
        out["reuse"] = {"name": same["name"], "path": same["path"], "score": same["score"],
                        "reason": f"the library op {same['name']!r} computes the same thing "
                                  "(its reference gives the same outputs on random inputs)"}
    elif state.get("spec") is None and hits and hits[0]["score"] >= REUSE_SCORE:
        top = hits[0]
        out["reuse"] = {"name": top["name"], "path": top["path"], "score": top["score"],
                        "reason": f"the library op {top['name']!r} matches the request (score {top['score']:.2f})"}
    if out["reuse"]:
        emit("retrieve", f"reusing {out['reuse']['name']}: {out['reuse']['reason']}", "green")
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
    `a`'s outputs for `a`'s random inputs (float64, tight tolerance). A reference that fails means no."""
    import torch

    from kernelgen.verify.inputs import as_tuple, make_inputs, reference_function, upcast

    if len(a.inputs) != len(b.inputs) or len(a.outputs) != len(b.outputs):
        return False
    for x, y in zip(a.inputs, b.inputs):
        if x.kind != y.kind or (x.kind == "tensor" and (len(x.shape) != len(y.shape) or x.dtype != y.dtype)):
            return False
    try:
        ref_a, ref_b = reference_function(a), reference_function(b)
        for seed in seeds:
            args = upcast(make_inputs(a, dict(a.test_shapes[0]), "float32", "cpu", seed))
            got_a, got_b = as_tuple(ref_a(*args)), as_tuple(ref_b(*args))
            if len(got_a) != len(got_b):
                return False
            for u, v in zip(got_a, got_b):
                if not (isinstance(u, torch.Tensor) and isinstance(v, torch.Tensor)) or u.shape != v.shape:
                    return False
                if not torch.allclose(u.double(), v.double(), rtol=1e-9, atol=1e-9):
                    return False
    except Exception:
        return False
    return True


def after_retrieve(state: dict) -> str:
    return "report" if state.get("reuse") else "generate"


# ---- generate --------------------------------------------------------------------------------------
def _examples(state: dict, limit: int = 2) -> str:
    from kernelgen.library import builtin_library

    paths = [Path(h["path"]) for h in state.get("hits") or []][:limit]
    if not paths:
        paths = [builtin_library() / "ops" / "rms_norm"]
    parts = []
    for p in paths:
        kernel = p / "kernel.py"
        if kernel.is_file():
            parts.append(f"--- {p.name}/kernel.py ---\n```python\n{kernel.read_text()[:EXAMPLE_CHARS]}\n```")
    return "\n\n".join(parts) or "(none)"


def _llm_on(state: dict) -> bool:
    return bool((state.get("llm") or {}).get("enabled")) and not (state.get("llm") or {}).get("error")


def _candidate(cid: str, origin: str, kernel: str | None, round_: int = 0, parent: str = "",
               error: str = "") -> dict[str, Any]:
    return {"id": cid, "origin": origin, "round": round_, "parent": parent, "kernel": kernel or "",
            "error": error, "verdicts": {}}


def generate(state: dict) -> dict:
    """Candidates: the composer's kernel, then `--candidates` LLM kernels. With no spec yet (the composer
    could not parse the request), the first LLM answer writes spec.toml (reference included) and kernel.py."""
    from kernelgen.agents import llm as llm_mod

    opts = _opts(state)
    cands: list[dict[str, Any]] = []
    out: dict[str, Any] = {"messages": []}
    if state.get("composition"):
        cands.append(_candidate("composer", "composer", state["composition"]["kernel"]))
        emit("generate", "composer candidate ready")
    llm_state = dict(state.get("llm") or {})
    spec_text = state.get("spec")
    if llm_state.get("enabled"):
        client = llm_mod.LLMClient()
        n = max(0, int(opts.get("candidates", 1)))
        try:
            if spec_text is None and n:
                emit("generate", f"asking {client.config.model} for spec.toml and kernel.py")
                answer = llm_mod.parse_answer(client.complete(*_spec_prompt(state)))
                spec_text, name = _accept_llm_spec(answer.get("spec"), opts.get("name"))
                out.update(spec=spec_text, name=name, spec_origin="llm")
                cands.append(_candidate("llm-1", "llm", answer.get("kernel"),
                                        error="" if answer.get("kernel") else "the answer has no ```python block"))
                emit("generate", f"LLM spec: op {name!r}; candidate llm-1", "green")
            for i in range(len([c for c in cands if c["origin"] == "llm"]) + 1, n + 1):
                emit("generate", f"asking {client.config.model} for candidate llm-{i}")
                prompt = llm_mod.render("generate", request=state["request"], spec=spec_text,
                                        contract=_contract(), examples=_examples(state))
                answer = llm_mod.parse_answer(client.complete(_system(), prompt, temperature=0.2 + 0.2 * (i - 1)))
                cands.append(_candidate(f"llm-{i}", "llm", answer.get("kernel"),
                                        error="" if answer.get("kernel") else "the answer has no ```python block"))
        except llm_mod.LLMError as exc:
            llm_state["error"] = str(exc)
            msg = f"LLM unavailable: {exc}; " + ("continuing with the composer candidate" if state.get(
                "composition") else "no candidate can be generated")
            out["messages"].append(msg)
            emit("generate", msg, "yellow")
        except SpecError as exc:
            msg = f"the LLM's spec.toml is not usable: {exc}"
            llm_state["error"] = msg
            out["messages"].append(msg)
            emit("generate", msg, "red")
        llm_state["attempts"] = list(llm_state.get("attempts") or []) + client.attempts
    if not cands and not llm_state.get("enabled"):
        emit("generate", "no candidate: the composer could not parse the request and no LLM is configured", "red")
    out["candidates"] = cands
    out["llm"] = llm_state
    name = out.get("name", state.get("name"))
    existing = _find_existing(name, _library(state)) if out.get("spec_origin") == "llm" else None
    if existing and not existing["broken"] and not opts.get("replace"):
        out["existing"] = existing
        out["reuse"] = {"name": existing["name"], "path": existing["path"], "score": 1.0,
                        "reason": f"an op named {existing['name']!r} is already in the library"}
        emit("generate", f"reusing {existing['name']}: already in the library", "green")
    elif existing:
        out["existing"] = existing
    return out


def after_generate(state: dict) -> str:
    return "verify" if state.get("candidates") and not state.get("reuse") else "report"


def _system() -> str:
    from kernelgen.agents.llm import render

    return render("system")


def _contract() -> str:
    from kernelgen.agents.llm import render

    return render("contract")


def _spec_prompt(state: dict) -> tuple[str, str]:
    from kernelgen.agents.llm import render
    from kernelgen.library import builtin_library

    example = (builtin_library() / "ops" / "rms_norm" / "spec.toml").read_text()
    name = _opts(state).get("name")
    prompt = render("spec", request=state["request"], spec_example=example, contract=_contract(),
                    examples=_examples(state), name_hint=f" (use {name!r})" if name else "")
    return _system(), prompt


def _accept_llm_spec(text: str | None, name: str | None) -> tuple[str, str]:
    from kernelgen.spec import dump_spec

    if not text:
        raise SpecError("<LLM answer>: it has no ```toml block with spec.toml")
    spec = _load_spec_text(text, "<LLM spec.toml>")
    if name:
        spec.name = name
    return dump_spec(spec), spec.name


# ---- verify ----------------------------------------------------------------------------------------
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


def _first_line(text: str, limit: int = 160) -> str:
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


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


# ---- select ----------------------------------------------------------------------------------------
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
    if not _holds_ops(library):
        (library / "ops").mkdir(parents=True, exist_ok=True)  # a new or empty library gets the standard layout
    parent = ops_dir(library)
    dest = parent / spec.name
    if parent.is_dir():
        for leftover in list(parent.glob(f".tmp-{spec.name}-*")) + list(parent.glob(f".old-{spec.name}-*")):
            shutil.rmtree(leftover, ignore_errors=True)
    staged = candidate_folder(state, winner)
    if dest.is_dir() and source_hash(dest) == source_hash(staged):
        emit("merge", f"{dest} already holds this op (merged before an interruption)", "green")
        return {"merged": str(dest)}
    if dest.exists() and not opts.get("replace"):
        msg = f"{dest} appeared during the run; not replaced (use --replace)"
        emit("merge", msg, "red")
        return {"merged": None, "messages": [msg]}
    from kernelgen.backends import get_backend

    records = {b: Verdict.from_dict(v).to_record(speed=get_backend(b).measures_performance)
               for b, v in winner["verdicts"].items()}
    path = merge_op(library, spec, winner["kernel"], records, replace=bool(opts.get("replace")))
    emit("merge", f"merged {spec.name} into {path}", "green")
    out: dict[str, Any] = {"merged": str(path), "messages": []}
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


