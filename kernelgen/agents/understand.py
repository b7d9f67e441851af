"""Stage `understand`: the request -> an explicit PyTorch reference -> (trace, lower) -> spec + kernel.

The request is a reference file (`--reference FILE`), or words / a formula that the text front end turns
into a reference. The reference is shown before anything is generated; the spec comes from it, and the
composer's kernel from its trace. A reference that does not fit a template keeps its spec (an LLM, when
configured, writes the kernel in `generate`); a request that cannot be understood leaves the spec to the
LLM, or to reuse by retrieval.
"""

from __future__ import annotations

from typing import Any

from kernelgen.agents.state import _opts, emit


def short_compose_error(message: str) -> str:
    """The composer's message without its vocabulary listing (kept whole in the run's result)."""
    head = message.split(" Vocabulary --")[0].strip()
    return head if head == message.strip() else head + " (vocabulary: README, 'The composer')"


def text_front_end():
    """`to_reference(request, name)` of the text front end (words and formulas), imported when first needed."""
    from kernelgen.frontends.text import to_reference

    return to_reference


def reference_state(ref) -> dict[str, Any]:
    return {"source": ref.source, "notes": list(ref.notes), "origin": ref.origin, "request": ref.request,
            "name": ref.name}


def show_reference(stage: str, ref_state: dict[str, Any]) -> None:
    emit(stage, "understood as:")
    for line in ref_state["source"].strip("\n").splitlines():
        emit(stage, "    " + line)
    for note in ref_state["notes"]:
        emit(stage, f"    # {note}")


def understand(state: dict) -> dict:
    request, opts = state["request"], _opts(state)
    name = opts.get("name")
    emit("understand", f"request: {request!r}")
    from kernelgen.frontends.composer import ComposeError
    from kernelgen.frontends.reference_file import ReferenceFileError

    try:
        if opts.get("reference_file"):
            from kernelgen.frontends.reference_file import load_reference_file

            ref = load_reference_file(opts["reference_file"], name)
        else:
            ref = text_front_end()(request, name)
    except (ComposeError, ReferenceFileError) as exc:
        emit("understand", f"not understood: {short_compose_error(str(exc))}", "yellow")
        return {"composition": None, "compose_error": str(exc), "name": name, "spec": None}
    return _from_reference(ref, name)


def _from_reference(ref, name: str | None) -> dict:
    from kernelgen.codegen.from_reference import generate
    from kernelgen.spec import dump_spec

    ref_state = reference_state(ref)
    show_reference("understand", ref_state)
    try:
        gen = generate(ref, name)
    except ValueError as exc:  # a bad op name
        emit("understand", str(exc), "red")
        return {"composition": None, "compose_error": str(exc), "name": name, "spec": None,
                "reference": ref_state}
    lowering = {"lowered": gen.lowered, "reason": gen.refusal, "trace_mode": gen.trace_mode, "ops": gen.ops}
    out = {"reference": ref_state, "lowering": lowering, "name": gen.spec.name, "spec": dump_spec(gen.spec),
           "spec_origin": "reference"}
    if gen.lowered:
        emit("understand", f"traced ({gen.trace_mode} sizes) and lowered: {gen.summary} -> op {gen.spec.name!r}",
             "green")
        out.update(composition={"kernel": gen.kernel_source, "summary": gen.summary}, compose_error="")
    else:
        emit("understand", f"no composer candidate: {gen.refusal}", "yellow")
        out.update(composition=None, compose_error=f"no kernel template fits the reference: {gen.refusal}")
    return out

