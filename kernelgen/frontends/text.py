"""Text requests -> `Reference`: a formula ("y = silu(x + bias)") or words ("silu of x plus bias").

`to_reference(request, name=None)` is the one entry point. A formula is Python over named inputs
(`formula.py`); words are read against the vocabulary table (`words.py`, `vocabulary.py`); words followed
by a formula ("swish x * sigmoid(x)", "fused multiply add a*b+c") are a name for that formula, accepted
only when each op word is in the formula or computes it. Whatever the form, the result is plain PyTorch
source with its inputs, shapes and the conventions chosen (`Reference.notes`), and it has been run once on
the test shapes. A request that cannot be read raises `ComposeError` with a one-line reason.
"""

from __future__ import annotations

import ast
import difflib
import re

from kernelgen.frontends import input_shapes
from kernelgen.frontends.composer import ComposeError
from kernelgen.frontends.formula import FormulaError, Program, looks_like_formula, parse_program, source
from kernelgen.frontends.lexicon_words import known_phrases, tokenize
from kernelgen.frontends.reference import Reference
from kernelgen.frontends.vocabulary import Word, callable_names, render
from kernelgen.frontends.words import Reader
from kernelgen.frontends.words_cursor import ReadError
from kernelgen.spec import NAME_RE, InputSpec

MAX_SUGGESTIONS = 6
# words that only describe a formula that follows them ("sigmoid gating a*sigmoid(b)"); alone they are refused
LABEL_ONLY = {"gating", "gated", "gate", "fma"}
OPERATOR_WORDS = {"add": ast.Add, "sub": ast.Sub, "mul": ast.Mult, "div": ast.Div}


def to_reference(request: str, name: str | None = None) -> Reference:
    """The request as an explicit PyTorch reference, or `ComposeError` saying what could not be read."""
    text = request.strip()  # newlines kept: a formula may have one statement per line
    if not text:
        raise ComposeError("the request is empty")
    if looks_like_formula(text):
        ref = _from_formula(request, text, [])
    else:
        split = _formula_suffix(text)
        if split and _ends_with_of(split[0]):
            split = None  # "silu applied to x + bias": the words reader groups it, silu(x + bias)
        ref = _from_formula(request, split[1], _label_notes(split[0], split[1])) if split else _from_words(request)
    if name:
        if not NAME_RE.match(name):
            raise ComposeError(f"op name {name!r} must be lower_snake_case (letters, digits, _)")
        ref.name = name
    _check_runs(ref)
    return ref


# ---- formulas --------------------------------------------------------------------------------------
def _from_formula(request: str, text: str, notes: list[str]) -> Reference:
    try:
        program = parse_program(text)
    except FormulaError as exc:
        raise ComposeError(f"cannot read the formula {text!r}: {exc}") from None
    if not program.inputs:
        raise ComposeError(f"the formula {text!r} has no inputs (names it reads before assigning)")
    causal = any(w.name == "causal_mask" for w in program.vocabulary_calls)
    inputs = input_shapes.formula_inputs(program.inputs, program.statements, causal)
    notes = [input_shapes.describe(inputs)] + notes + program.notes
    return _reference(request, "formula", program, inputs, notes, _formula_name(program))


def _formula_name(program: Program) -> str:
    parts: list[str] = []
    for stmt in program.statements:
        for node in ast.walk(stmt):
            if isinstance(node, ast.Call):
                fn = ast.unparse(node.func).rsplit(".", 1)[-1]
                if fn not in parts and fn.isidentifier():
                    parts.append(fn)
            elif isinstance(node, ast.BinOp):
                op = {ast.Add: "add", ast.Sub: "sub", ast.Mult: "mul", ast.Div: "div", ast.MatMult: "matmul",
                      ast.Pow: "pow"}.get(type(node.op))
                if op and op not in parts:
                    parts.append(op)
    return _name_from(parts) or "formula"


def _formula_suffix(text: str) -> tuple[str, str] | None:
    """(words, formula) when the text is words followed by a formula with at least one input name."""
    for m in list(re.finditer(r"\S+", text))[1:]:
        suffix = text[m.start():]
        if suffix[0] in "+-*/@=,;)" or text[: m.start()].rstrip()[-1:] in "+-*/@=(,":
            continue  # the middle of an expression, not the start of a formula
        if looks_like_formula(suffix) and _names_are_operands(suffix):
            return text[: m.start()].strip(), suffix
    return None


def _names_are_operands(formula: str) -> bool:
    """A formula's plain names must not be words of the reader ("to [-1, 1]" is not a formula over `to`),
    except the operand nouns (bias, residual, scale, ...)."""
    from kernelgen.frontends.lexicon_words import TABLE

    tree = ast.parse(formula)
    calls = [n.func for n in ast.walk(tree) if isinstance(n, ast.Call)]
    called = {id(f) for f in calls}
    if any(isinstance(f, ast.Name) and f.id not in callable_names() for f in calls):
        return False  # "of (x - 1)" is words, not a call of `of`
    names = [n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and id(n) not in called]
    if not names:
        return False
    return all(TABLE.get((n,), ("noun",))[0] in ("noun", "scale", "param") for n in names)


def _ends_with_of(words: str) -> bool:
    items = tokenize(words)
    return bool(items) and items[-1].kind == "of"


def _label_notes(words: str, formula: str) -> list[str]:
    """Words before a formula must name it: each op word is in the formula ("sigmoid gating a*sigmoid(b)",
    "fused multiply add a*b+c") or, alone, computes it ("swish x * sigmoid(x)")."""
    items = [it for it in tokenize(words) if it.text not in LABEL_ONLY]
    _refuse_unknown(words, items)
    try:
        program = parse_program(formula)
    except FormulaError as exc:
        raise ComposeError(f"cannot read the formula {formula!r}: {exc}") from None
    used = _formula_ops(program)
    for it in items:
        if it.kind in ("filler", "join", "article"):
            continue
        if it.kind != "op":
            raise ComposeError(f"{it.text!r} before the formula {formula!r} is not an op name")
        w = it.word
        if w.name in used or (w.name in OPERATOR_WORDS and OPERATOR_WORDS[w.name] in used) or \
                _computes(w, program):
            continue
        raise ComposeError(f"the words {words!r} before the formula {formula!r} do not name what it computes "
                           f"({w.name} is not in it); write '{w.name} of ...' or {w.name}(...) to apply it")
    return [f"the words {words!r} name the formula {formula!r} (not more ops)"]


def _formula_ops(program: Program) -> set:
    used: set = {w.name for w in program.vocabulary_calls}
    for stmt in program.statements:
        for node in ast.walk(stmt):
            if isinstance(node, ast.Call):
                used.add(ast.unparse(node.func).rsplit(".", 1)[-1])
            elif isinstance(node, ast.BinOp):
                used.add(type(node.op))
    return used


def _computes(word: Word, program: Program) -> bool:
    """Whether a one-operand word applied to the formula's single input gives the formula's output."""
    if len(program.inputs) != 1 or len(word.operands) != 1 or len(program.outputs) != 1:
        return False
    import torch

    x = program.inputs[0]
    try:
        f = _function(source(program, [x]))
        g = _function(f"def reference({x}):\n    return {render(word, {'x': x}, {})}\n")
        t = torch.randn(4, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        return bool(torch.allclose(f(t), g(t), rtol=1e-9, atol=1e-9))
    except Exception:
        return False


# ---- words -----------------------------------------------------------------------------------------
def _refuse_unknown(request: str, items) -> None:
    unknown = list(dict.fromkeys(it.text for it in items if it.kind == "unknown"))
    if not unknown:
        return
    known = known_phrases()
    close: list[str] = []
    for u in unknown:
        for c in difflib.get_close_matches(u, known, n=3, cutoff=0.75):
            if c not in close:
                close.append(c)
    hint = f" (did you mean {', '.join(close[:MAX_SUGGESTIONS])}?)" if close else ""
    raise ComposeError(f"cannot read {_quoted(request)}: not understood: {', '.join(map(repr, unknown[:8]))}"
                       f"{hint}; the words are listed in the README (The words), or write a formula such as "
                       "y = silu(x + bias)")


def _from_words(request: str) -> Reference:
    items = tokenize(request)
    _refuse_unknown(request, items)
    reader = Reader()
    try:
        words = reader.read(items)
    except ReadError as exc:
        raise ComposeError(f"cannot read {_quoted(request)}: {exc}") from None
    except Exception as exc:  # a bug in the reader must refuse the request, never crash the run
        raise ComposeError(f"internal error reading {request.strip()!r}: {type(exc).__name__}: {exc}") from None
    if not words.statements:
        raise ComposeError(f"cannot read {_quoted(request)}: no op found")
    text = "\n".join(words.statements) + "\n(" + ", ".join(words.outputs) + ",)"
    try:
        program = parse_program(text)
    except FormulaError as exc:  # a vocabulary snippet outside the allowlist: a bug in the table
        raise ComposeError(f"internal: the reference built from the words is not allowed: {exc}") from None
    missing = [n for n in program.inputs if n not in words.decls]
    if missing:
        raise ComposeError(f"internal: inputs {missing} were never declared")
    inputs = [_spec(words.decls[n]) for n in program.inputs]
    notes = [input_shapes.describe(inputs)] + words.notes
    return _reference(request, "words", program, inputs, notes, _name_from(words.name_parts) or "composed_op")


def _spec(decl) -> InputSpec:
    if decl.role == "scalar":
        return InputSpec(decl.name, "float", value=decl.value)
    return input_shapes.tensor(decl.name, decl.role, None if decl.fill == "randn" else decl.fill)


# ---- the Reference ---------------------------------------------------------------------------------
def _reference(request: str, origin: str, program: Program, inputs: list[InputSpec], notes: list[str],
               name: str) -> Reference:
    labels = ["y"] + [f"h{k}" if k > 1 else "h" for k in range(1, len(program.outputs))]
    return Reference(request=request, origin=origin, source=source(program, [i.name for i in inputs]),
                     inputs=inputs, outputs=labels, test_shapes=input_shapes.test_shapes(inputs),
                     bench_shapes=input_shapes.bench_shapes(inputs), name=name, notes=notes)


def _name_from(parts: list[str]) -> str:
    out: list[str] = []
    for p in parts:
        if p not in out:
            out.append(p)
    name = re.sub(r"_+", "_", "_".join(out))[:60].strip("_")
    return name if NAME_RE.match(name or "-") else ""


def _function(src: str):
    import math

    import torch
    import torch.nn.functional as F

    scope = {"torch": torch, "F": F, "math": math}
    exec(compile(src, "<composed reference>", "exec"), scope)  # noqa: S102 (source built from a checked AST)
    return scope["reference"]


def _check_runs(ref: Reference) -> None:
    """Run the reference once on the first test shape: a formula whose shapes do not fit is refused here,
    with the convention that was chosen, rather than later in the code generator."""
    from kernelgen.frontends.sample import sample_inputs

    try:
        fn = ref.function()
        fn(*sample_inputs(ref, ref.test_shapes[0], seed=0))
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ComposeError(f"the reference for {ref.request.strip()!r} does not run on the chosen shapes "
                           f"({input_shapes.describe(ref.inputs)}): {type(exc).__name__}: {first}") from None


__all__ = ["ComposeError", "to_reference"]


def _quoted(request: str, limit: int = 80) -> str:
    """The request as an error message quotes it: whole when short, else its start (a long request would
    make a line nobody reads)."""
    text = " ".join(request.split())
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f" (+{len(text) - limit} characters)"
