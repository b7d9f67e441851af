"""Reading an LLM answer as models really write them: prose around several fenced blocks in any order,
```py / ```python3 / unlabelled fences, fences indented under a list item, explanatory excerpts before the
full file and usage snippets after it.

The kernel is the python block that defines the spec's launcher and imports triton (the full kernel.py),
not merely the first block that mentions `triton.jit`; the spec is the ```toml block (or an unlabelled block
that reads as a spec.toml). When something is missing, `missing_*` says what the answer did contain, so the
message that goes back to the LLM is specific.
"""

from __future__ import annotations

import re
import sys
import textwrap

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

OPEN_RE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<lang>[A-Za-z0-9_.+-]*)[^\n]*$")
PYTHON_LANGS = ("python", "py", "python3", "py3")
TOML_LANGS = ("toml",)


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced block, in order. A fence may be indented (under a list item): its
    body loses that indentation, then any indentation common to all its lines. An unclosed fence runs to
    the end of the answer (a reply cut off by a token limit still yields its code)."""
    lines = (text or "").splitlines()
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(lines):
        m = OPEN_RE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, indent = m.group("fence"), len(m.group("indent").expandtabs())
        body: list[str] = []
        i += 1
        while i < len(lines):
            stripped = lines[i].strip()
            if stripped.startswith(fence[0] * len(fence)) and not stripped.strip(fence[0]):
                break
            body.append(_strip_indent(lines[i], indent))
            i += 1
        i += 1
        joined = textwrap.dedent("\n".join(body))
        out.append((m.group("lang").lower(), joined + "\n" if joined else ""))
    return out


def _strip_indent(line: str, width: int) -> str:
    n = 0
    while n < len(line) and n < width and line[n] in " \t":
        n += 1
    return line[n:]


def _looks_like_python(body: str) -> bool:
    return bool(re.search(r"^(import |from \S+ import |def |@triton)", body, re.MULTILINE))


def python_blocks(blocks: list[tuple[str, str]]) -> list[str]:
    return [b for lang, b in blocks if lang in PYTHON_LANGS or (not lang and _looks_like_python(b))]


def _reads_as_spec(body: str) -> bool:
    try:
        doc = tomllib.loads(body)
    except tomllib.TOMLDecodeError:
        return False
    return "signature" in doc or "reference" in doc


def pick_spec(blocks: list[tuple[str, str]]) -> str | None:
    """The first ```toml block; else the first unlabelled or other-language block that parses as a spec."""
    toml = [b for lang, b in blocks if lang in TOML_LANGS]
    if toml:
        return toml[0]
    return next((b for lang, b in blocks if lang not in PYTHON_LANGS and _reads_as_spec(b)), None)


def _defines(body: str, function: str) -> bool:
    return bool(re.search(rf"^def {re.escape(function)}\s*\(", body, re.MULTILINE))


def _imports_triton(body: str) -> bool:
    return bool(re.search(r"^\s*(import triton\b|from triton\b)", body, re.MULTILINE))


def pick_kernel(blocks: list[tuple[str, str]], function: str | None = None) -> str | None:
    """The python block that is a whole kernel.py: it defines the launcher `function` (when known), imports
    triton and has a @triton.jit kernel. Ties go to the last such block (a corrected version follows the
    first attempt); a usage snippet or an excerpt never outranks a complete file."""
    python = python_blocks(blocks)
    if not python:
        return None

    def rank(body: str) -> tuple[int, int, int]:
        return (int(bool(function) and _defines(body, function)), int(_imports_triton(body)),
                int("triton.jit" in body))

    best = max(rank(b) for b in python)
    return [b for b in python if rank(b) == best][-1]


def parse_answer(text: str, function: str | None = None) -> dict[str, str | None]:
    """{"kernel": kernel.py source or None, "spec": spec.toml text or None} from an LLM answer. `function`:
    the launcher the kernel must define; when the answer carries a spec, its [signature] function."""
    blocks = code_blocks(text)
    spec = pick_spec(blocks)
    if function is None and spec is not None:
        function = _spec_function(spec)
    return {"kernel": pick_kernel(blocks, function), "spec": spec}


def _spec_function(spec: str) -> str | None:
    try:
        fn = tomllib.loads(spec).get("signature", {}).get("function")
    except (tomllib.TOMLDecodeError, AttributeError):
        return None
    return fn if isinstance(fn, str) else None


def _contents(blocks: list[tuple[str, str]]) -> str:
    if not blocks:
        return "it has no fenced code block at all"
    langs = ["python" if lang in PYTHON_LANGS else lang or "unlabelled" for lang, _ in blocks]
    counts = ", ".join(f"{langs.count(x)} {x}" for x in dict.fromkeys(langs))
    return f"it has {counts} block{'s' if len(blocks) > 1 else ''}"


def missing_spec(text: str) -> str:
    """Why no spec.toml could be read from an answer to a spec prompt."""
    return f"the answer has no ```toml block with spec.toml ({_contents(code_blocks(text))})"


def missing_kernel(text: str, function: str | None = None) -> str:
    """Why no kernel.py could be read from an answer."""
    what = f"```python block with kernel.py defining {function}(...)" if function else \
        "```python block with kernel.py"
    return f"the answer has no {what} ({_contents(code_blocks(text))})"

