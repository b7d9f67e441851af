"""Stage `generate`: the candidates (the composer's kernel, then LLM kernels; the LLM also writes the spec
when the composer could not understand the request), and the prompts they are asked with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kernelgen.agents.state import _candidate, _find_existing, _library, _load_spec_text, _opts, emit
from kernelgen.errors import SpecError

EXAMPLE_CHARS = 6000  # per retrieved op in a prompt: enough for a full kernel.py, bounded for small contexts


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


