"""The generation commands of the CLI: `new`, `compose`, `runs`, `resume` (kernelgen/agents), registered on
the app of kernelgen/cli.py, which imports this module where they belong in the command list."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.text import Text

from kernelgen.cli import app, sandbox_or_fail
from kernelgen.cli_args import FORMAT_HELP, check_backends, check_format, clean_scratch, emit_json, fail
from kernelgen.cli_output import console, err_console, one_line_warnings, plain, print_table, styled, table, tsv
from kernelgen.cli_runs import RUN_OK, print_run, progress_listener
from kernelgen.errors import KernelgenError

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
    if status == "failed" and not result.get("candidates") and (result.get("lowering") or {}).get("reason"):
        # understood (the reference is above) but no template fits it and no LLM wrote a kernel
        err_console.print(Text("no kernel:", style="red") + Text(
            f" no template fits the reference: {result['lowering']['reason']}"
            + ("" if result.get("llm", {}).get("enabled") else
               "; set KERNELGEN_BASE_URL or OPENAI_API_KEY to let an LLM write it")), highlight=False, soft_wrap=True)
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
    request: str | None = typer.Argument(None, metavar="[REQUEST]",
                                         help='What the op computes, e.g. "fused rmsnorm + residual" or '
                                         '"y = silu(x + bias)" (or give --reference FILE).'),
    reference: Path | None = typer.Option(None, "--reference", metavar="FILE", help="A Python file with a "
                                          "reference(...) function or a KernelBench problem (class Model, "
                                          "get_inputs())."),
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
    no_sandbox: bool = typer.Option(False, "--no-sandbox", help="Run candidates in plain processes, without "
                                    "the bubblewrap sandbox: for trusted code only (loud)."),
) -> None:
    """Generate an op from words, a formula or a reference file: understand, retrieve, generate, verify,
    repair, select, merge."""
    from kernelgen.agents.llm import llm_configured
    from kernelgen.library import default_target_library
    from kernelgen.spec import NAME_RE

    # cheap checks first: nothing heavy is imported until the arguments are known to be right
    _check_request(request, reference)
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
    for b in names:
        sandbox_or_fail(b, no_sandbox)
    request = _request_or_reference(request, reference)
    options = {
        "reference_file": str(reference.expanduser().resolve()) if reference is not None else None,
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
             'kernelgen compose "y = silu(x + bias)" --spec > spec.toml  |  kernelgen compose --reference problem.py')
def compose_cmd(
    request: str | None = typer.Argument(None, metavar="[REQUEST]",
                                         help='What the op computes, e.g. "fused rmsnorm + residual" '
                                         '(or give --reference FILE).'),
    reference: Path | None = typer.Option(None, "--reference", metavar="FILE", help="A Python file with a "
                                          "reference(...) function or a KernelBench problem."),
    out: str | None = typer.Option(None, "--out", metavar="DIR", help="Write the op folder (kernel.py + spec.toml) "
                                   "here."),
    name: str | None = typer.Option(None, "--name", metavar="NAME",
                                    help="Op name (default: derived from the request)."),
    spec_only: bool = typer.Option(False, "--spec", help="Print only spec.toml (for a file or a script)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Dry run of understand: the reference, its lowering to a kernel (or why none fits) and the spec;
    --out writes the op folder. Exit 1 when no template fits (nothing written)."""
    from kernelgen.spec import NAME_RE

    _check_request(request, reference)
    out_dir = Path(out) if out is not None else None
    if out_dir is not None and out_dir.exists() and not out_dir.is_dir():
        fail(f"--out {out} exists and is not a folder")
    if name is not None and not NAME_RE.match(name):
        fail(f"--name must be lower_snake_case (letters, digits, _), got {name!r}")
    request = _request_or_reference(request, reference)
    from kernelgen.agents.understand import text_front_end
    from kernelgen.codegen.from_reference import generate
    from kernelgen.frontends.composer import ComposeError
    from kernelgen.frontends.reference_file import ReferenceFileError, load_reference_file
    from kernelgen.spec import dump_spec

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
        if not spec_only:  # the reference goes to stderr; stdout's first line is a TOML comment naming the op,
            _print_reference(ref.source, ref.notes)  # so stdout, and stdout less its first line, are both TOML
            plain(f"# {gen.spec.name}: {gen.summary}" + ("" if gen.lowered else " (no kernel)"))
        plain(dump_spec(gen.spec))  # TOML as it is: never wrapped to the terminal width
        if written:
            err_console.print(f"wrote {written}/kernel.py and spec.toml", highlight=False, soft_wrap=True)
    if not gen.lowered:
        raise typer.Exit(1)


def _print_reference(source: str, notes: list[str]) -> None:
    err_console.print("understood as:", style="bold", highlight=False)
    err_console.print(source.strip("\n"), highlight=False, markup=False, soft_wrap=True)
    for note in notes:
        err_console.print(f"# {note}", highlight=False, markup=False, style="dim", soft_wrap=True)


def _check_request(request: str | None, reference: Path | None) -> None:
    """Cheap argument checks, before anything heavy is imported."""
    if reference is not None:
        if request:
            fail("give either a request or --reference FILE, not both")
        if not reference.is_file():
            fail(f"--reference {reference}: no such file")
    elif not request or not request.strip():
        fail("the request is empty; say what the op computes, e.g. \"fused rmsnorm + residual\", "
             "or give --reference FILE")


def _request_or_reference(request: str | None, reference: Path | None) -> str:
    """The run's request text: the words / formula, or the reference file's path (checked to load and trace
    here, so a bad file is a one-line error before any run starts)."""
    if reference is None:
        return str(request)
    from kernelgen.codegen.trace import TraceError, trace_reference
    from kernelgen.frontends.reference_file import ReferenceFileError, load_reference_file

    try:
        trace_reference(load_reference_file(reference))
    except ReferenceFileError as exc:
        fail(str(exc))
    except TraceError as exc:
        fail(f"{reference}: {exc}")
    return str(reference)


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


