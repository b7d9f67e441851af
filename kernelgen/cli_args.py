"""Checks of the CLI's arguments that need nothing heavy (no torch, chromadb or langgraph), and the one-line
error every user mistake ends in (exit code 2)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.text import Text

from kernelgen.cli_output import err_console

BUILTIN_BACKENDS = ("cuda", "interpreter")  # as registered by kernelgen.backends (without importing torch)
FORMATS = ("table", "json", "tsv")
FORMAT_HELP = "table | json | tsv (tab-separated, for scripts)."


def readable_help_types() -> None:
    """typer prints `<bool>` after every flag and `<list[str]>` after an argument in --help; a flag takes no
    value, and an argument's metavar already says what it takes: show nothing there."""
    from typer.core import TyperArgument, TyperOption

    for cls in (TyperOption, TyperArgument):
        shown = cls.display_type_rich

        def display_type_rich(self, ctx, _shown=shown, _argument=cls is TyperArgument):
            if getattr(self, "is_flag", False) and self.metavar is None or _argument and self.metavar:
                return None
            return _shown(self, ctx)

        cls.display_type_rich = display_type_rich


def fail(message: str, code: int = 2) -> None:
    """One line on stderr, then exit (2: bad input)."""
    err_console.print(Text("error: ", style="bold red") + Text(str(message)), highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def emit_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def check_format(fmt: str, as_json: bool, allowed: tuple[str, ...] = FORMATS) -> str:
    fmt = "json" if as_json else fmt
    if fmt not in allowed:
        fail(f"--format must be one of {', '.join(allowed)}, not {fmt!r}")
    return fmt


def known_backends() -> list[str]:
    """Backend names, built-ins then plugins, read from entry points only (no torch import)."""
    from importlib.metadata import entry_points

    plugins = {ep.name for ep in entry_points(group="kernelgen.backends")} - set(BUILTIN_BACKENDS)
    return list(BUILTIN_BACKENDS) + sorted(plugins)


def check_backends(names: list[str] | None) -> None:
    known = known_backends()
    for b in names or []:
        if b not in known:
            fail(f"unknown backend {b!r}; known: {', '.join(known)}")


def backend_names(backend: list[str] | None) -> list[str]:
    check_backends(backend)
    return list(backend) if backend else known_backends()


def existing_libraries(library: list[str] | None) -> list[str] | None:
    """--library folders that must already exist (list, search, verify, regen)."""
    for p in library or []:
        path = Path(p).expanduser()
        if not path.exists():
            fail(f"--library {p} does not exist")
        if not path.is_dir():
            fail(f"--library {p} is not a folder")
    return library


def clean_scratch() -> None:
    """Scratch folders of killed kernelgen processes (verifier workers, regen stages) are removed here."""
    from kernelgen.scratch import clean_leftovers

    clean_leftovers()


