"""The composer's words: ops, connectors, modifiers and filler, and the tokenizer that finds them.

A request is read as a sequence of *items*: ops (with the numbers written next to them), connectors that
order them ("then", "followed by", "->") or merely join them ("and", "+", "with"), modifiers ("causal",
"tanh approximation", "per-row") and filler words that carry no meaning here ("fused", "over the last dim").
Every word must be one of these; anything else is reported as not understood.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# canonical op -> phrases (space separated words) that name it
REDUCTION_WORDS: dict[str, list[str]] = {
    "rms_norm": ["rms norm", "rmsnorm", "rms normalization", "root mean square norm", "root mean square"],
    "layer_norm": ["layer norm", "layernorm", "layer normalization", "ln"],
    "softmax": ["softmax"],
    "log_softmax": ["log softmax", "logsoftmax"],
    "logsumexp": ["logsumexp", "log sum exp"],
    "sum": ["sum", "reduce sum"],
    "mean": ["mean", "average", "avg"],
    "var": ["var", "variance"],
    "max": ["max", "amax"],
    "l2_normalize": ["l2 normalize", "l2 normalization", "l2 norm", "normalize"],
}
POINTWISE_WORDS: dict[str, list[str]] = {
    "add": ["add", "plus", "addition"],
    "sub": ["sub", "subtract", "minus"],
    "mul": ["mul", "multiply", "times", "product", "*"],
    "div": ["div", "divide", "divided", "/"],
    "residual": ["residual", "skip", "skip connection", "shortcut"],
    "bias": ["bias"],
    "scale": ["scale", "scaled", "scaling"],
    "clamp": ["clamp", "clip", "clamped"],
    "abs": ["abs", "absolute"],
    "neg": ["neg", "negate", "negative"],
    "square": ["square", "squared", "pow2"],
    "sqrt": ["sqrt", "square root"],
    "rsqrt": ["rsqrt", "reciprocal square root", "inverse square root"],
    "exp": ["exp", "exponential"],
    "log": ["log", "logarithm"],
    "relu": ["relu"],
    "leaky_relu": ["leaky relu", "leakyrelu", "lrelu"],
    "gelu": ["gelu"],
    "silu": ["silu", "swish"],
    "sigmoid": ["sigmoid"],
    "tanh": ["tanh"],
    "softplus": ["softplus"],
    "hardswish": ["hardswish", "hard swish"],
    "mish": ["mish"],
    "maximum": ["maximum", "elementwise max"],
    "minimum": ["minimum", "min", "elementwise min"],
    "where": ["where", "mask", "masked", "masked fill"],
    "cast": ["cast", "convert"],
    "dequantize": ["dequantize", "dequant", "dequantise", "dequantization"],
}
GATED_WORDS: dict[str, list[str]] = {  # gated activations: act(a) * b
    "silu": ["swiglu", "silu mul", "silu and mul"],
    "gelu": ["geglu"],
    "relu": ["reglu"],
}
MATMUL_WORDS = ["matmul", "gemm", "mm", "linear", "@", "matrix multiply", "matrix multiplication", "dense"]
SEQUENCE_WORDS = ["then", "followed by", "->", "after that", "and then", "before"]
JOIN_WORDS = ["and", "+", "with", ",", "&"]
MODIFIER_WORDS: dict[str, list[str]] = {
    "causal": ["causal", "causally", "lower triangular"],
    "tanh_approx": ["tanh approximation", "tanh approx", "approximate", "approximation", "approx", "fast"],
    "per_row": ["per row", "row wise", "rowwise", "per token"],
    "per_col": ["per column", "per channel", "column wise", "channelwise"],
    "per_tensor": ["per tensor", "tensor wise"],
    "int8": ["int8", "i8"],
    "eps": ["eps", "epsilon"],
    "slope": ["slope", "negative slope", "alpha"],
    "bfloat16": ["bf16", "bfloat16"],
    "float16": ["fp16", "float16", "half"],
    "float32": ["fp32", "float32", "float"],
    "no_weight": ["no weight", "without weight", "unweighted"],
}
FILLER_WORDS = [
    "fused", "fuse", "fusion", "kernel", "op", "operator", "the", "a", "an", "of", "over", "along", "across",
    "last", "final", "dim", "dimension", "axis", "row", "rows", "wise", "input", "inputs", "output", "tensor",
    "tensors", "to", "in", "on", "for", "by", "x", "y", "b", "c", "h", "r", "w", "connection", "its", "all",
    "elementwise", "element", "pointwise", "activation", "function", "compute", "computes", "apply", "applied",
    "please", "result", "is", "it", "up", "value", "values", "into", "from", "as", "using", "each", "per",
    "between", "[", "]", "one", "layer", "that", "weight", "weighted", "learned", "j", "i", "positions",
    "set", "inf", "dims", "last-dim", "out", "gate", "gated", "gating",
]

TOKEN_RE = re.compile(r"->|-?\d*\.?\d+(?:e[-+]?\d+)?|[a-z][a-z0-9]*|[+*/@,()\[\]&]")
NUMBER_RE = re.compile(r"^-?\d*\.?\d+(?:e[-+]?\d+)?$")


@dataclass
class Item:
    kind: str  # reduction | pointwise | gated | matmul | seq | join | mod | number | open | close
    value: str  # canonical name (or the number's text)
    text: str  # the words as written
    numbers: list[float] = field(default_factory=list)


def _phrase_table() -> dict[tuple[str, ...], tuple[str, str]]:
    table: dict[tuple[str, ...], tuple[str, str]] = {}
    groups = [("reduction", REDUCTION_WORDS), ("pointwise", POINTWISE_WORDS), ("gated", GATED_WORDS),
              ("mod", MODIFIER_WORDS)]
    for kind, words in groups:
        for canon, phrases in words.items():
            for p in phrases:
                table[tuple(p.split())] = (kind, canon)
    for p in MATMUL_WORDS:
        table[tuple(p.split())] = ("matmul", "matmul")
    for p in SEQUENCE_WORDS:
        table[tuple(p.split())] = ("seq", "then")
    for p in JOIN_WORDS:
        table[tuple(p.split())] = ("join", "and")
    for p in FILLER_WORDS:
        table.setdefault(tuple(p.split()), ("filler", p))
    table[("(",)] = ("open", "(")
    table[(")",)] = ("close", ")")
    return table


PHRASES = _phrase_table()
LONGEST = max(len(k) for k in PHRASES)


def tokenize(request: str) -> tuple[list[Item], list[str]]:
    """Items in the order written, and the words that are in no table (not understood)."""
    text = request.lower()
    text = re.sub(r"(?<=[a-z0-9])[_-](?=[a-z])", " ", text)  # rms_norm, gelu-tanh, per-row
    tokens = TOKEN_RE.findall(text)
    # "a + b" between two operands is an add; elsewhere "+" only joins ("rmsnorm + residual")
    tokens = ["add" if t == "+" and 0 < k < len(tokens) - 1 and _operand(tokens[k - 1]) and _operand(tokens[k + 1])
              else t for k, t in enumerate(tokens)]
    items: list[Item] = []
    unknown: list[str] = []
    i = 0
    while i < len(tokens):
        if NUMBER_RE.match(tokens[i]):
            items.append(Item("number", tokens[i], tokens[i]))
            i += 1
            continue
        for n in range(min(LONGEST, len(tokens) - i), 0, -1):
            key = tuple(tokens[i:i + n])
            if key in PHRASES:
                kind, canon = PHRASES[key]
                if kind != "filler":
                    items.append(Item(kind, canon, " ".join(key)))
                i += n
                break
        else:
            unknown.append(tokens[i])
            i += 1
    return items, unknown


def _operand(token: str) -> bool:
    return (len(token) == 1 and token.isalpha()) or token == ")"


def vocabulary() -> dict[str, list[str]]:
    """Category -> words the composer understands (canonical names first, synonyms after)."""
    def flat(d: dict[str, list[str]]) -> list[str]:
        out: list[str] = []
        for canon, phrases in d.items():
            out += [canon] + [p for p in phrases if p != canon and p.replace(" ", "_") != canon]
        return out

    return {
        "reductions": flat(REDUCTION_WORDS),
        "pointwise": flat(POINTWISE_WORDS),
        "gated": [p for ps in GATED_WORDS.values() for p in ps],
        "matmul": list(MATMUL_WORDS),
        "ordering connectors": list(SEQUENCE_WORDS),
        "joining connectors": list(JOIN_WORDS),
        "modifiers": flat(MODIFIER_WORDS),
    }
