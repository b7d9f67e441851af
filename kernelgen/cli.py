"""The `kernelgen` command. Thin: parse arguments, call the library, print (rich) or emit JSON.

Errors a user can cause print one line and exit with code 2; nothing is written before arguments check out.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from kernelgen.errors import KernelgenError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Generate, verify and ship Triton kernels.")
console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 2) -> None:
    """One line on stderr, then exit (2: bad input)."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def emit_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def _backend_names(backend: list[str] | None) -> list[str]:
    from kernelgen.backends import backend_names

    names = backend or backend_names()
    unknown = [b for b in names if b not in backend_names()]
    if unknown:
        fail(f"unknown backend {unknown[0]!r}; known: {', '.join(backend_names())}")
    return names


STATUS_STYLE = {"verified": "green", "stale": "yellow", "failing": "red", "unverified": "dim", "broken": "bold red"}


@app.command("list")
def list_ops(
    backend: list[str] | None = typer.Option(None, "--backend", "-b", help="Backend(s) to show (default: all)."),
    library: list[str] | None = typer.Option(None, "--library", help="Extra library folder(s) to include."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Every library op: the ATen overloads it overrides and, per backend, its verification status and
    whether `kernelgen.enable()` switches it on there."""
    from kernelgen.aten import policy_allows
    from kernelgen.backends import get_backend
    from kernelgen.library import discover, op_status

    names = _backend_names(backend)
    backends = {b: get_backend(b) for b in names}
    rows = []
    for op in discover(library):
        row = {
            "name": op.name,
            "path": str(op.path),
            "aten": [a.overload for a in op.spec.aten] if op.spec else [],
            "broken": op.broken,
            "reason": op.error,
            "backends": {b: op_status(op, b) for b in names},
        }
        for b, be in backends.items():
            on, why = policy_allows(op, be, "verified")
            on_by_size, _ = policy_allows(op, be, "verified", by_size=True)
            row["backends"][b]["enable"] = {"verified": on, "by_size": on_by_size, "why_not": why}
        rows.append(row)
    if as_json:
        emit_json(rows)
        return
    table = Table(title=f"kernelgen library ({len(rows)} ops)")
    table.add_column("op", style="bold")
    table.add_column("overrides")
    for b in names:
        table.add_column(b)
    for row in rows:
        if row["broken"]:
            table.add_row(row["name"], "", *[f"[bold red]broken[/]: {row['reason']}"] + [""] * (len(names) - 1))
            continue
        cells = []
        for b in names:
            st = row["backends"][b]
            text = f"[{STATUS_STYLE[st['status']]}]{st['status']}[/]"
            if st.get("speedup"):
                text += f" {st['speedup']:.2f}x"
            if st["enable"]["verified"]:
                text += " [green]on[/]"  # switched on by kernelgen.enable()
            elif st["enable"]["by_size"]:
                text += " [yellow]by_size[/]"  # on with enable(by_size=True), for large inputs
            cells.append(text)
        table.add_row(row["name"], ", ".join(row["aten"]) or "-", *cells)
    console.print(table)
    console.print("[green]on[/]: switched on by kernelgen.enable(); [yellow]by_size[/]: by "
                  "kernelgen.enable(by_size=True), for large inputs only", highlight=False)


@app.command("backends")
def list_backends(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Known backends (built-in and plugins) and whether each is available here."""
    from kernelgen.backends import all_backends

    infos = [b.info() for b in all_backends()]
    if as_json:
        emit_json(infos)
        return
    table = Table(title="backends")
    for col in ("name", "available", "dispatch key", "dtypes", "description"):
        table.add_column(col)
    for i in infos:
        avail = "[green]yes[/]" if i["available"] else "[dim]no[/]"
        table.add_row(i["name"], avail, i["dispatch_key"], ", ".join(i["dtypes"]), i["description"])
    console.print(table)


# ---- retrieval: search (kernelgen/retrieval) --------------------------------------------------------
@app.command("search")
def search_library(
    query: str = typer.Argument(..., help='What the op does, in words: "swiglu", "pre-norm residual", "RoPE".'),
    k: int = typer.Option(5, "-k", "--top", min=1, help="How many ops to show."),
    library: list[str] | None = typer.Option(None, "--library", help="Extra library folder(s) to include."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """The library ops closest to QUERY (offline embedding unless KERNELGEN_EMBEDDINGS=openai)."""
    if not query.strip():
        fail("the search query is empty")
    import warnings

    from kernelgen.retrieval import IndexRebuildWarning, search

    with err_console.status("searching the library (the index is rebuilt when the library changed)"), \
            warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", IndexRebuildWarning)
        hits = search(query, k=k, library=library)
    for w in caught:  # an index rebuilt from a damaged one: one line, not a traceback-style warning
        err_console.print(f"[yellow]warning:[/] {w.message}", highlight=False, soft_wrap=True)
    if as_json:
        emit_json([h.to_dict() for h in hits])
        return
    table = Table(title=f"library ops for {query!r}")
    for col in ("#", "op", "score", "overrides", "path"):
        table.add_column(col, overflow="fold")
    for rank, h in enumerate(hits, 1):
        table.add_row(str(rank), f"[bold]{h.name}[/]", f"{h.score:.3f}", ", ".join(h.aten) or "-", h.path)
    console.print(table)


# ---- generation: new / runs / resume (kernelgen/agents) ---------------------------------------------
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


# ---- kernelgen verify ----------------------------------------------------------------------------------
VERIFY_FORMATS = ("table", "json", "md")


def _verify_backend(name: str | None):
    """The named backend, or the accelerator if there is one, else the interpreter; it must run here."""
    import importlib.util

    from kernelgen.backends import backend_names, default_backend, get_backend

    if name is None:
        found = default_backend()
        return found if found is not None else get_backend("interpreter")
    if name not in backend_names():
        fail(f"unknown backend {name!r}; known: {', '.join(backend_names())}")
    be = get_backend(name)
    # The interpreter runs in its own subprocess with TRITON_INTERPRET=1, whatever this process imported.
    ready = importlib.util.find_spec("triton") is not None if be.interpret else be.available()
    if not ready:
        fail(f"backend {name!r} is not available on this machine")
    return be


def _verify_targets(ops: list[str], all_ops: bool, changed: bool, base: str | None, library: list[str] | None):
    from pathlib import Path

    from kernelgen.library import discover, get_op
    from kernelgen.verify.changes import changed_op_folders

    if sum([bool(ops), all_ops, changed]) != 1:
        fail("name the ops to verify (names or folders), or pass exactly one of --all / --changed")
    if base is not None and not changed:
        fail("--base only goes with --changed")
    if all_ops:
        return [op.path for op in discover(library)]
    if changed:
        return changed_op_folders(base, Path.cwd())
    return [get_op(name, library).path for name in ops]


@app.command("verify")
def verify_cmd(
    ops: list[str] | None = typer.Argument(None, help="Op names from the library, or op folders (paths)."),
    all_ops: bool = typer.Option(False, "--all", help="Every op in the library."),
    changed: bool = typer.Option(False, "--changed", help="Only ops whose folders differ from the base (PR check)."),
    base: str | None = typer.Option(None, "--base", help="With --changed: compare with the merge base of this "
                                    "revision (default: main, else origin/main)."),
    backend: str | None = typer.Option(None, "--backend", "-b", help="Default: the accelerator, else interpreter."),
    fmt: str = typer.Option("table", "--format", "-f", help="table | json | md (Markdown for a PR comment)."),
    as_json: bool = typer.Option(False, "--json", help="Same as --format json."),
    out: str | None = typer.Option(None, "--out", "-o", help="Also write report.json, report.md, speedup.png here."),
    timeout: float = typer.Option(120.0, "--timeout", help="Seconds per op before its process is killed."),
    jobs: int = typer.Option(1, "--jobs", "-j", help="Ops verified in parallel (separate processes)."),
    trials: int = typer.Option(3, "--trials", help="Fresh-seed trials per accuracy case (at least 3 advised)."),
    no_perf: bool = typer.Option(False, "--no-perf", help="Accuracy and anti-cheat only; no timings."),
    no_compile: bool = typer.Option(False, "--no-compile", help="Skip the torch.compile baseline."),
    no_write: bool = typer.Option(False, "--no-write", help="Do not write verified/<backend>.json records."),
    library: list[str] | None = typer.Option(None, "--library", help="Extra library folder(s)."),
) -> None:
    """Verify ops in sandboxed subprocesses: static check, accuracy, anti-cheat, performance.

    Exit code 0: all passed; 1: some failed (the report names the check and why); 2: bad usage."""
    from kernelgen.verify import report

    fmt = "json" if as_json else fmt
    if fmt not in VERIFY_FORMATS:
        fail(f"--format must be one of {', '.join(VERIFY_FORMATS)}, not {fmt!r}")
    if timeout <= 0 or jobs < 1 or trials < 1:
        fail("--timeout must be > 0, --jobs and --trials >= 1")
    try:
        folders = _verify_targets(ops or [], all_ops, changed, base, library)
        be = _verify_backend(backend)
    except KernelgenError as exc:  # unknown op, not a git repository, missing base revision, bad backend
        fail(str(exc))
    if jobs > 1 and be.measures_performance and not no_perf:
        err_console.print("[yellow]note:[/] --jobs > 1 times kernels side by side on one device; "
                          "use --jobs 1 for timings you will quote")
    verdicts = _run_verify(folders, be.name, jobs=jobs, timeout=timeout, perf=not no_perf, trials=trials,
                           write=not no_write, with_compile=not no_compile)
    if out:
        report.write_reports(verdicts, out)
    if fmt == "json":
        emit_json(report.to_json(verdicts))
    elif fmt == "md":
        sys.stdout.write(report.to_markdown(verdicts))
    else:
        _print_verdict_table(verdicts)
    if out:
        err_console.print(f"reports written to {out}/ (report.json, report.md, speedup.png)", highlight=False)
    raise typer.Exit(0 if all(v.passed for v in verdicts) else 1)


def _run_verify(folders, backend: str, **kw):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from kernelgen.verify.sandbox import verify_many

    if not folders:
        err_console.print("no op to verify", highlight=False)
        return []
    running: list[str] = []
    with Progress(TextColumn("verify on " + backend), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.description}"), console=err_console, transient=True,
                  disable=not err_console.is_terminal) as progress:
        task = progress.add_task("", total=len(folders))

        def started(path) -> None:
            running.append(path.name)
            progress.update(task, description=", ".join(running))

        def done(v) -> None:
            if v.op in running:
                running.remove(v.op)
            progress.update(task, advance=1, description=", ".join(running))
            mark = "[green]pass[/]" if v.passed else f"[red]FAIL[/] {v.check}"
            progress.console.print(f"{v.op}: {mark} ({v.wall_s:.1f} s)", highlight=False)

        return verify_many(folders, backend, on_start=started, on_done=done, **kw)


def _print_verdict_table(verdicts) -> None:
    from kernelgen.verify.report import summary_line

    table = Table(title=summary_line(verdicts))
    for col in ("op", "backend", "result", "check", "message", "vs eager", "vs compile", "time"):
        table.add_column(col, no_wrap=col != "message", ratio=1 if col == "message" else None)
    for v in verdicts:
        message = (v.message.strip().splitlines() or [""])[0][:160]
        speed = [f"{s:.2f}x" if s else "-" for s in (v.speedup_vs_eager, v.speedup_vs_compile)]
        result = "[green]pass[/]" if v.passed else "[red]FAIL[/]"
        table.add_row(v.op, v.backend, result, v.check or "-", message, *speed, f"{v.wall_s:.1f} s")
    console.print(table)


@app.command("regen")
def regen_cmd(
    backend: str = typer.Option(..., "--backend", "-b", help="The backend (chip) to bring the library to."),
    ops: list[str] | None = typer.Option(None, "--ops", help="Only these ops (repeatable; default: all)."),
    jobs: int = typer.Option(1, "--jobs", "-j", help="Verifications in parallel (processes; one GPU each)."),
    out: str | None = typer.Option(None, "--out", "-o", help="Write report.json, report.md, speedup.png, "
                                   "regen.png here."),
    executor: str = typer.Option("local", "--executor", help="local | ray (cluster at RAY_ADDRESS)."),
    library: str | None = typer.Option(None, "--library", help="Only the ops of this library folder."),
    trials: int = typer.Option(3, "--trials", help="Fresh-seed trials per accuracy case."),
    timeout: float = typer.Option(120.0, "--timeout", help="Seconds per verification before it is killed."),
    llm: bool | None = typer.Option(None, "--llm/--no-llm", help="Use the LLM (default: when configured)."),
    no_compile: bool = typer.Option(False, "--no-compile", help="Skip the torch.compile baseline."),
    as_json: bool = typer.Option(False, "--json", help="The result as JSON on stdout."),
) -> None:
    """Verify every op on BACKEND; re-tune or regenerate those that fail or are slower than eager there.

    Exit code 0: every op passes after; 1: some still fail; 2: bad usage."""
    from kernelgen.backends import backend_names, get_backend
    from kernelgen.regen import EXECUTORS, regenerate

    if backend not in backend_names():
        fail(f"unknown backend {backend!r}; known: {', '.join(backend_names())}")
    if executor not in EXECUTORS:
        fail(f"--executor must be one of {', '.join(EXECUTORS)}, not {executor!r}")
    if timeout <= 0 or jobs < 1 or trials < 1:
        fail("--timeout must be > 0, --jobs and --trials >= 1")
    if library is not None and not Path(library).is_dir():
        fail(f"--library {library} is not a folder")
    if executor == "ray":
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            fail("--executor ray needs ray: pip install 'kernelgen[ray]'")
    if not get_backend(backend).available():
        fail(f"backend {backend!r} is not available on this machine (see `kernelgen backends`)")
    from kernelgen.regen import select_ops

    try:
        select_ops(ops, library)  # unknown op names are a usage error, before anything runs
    except KernelgenError as exc:
        fail(str(exc))

    def event(op: str, message: str) -> None:
        err_console.print(f"[bold]{op}[/]: {message}" if op else f"[cyan]{message}[/]", highlight=False)

    result = regenerate(backend, ops=ops or None, jobs=jobs, executor=executor, out=out, library=library,
                        trials=trials, timeout=timeout, with_compile=not no_compile, llm=llm, on_event=event)
    if as_json:
        emit_json(result.to_dict())
    else:
        s = result.summary()
        table = Table(title=f"regen on {backend}: {s['passing_before']} of {s['total']} passing before, "
                      f"{s['passing_after']} after")
        for col in ("op", "before", "after", "action", "detail", "vs eager"):
            table.add_column(col, no_wrap=col != "detail", ratio=1 if col == "detail" else None)
        for o in result.ops:
            speed = o.after.speedup_vs_eager
            table.add_row(o.op, "[green]pass[/]" if o.before.passed else f"[red]FAIL[/] {o.before.check}",
                          "[green]pass[/]" if o.after.passed else f"[red]FAIL[/] {o.after.check}", o.action,
                          o.detail[:200], f"{speed:.2f}x" if speed else "-")
        console.print(table)
    if out:
        err_console.print(f"reports written to {out}/ (report.json, report.md, speedup.png, regen.png)",
                          highlight=False)
    raise typer.Exit(0 if result.all_passing else 1)


def main() -> None:
    try:
        app()
    except KernelgenError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
