"""Stage `understand`: the request -> an op spec (through the composer; the LLM writes it in `generate`
when the composer cannot)."""

from __future__ import annotations

from kernelgen.agents.state import _opts, emit


def short_compose_error(message: str) -> str:
    """The composer's message without its vocabulary listing (kept whole in the run's result)."""
    head = message.split(" Vocabulary --")[0].strip()
    return head if head == message.strip() else head + " (vocabulary: README, 'The composer')"


def understand(state: dict) -> dict:
    """Request -> OpSpec through the composer (deterministic, no network). When it cannot parse the
    request the spec is left to the LLM (in `generate`), or the run reuses what retrieval finds."""
    request, name = state["request"], _opts(state).get("name")
    emit("understand", f"request: {request!r}")
    from kernelgen.frontends.composer import ComposeError, compose

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


