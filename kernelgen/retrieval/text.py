"""Turning op documents and queries into the same canonical words before they are embedded.

People name ops in many ways ("SwiGLU", "gated silu", "silu and mul"; "RoPE", "rotary"; "pre-norm
residual", "fused add rms norm"). A hashing embedding only matches words it sees on both sides, so both
the library documents and the queries go through the same steps here:

1. lower-case, split on anything that is not a letter or digit (`rms_norm`, `aten::_softmax` and
   `x + residual` become words; `+` and `*` become `add` and `mul` first);
2. map each word to a canonical form (`normalization` -> `norm`, `multiply` -> `mul`, plurals dropped);
3. append the expansion of every phrase in `PHRASES` found in the text (`swiglu` adds `silu mul gate`);
4. drop stop words.
"""

from __future__ import annotations

import re

# Word -> canonical word. Only forms a light plural strip cannot reach.
WORDS: dict[str, str] = {
    **dict.fromkeys(
        ("normalize", "normalise", "normalization", "normalisation", "normalized", "normalised", "normalizing",
         "normalising", "normalizes", "normalizer"),
        "norm",
    ),
    **dict.fromkeys(("gated", "gating", "gates"), "gate"),
    **dict.fromkeys(("multiply", "multiplied", "multiplies", "multiplication", "times", "product", "prod"), "mul"),
    **dict.fromkeys(("plus", "added", "adding", "addition", "adds"), "add"),
    **dict.fromkeys(("rotate", "rotated", "rotating", "rotation", "rotational"), "rotary"),
    **dict.fromkeys(("embed", "embedding", "embeddings", "emb"), "embedding"),
    **dict.fromkeys(("positional", "positions", "pos"), "position"),
    **dict.fromkeys(("exponent", "exponential", "exponentiate", "exponentials"), "exp"),
    **dict.fromkeys(("logarithm", "logarithmic"), "log"),
    **dict.fromkeys(("elementwise", "pointwise", "element"), "pointwise"),
    **dict.fromkeys(("activations", "activate", "nonlinearity", "nonlinear"), "activation"),
    **dict.fromkeys(("squares", "squared"), "square"),
    **dict.fromkeys(("variances",), "variance"),
    **dict.fromkeys(("swish",), "silu"),
}

# Phrase (regex over the canonical text) -> words appended when it occurs. Covers the names the field
# uses for the same op; `\b` keeps `glu` from firing inside `swiglu`.
PHRASES: list[tuple[str, str]] = [
    (r"\bswi ?glu\b|\bsilu ?glu\b|\bsilu gate\b|\bgate silu\b", "silu mul gate glu"),
    (r"\bge ?glu\b|\bgelu ?glu\b|\bgelu gate\b|\bgate gelu\b", "gelu mul gate glu"),
    (r"\bglu\b", "gate mul"),
    (r"\bsigmoid linear\b|\bsigmoid weighted\b|\bx sigmoid x\b", "silu"),
    (r"\bgaussian error\b|\berf\b", "gelu"),
    (r"\bgelu tanh\b|\btanh approx", "gelu"),
    (r"\bmlp\b|\bffn\b|\bfeed ?forward\b", "gate mul activation"),
    (r"\bro ?pe\b|\brotary\b", "rotary position embedding rope"),
    (r"\bposition\b|\bsinusoid|\bcos sin\b|\bsin cos\b|\bcosine sine\b|\bsine cosine\b", "rotary position"),
    (r"\brms ?norm\b|\broot mean square\b|\brms\b|\bt5 ?norm\b|\bllama ?norm\b", "rms norm root mean square"),
    (r"\blayer ?norm\b|\bln\b|\bstandardi[sz]", "layer norm mean variance"),
    (r"\bmean variance\b|\bmean and variance\b|\bmean var\b", "layer norm"),
    (r"\bpre ?norm\b|\bprenorm\b", "rms norm"),
    (r"\badd ?norm\b|\badd and norm\b|\badd then norm\b", "residual add norm"),
    (r"\bskip\b|\bshortcut\b|\bresidual\b|\bfused add\b|\bresid\b", "residual add"),
    (r"\bsoft ?max\b|\bnormalized exp\b|\bnorm exp\b", "softmax"),
    (r"\blog ?softmax\b|\blog ?prob|\blog likelihood\b|\bcross entropy\b|\bnll\b|\blog ?sum ?exp\b|\blse\b",
     "log softmax"),
    (r"\bprobabilit|\battention (score|weight|prob)|\btemperature\b|\bsum to one\b", "softmax"),
]
_PHRASES = [(re.compile(p), e) for p, e in PHRASES]

STOP_WORDS = frozenset(
    "a an the of by and or with then followed to in on for over along across into from that which this these is "
    "are be as it its using use do does i we want need please me my our some any each all per fast faster gpu "
    "kernel kernels op ops operator operation function implement implementation compute computes computing "
    "apply applies applied triton fuse version give get make".split()
)

_SYMBOLS = re.compile(r"[+*]")
_WORD = re.compile(r"[a-z0-9]+")


def canonical_word(word: str) -> str:
    if word in WORDS:
        return WORDS[word]
    if len(word) > 4 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        stem = word[:-1]
        return WORDS.get(stem, stem)
    return word


def canonical_words(text: str) -> list[str]:
    """The words of `text` after mapping, phrase expansion and stop-word removal (see the module doc)."""
    text = _SYMBOLS.sub(lambda m: " add " if m.group() == "+" else " mul ", text.lower())
    words = [canonical_word(w) for w in _WORD.findall(text)]
    joined = " ".join(words)
    for pattern, expansion in _PHRASES:
        if pattern.search(joined):
            words.extend(expansion.split())
    return [w for w in words if w not in STOP_WORDS]
