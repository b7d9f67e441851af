"""The `kernelgen` command. Thin: parse arguments, call the library, print (rich) or emit JSON / TSV.

Errors a user can cause print one line and exit with code 2; nothing is written before arguments check out.
Arguments are checked before anything heavy (torch, chromadb, langgraph) is imported, so a mistake comes
back at once. Output rules (never cut an id or a path, fold long cells, plain TSV for scripts) live in
kernelgen/cli_output.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.text import Text

from kernelgen import cli_library
from kernelgen.cli_args import (
    FORMAT_HELP,
    check_backends,
    check_format,
    clean_scratch,
    emit_json,
    existing_libraries,
    fail,
    readable_help_types,
)
from kernelgen.cli_output import (
    console,
    err_console,
    first_line,
    one_line_warnings,
    plain,
    print_table,
    styled,
    table,
    tsv,
)
from kernelgen.cli_runs import RUN_OK, print_run, progress_listener
from kernelgen.errors import KernelgenError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Generate, verify and ship Triton kernels.",
                  context_settings={"help_option_names": ["-h", "--help"]})

try:
    readable_help_types()
except (ImportError, AttributeError):  # another typer: its own help layout
    pass


def _version(value: bool) -> None:
    if value:
        import kernelgen

        plain(f"kernelgen {kernelgen.__version__}")
        raise typer.Exit(0)


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Generate, verify and ship Triton kernels.

    Start with `kernelgen new "fused rmsnorm + residual" --library my-kernels`, then `kernelgen list`."""


cli_library.register(app)  # list, backends, search


# ---- generation: new / runs / resume (kernelgen/agents) ---------------------------------------------
INTERRUPTED = 130  # the shell's code for a process ended by SIGINT


def _finish_run(result: dict, as_json: bool) -> None:
    if as_json:
        emit_json(result)
    else:
        print_run(result, console)
    status = result.get("status")
    if status == "not-understood":
        hint = "" if result.get("llm", {}).get("enabled") else (
            "; set KERNELGEN_BASE_URL or OPENAI_API_KEY to let an LLM write the spec")
        from kernelgen.agents.nodes import short_compose_error

        why = short_compose_error(result.get("compose_error") or "") or "no spec"
        if result.get("llm", {}).get("error"):
            why += f"; and the LLM could not write the spec: {result['llm']['error']}"
        fail(f"cannot understand the request: {why}{hint}")
    if status not in RUN_OK:
        raise typer.Exit(1)


def _drive_run(run_id: str, drive):
    """Run `drive()` (a start or a resume); Ctrl-C or SIGTERM leaves the run resumable and says how."""
    import signal

    def terminate(signum, frame):
        raise KeyboardInterrupt  # unwinds like Ctrl-C: the run is marked interrupted, workers are stopped

    try:
        previous = signal.signal(signal.SIGTERM, terminate)
    except ValueError:  # not the main thread (an embedding application): leave SIGTERM alone
        previous = None
    try:
        return drive()
    except KeyboardInterrupt:
        err_console.print(f"interrupted; resume with: kernelgen resume {run_id}", highlight=False, soft_wrap=True)
        raise typer.Exit(INTERRUPTED) from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


@app.command("new", epilog='Examples:  kernelgen new "fused rmsnorm + residual" --library my-kernels  |  '
             'kernelgen new "silu and mul" --dry-run --json')
@one_line_warnings
def new_op(
    request: str = typer.Argument(..., metavar="REQUEST",
                                  help='What the op computes, e.g. "fused rmsnorm + residual".'),
    name: str | None = typer.Option(None, "--name", metavar="NAME",
                                    help="Op name (default: derived from the request)."),
    backend: list[str] | None = typer.Option(None, "--backend", "-b", metavar="BACKEND",
                                             help="Verify on these backends (default: every available one)."),
    library: Path | None = typer.Option(None, "--library", metavar="DIR", help="Merge into this library folder "
                                        "(default: the first KERNELGEN_LIBRARY folder; else the user library in an "
                                        "installed kernelgen, the repository's library in a checkout)."),
    llm: bool | None = typer.Option(None, "--llm/--no-llm", help="Use the LLM (default: when "
                                    "KERNELGEN_BASE_URL or OPENAI_API_KEY is set)."),
    candidates: int = typer.Option(2, "--candidates", min=0, metavar="N", help="LLM candidates to generate."),
    rounds: int = typer.Option(2, "--rounds", min=0, metavar="N", help="LLM repair rounds for failing candidates."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Everything but the merge."),
    replace: bool = typer.Option(False, "--replace", help="Replace an existing op of that name, but only "
                                 "by one that passes and is faster."),
    trials: int = typer.Option(3, "--trials", min=1, metavar="N", help="Accuracy trials (fresh seeds) per candidate."),
    timeout: float = typer.Option(300.0, "--timeout", min=1.0, metavar="SECONDS",
                                  help="Seconds per candidate and backend."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable result on stdout."),
) -> None:
    """Generate an op from a sentence: understand, retrieve, generate, verify, repair, select, merge."""
    from kernelgen.agents.llm import llm_configured
    from kernelgen.library import default_target_library
    from kernelgen.spec import NAME_RE

    # cheap checks first: nothing heavy is imported until the arguments are known to be right
    if not request.strip():
        fail("the request is empty; say what the op computes, e.g. \"fused rmsnorm + residual\"")
    if name is not None and not NAME_RE.match(name):
        fail(f"--name must be lower_snake_case (letters, digits, _), got {name!r}")
    check_backends(backend)
    target = (library or default_target_library()).expanduser()
    if target.exists() and not target.is_dir():
        fail(f"--library {target} is not a folder")
    use_llm = llm_configured() if llm is None else llm
    if llm and not llm_configured():
        fail("--llm needs KERNELGEN_BASE_URL (an OpenAI-compatible server) or OPENAI_API_KEY")
    from kernelgen.agents.graph import llm_settings, start_run
    from kernelgen.agents.runs import cache_dir, new_run_id
    from kernelgen.backends import available_backends, get_backend

    names = list(backend) if backend else [b.name for b in available_backends()]
    for b in names:
        if not get_backend(b).available():
            fail(f"backend {b!r} is not available on this machine (see `kernelgen backends`)")
    if not names:
        fail("no backend is available on this machine (see `kernelgen backends`)")
    options = {
        "name": name, "library": str(target.resolve()), "backends": names,
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
        cache_dir()  # a cache path that is a file: one line now, not after the run has started
    except KernelgenError as exc:
        fail(str(exc))
    clean_scratch()
    run_id = new_run_id()
    out = err_console if as_json else console
    out.print(f"run {run_id} (resume with: kernelgen resume {run_id})", highlight=False, soft_wrap=True)
    result = _drive_run(run_id, lambda: start_run(request, options, llm_state, run_id=run_id,
                                                  listener=progress_listener(out)))
    _finish_run(result, as_json)


@app.command("compose", epilog='Examples:  kernelgen compose "matmul + bias + relu"  |  '
             'kernelgen compose "fused rmsnorm + residual" --spec > spec.toml')
def compose_cmd(
    request: str = typer.Argument(..., metavar="REQUEST",
                                  help='What the op computes, e.g. "fused rmsnorm + residual".'),
    out: str | None = typer.Option(None, "--out", metavar="DIR", help="Write the op folder (kernel.py + spec.toml) "
                                   "here."),
    name: str | None = typer.Option(None, "--name", metavar="NAME",
                                    help="Op name (default: derived from the request)."),
    spec_only: bool = typer.Option(False, "--spec", help="Print only spec.toml (for a file or a script)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Dry run of the embedded composer: print what it understood and the spec; --out writes the op folder."""
    if not request.strip():
        fail("the request is empty; say what the op computes, e.g. \"fused rmsnorm + residual\"")
    out_dir = Path(out) if out is not None else None
    if out_dir is not None and out_dir.exists() and not out_dir.is_dir():
        fail(f"--out {out} exists and is not a folder")
    from kernelgen.frontends.composer import ComposeError, compose
    from kernelgen.spec import dump_spec

    try:
        comp = compose(request, name)
    except ComposeError as exc:
        fail(str(exc))
    written = str(comp.write(out_dir)) if out_dir is not None else None
    if as_json:
        emit_json({"request": request, "name": comp.spec.name, "summary": comp.summary,
                   "spec": comp.spec.to_dict(), "written": written})
        return
    if not spec_only:  # the summary goes where the spec does not, so `| tail -n +2` and `--spec` both give TOML
        console.print(Text(comp.spec.name, style="bold") + Text(f": {comp.summary}"), highlight=False,
                      soft_wrap=True)
    plain(dump_spec(comp.spec))  # TOML as it is: never wrapped to the terminal width
    if written:
        err_console.print(f"wrote {written}/kernel.py and spec.toml", highlight=False, soft_wrap=True)


@app.command("runs", epilog="Examples:  kernelgen runs --limit 5  |  kernelgen runs --format tsv | cut -f1  |  "
             "kernelgen runs --prune")
@one_line_warnings
def list_runs_cmd(
    limit: int = typer.Option(20, "--limit", min=1, metavar="N", help="How many recent runs."),
    prune: bool = typer.Option(False, "--prune", help="Forget finished runs (their checkpoints and work folders); "
                               "interrupted and running ones are kept."),
    keep: int = typer.Option(0, "--keep", min=0, metavar="N", help="With --prune: keep the N newest finished runs."),
    fmt: str = typer.Option("table", "--format", "-f", metavar="FORMAT", help=FORMAT_HELP),
    as_json: bool = typer.Option(False, "--json", help="Same as --format json."),
) -> None:
    """Recent `kernelgen new` runs with their state (interrupted runs can be resumed)."""
    fmt = check_format(fmt, as_json)
    if keep and not prune:
        fail("--keep only goes with --prune")
    import time as _time

    from kernelgen.agents.graph import list_runs, prune_runs

    try:
        if prune:
            removed = prune_runs(keep)
            if fmt == "json":
                emit_json({"removed": removed})
            else:
                err_console.print(f"removed {len(removed)} finished run(s)", highlight=False)
            return
        rows = list_runs(limit)
    except KernelgenError as exc:
        fail(str(exc))
    if fmt == "json":
        emit_json(rows)
        return
    cols = ["run", "status", "next", "op", "request", "started"]
    data = [[r["run_id"], r["status"], r.get("next") or "-", r.get("name") or "-", r["request"],
             _time.strftime("%Y-%m-%d %H:%M:%S", _time.localtime(r["created"]))] for r in rows]
    if fmt == "tsv":
        tsv(cols, data)
        return
    # no "started" column: the run id begins with its start time
    t = table(f"kernelgen runs ({len(rows)})", cols[:-1], keep=["run", "status", "op"], flex=["request"])
    for r, d in zip(rows, data):
        colour = "green" if r["status"] in RUN_OK else "yellow" if r["status"] in ("running", "interrupted") else "red"
        t.add_row(d[0], Text(d[1], style=colour), d[2], styled(d[3]), styled(d[4]))
    print_table(t)


@app.command("resume", epilog="Example:  kernelgen resume 20261123-184512-3f9a")
@one_line_warnings
def resume_cmd(
    run_id: str = typer.Argument(..., metavar="RUN_ID", help="A run id from `kernelgen runs`."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable result on stdout."),
) -> None:
    """Continue an interrupted `kernelgen new` run from its last finished stage."""
    from kernelgen.agents.graph import resume_run
    from kernelgen.agents.runs import connect, get_run

    try:
        conn = connect()
        try:
            get_run(conn, run_id)
        finally:
            conn.close()
    except KernelgenError as exc:
        fail(str(exc))
    clean_scratch()
    out = err_console if as_json else console
    out.print(f"resuming run {run_id}", highlight=False, soft_wrap=True)
    try:
        result = _drive_run(run_id, lambda: resume_run(run_id, listener=progress_listener(out)))
    except KernelgenError as exc:  # still running in another process, or nothing to resume from
        fail(str(exc))
    if not result.get("resumed", True):
        out.print("the run had already finished; its result:", highlight=False)
    _finish_run(result, as_json)


# ---- kernelgen verify ----------------------------------------------------------------------------------
VERIFY_FORMATS = ("table", "json", "md", "tsv")


def _verify_backend(name: str | None):
    """The named backend, or the accelerator if there is one, else the interpreter; it must run here."""
    import importlib.util

    from kernelgen.backends import default_backend, get_backend

    if name is None:
        found = default_backend()
        return found if found is not None else get_backend("interpreter")
    be = get_backend(name)
    # The interpreter runs in its own subprocess with TRITON_INTERPRET=1, whatever this process imported.
    ready = importlib.util.find_spec("triton") is not None if be.interpret else be.available()
    if not ready:
        fail(f"backend {name!r} is not available on this machine")
    return be


def _verify_targets(ops: list[str], all_ops: bool, changed: bool, base: str | None, library: list[str] | None):
    from kernelgen.library import discover, get_op
    from kernelgen.verify.changes import changed_op_folders

    if all_ops:
        return [op.path for op in discover(library)]
    if changed:
        return changed_op_folders(base, Path.cwd())
    return [get_op(name, library).path for name in ops]


@app.command("verify", epilog="Examples:  kernelgen verify rms_norm softmax  |  kernelgen verify --all --backend cuda "
             "--out report  |  kernelgen verify --changed --format md")
@one_line_warnings
def verify_cmd(
    ops: list[str] | None = typer.Argument(None, metavar="[OP]...",
                                           help="Op names from the library, or op folders (paths)."),
    all_ops: bool = typer.Option(False, "--all", help="Every op in the library."),
    changed: bool = typer.Option(False, "--changed", help="Only ops whose folders differ from the base (PR check)."),
    base: str | None = typer.Option(None, "--base", metavar="REV", help="With --changed: compare with the merge "
                                    "base of this revision (default: main, else origin/main)."),
    backend: str | None = typer.Option(None, "--backend", "-b", metavar="BACKEND",
                                       help="Default: the accelerator, else interpreter."),
    fmt: str = typer.Option("table", "--format", "-f", metavar="FORMAT",
                            help="table | json | md (Markdown for a PR comment) | tsv (for scripts)."),
    as_json: bool = typer.Option(False, "--json", help="Same as --format json."),
    out: str | None = typer.Option(None, "--out", "-o", metavar="DIR",
                                   help="Also write report.json, report.md, speedup.png here."),
    timeout: float = typer.Option(120.0, "--timeout", metavar="SECONDS",
                                  help="Seconds per op before its process is killed."),
    jobs: int = typer.Option(1, "--jobs", "-j", metavar="N", help="Ops verified in parallel (separate processes)."),
    trials: int = typer.Option(3, "--trials", metavar="N",
                               help="Fresh-seed trials per accuracy case (at least 3 advised)."),
    no_perf: bool = typer.Option(False, "--no-perf", help="Accuracy and anti-cheat only; no timings."),
    no_compile: bool = typer.Option(False, "--no-compile", help="Skip the torch.compile baseline."),
    no_write: bool = typer.Option(False, "--no-write", help="Do not write verified/<backend>.json records."),
    library: list[str] | None = typer.Option(None, "--library", metavar="DIR", help="Extra library folder(s)."),
) -> None:
    """Verify ops in sandboxed subprocesses: static check, accuracy, anti-cheat, performance.

    Exit code 0: all passed; 1: some failed (the report names the check and why); 2: bad usage."""
    fmt = check_format(fmt, as_json, VERIFY_FORMATS)
    if timeout <= 0 or jobs < 1 or trials < 1:
        fail("--timeout must be > 0, --jobs and --trials >= 1")
    if sum([bool(ops), all_ops, changed]) != 1:
        fail("name the ops to verify (names or folders), or pass exactly one of --all / --changed")
    if base is not None and not changed:
        fail("--base only goes with --changed")
    if backend is not None:
        check_backends([backend])
    existing_libraries(library)
    from kernelgen.verify import report

    try:
        folders = _verify_targets(ops or [], all_ops, changed, base, library)
        be = _verify_backend(backend)
    except KernelgenError as exc:  # unknown op, not a git repository, missing base revision, bad backend
        fail(str(exc))
    if jobs > 1 and be.measures_performance and not no_perf:
        err_console.print("[yellow]note:[/] --jobs > 1 times kernels side by side on one device; "
                          "use --jobs 1 for timings you will quote")
    clean_scratch()
    verdicts = _run_verify(folders, be.name, jobs=jobs, timeout=timeout, perf=not no_perf, trials=trials,
                           write=not no_write, with_compile=not no_compile)
    if out:
        report.write_reports(verdicts, out)
    if fmt == "json":
        emit_json(report.to_json(verdicts))
    elif fmt == "md":
        sys.stdout.write(report.to_markdown(verdicts))
    else:
        _print_verdicts(verdicts, fmt)
    if out:
        err_console.print(f"reports written to {out}/ (report.json, report.md, speedup.png)", highlight=False,
                          soft_wrap=True)
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
            mark = Text("pass", style="green") if v.passed else Text("FAIL", style="red") + Text(f" {v.check}")
            progress.console.print(Text(f"{v.op}: ") + mark + Text(f" ({v.wall_s:.1f} s)"), highlight=False,
                                   soft_wrap=True)

        return verify_many(folders, backend, on_start=started, on_done=done, **kw)


def _print_verdicts(verdicts, fmt: str) -> None:
    from kernelgen.verify.report import summary_line

    cols = ["op", "backend", "result", "check", "message", "vs eager", "vs compile", "time"]
    rows = []
    for v in verdicts:
        speed = [f"{s:.2f}x" if s else "-" for s in (v.speedup_vs_eager, v.speedup_vs_compile)]
        rows.append([v.op, v.backend, "pass" if v.passed else "FAIL", v.check or "-", first_line(v.message),
                     *speed, f"{v.wall_s:.1f} s"])
    if fmt == "tsv":
        tsv(cols, rows)
        return
    t = table(summary_line(verdicts), cols, keep=["op", "backend"], flex=["message"])
    for r in rows:
        t.add_row(styled(r[0]), r[1], Text(r[2], style="green" if r[2] == "pass" else "red"), r[3], styled(r[4]),
                  *r[5:])
    print_table(t)


@app.command("regen", epilog="Examples:  kernelgen regen --backend mychip  |  kernelgen regen --backend cuda --ops "
             "rms_norm --jobs 4 --out report")
@one_line_warnings
def regen_cmd(
    backend: str = typer.Option(..., "--backend", "-b", metavar="BACKEND",
                                help="The backend (chip) to bring the library to."),
    ops: list[str] | None = typer.Option(None, "--ops", metavar="OP",
                                         help="Only these ops (repeatable; default: all)."),
    jobs: int = typer.Option(1, "--jobs", "-j", metavar="N",
                             help="Verifications in parallel (processes; one GPU each)."),
    out: str | None = typer.Option(None, "--out", "-o", metavar="DIR", help="Write report.json, report.md, "
                                   "speedup.png, regen.png here."),
    executor: str = typer.Option("local", "--executor", metavar="EXECUTOR",
                                 help="local | ray (cluster at RAY_ADDRESS)."),
    library: str | None = typer.Option(None, "--library", metavar="DIR", help="Only the ops of this library folder."),
    trials: int = typer.Option(3, "--trials", metavar="N", help="Fresh-seed trials per accuracy case."),
    timeout: float = typer.Option(120.0, "--timeout", metavar="SECONDS",
                                  help="Seconds per verification before it is killed."),
    llm: bool | None = typer.Option(None, "--llm/--no-llm", help="Use the LLM (default: when configured)."),
    no_compile: bool = typer.Option(False, "--no-compile", help="Skip the torch.compile baseline."),
    as_json: bool = typer.Option(False, "--json", help="The result as JSON on stdout."),
) -> None:
    """Verify every op on BACKEND; re-tune or regenerate those that fail or are slower than eager there.

    Exit code 0: every op passes after; 1: some still fail; 2: bad usage."""
    check_backends([backend])
    if executor not in ("local", "ray"):
        fail(f"--executor must be one of local, ray, not {executor!r}")
    if timeout <= 0 or jobs < 1 or trials < 1:
        fail("--timeout must be > 0, --jobs and --trials >= 1")
    if library is not None:
        existing_libraries([library])
    if executor == "ray":
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            fail("--executor ray needs ray: pip install 'kernelgen[ray]'")
    from kernelgen.backends import get_backend
    from kernelgen.regen import regenerate, select_ops

    if not get_backend(backend).available():
        fail(f"backend {backend!r} is not available on this machine (see `kernelgen backends`)")
    try:
        select_ops(ops, library)  # unknown op names are a usage error, before anything runs
    except KernelgenError as exc:
        fail(str(exc))

    def event(op: str, message: str) -> None:
        err_console.print(Text(f"{op}: ", style="bold") + Text(message) if op else Text(message, style="cyan"),
                          highlight=False, soft_wrap=True)

    clean_scratch()
    result = regenerate(backend, ops=ops or None, jobs=jobs, executor=executor, out=out, library=library,
                        trials=trials, timeout=timeout, with_compile=not no_compile, llm=llm, on_event=event)
    if as_json:
        emit_json(result.to_dict())
    else:
        s = result.summary()
        t = table(f"regen on {backend}: {s['passing_before']} of {s['total']} passing before, "
                  f"{s['passing_after']} after", ["op", "before", "after", "action", "detail", "vs eager"],
                  keep=["op", "action", "vs eager"], flex=["detail"])
        for o in result.ops:
            speed = o.after.speedup_vs_eager
            before = Text("pass", style="green") if o.before.passed else Text(f"FAIL {o.before.check}", style="red")
            after = Text("pass", style="green") if o.after.passed else Text(f"FAIL {o.after.check}", style="red")
            t.add_row(o.op, before, after, o.action, styled(first_line(o.detail)), f"{speed:.2f}x" if speed else "-")
        print_table(t)
    if out:
        err_console.print(f"reports written to {out}/ (report.json, report.md, speedup.png, regen.png)",
                          highlight=False, soft_wrap=True)
    raise typer.Exit(0 if result.all_passing else 1)


def main() -> None:
    try:
        app()
    except KernelgenError as exc:
        err_console.print(Text("error: ", style="bold red") + Text(str(exc)), highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
