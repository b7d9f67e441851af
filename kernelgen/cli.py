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
    check_backends,
    check_format,
    clean_scratch,
    emit_json,
    existing_libraries,
    fail,
    readable_help_types,
)
from kernelgen.cli_output import (
    err_console,
    first_line,
    one_line_warnings,
    plain,
    print_table,
    styled,
    table,
    tsv,
)
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


def sandbox_or_fail(backend: str, no_sandbox: bool) -> None:
    """--no-sandbox turns the sandbox off (loudly); otherwise generated candidates need one: one line if not."""
    from kernelgen.verify.sandbox import SandboxUnavailable, require_sandbox, set_no_sandbox

    if no_sandbox:
        set_no_sandbox(True)
        return
    try:
        require_sandbox(backend)
    except SandboxUnavailable as exc:
        fail(str(exc))


# ---- generation: new / compose / runs / resume (kernelgen/cli_generate.py registers them here, in order) --
if __name__ == "__main__":  # `python -m kernelgen.cli`: cli_generate must register on this module's app
    sys.modules.setdefault("kernelgen.cli", sys.modules[__name__])
from kernelgen import cli_generate  # noqa: E402,F401

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
    sanitize: bool = typer.Option(False, "--sanitize", help="CUDA: run each candidate under compute-sanitizer "
                                  "memcheck (out-of-bounds accesses); no timings."),
    no_sandbox: bool = typer.Option(False, "--no-sandbox", help="Run candidates in plain processes, without "
                                    "the bubblewrap sandbox: for trusted code only (loud)."),
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
    from kernelgen.verify.sandbox import SandboxUnavailable, set_no_sandbox

    if sanitize and be.device != "cuda":
        fail(f"--sanitize needs the cuda backend (compute-sanitizer), not {be.name!r}")
    if no_sandbox:
        set_no_sandbox(True)
    clean_scratch()
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
    no_sandbox: bool = typer.Option(False, "--no-sandbox", help="Run candidates in plain processes, without "
                                    "the bubblewrap sandbox: for trusted code only (loud)."),
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
    sandbox_or_fail(backend, no_sandbox)
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
