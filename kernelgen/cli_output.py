"""How the CLI prints: tables that never cut a cell, tab-separated rows for scripts, one-line warnings.

Rules (the same on a terminal and in a pipe, where rich assumes 80 columns):
- machine-readable text (TOML, run ids, op names, paths) is never wrapped or truncated: it is written with
  soft wrapping, and table columns holding it are `no_wrap`;
- long cells (messages, reasons, requests) fold onto more lines, never end in "…";
- a table whose unbreakable cells do not fit the width is printed wider than the terminal rather than cut;
- `--format tsv`: a header row, then one row per item, cells separated by tabs, no colour, no wrapping.
"""

from __future__ import annotations

import functools
import sys
import warnings
from collections.abc import Iterable, Sequence

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

console = Console()
err_console = Console(stderr=True)


FLEX_MIN_WIDTH = 16  # a folding text column is never squeezed below this (one short word per line)


def table(title: str, columns: Sequence[str], keep: Iterable[str] = (), flex: Iterable[str] = ()) -> Table:
    """A table whose `keep` columns (ids, names, paths) are never broken and whose others fold; `flex`
    columns (long text) take the width left over, at least FLEX_MIN_WIDTH."""
    keep, flex = set(keep), set(flex)
    t = Table(title=title, title_justify="left")
    for col in columns:
        t.add_column(col, no_wrap=col in keep, overflow="fold", ratio=1 if col in flex else None,
                     min_width=FLEX_MIN_WIDTH if col in flex else None)
    return t


def print_table(t: Table, out: Console | None = None) -> None:
    """Print `t` at the console's width, or wider when its unbreakable cells need more (rich would cut them)."""
    out = out or console
    need = Measurement.get(out, out.options.update_width(100_000), t).minimum
    if need > out.width:  # print(width=...) cannot go past the console's width: a wider console, same stream
        out = Console(file=out.file, width=need, color_system=out.color_system, force_terminal=out.is_terminal,
                      no_color=out.no_color)
    out.print(t, crop=False)


def plain(text: str, out: Console | None = None) -> None:
    """Text as it is: no markup, no highlighting, no wrapping (TOML, paths, ids)."""
    stream = (out or console).file
    stream.write(text if text.endswith("\n") else text + "\n")
    stream.flush()


def tsv(header: Sequence[str], rows: Iterable[Sequence[object]], stream=None) -> None:
    """Tab-separated rows for scripts; a tab or newline inside a cell becomes a space."""
    stream = stream or sys.stdout

    def cell(v: object) -> str:
        text = "" if v is None else v.plain if isinstance(v, Text) else str(v)
        return " ".join(text.split("\n")).replace("\t", " ")

    stream.write("\t".join(header) + "\n")
    for row in rows:
        stream.write("\t".join(cell(v) for v in row) + "\n")
    stream.flush()


def first_line(message: str) -> str:
    return (message.strip().splitlines() or [""])[0]


def styled(text: str, style: str = "") -> Text:
    """Text from data (messages, requests, paths): never parsed as rich markup."""
    return Text(str(text), style=style)


def warn_line(message: str) -> None:
    err_console.print(Text("warning: ", style="yellow") + Text(str(message)), highlight=False, soft_wrap=True)


def one_line_warnings(command):
    """Decorator for a command: kernelgen's own warnings during it (an index or runs database moved aside
    and rebuilt, a broken op skipped) print as one `warning: ...` line on stderr, every time, instead of
    Python's `file:line: Category: message` form. Other warnings are shown as Python would."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        with warnings.catch_warnings():
            shown = warnings.showwarning

            def show(message, category, filename, lineno, file=None, line=None):
                if category.__module__.startswith("kernelgen"):
                    warn_line(str(message))
                else:
                    shown(message, category, filename, lineno, file, line)

            warnings.showwarning = show
            warnings.filterwarnings("always", module=r"kernelgen(\.|$)")  # ours every time, others as before
            return command(*args, **kwargs)

    return run
