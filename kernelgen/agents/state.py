"""What every stage of the generation graph shares: the progress listener, the run's options, the target
library, spec parsing, and the candidate record."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kernelgen.errors import SpecError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

Listener = Callable[[str, str, str], None]  # (stage, message, style)
_listener: Listener | None = None


def set_listener(fn: Listener | None) -> None:
    global _listener
    _listener = fn


def emit(stage: str, message: str, style: str = "") -> None:
    if _listener is not None:
        _listener(stage, message, style)


def _opts(state: dict) -> dict[str, Any]:
    return state.get("options") or {}


def _library(state: dict) -> Path:
    from kernelgen.library import builtin_library

    lib = _opts(state).get("library")
    return Path(lib) if lib else builtin_library()


def _load_spec_text(text: str, source: str = "<generated spec.toml>"):
    from kernelgen.spec import OpSpec

    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{source}: not valid TOML: {exc}") from None
    return OpSpec.from_dict(doc, source)


def _find_existing(name: str | None, library: Path) -> dict[str, Any] | None:
    """The op folder `name` in the library the run merges into (an op of that name in another root, such
    as the built-in library seen from a user --library, is not in the way: the new one shadows it)."""
    from kernelgen.library import load_op, ops_dir

    if not name or not library.is_dir():
        return None
    path = ops_dir(library) / name
    if not path.is_dir():
        return None
    op = load_op(path)
    return {"name": op.name, "path": str(op.path), "broken": op.broken}


def _llm_on(state: dict) -> bool:
    return bool((state.get("llm") or {}).get("enabled")) and not (state.get("llm") or {}).get("error")


def _candidate(cid: str, origin: str, kernel: str | None, round_: int = 0, parent: str = "",
               error: str = "") -> dict[str, Any]:
    return {"id": cid, "origin": origin, "round": round_, "parent": parent, "kernel": kernel or "",
            "error": error, "verdicts": {}}


def _first_line(text: str, limit: int = 160) -> str:
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


