"""Stage `generate`: the candidates (the composer's kernel, then LLM kernels; the LLM also writes the spec
when the composer could not understand the request), and the prompts they are asked with."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

from kernelgen.agents.state import _candidate, _find_existing, _library, _load_spec_text, _opts, emit
from kernelgen.errors import SpecError

EXAMPLE_CHARS = 6000  # per retrieved op in a prompt: enough for a full kernel.py, bounded for small contexts
# Retrieved ops go into a prompt only when they are relevant: a score of at least EXAMPLE_FLOOR (the right
# op scores 0.39-0.61 with the offline embedding, unrelated ones 0.01-0.07), or at least FAMILY_FLOOR when
# the op's family matches (the spec's family, or a family named in the request: "group norm" -> norm ops).
EXAMPLE_FLOOR = 0.15
FAMILY_FLOOR = 0.05
STYLE_EXAMPLE = "rms_norm"  # shown, as style only, when no library op is relevant


def _family_of(path: Path) -> str:
    try:
        return _load_spec_text((path / "spec.toml").read_text(), str(path / "spec.toml")).family
    except (OSError, SpecError):
        return ""


def _example_paths(state: dict, family: str, limit: int) -> list[Path]:
    """Relevant hits, those of the matching family first, then by score."""
    request = str(state.get("request") or "").lower()
    ranked = []
    for h in state.get("hits") or []:
        path = Path(h["path"])
        fam = _family_of(path)
        same = bool(fam) and (fam == family or re.search(rf"\b{re.escape(fam)}", request) is not None)
        if h["score"] >= EXAMPLE_FLOOR or (same and h["score"] >= FAMILY_FLOOR):
            ranked.append((not same, -float(h["score"]), path))
    return [p for _, _, p in sorted(ranked, key=lambda r: r[:2])][:limit]


def _top_level_blocks(source: str) -> list[str]:
    """The source split before each top-level statement (a decorated def starts at its first decorator);
    comments and blank lines go with the statement after them."""
    lines = source.splitlines(keepends=True)
    try:
        body = ast.parse(source).body
    except SyntaxError:
        return [source]
    starts = sorted({min([n.lineno] + [d.lineno for d in getattr(n, "decorator_list", [])]) for n in body})
    cuts = [0] + [s - 1 for s in starts[1:]] + [len(lines)]
    blocks = ["".join(lines[a:b]) for a, b in zip(cuts, cuts[1:])]
    return [b for b in blocks if b]


def cut_at_functions(source: str, limit: int = EXAMPLE_CHARS) -> str:
    """`source` whole if it fits; else its leading top-level blocks (imports, decorated defs, classes) that
    fit in `limit`, never a block cut in two, and a note that the rest is left out."""
    if len(source) <= limit:
        return source
    kept, size = [], 0
    for block in _top_level_blocks(source):
        if size + len(block) > limit and kept:
            break
        kept.append(block)
        size += len(block)
    return "".join(kept).rstrip() + "\n# ... (the rest of this file is left out)\n"


def _examples(state: dict, limit: int = 2, family: str = "") -> str:
    from kernelgen.library import builtin_library

    paths = _example_paths(state, family, limit)
    note = ""
    if not paths:
        paths = [builtin_library() / "ops" / STYLE_EXAMPLE]
        note = "(no library op is close to this request; this one shows the conventions only)\n"
    parts = []
    for p in paths:
        kernel = p / "kernel.py"
        if kernel.is_file():
            parts.append(f"--- {p.name}/kernel.py ---\n```python\n{cut_at_functions(kernel.read_text())}```")
    return (note + "\n\n".join(parts)) if parts else "(none)"


def _family_and_launcher(spec_text: str | None) -> tuple[str, str | None]:
    """(family, launcher function) of a spec text; ("", None) when there is none."""
    if not spec_text:
        return "", None
    spec = _load_spec_text(spec_text)
    return spec.family, spec.function


def llm_client(stage: str):
    """An LLM client whose retries show in the progress output as they happen."""
    from kernelgen.agents import llm as llm_mod

    return llm_mod.LLMClient(notify=lambda msg: emit(stage, msg, "yellow"))


def kernel_candidate(cid: str, text: str, function: str | None, **kw) -> dict[str, Any]:
    from kernelgen.agents.answers import missing_kernel, parse_answer

    kernel = parse_answer(text, function)["kernel"]
    return _candidate(cid, "llm", kernel, error="" if kernel else missing_kernel(text, function), **kw)


def generate(state: dict) -> dict:
    """Candidates: the composer's kernel, then `--candidates` LLM kernels. With no spec yet (the composer
    could not parse the request), the first LLM answer writes spec.toml (reference included) and kernel.py;
    a spec answer that cannot be used is asked again with its problem, up to `--rounds` more times."""
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
        client = llm_client("generate")
        n = max(0, int(opts.get("candidates", 1)))
        try:
            if spec_text is None and n:
                spec_text, name, text = _ask_for_spec(state, client)
                out.update(spec=spec_text, name=name, spec_origin="llm")
                cands.append(kernel_candidate("llm-1", text, _family_and_launcher(spec_text)[1]))
                emit("generate", f"LLM spec: op {name!r}; candidate llm-1", "green")
            family, function = _family_and_launcher(spec_text)
            for i in range(len([c for c in cands if c["origin"] == "llm"]) + 1, n + 1):
                emit("generate", f"asking {client.config.model} for candidate llm-{i}")
                prompt = llm_mod.render("generate", request=state["request"], spec=spec_text,
                                        contract=_contract(), examples=_examples(state, family=family))
                text = client.complete(_system(), prompt, temperature=0.2 + 0.2 * (i - 1))
                cands.append(kernel_candidate(f"llm-{i}", text, function))
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


def _ask_for_spec(state: dict, client) -> tuple[str, str, str]:
    """(spec.toml text, op name, the whole answer) from the LLM. An answer whose spec is missing or invalid
    goes back with the problem (and the spec it gave), at most `--rounds` times; then SpecError."""
    from kernelgen.agents import llm as llm_mod
    from kernelgen.agents.answers import missing_spec, parse_answer

    opts = _opts(state)
    tries = 1 + max(0, int(opts.get("rounds", 2)))
    system, prompt = _spec_prompt(state)
    ask, problem = prompt, ""
    for attempt in range(1, tries + 1):
        emit("generate", f"asking {client.config.model} for spec.toml and kernel.py"
             + (f" (try {attempt} of {tries})" if attempt > 1 else ""))
        text = client.complete(system, ask)
        given = parse_answer(text)["spec"]
        try:
            if not given:
                raise SpecError(missing_spec(text))
            spec_text, name = _accept_llm_spec(given, opts.get("name"), state["request"])
            return spec_text, name, text
        except SpecError as exc:
            problem = str(exc)
            emit("generate", f"the LLM's spec.toml is not usable: {problem}", "yellow")
        ask = llm_mod.render("spec_retry", prompt=prompt, problem=problem,
                             previous=f"```toml\n{given}```" if given else "(no spec.toml was found)")
    raise SpecError(f"{problem} (after {tries} answers)")


def after_generate(state: dict) -> str:
    return "verify" if state.get("candidates") and not state.get("reuse") else "report"


def _system() -> str:
    from kernelgen.agents.llm import render

    return render("system")


def _contract() -> str:
    from kernelgen.agents.llm import render

    return render("contract")


def _spec_prompt(state: dict) -> tuple[str, str]:
    from kernelgen.agents.llm import prompts_dir, render

    example = (prompts_dir() / "spec_example.toml").read_text()
    name = _opts(state).get("name")
    prompt = render("spec", request=state["request"], spec_example=example, contract=_contract(),
                    examples=_examples(state), spec_fields=spec_fields(f" (use {name!r})" if name else ""))
    return _system(), prompt


def spec_fields(name_hint: str = "") -> str:
    from kernelgen.agents.llm import render

    return render("spec_fields", name_hint=name_hint)


def _accept_llm_spec(text: str | None, name: str | None, request: str = "") -> tuple[str, str]:
    """A spec the LLM wrote, validated (fields, and row/col dims that name dims), named `name` when the user
    gave one, and carrying the user's request; (spec.toml text, op name). SpecError says what is wrong."""
    from kernelgen.agents.answers import missing_spec
    from kernelgen.agents.spec_checks import dims_problem
    from kernelgen.spec import dump_spec

    if not text:
        raise SpecError(missing_spec(""))
    spec = _load_spec_text(text, "<LLM spec.toml>")
    problem = dims_problem(spec)
    if problem:
        raise SpecError(problem)
    if name:
        spec.name = name
    if request:
        spec.request = request
    return dump_spec(spec), spec.name
