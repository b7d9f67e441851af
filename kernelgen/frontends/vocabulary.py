"""The words a request may use, as a table of named PyTorch snippets.

Each `Word` says how one op is written in PyTorch (`template`), which operands it takes (the first is the
value it applies to; the others become new inputs of the op unless the text names them), which parameters
it has with PyTorch's defaults (dict order = PyTorch's positional order, used by call syntax `gelu(x,
"tanh")`), which of them a number written next to the word binds to, and a note printed when it applies a
convention the text did not state. Adding a word is one entry here: the code generator never sees words,
only the traced PyTorch reference built from these snippets.

Template placeholders: `{x}`, `{y}`, ... the operands; `{name}` a parameter written in place; `{kw}` the
remaining parameters as `, name=value`, only those the text set (or listed in `explicit`), so a default
stays PyTorch's own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Word:
    name: str  # canonical name, also callable in formulas: silu(x + bias)
    kind: str  # activation | math | binary | reduction | norm | softmax | loss | gated | matmul | other
    phrases: tuple[str, ...]  # how the text may say it (space-separated words)
    template: str
    operands: tuple[str, ...] = ("x",)
    params: dict[str, Any] = field(default_factory=dict)  # PyTorch's defaults, in PyTorch's order
    numbers: tuple[str, ...] = ()  # parameters a number next to the word binds to, in order
    explicit: tuple[str, ...] = ()  # parameters always written, even at their default
    optional: tuple[str, ...] = ()  # operands the text may drop ("without weight") -> None
    positive: bool = False  # the first operand must be positive (log, sqrt, ...): filled with positive values
    note: str = ""  # the convention this word applies when the text does not say otherwise
    note_param: str = ""  # the parameter the note is about: no note when the text sets it


def _act(name: str, phrases: str, template: str, **kw: Any) -> Word:
    return Word(name, "activation", tuple(p.strip() for p in phrases.split(",")), template, **kw)


def _math(name: str, phrases: str, template: str, **kw: Any) -> Word:
    return Word(name, "math", tuple(p.strip() for p in phrases.split(",")), template, **kw)


def _red(name: str, phrases: str, template: str, **kw: Any) -> Word:
    kw.setdefault("params", {"dim": None, "keepdim": False})
    return Word(name, "reduction", tuple(p.strip() for p in phrases.split(",")), template, **kw)


def _loss(name: str, phrases: str, template: str, operands: tuple[str, ...], **kw: Any) -> Word:
    params = {**kw.pop("params", {}), "reduction": "mean"}
    return Word(name, "loss", tuple(p.strip() for p in phrases.split(",")), template, operands=operands,
                params=params, note_param="reduction",
                note=kw.pop("note", "") or "reduction='mean' (PyTorch's default); say 'sum' or 'no reduction' for "
                                           "another", **kw)


ACTIVATIONS = [
    _act("relu", "relu, rectified linear unit, rectified linear, rectifier", "F.relu({x})"),
    _act("relu6", "relu6, relu 6", "F.relu6({x})"),
    _act("leaky_relu", "leaky relu, leakyrelu, lrelu", "F.leaky_relu({x}{kw})", params={"negative_slope": 0.01},
         numbers=("negative_slope",)),
    _act("elu", "elu, exponential linear unit", "F.elu({x}{kw})", params={"alpha": 1.0}, numbers=("alpha",)),
    _act("selu", "selu, scaled exponential linear unit", "F.selu({x})"),
    _act("celu", "celu, continuously differentiable elu", "F.celu({x}{kw})", params={"alpha": 1.0}, numbers=("alpha",)),
    _act("gelu", "gelu, gaussian error linear unit", "F.gelu({x}{kw})", params={"approximate": "none"},
         note_param="approximate",
         note="gelu: exact (erf) form, PyTorch's default; say 'tanh approximation' for approximate='tanh'"),
    _act("quick_gelu", "quick gelu, quickgelu, sigmoid gelu", "{x} * torch.sigmoid(1.702 * {x})"),
    _act("silu", "silu, swish, sigmoid linear unit", "F.silu({x})"),
    _act("mish", "mish", "F.mish({x})"),
    _act("softplus", "softplus, soft plus", "F.softplus({x}{kw})", params={"beta": 1.0, "threshold": 20.0},
         numbers=("beta",)),
    _act("softsign", "softsign, soft sign", "F.softsign({x})"),
    _act("hardtanh", "hardtanh, hard tanh", "F.hardtanh({x}{kw})", params={"min_val": -1.0, "max_val": 1.0},
         numbers=("min_val", "max_val")),
    _act("hardsigmoid", "hardsigmoid, hard sigmoid", "F.hardsigmoid({x})"),
    _act("hardswish", "hardswish, hard swish", "F.hardswish({x})"),
    _act("sigmoid", "sigmoid, logistic", "torch.sigmoid({x})"),
    _act("tanh", "tanh, hyperbolic tangent", "torch.tanh({x})"),
    _act("logsigmoid", "logsigmoid, log sigmoid", "F.logsigmoid({x})"),
    _act("tanhshrink", "tanhshrink, tanh shrink", "F.tanhshrink({x})"),
    _act("softshrink", "softshrink, soft shrink", "F.softshrink({x}{kw})", params={"lambd": 0.5},
         numbers=("lambd",)),
    _act("hardshrink", "hardshrink, hard shrink", "F.hardshrink({x}{kw})", params={"lambd": 0.5},
         numbers=("lambd",)),
    _act("threshold", "threshold", "F.threshold({x}, {threshold}, {value})",
         params={"threshold": None, "value": None}, numbers=("threshold", "value")),
    _act("glu", "glu, gated linear unit", "F.glu({x}{kw})", params={"dim": -1}),
    _act("prelu", "prelu, parametric relu", "F.prelu({x}, {weight})", operands=("x", "weight")),
]

MATH = [
    _math("exp", "exp, exponential, exponentiate", "torch.exp({x})"),
    _math("exp2", "exp2", "torch.exp2({x})"),
    _math("expm1", "expm1", "torch.expm1({x})"),
    _math("log", "log, logarithm, natural log, ln", "torch.log({x})", positive=True),
    _math("log2", "log2", "torch.log2({x})", positive=True),
    _math("log1p", "log1p", "torch.log1p({x})", positive=True),
    _math("sqrt", "sqrt, square root", "torch.sqrt({x})", positive=True),
    _math("rsqrt", "rsqrt, reciprocal square root, inverse square root", "torch.rsqrt({x})", positive=True),
    _math("square", "square, squared, squares", "torch.square({x})"),
    _math("cube", "cube, cubed", "torch.pow({x}, 3)"),
    _math("abs", "abs, absolute value, absolute, magnitude", "torch.abs({x})"),
    _math("neg", "neg, negate, negation, negative", "torch.neg({x})"),
    _math("reciprocal", "reciprocal, inverse, one over", "torch.reciprocal({x})", positive=True),
    _math("sin", "sin, sine", "torch.sin({x})"),
    _math("cos", "cos, cosine", "torch.cos({x})"),
    _math("erf", "erf", "torch.erf({x})"),
    _math("sign", "sign, signum", "torch.sign({x})"),
    _math("floor", "floor", "torch.floor({x})"),
    _math("ceil", "ceil, ceiling", "torch.ceil({x})"),
    _math("round", "round", "torch.round({x})"),
    _math("clamp", "clamp, clip, clamped, clipped", "torch.clamp({x}, {min}, {max})",
          params={"min": None, "max": None}, numbers=("min", "max")),
    _math("pow", "pow, power, raise, raised", "torch.pow({x}, {exponent})", params={"exponent": None},
          numbers=("exponent",)),
    _math("cast", "cast, convert", "{x}.to({dtype})", params={"dtype": None}),
    _math("causal_mask", "causal mask, causal masked, causal masking, causally masked, causal",
          "{x}.masked_fill(torch.arange({x}.shape[-1], device={x}.device) > "
          "torch.arange({x}.shape[-2], device={x}.device)[:, None] + ({x}.shape[-1] - {x}.shape[-2]), "
          "-math.inf)",
          note="causal mask: x [B, H, M, N], key j masked for query i when j > i + N - M (bottom-right "
               "aligned: M = N is the square mask)"),
]

# binary ops: the operand is a tensor the text names, a new input, or a constant ("subtract 2.0")
BINARY = [
    Word("add", "binary", ("add", "plus", "added", "adding", "adds", "addition", "sum with"), "{x} + {y}",
         ("x", "y")),
    Word("sub", "binary", ("sub", "subtract", "minus", "subtraction", "subtracted", "subtracting", "subtracts"),
         "{x} - {y}", ("x", "y")),
    Word("mul", "binary", ("mul", "multiply", "multiplied", "multiplying", "multiplies", "times", "multiplication",
                           "product with"), "{x} * {y}", ("x", "y")),
    Word("div", "binary", ("div", "divide", "divided", "dividing", "divides", "division"), "{x} / {y}", ("x", "y")),
    Word("maximum", "binary", ("maximum with", "max with", "elementwise max", "elementwise maximum", "maximum"),
         "torch.maximum({x}, {y})", ("x", "y")),
    Word("minimum", "binary", ("minimum with", "min with", "elementwise min", "elementwise minimum", "minimum"),
         "torch.minimum({x}, {y})", ("x", "y")),
]

REDUCTIONS = [
    _red("sum", "sum, reduce sum, total", "torch.sum({x}{kw})"),
    _red("mean", "mean, average, avg", "torch.mean({x}{kw})"),
    _red("amax", "max, amax, maximum value, largest", "torch.amax({x}{kw})"),
    _red("amin", "min, amin, minimum value, smallest", "torch.amin({x}{kw})"),
    _red("prod", "prod, product", "torch.prod({x}{kw})"),
    _red("argmax", "argmax, index of the max, index of the maximum", "torch.argmax({x}{kw})"),
    _red("argmin", "argmin, index of the min, index of the minimum", "torch.argmin({x}{kw})"),
    _red("var", "var, variance", "torch.var({x}{kw})", params={"dim": None, "correction": 1, "keepdim": False},
         note_param="correction",
         note="variance: unbiased (correction=1), PyTorch's default; say 'population' or 'biased' for correction=0"),
    _red("std", "std, standard deviation, stdev", "torch.std({x}{kw})",
         params={"dim": None, "correction": 1, "keepdim": False},
         note_param="correction", note="standard deviation: unbiased (correction=1), PyTorch's default; say "
                                       "'population' or 'biased' for correction=0"),
    _red("vector_norm", "l2 norm, euclidean norm, vector norm, norm", "torch.linalg.vector_norm({x}{kw})"),
    _red("cumsum", "cumsum, cumulative sum, prefix sum, running sum", "torch.cumsum({x}{kw})",
         params={"dim": -1}, explicit=("dim",),
         note="cumulative sum over the last dim (torch.cumsum needs a dim; the last is chosen)"),
]

NORMS = [
    Word("rms_norm", "norm", ("rms norm", "rmsnorm", "rms normalization", "root mean square norm",
                              "root mean square normalization"),
         "F.rms_norm({x}, ({x}.shape[-1],), {weight}{kw})", ("x", "weight"), {"eps": None}, ("eps",),
         optional=("weight",), note_param="eps",
         note="rms_norm over the last dim with a weight [N]; eps: PyTorch's default (torch.finfo(dtype).eps) unless "
              "the text gives eps"),
    Word("layer_norm", "norm", ("layer norm", "layernorm", "layer normalization"),
         "F.layer_norm({x}, ({x}.shape[-1],), {weight}, {bias}{kw})", ("x", "weight", "bias"), {"eps": 1e-5},
         ("eps",), optional=("weight", "bias"), note_param="eps",
         note="layer_norm over the last dim with weight and bias [N]; eps=1e-5 (PyTorch's default) unless "
              "the text gives eps"),
    Word("l2_normalize", "norm", ("l2 normalize", "l2 normalization", "l2 normalise", "normalize",
                                  "normalise", "unit normalize"),
         "F.normalize({x}{kw})", params={"p": 2.0, "dim": -1, "eps": 1e-12}, numbers=("eps",), explicit=("dim",),
         note="l2 normalize over the last dim (F.normalize's default dim=1 is the last of a 2D input)"),
]

SOFTMAX = [
    Word("softmax", "softmax", ("softmax", "soft max"), "torch.softmax({x}{kw})", params={"dim": -1},
         explicit=("dim",), note="softmax over the last dim"),
    Word("log_softmax", "softmax", ("log softmax", "logsoftmax"), "torch.log_softmax({x}{kw})",
         params={"dim": -1}, explicit=("dim",), note="log_softmax over the last dim"),
    Word("softmin", "softmax", ("softmin",), "F.softmin({x}{kw})", params={"dim": -1}, explicit=("dim",),
         note="softmin over the last dim"),
    Word("logsumexp", "softmax", ("logsumexp", "log sum exp"), "torch.logsumexp({x}{kw})",
         params={"dim": -1, "keepdim": False}, explicit=("dim",),
         note="logsumexp over the last dim (torch.logsumexp needs a dim; the last is chosen)"),
]

LOSSES = [
    _loss("mse_loss", "mse loss, mse, mean squared error, l2 loss, squared error loss", "F.mse_loss({x}, {target}{kw})",
          ("x", "target")),
    _loss("l1_loss", "l1 loss, mean absolute error, mae, absolute error loss", "F.l1_loss({x}, {target}{kw})",
          ("x", "target")),
    _loss("smooth_l1_loss", "smooth l1 loss, smooth l1", "F.smooth_l1_loss({x}, {target}{kw})", ("x", "target"),
          params={"beta": 1.0}, numbers=("beta",)),
    _loss("huber_loss", "huber loss, huber", "F.huber_loss({x}, {target}{kw})", ("x", "target"),
          params={"delta": 1.0}, numbers=("delta",)),
    _loss("cross_entropy", "cross entropy, cross entropy loss, crossentropy, ce loss",
          "F.cross_entropy({logits}, {target}{kw})", ("logits", "target"),
          note="cross_entropy: logits [M, N], integer class targets [M], reduction='mean' (PyTorch's default)"),
    _loss("nll_loss", "nll loss, negative log likelihood", "F.nll_loss({logp}, {target}{kw})", ("logp", "target"),
          note="nll_loss: log-probabilities [M, N], integer class targets [M], reduction='mean'"),
    _loss("kl_div", "kl div, kl divergence, kullback leibler", "F.kl_div({logp}, {target}{kw})", ("logp", "target"),
          note="kl_div: input is log-probabilities, target probabilities; reduction='mean' (PyTorch's "
               "default, which averages over every element; say 'batchmean' for the per-row mean)"),
    _loss("binary_cross_entropy", "binary cross entropy, bce, bce loss", "F.binary_cross_entropy({p}, {target}{kw})",
          ("p", "target")),
    _loss("bce_with_logits", "bce with logits, binary cross entropy with logits, bce loss with logits",
          "F.binary_cross_entropy_with_logits({logits}, {target}{kw})", ("logits", "target")),
]

GATED = [
    Word("swiglu", "gated", ("swiglu", "silu and mul", "silu mul", "silu and multiply", "swish and mul", "gated silu",
                             "gated swish"),
         "F.silu({a}) * {b}", ("a", "b")),
    Word("geglu", "gated", ("geglu", "gelu and mul", "gelu mul", "gelu and multiply", "gated gelu"),
         "F.gelu({a}{kw}) * {b}",
         ("a", "b"), {"approximate": "none"}, note_param="approximate",
         note="geglu: exact gelu, PyTorch's default; say 'tanh approximation' for approximate='tanh'"),
    Word("reglu", "gated", ("reglu", "relu and mul", "relu mul", "relu and multiply", "gated relu"),
         "F.relu({a}) * {b}", ("a", "b")),
]

PAIRS = [
    Word("cosine_similarity", "pair", ("cosine similarity", "cos similarity"), "F.cosine_similarity({a}, {b}{kw})",
         ("a", "b"), {"dim": -1, "eps": 1e-8}, explicit=("dim",), note="cosine similarity over the last dim"),
    Word("pairwise_distance", "pair", ("pairwise distance", "euclidean distance"), "F.pairwise_distance({a}, {b})",
         ("a", "b"), note="pairwise distance: the p=2 norm of a - b + 1e-6 per row (PyTorch's default)"),
]

MATMULS = [
    Word("matmul", "matmul", ("matmul", "gemm", "mm", "matrix multiply", "matrix multiplication",
                              "matrix product"), "{a} @ {b}", ("a", "b"),
         note="matmul: a [M, K] @ b [K, N]"),
    Word("bmm", "matmul", ("bmm", "batched matmul", "batched matrix multiply", "batch matmul",
                            "batched matrix multiplication", "batch matrix multiplication", "batched gemm"),
         "torch.bmm({a}, {b})", ("a", "b"), note="bmm: a [B, M, K] @ b [B, K, N]"),
    Word("linear", "matmul", ("linear", "linear layer", "dense", "fully connected", "fc"),
         "F.linear({x}, {weight}, {bias})", ("x", "weight", "bias"), optional=("bias",),
         note="linear: x [M, K], weight [N, K], bias [N] (y = x @ weight.T + bias)"),
]

WORDS: list[Word] = ACTIVATIONS + MATH + BINARY + REDUCTIONS + NORMS + SOFTMAX + LOSSES + GATED + PAIRS + MATMULS
BY_NAME: dict[str, Word] = {w.name: w for w in WORDS}

# Words that name a parameter ("leaky relu with slope 0.2", "eps 1e-6"); the op must have it.
PARAM_WORDS: dict[str, str] = {
    "eps": "eps", "epsilon": "eps", "slope": "negative_slope", "negative slope": "negative_slope",
    "alpha": "alpha", "beta": "beta", "threshold": "threshold", "delta": "delta", "lambda": "lambd",
    "lambd": "lambd", "min": "min", "max": "max", "minimum": "min", "maximum": "max", "lower": "min",
    "upper": "max", "exponent": "exponent", "value": "value", "p": "p",
}
# Modifiers that set a parameter of the op next to them.
MODIFIERS: dict[str, tuple[str, Any]] = {
    "tanh approximation": ("approximate", "tanh"), "tanh approximate": ("approximate", "tanh"),
    "approximated with tanh": ("approximate", "tanh"), "tanh approximated": ("approximate", "tanh"),
    "tanh approx": ("approximate", "tanh"), "approximate": ("approximate", "tanh"),
    "exact": ("approximate", "none"), "erf": ("approximate", "none"),
    "population": ("correction", 0), "biased": ("correction", 0), "uncorrected": ("correction", 0),
    "unbiased": ("correction", 1), "sample": ("correction", 1), "bessel corrected": ("correction", 1),
    "summed": ("reduction", "sum"), "sum reduction": ("reduction", "sum"), "no reduction": ("reduction", "none"),
    "mean reduction": ("reduction", "mean"), "unreduced": ("reduction", "none"),
    "batchmean": ("reduction", "batchmean"), "batchmean reduction": ("reduction", "batchmean"),
    "keepdim": ("keepdim", True), "keep dim": ("keepdim", True),
}
# dtype words for casts
DTYPE_WORDS: dict[str, str] = {
    "fp16": "torch.float16", "float16": "torch.float16", "half": "torch.float16", "bf16": "torch.bfloat16",
    "bfloat16": "torch.bfloat16", "fp32": "torch.float32", "float32": "torch.float32", "float": "torch.float32",
    "fp64": "torch.float64", "float64": "torch.float64", "double": "torch.float64",
}


# Python's min(a, b) / max(a, b) are elementwise on two values, our words are reductions: a formula must say
# torch.amax / torch.maximum instead of guessing which one was meant.
NOT_CALLABLE = {"min", "max"}


def callable_names() -> dict[str, Word]:
    """Names usable as functions in a formula: `silu(x + bias)`, `rms_norm(h, w)`, `swiglu(a, b)`."""
    out: dict[str, Word] = {}
    for w in WORDS:
        if w.kind == "binary":
            continue
        out[w.name] = w
        for p in w.phrases:
            if p in NOT_CALLABLE:
                continue
            if " " not in p and p.isidentifier():
                out.setdefault(p, w)
            elif " " in p and len(p.split()) == 2 and w.kind != "loss":
                out.setdefault(p.replace(" ", "_"), w)
    return out


def table() -> list[dict[str, Any]]:
    """The vocabulary as rows (README table, `kernelgen compose --vocabulary`): kind, name, words, snippet."""
    return [{"kind": w.kind, "name": w.name, "words": list(w.phrases), "snippet": w.template,
             "params": dict(w.params), "numbers": list(w.numbers)} for w in WORDS]


# Functions that, given a plain number ("sqrt(2)", "the square root of 64"), are Python's math functions:
# torch.sqrt takes tensors only.
MATH_OF_NUMBER = {"sqrt", "exp", "log", "log2", "tanh", "erf", "sin", "cos"}


def number_call(word: Word, args: list[str]) -> str | None:
    """`math.sqrt(2.0)` when the word is a math function applied to one number, else None."""
    if word.name not in MATH_OF_NUMBER or len(args) != 1:
        return None
    try:
        float(args[0])
    except ValueError:
        return None
    return f"math.{word.name}({args[0]})"


class Src(str):
    """A parameter value that is already source (a dtype, an input's name), written as is, not repr'd."""


def _value_source(value: Any) -> str:
    if isinstance(value, Src):
        return str(value)
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return repr(value)  # 2.0 stays a float: `torch.clamp(x, 2.0)` keeps x's dtype
    return repr(value)


def _operand_source(src: str) -> str:
    """Parenthesized unless it is a name, a number, a call or an attribute chain (a template may put it
    next to an operator: `{x} * torch.sigmoid(1.702 * {x})` with x = `a + b`)."""
    import ast

    try:
        node = ast.parse(src, mode="eval").body
    except SyntaxError:
        return f"({src})"
    simple = (ast.Name, ast.Constant, ast.Call, ast.Attribute, ast.Subscript)
    return src if isinstance(node, simple) else f"({src})"


def render(word: Word, operands: dict[str, str | None], params: dict[str, Any]) -> str:
    """The snippet with operands and parameters filled in. `params` holds only what the text set;
    every other parameter stays PyTorch's default (not written, unless the word lists it in `explicit`)."""
    values = {**word.params, **params}
    fill: dict[str, str] = {}
    for name in word.operands:
        src = operands.get(name)
        fill[name] = "None" if src is None else _operand_source(src)
    placed = {p for p in word.params if "{" + p + "}" in word.template}
    for p in placed:
        fill[p] = _value_source(values[p])
    kw = [f", {p}={_value_source(values[p])}" for p in word.params
          if p not in placed and (p in params or p in word.explicit)]
    fill["kw"] = "".join(kw)
    return word.template.format(**fill)


KIND_TITLES = {
    "activation": "activations", "math": "pointwise math",
    "binary": "binary (operand: a tensor, a new input or a constant)",
    "reduction": "reductions (keepdim when an operand: \"subtract the row max\")", "norm": "norms",
    "softmax": "softmax family", "loss": "losses", "gated": "gated (act(a) * b)", "pair": "two-tensor",
    "matmul": "matmul family",
}


def markdown_table() -> str:
    """The README's table of words (kept equal to this by a test)."""
    rows = ["| kind | words (a few synonyms) |", "|---|---|"]
    for kind, title in KIND_TITLES.items():
        cells = []
        for w in (w for w in WORDS if w.kind == kind):
            syn = [p for p in w.phrases if p.replace(" ", "_") != w.name and p != w.name][:2]
            cells.append(f"`{w.name}`" + (f" ({', '.join(syn)})" if syn else ""))
        rows.append(f"| {title} | {'; '.join(cells)} |")
    return "\n".join(rows)
