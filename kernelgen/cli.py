"""The `kernelgen` command. Thin: parse arguments, call the library, print (rich) or emit JSON.

Errors a user can cause print one line and exit with code 2; nothing is written before arguments check out.
"""

from __future__ import annotations

import json
import sys

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
    """Every library op: the ATen overloads it overrides and, per backend, its verification status."""
    from kernelgen.library import discover, op_status

    names = _backend_names(backend)
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
            cells.append(text)
        table.add_row(row["name"], ", ".join(row["aten"]) or "-", *cells)
    console.print(table)


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


@app.command("compose")
def compose_cmd(
    request: str = typer.Argument(..., help='What the op computes, e.g. "fused rmsnorm + residual".'),
    out: str | None = typer.Option(None, "--out", help="Write the op folder (kernel.py + spec.toml) here."),
    name: str | None = typer.Option(None, "--name", help="Op name (default: derived from the request)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Dry run of the embedded composer: print what it understood and the spec; --out writes the op folder."""
    from kernelgen.agents.composer import ComposeError, compose
    from pathlib import Path

    from kernelgen.spec import dump_spec

    out_dir = Path(out) if out is not None else None
    if out_dir is not None and out_dir.exists() and not out_dir.is_dir():
        fail(f"--out {out} exists and is not a folder")
    try:
        comp = compose(request, name)
    except ComposeError as exc:
        fail(str(exc))
    written = str(comp.write(out_dir)) if out_dir is not None else None
    if as_json:
        emit_json({"request": request, "name": comp.spec.name, "summary": comp.summary,
                   "spec": comp.spec.to_dict(), "written": written})
        return
    console.print(f"[bold]{comp.spec.name}[/]: {comp.summary}", highlight=False)
    console.print(dump_spec(comp.spec), highlight=False, markup=False)
    if written:
        console.print(f"wrote {written}/kernel.py and spec.toml", highlight=False)


def main() -> None:
    try:
        app()
    except KernelgenError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
