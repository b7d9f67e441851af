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
    from kernelgen.library import builtin_library, discover, library_of, op_status, shadowed

    names = _backend_names(backend)
    backends = {b: get_backend(b) for b in names}
    hidden = shadowed(library)
    builtin = builtin_library().resolve()
    rows = []
    for op in discover(library):
        root = library_of(op.path).resolve()
        row = {
            "name": op.name,
            "library": "built-in" if root == builtin else str(root),  # where kernelgen.ops.<name> comes from
            "shadows": [str(p) for p in hidden.get(op.name, [])],  # same-named ops it hides (hand-made libraries)
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
    table.add_column("library")
    table.add_column("overrides")
    for b in names:
        table.add_column(b)
    for row in rows:
        if row["broken"]:
            table.add_row(row["name"], row["library"], "",
                          *[f"[bold red]broken[/]: {row['reason']}"] + [""] * (len(names) - 1))
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
        lib = row["library"] + (f" [yellow](hides {len(row['shadows'])})[/]" if row["shadows"] else "")
        table.add_row(row["name"], lib, ", ".join(row["aten"]) or "-", *cells)
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


# ---- generation: new / compose / runs / resume (kernelgen/cli_generate.py registers them here, in order) --
if __name__ == "__main__":  # `python -m kernelgen.cli`: cli_generate must register on this module's app
    sys.modules.setdefault("kernelgen.cli", sys.modules[__name__])
from kernelgen import cli_generate  # noqa: E402,F401

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


def _sandbox_or_fail(backend: str, no_sandbox: bool) -> None:
    """--no-sandbox turns the sandbox off (loudly); otherwise generated candidates need one: one line if not."""
    from kernelgen.verify.sandbox import SandboxUnavailable, require_sandbox, set_no_sandbox

    if no_sandbox:
        set_no_sandbox(True)
        return
    try:
        require_sandbox(backend)
    except SandboxUnavailable as exc:
        fail(str(exc))


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
    sanitize: bool = typer.Option(False, "--sanitize", help="CUDA: run each candidate under compute-sanitizer "
                                  "memcheck (out-of-bounds accesses); no timings."),
    no_sandbox: bool = typer.Option(False, "--no-sandbox", help="Run candidates in plain processes, without "
                                    "the bubblewrap sandbox: for trusted code only (loud)."),
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
    from kernelgen.verify.sandbox import SandboxUnavailable, set_no_sandbox

    if sanitize and be.device != "cuda":
        fail(f"--sanitize needs the cuda backend (compute-sanitizer), not {be.name!r}")
    if no_sandbox:
        set_no_sandbox(True)
    try:
        verdicts = _run_verify(folders, be.name, jobs=jobs, timeout=timeout, perf=not no_perf, trials=trials,
                               write=not no_write and not sanitize, with_compile=not no_compile, sanitize=sanitize)
    except SandboxUnavailable as exc:  # refused before any candidate ran
        fail(str(exc))
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
    no_sandbox: bool = typer.Option(False, "--no-sandbox", help="Run candidates in plain processes, without "
                                    "the bubblewrap sandbox: for trusted code only (loud)."),
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
    _sandbox_or_fail(backend, no_sandbox)
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
