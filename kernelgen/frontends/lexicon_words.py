"""Tokens of a worded request and what each one may be: an op of the vocabulary, a number, a connector, a
named operand, a parameter word, a modifier, a dim phrase or filler. Anything else is not understood.

Letters outside ASCII stay inside their word ("naïve" is one unknown word, not "na" + "ve"), and a
path-like token ("models/llama.py", "a/b/c") is one unknown word, never a division.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from kernelgen.frontends.vocabulary import DTYPE_WORDS, MODIFIERS, PARAM_WORDS, WORDS, Word

# named operands: word -> (input name, role). Roles: rows [M, N] | feature [N] | scalar | mask | target
NOUNS: dict[str, tuple[str, str]] = {
    "residual": ("residual", "rows"), "skip": ("residual", "rows"), "skip connection": ("residual", "rows"),
    "shortcut": ("residual", "rows"), "residual stream": ("residual", "rows"),
    "bias": ("bias", "feature"), "biases": ("bias", "feature"), "weight": ("weight", "feature"),
    "weights": ("weight", "feature"), "gamma": ("weight", "feature"),
    "gate": ("gate", "rows"), "gate tensor": ("gate", "rows"), "gating tensor": ("gate", "rows"),
    "scaling factor": ("scale", "scalar"), "scale factor": ("scale", "scalar"),
    "alpha": ("alpha", "scalar"), "temperature": ("temperature", "scalar"),
    "logits": ("logits", "rows"), "targets": ("target", "target"), "target": ("target", "target"),
    "labels": ("target", "target"), "integer targets": ("target", "target"),
    "class targets": ("target", "target"), "probabilities": ("p", "rows"),
    "other tensor": ("y", "rows"), "another tensor": ("y", "rows"),
    "predictions": ("x", "rows"), "prediction": ("x", "rows"), "preds": ("x", "rows"),
}
SCALAR_VALUES = {"scale": 0.125, "alpha": 0.5, "temperature": 2.0}
LETTERS = set("abcdefghijklmnopqrstuvwxyz") - {"a"}  # "a" is an article unless it is clearly an operand

SEQ = ["then", "followed by", "->", "and then", "after that", "afterwards", "next", "finally", "and finally",
       ";", ", then", "=>", "before"]
JOIN = ["and", "+", "with", "&", ",", "together with"]
OF = ["of", "applied to", "on", "to", "over"]
# dim phrases -> the dim they select (None: every element; "last3" etc. say how many trailing dims)
DIMS: dict[str, Any] = {
    "over the last dim": -1, "over the last dimension": -1, "along the last dim": -1, "along the last axis": -1,
    "along the last dimension": -1, "over the last axis": -1, "on the last dim": -1, "of the last dim": -1,
    "last dim": -1, "last dimension": -1, "last axis": -1, "per row": -1, "row wise": -1, "rowwise": -1,
    "of each row": -1, "for each row": -1, "each row": -1, "over each row": -1, "across columns": -1,
    "along rows": -1, "along the rows": -1, "along each row": -1, "along the row": -1, "within each row": -1,
    "row": -1, "rows": -1, "per token": -1, "over the hidden dim": -1, "over features": -1,
    "per column": 0, "column wise": 0, "columnwise": 0, "of each column": 0, "each column": 0, "column": 0,
    "columns": 0, "across rows": 0, "per channel": 0,
    "over all elements": None, "of all elements": None, "all elements": None, "over everything": None,
    "whole tensor": None, "global": None, "per tensor": None, "of the whole tensor": None,
}
FILLER = [
    "the", "an", "fused", "fuse", "fusion", "kernel", "op", "operation", "compute", "computes", "computing",
    "apply", "applies", "applying", "please", "function", "activation", "elementwise", "element wise",
    "pointwise", "tensor", "tensors", "input", "inputs", "output", "result", "that", "which", "its", "it",
    "loss", "from", "integer", "class", "is", "do", "take", "takes",
    "layer", "connection", "calculate", "calculates", "get", "give", "me", "learned", "learnable",
    "elementwise op", "in place", "followed", "using", "op that", "result of", "range",
    "the range", "interval", "two tensors", "two inputs", "the two", "together", "taking", "applying",
    "performs", "perform", "performing", "applies", "returns", "return", "simple", "model", "simple model",
    "reduction", "computation", "to unit length", "to unit norm", "unit length", "one input", "single input",
]
# "without weight": an optional operand of the op next to it becomes None
DROPS: dict[str, tuple[str, ...]] = {
    "without weight": ("weight",), "no weight": ("weight",), "unweighted": ("weight",),
    "without bias": ("bias",), "no bias": ("bias",), "bias free": ("bias",),
    "without affine": ("weight", "bias"), "no affine": ("weight", "bias"),
    "without affine parameters": ("weight", "bias"), "without affine params": ("weight", "bias"),
    "no affine parameters": ("weight", "bias"), "without learnable parameters": ("weight", "bias"),
    "without parameters": ("weight", "bias"),
    "without weight and bias": ("weight", "bias"), "no weight or bias": ("weight", "bias"),
}
NUMBER_WORDS = {"zero": 0.0, "one": 1.0, "two": 2.0, "three": 3.0, "four": 4.0, "ten": 10.0}
SYMBOLS = {"+", "-", "*", "/", "@", "**", "(", ")", "[", "]", ",", ";", "->", "=", "=>"}

NUMBER_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?$")
TOKEN_RE = re.compile(r"(?P<num>(?<![\w.])-?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?(?![\w]))|(?P<word>[^\W\d_][^\W_]*)"
                      r"|(?P<sym>->|=>|\*\*|[-+*/@(),;\[\]=])|(?P<other>\S)")


@dataclass
class Item:
    kind: str  # op num noun letter article seq join of dim param mod dtype sym filler unknown
    text: str
    word: Word | None = None
    value: Any = None
    pos: int = 0


def _is_path(chunk: str) -> bool:
    """'models/llama.py', '/tmp/x', 'a/b/c', '~/op': a slash inside these is not a division."""
    if "/" not in chunk or chunk.strip("/") == "":
        return False
    return chunk.count("/") >= 2 or chunk.startswith(("/", "~", "./", "../")) or bool(re.search(r"[a-z]\.[a-z]",
                                                                                                    chunk))


def _table() -> dict[tuple[str, ...], tuple[str, Any]]:
    t: dict[tuple[str, ...], tuple[str, Any]] = {}

    def put(phrase: str, kind: str, value: Any) -> None:
        t.setdefault(tuple(phrase.split()), (kind, value))

    for w in WORDS:
        for p in w.phrases:
            put(p, "op", w)
    for p in SEQ:
        put(p, "seq", None)
    for p, v in DIMS.items():
        put(p, "dim", v)
    for p, v in MODIFIERS.items():
        put(p, "mod", v)
    for p, v in NOUNS.items():  # before parameter words: "alpha" is an input unless a number follows
        put(p, "noun", v)
    for p, v in PARAM_WORDS.items():
        put(p, "param", v)
    put("negative slope", "param", "negative_slope")
    put("to the power of", "param", "exponent")
    put("to the power", "param", "exponent")
    for p, v in DTYPE_WORDS.items():
        put(p, "dtype", v)
    for p in JOIN:
        put(p, "join", None)
    for p in OF:
        put(p, "of", None)
    for p in FILLER:
        put(p, "filler", None)
    for extra in ("over the last", "along the last"):  # "over the last 3 dims": a count of trailing dims
        put(extra, "lastn", None)
    for p in ("dims", "dimensions", "axes"):
        put(p, "dims_word", None)
    for p in ("dim", "axis", "dimension", "over dim", "along dim", "over axis", "along axis", "over dimension",
              "along dimension", "on dim", "on dimension", "on axis", "across dim", "across dimension"):
        put(p, "dim_index", None)
    put("between", "between", None)
    for p in ("after", "after applying", "applied after"):
        put(p, "after", None)  # "relu after adding bias": the part after it runs first
    put("by", "by", None)  # only a binary op or "scale" may take it: a stray "by" is refused, never skipped
    for p in ("split in halves", "split in half", "split into halves", "split into two halves", "halves",
              "split along the last dim", "chunked in two"):
        put(p, "split", None)  # a gated word on one input: its last dim split in halves
    put("per row scale", "scale_kind", "row")
    put("per column scale", "scale_kind", "col")
    put("per channel scale", "scale_kind", "col")
    put("per tensor scale", "scale_kind", "tensor")
    put("int8", "int8", None)
    for p in ("scale", "scaled", "scaling", "rescale", "rescaled", "scale by"):
        put(p, "scale", None)  # the verb "scale (by)": multiply; its default operand is a `scale` input
    for p, v in DROPS.items():
        put(p, "drop", v)
    put("dequantize", "dequantize", None)
    put("dequant", "dequantize", None)
    put("dequantise", "dequantize", None)
    return t


TABLE = _table()
LONGEST = max(len(k) for k in TABLE)


def tokenize(request: str) -> list[Item]:
    """Items in the order written; unknown words come back as items of kind 'unknown'."""
    text = request.lower()
    text = re.sub(r"(?<=[^\W\d_])[_-](?=[^\W\d_])", " ", text)  # rms_norm, leaky-relu, per-row
    raw: list[tuple[str, str]] = []
    for chunk in text.split():
        if _is_path(chunk):
            raw.append(("unknown", chunk))
            continue
        for m in TOKEN_RE.finditer(chunk):
            kind = m.lastgroup or "other"
            raw.append(("sym" if kind == "other" else kind, m.group()))
    items: list[Item] = []
    i = 0
    while i < len(raw):
        kind, tok = raw[i]
        if kind == "num":
            items.append(Item("num", tok, value=float(tok), pos=i))
            i += 1
            continue
        if kind == "unknown":
            items.append(Item("unknown", tok, pos=i))
            i += 1
            continue
        for n in range(min(LONGEST, len(raw) - i), 0, -1):
            key = tuple(t for _, t in raw[i:i + n])
            if key in TABLE and not any(k == "num" for k, _ in raw[i:i + n]):
                kind2, value = TABLE[key]
                items.append(Item(kind2, " ".join(key), word=value if kind2 == "op" else None,
                                  value=None if kind2 == "op" else value, pos=i))
                i += n
                break
        else:
            if tok in NUMBER_WORDS:
                items.append(Item("num", tok, value=NUMBER_WORDS[tok], pos=i))
            elif tok in SYMBOLS:
                items.append(Item("sym", tok, pos=i))
            elif tok == "a":
                items.append(Item("article", tok, pos=i))
            elif len(tok) <= 2 and tok[0] in LETTERS and (len(tok) == 1 or tok[1].isdigit()):
                items.append(Item("letter", tok, pos=i))
            else:
                items.append(Item("unknown", tok, pos=i))
            i += 1
    return items


def known_phrases() -> list[str]:
    """Every word and phrase the reader knows (for "did you mean ...")."""
    return sorted({" ".join(k) for k in TABLE} | {w.name for w in WORDS})
