"""The generation commands of the CLI: `new`, `compose`, `runs`, `resume` (kernelgen/agents), registered on
the app of kernelgen/cli.py, which imports this module where they belong in the command list."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from kernelgen.cli import _backend_names, app, console, emit_json, err_console, fail
from kernelgen.errors import KernelgenError

RUN_OK = ("merged", "reused", "dry-run", "kept-existing")


def _progress(out: Console):
    """Listener for the run's nodes: a header per stage, then one line per event."""

    spinner: list = []  # the live status line of a long step (verification), on terminals only

    def listen(stage: str, message: str, style: str) -> None:
        while spinner:
            spinner.pop().stop()
        if style == "stage":
            out.print(f"[bold cyan]▸ {stage}[/]", highlight=False)
        elif message.endswith(": running") and out.is_terminal:
            spinner.append(out.status(f"  {message}"))
            spinner[-1].start()
        elif message:
            out.print(f"  [{style}]{message}[/]" if style else f"  {message}", highlight=False, soft_wrap=True)

    return listen


def _print_run(result: dict, out: Console) -> None:
    backends = result.get("backends") or []
    if result.get("candidates"):
        table = Table(title=f"candidates for {result.get('name')!r}")
        table.add_column("candidate", style="bold")
        table.add_column("origin")
        for b in backends:
            table.add_column(b)
        for c in result["candidates"]:
            label = ("★ " if c["id"] == result.get("winner") else "") + c["id"]
            cells = []
            for b in backends:
                v = c["backends"].get(b)
                if v is None:
                    cells.append("[dim]-[/]")
                elif v["passed"]:
                    sp = v.get("speedup_vs_eager")
                    cells.append("[green]passed[/]" + (f" {sp:.2f}x" if sp else ""))
                else:
                    cells.append(f"[red]{v['check']}[/]: {v['message'][:60]}")
            origin = c["origin"] + (f" (repair {c['round']})" if c["round"] else "")
            table.add_row(label, origin, *cells)
        out.print(table)
    for note in result.get("messages") or []:
        out.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)
    status = result.get("status")
    colour = "green" if status in RUN_OK else "red"
    line = f"[{colour}]{status}[/]"
    if status == "merged":
        line += f": {result['name']} -> {result['merged']}"
    elif status == "reused":
        line += f": {result['reuse']['reason']} ({result['reuse']['path']})"
    elif status == "dry-run":
        line += f": {result['name']} passed ({result.get('decision')}); not merged (--dry-run)"
    elif status == "kept-existing":
        line += f": {result.get('decision')}"
    elif status == "failed":
        line += ": no candidate passed verification; nothing was merged"
    out.print(line, highlight=False, soft_wrap=True)
    out.print(f"run {result.get('run_id')} in {result.get('wall_s', 0):.1f} s", highlight=False)


def _finish_run(result: dict, as_json: bool) -> None:
    if as_json:
        emit_json(result)
    else:
        _print_run(result, console)
    status = result.get("status")
    if status == "not-understood":
        hint = "" if result.get("llm", {}).get("enabled") else (
            "; set KERNELGEN_BASE_URL or OPENAI_API_KEY to let an LLM write the spec")
        from kernelgen.agents.nodes import short_compose_error

        why = short_compose_error(result.get("compose_error") or "") or "no spec"
        if result.get("llm", {}).get("error"):
            why += f"; and the LLM could not write the spec: {result['llm']['error']}"
        fail(f"cannot understand the request: {why}{hint}")
    if status == "failed" and not result.get("candidates") and (result.get("lowering") or {}).get("reason"):
        # understood (the reference is above) but no template fits it and no LLM wrote a kernel
        err_console.print(f"[red]no kernel:[/] no template fits the reference: {result['lowering']['reason']}"
                          + ("" if result.get("llm", {}).get("enabled") else
                             "; set KERNELGEN_BASE_URL or OPENAI_API_KEY to let an LLM write it"),
                          highlight=False, soft_wrap=True)
    if status not in RUN_OK:
        raise typer.Exit(1)


def _request_or_reference(request: str | None, reference: Path | None) -> str:
    """The run's request text: the words / formula, or the reference file's path (checked to load here, so a
    bad file is a one-line error before any run starts)."""
    if reference is not None:
        if request:
            fail("give either a request or --reference FILE, not both")
        from kernelgen.codegen.trace import TraceError, trace_reference
        from kernelgen.frontends.reference_file import ReferenceFileError, load_reference_file

        if not reference.is_file():
            fail(f"--reference {reference}: no such file")
        try:
            trace_reference(load_reference_file(reference))
        except ReferenceFileError as exc:
            fail(str(exc))
        except TraceError as exc:
            fail(f"{reference}: {exc}")
        return str(reference)
    if not request or not request.strip():
        fail("the request is empty; say what the op computes, e.g. \"fused rmsnorm + residual\", "
             "or give --reference FILE")
    return request


@app.command("new")
def new_op(
    request: str | None = typer.Argument(None, help='What the op computes, e.g. "fused rmsnorm + residual" or '
                                         '"y = silu(x + bias)" (or give --reference FILE).'),
    reference: Path | None = typer.Option(None, "--reference", help="A Python file with a reference(...) "
                                          "function or a KernelBench problem (class Model, get_inputs())."),
    name: str | None = typer.Option(None, "--name", help="Op name (default: derived from the request)."),
    backend: list[str] | None = typer.Option(None, "--backend", "-b",
                                             help="Verify on these backends (default: every available one)."),
    library: Path | None = typer.Option(None, "--library", help="Merge into this library folder "
                                        "(default: the built-in library)."),
    llm: bool | None = typer.Option(None, "--llm/--no-llm", help="Use the LLM (default: when "
                                    "KERNELGEN_BASE_URL or OPENAI_API_KEY is set)."),
    candidates: int = typer.Option(2, "--candidates", min=0, help="LLM candidates to generate."),
    rounds: int = typer.Option(2, "--rounds", min=0, help="LLM repair rounds for failing candidates."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Everything but the merge."),
    replace: bool = typer.Option(False, "--replace", help="Replace an existing op of that name, but only "
                                 "by one that passes and is faster."),
    trials: int = typer.Option(3, "--trials", min=1, help="Accuracy trials (fresh seeds) per candidate."),
    timeout: float = typer.Option(300.0, "--timeout", min=1.0, help="Seconds per candidate and backend."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable result on stdout."),
    no_sandbox: bool = typer.Option(False, "--no-sandbox", help="Run candidates in plain processes, without "
                                    "the bubblewrap sandbox: for trusted code only (loud)."),
) -> None:
    """Generate an op from words, a formula or a reference file: understand, retrieve, generate, verify,
    repair, select, merge."""
    from kernelgen.agents.graph import llm_settings, start_run
    from kernelgen.agents.llm import llm_configured
    from kernelgen.agents.runs import new_run_id
    from kernelgen.backends import available_backends, get_backend
    from kernelgen.library import builtin_library
    from kernelgen.spec import NAME_RE

    if name is not None and not NAME_RE.match(name):
        fail(f"--name must be lower_snake_case (letters, digits, _), got {name!r}")
    names = _backend_names(backend) if backend else [b.name for b in available_backends()]
    for b in names:
        if not get_backend(b).available():
            fail(f"backend {b!r} is not available on this machine (see `kernelgen backends`)")
    if not names:
        fail("no backend is available on this machine (see `kernelgen backends`)")
    from kernelgen.cli import _sandbox_or_fail

    for b in names:
        _sandbox_or_fail(b, no_sandbox)
    if library is not None and library.exists() and not library.is_dir():
        fail(f"--library {library} is not a folder")
    use_llm = llm_configured() if llm is None else llm
    if llm and not llm_configured():
        fail("--llm needs KERNELGEN_BASE_URL (an OpenAI-compatible server) or OPENAI_API_KEY")
    request = _request_or_reference(request, reference)
    options = {
        "reference_file": str(reference.expanduser().resolve()) if reference is not None else None,
        "name": name, "library": str((library or builtin_library()).expanduser().resolve()), "backends": names,
        "candidates": candidates, "rounds": rounds, "dry_run": dry_run, "replace": replace, "trials": trials,
        "timeout": timeout, "perf": True, "with_compile": True,
    }
    if name is not None:  # a chosen name another library already resolves would shadow (or be shadowed)
        from kernelgen.library import holders, library_of

        target = Path(options["library"])
        elsewhere = [p for p in holders(name, target) if library_of(p).resolve() != target]
        if elsewhere:
            fail(f"--name {name!r} is taken by an op in {library_of(elsewhere[0])} (kernelgen.ops.{name} "
                 "resolves to it); choose another name")
    try:
        llm_state = llm_settings(use_llm)
    except KernelgenError as exc:
        fail(str(exc))
    run_id = new_run_id()
    out = err_console if as_json else console
    out.print(f"run [bold]{run_id}[/] (resume with: kernelgen resume {run_id})", highlight=False)
    result = start_run(request, options, llm_state, run_id=run_id, listener=_progress(out))
    _finish_run(result, as_json)


@app.command("compose")
def compose_cmd(
    request: str | None = typer.Argument(None, help='What the op computes, e.g. "fused rmsnorm + residual" '
                                         '(or give --reference FILE).'),
    reference: Path | None = typer.Option(None, "--reference", help="A Python file with a reference(...) "
                                          "function or a KernelBench problem."),
    out: str | None = typer.Option(None, "--out", help="Write the op folder (kernel.py + spec.toml) here."),
    name: str | None = typer.Option(None, "--name", help="Op name (default: derived from the request)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Dry run of understand: the reference, its lowering to a kernel (or why none fits) and the spec;
    --out writes the op folder. Exit 1 when no template fits (nothing written)."""
    from kernelgen.agents.understand import text_front_end
    from kernelgen.spec import NAME_RE, dump_spec

    out_dir = Path(out) if out is not None else None
    if out_dir is not None and out_dir.exists() and not out_dir.is_dir():
        fail(f"--out {out} exists and is not a folder")
    if name is not None and not NAME_RE.match(name):
        fail(f"--name must be lower_snake_case (letters, digits, _), got {name!r}")
    request = _request_or_reference(request, reference)
    if reference is None and text_front_end() is None:
        return _compose_words(request, name, out_dir, as_json)
    from kernelgen.codegen.from_reference import generate
    from kernelgen.frontends.composer import ComposeError
    from kernelgen.frontends.reference_file import ReferenceFileError, load_reference_file

    try:
        ref = load_reference_file(reference, name) if reference is not None else text_front_end()(request, name)
        gen = generate(ref, name)
    except (ComposeError, ReferenceFileError, ValueError) as exc:
        fail(str(exc))
    written = str(gen.write(out_dir)) if out_dir is not None and gen.lowered else None
    if as_json:
        emit_json({"request": request, "name": gen.spec.name, "summary": gen.summary, "reference": ref.source,
                   "notes": ref.notes, "lowered": gen.lowered, "refusal": gen.refusal, "trace_mode": gen.trace_mode,
                   "ops": gen.ops, "spec": gen.spec.to_dict(), "written": written})
    else:
        _print_reference(ref.source, ref.notes)
        colour = "bold" if gen.lowered else "red"
        console.print(f"[{colour}]{gen.spec.name}[/]: {gen.summary}", highlight=False, soft_wrap=True)
        console.print(dump_spec(gen.spec), highlight=False, markup=False)
        if written:
            console.print(f"wrote {written}/kernel.py and spec.toml", highlight=False)
    if not gen.lowered:
        raise typer.Exit(1)


def _print_reference(source: str, notes: list[str]) -> None:
    console.print("[bold]understood as:[/]", highlight=False)
    console.print(source.strip("\n"), highlight=False, markup=False)
    for note in notes:
        console.print(f"# {note}", highlight=False, markup=False, style="dim")


def _compose_words(request: str, name: str | None, out_dir: Path | None, as_json: bool) -> None:
    """`compose` for words while no text front end is installed: the composer's own reading."""
    from kernelgen.frontends.composer import ComposeError, compose
    from kernelgen.spec import dump_spec

    try:
        comp = compose(request, name)
    except ComposeError as exc:
        fail(str(exc))
    written = str(comp.write(out_dir)) if out_dir is not None else None
    notes = ["written by the words composer from its own reading of the request"]
    if as_json:
        emit_json({"request": request, "name": comp.spec.name, "summary": comp.summary,
                   "reference": comp.spec.reference, "notes": notes, "lowered": True, "refusal": "",
                   "spec": comp.spec.to_dict(), "written": written})
        return
    _print_reference(comp.spec.reference, notes)
    console.print(f"[bold]{comp.spec.name}[/]: {comp.summary}", highlight=False)
    console.print(dump_spec(comp.spec), highlight=False, markup=False)
    if written:
        console.print(f"wrote {written}/kernel.py and spec.toml", highlight=False)


@app.command("runs")
def list_runs_cmd(
    limit: int = typer.Option(20, "--limit", min=1, help="How many recent runs."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Recent `kernelgen new` runs with their state (interrupted runs can be resumed)."""
    import time as _time

    from kernelgen.agents.graph import list_runs

    rows = list_runs(limit)
    if as_json:
        emit_json(rows)
        return
    table = Table(title=f"kernelgen runs ({len(rows)})")
    for col in ("run", "status", "next", "op", "request", "started"):
        table.add_column(col)
    for r in rows:
        res = r.get("result") or {}
        colour = "green" if r["status"] in RUN_OK else "yellow" if r["status"] in ("running", "interrupted") else "red"
        table.add_row(r["run_id"], f"[{colour}]{r['status']}[/]", r.get("next") or "-", res.get("name") or "-",
                      r["request"], _time.strftime("%Y-%m-%d %H:%M:%S", _time.localtime(r["created"])))
    console.print(table)


@app.command("resume")
def resume_cmd(
    run_id: str = typer.Argument(..., help="A run id from `kernelgen runs`."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable result on stdout."),
) -> None:
    """Continue an interrupted `kernelgen new` run from its last finished stage."""
    from kernelgen.agents.graph import resume_run
    from kernelgen.agents.runs import RunNotFound, connect, get_run

    conn = connect()
    try:
        get_run(conn, run_id)
    except RunNotFound as exc:
        fail(str(exc))
    finally:
        conn.close()
    out = err_console if as_json else console
    out.print(f"resuming run [bold]{run_id}[/]", highlight=False)
    result = resume_run(run_id, listener=_progress(out))
    if not result.get("resumed", True):
        out.print("the run had already finished; its result:", highlight=False)
    _finish_run(result, as_json)


