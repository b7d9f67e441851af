"""`kernelgen list`, `kernelgen backends` and `kernelgen search`: what the library holds and where."""

from __future__ import annotations

import typer
from rich.text import Text

from kernelgen.cli_args import FORMAT_HELP, backend_names, check_format, emit_json, existing_libraries, fail
from kernelgen.cli_output import console, err_console, one_line_warnings, print_table, styled, table, tsv

_registered: list = []


def _command(name: str, **kw):
    """Collects the commands of this module; `register(app)` adds them to the app, in this order."""

    def collect(fn):
        _registered.append((name, kw, fn))
        return fn

    return collect


def register(app: typer.Typer) -> None:
    for name, kw, fn in _registered:
        app.command(name, **kw)(fn)


STATUS_STYLE = {"verified": "green", "stale": "yellow", "failing": "red", "unverified": "dim", "broken": "bold red"}


def _status_text(st: dict) -> str:
    text = st["status"]
    if st.get("speedup"):
        text += f" {st['speedup']:.2f}x"
    if st["enable"]["verified"]:
        text += " on"  # switched on by kernelgen.enable()
    elif st["enable"]["by_size"]:
        text += " by_size"  # on with enable(by_size=True), for large inputs
    return text


@_command("list", epilog="Examples:  kernelgen list --backend cuda  |  kernelgen list --library my-kernels "
             "--format tsv")
@one_line_warnings
def list_ops(
    backend: list[str] | None = typer.Option(None, "--backend", "-b", metavar="BACKEND",
                                             help="Backend(s) to show (default: all)."),
    library: list[str] | None = typer.Option(None, "--library", metavar="DIR",
                                             help="Extra library folder(s) to include."),
    fmt: str = typer.Option("table", "--format", "-f", metavar="FORMAT", help=FORMAT_HELP),
    as_json: bool = typer.Option(False, "--json", help="Same as --format json."),
) -> None:
    """Every library op: the ATen overloads it overrides and, per backend, its verification status and
    whether `kernelgen.enable()` switches it on there."""
    fmt = check_format(fmt, as_json)
    names = backend_names(backend)
    existing_libraries(library)
    from kernelgen.aten import policy_allows
    from kernelgen.backends import get_backend
    from kernelgen.library import builtin_library, discover, library_of, op_status, shadowed

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
    if fmt == "json":
        emit_json(rows)
        return
    if fmt == "tsv":
        tsv(["op", "library", "hides", "overrides", *names, "reason", "path"],
            ([r["name"], r["library"], len(r["shadows"]), ",".join(r["aten"]),
              *[("broken" if r["broken"] else _status_text(r["backends"][b])) for b in names],
              r["reason"], r["path"]] for r in rows))
        return
    t = table(f"kernelgen library ({len(rows)} ops)", ["op", "library", "overrides", *names],
              keep=["op", "overrides"], flex=names)
    for row in rows:
        lib = styled(row["library"]) + (Text(f" (hides {len(row['shadows'])})", style="yellow")
                                        if row["shadows"] else Text(""))
        if row["broken"]:
            broken = Text("broken", style="bold red") + Text(f": {row['reason']}")
            t.add_row(styled(row["name"], "bold"), lib, "", broken, *[""] * (len(names) - 1))
            continue
        cells = []
        for b in names:
            st = row["backends"][b]
            words = _status_text(st).split(" ")
            cell = Text(words[0], style=STATUS_STYLE[st["status"]])
            for w in words[1:]:
                cell += Text(" " + w, style={"on": "green", "by_size": "yellow"}.get(w, ""))
            cells.append(cell)
        t.add_row(styled(row["name"], "bold"), lib, "\n".join(row["aten"]) or "-", *cells)
    print_table(t)
    console.print("[green]on[/]: switched on by kernelgen.enable(); [yellow]by_size[/]: by "
                  "kernelgen.enable(by_size=True), for large inputs only", highlight=False, soft_wrap=True)


@_command("backends", epilog="Example:  kernelgen backends --json")
def list_backends(
    fmt: str = typer.Option("table", "--format", "-f", metavar="FORMAT", help=FORMAT_HELP),
    as_json: bool = typer.Option(False, "--json", help="Same as --format json."),
) -> None:
    """Known backends (built-in and plugins) and whether each is available here."""
    fmt = check_format(fmt, as_json)
    from kernelgen.backends import all_backends

    infos = [b.info() for b in all_backends()]
    if fmt == "json":
        emit_json(infos)
        return
    cols = ["name", "available", "dispatch key", "dtypes", "description"]
    rows = [[i["name"], "yes" if i["available"] else "no", i["dispatch_key"], ", ".join(i["dtypes"]),
             i["description"]] for i in infos]
    if fmt == "tsv":
        tsv(cols, rows)
        return
    t = table("backends", cols, keep=["name", "dispatch key"])
    for r in rows:
        t.add_row(r[0], Text(r[1], style="green" if r[1] == "yes" else "dim"), *map(styled, r[2:]))
    print_table(t)


# ---- retrieval: search (kernelgen/retrieval) --------------------------------------------------------
@_command("search", epilog='Examples:  kernelgen search "swiglu"  |  kernelgen search "pre-norm residual" -k 3 '
             "--json")
@one_line_warnings
def search_library(
    query: str = typer.Argument(..., metavar="QUERY",
                                help='What the op does, in words: "swiglu", "pre-norm residual", "RoPE".'),
    k: int = typer.Option(5, "-k", "--top", min=1, metavar="N", help="How many ops to show."),
    library: list[str] | None = typer.Option(None, "--library", metavar="DIR",
                                             help="Extra library folder(s) to include."),
    fmt: str = typer.Option("table", "--format", "-f", metavar="FORMAT", help=FORMAT_HELP),
    as_json: bool = typer.Option(False, "--json", help="Same as --format json."),
) -> None:
    """The library ops closest to QUERY (offline embedding unless KERNELGEN_EMBEDDINGS=openai)."""
    fmt = check_format(fmt, as_json)
    if not query.strip():
        fail("the search query is empty")
    existing_libraries(library)
    from kernelgen.errors import KernelgenError
    from kernelgen.retrieval import search

    try:
        with err_console.status("searching the library (the index is rebuilt when the library changed)"):
            hits = search(query, k=k, library=library)
    except KernelgenError as exc:  # the embeddings endpoint is unreachable, the cache folder is a file, ...
        fail(str(exc))
    if fmt == "json":
        emit_json([h.to_dict() for h in hits])
        return
    cols = ["#", "op", "score", "overrides", "path"]
    rows = [[str(rank), h.name, f"{h.score:.3f}", ", ".join(h.aten) or "-", h.path] for rank, h in enumerate(hits, 1)]
    if fmt == "tsv":
        tsv(cols, rows)
        return
    t = table(f"library ops for {query!r}", cols, keep=["op", "path"])
    for r in rows:
        t.add_row(r[0], styled(r[1], "bold"), *map(styled, r[2:]))
    print_table(t)
