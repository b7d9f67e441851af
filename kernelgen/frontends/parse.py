"""Request text -> `FusionGraph`.

Reading rules (they make the word-order variations of one request land on the same graph):
- ops apply in the order written; `f(g(x))`-style parentheses apply the inside first;
- "then" / "followed by" / "->" fix the order; "and" / "+" / "with" only join;
- within one joined group, an add of a residual, bias or tensor and a scale written after a reduction still
  feed it ("fused rmsnorm + residual" is the residual add then the norm, "softmax with scale" scales first);
- a residual add that feeds rms_norm or layer_norm is returned as well (the updated residual stream);
- numbers belong to the op (or the eps/slope word) just before them: "clamp to [-1, 1]", "scale 0.125".
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kernelgen.codegen.graph import (
    BINARY,
    MASK_FILL_NEG_INF,
    REDUCTIONS,
    FusionGraph,
    Input,
    Matmul,
    Node,
    Reduction,
)
from kernelgen.frontends.lexicon import Item, tokenize

PRE_REDUCTION = ("residual", "bias", "add", "sub", "scale", "where", "causal")
NEEDS_POSITIVE = ("log", "sqrt", "rsqrt")
DEFAULT_EPS = {"rms_norm": 1e-6, "layer_norm": 1e-5, "l2_normalize": 1e-12}


class ParseFailure(Exception):
    """What went wrong, plus the ops understood so far (the composer turns it into a ComposeError)."""

    def __init__(self, reason: str, understood: list[str], unknown: list[str] | None = None):
        super().__init__(reason)
        self.reason, self.understood, self.unknown = reason, understood, unknown or []


@dataclass
class Step:
    op: str
    kind: str  # reduction | pointwise | matmul
    numbers: list[float] = field(default_factory=list)
    params: dict = field(default_factory=dict)


def understand(request: str) -> FusionGraph:
    items, unknown = tokenize(request)
    steps, mods = _steps(items)
    understood = [_step_text(s) for s in steps] + sorted(m for m in mods if m not in ("eps", "slope"))
    if "rotary" in unknown or "rope" in unknown:
        raise ParseFailure("rotary embedding exists in the library as rotary_embedding (reuse it)", understood,
                           unknown)
    if unknown:
        raise ParseFailure("some words are not in the vocabulary", understood, unknown)
    if not steps:
        raise ParseFailure("no op found", understood, unknown)
    return _build(steps, mods, understood)


def _step_text(s: Step) -> str:
    extra = [f"{k}={v}" for k, v in s.params.items()] + [str(n) for n in s.numbers]
    return s.op + (f"({', '.join(extra)})" if extra else "")


# ---- items -> ordered steps ------------------------------------------------------------------------
def _steps(items: list[Item]) -> tuple[list[Step], dict[str, list[float]]]:
    mods: dict[str, list[float]] = {}
    _attach_numbers(items, mods)
    flat = _apply_parentheses(items)
    written = {it.value for it in flat if it.kind in ("pointwise", "gated")}
    if {"gelu", "tanh"} <= written:
        mods.setdefault("tanh_approx", [])  # "gelu tanh", "tanh gelu": the approximation
    # split into ordered segments; inside each, only joins
    segments: list[list[Item]] = [[]]
    for it in flat:
        if it.kind == "seq":
            segments.append([])
        elif it.kind in ("reduction", "pointwise", "gated", "matmul"):
            segments[-1].append(it)
    steps: list[Step] = []
    for seg in segments:
        steps += _segment_steps(seg, mods)
    return steps, mods


def _attach_numbers(items: list[Item], mods: dict[str, list[float]]) -> None:
    """Each number goes to the eps/slope word or the op just before it."""
    target: list[float] | None = None
    for it in items:
        if it.kind == "number":
            if target is not None:
                target.append(float(it.value))
        elif it.kind == "mod" and it.value in ("eps", "slope"):
            target = mods.setdefault(it.value, [])
        elif it.kind == "mod":
            mods.setdefault(it.value, [])
        elif it.kind in ("reduction", "pointwise", "gated", "matmul"):
            target = it.numbers
        elif it.kind == "seq":
            target = None


def _apply_parentheses(items: list[Item]) -> list[Item]:
    """`f(inner)` -> inner's items, then f."""
    out: list[Item] = []
    i = 0
    while i < len(items):
        it = items[i]
        if it.kind == "open" or (i + 1 < len(items) and items[i + 1].kind == "open"
                                 and it.kind in ("reduction", "pointwise", "gated")):
            start = i if it.kind == "open" else i + 1
            depth, j = 0, start
            while j < len(items):
                depth += {"open": 1, "close": -1}.get(items[j].kind, 0)
                if depth == 0:
                    break
                j += 1
            out += _apply_parentheses(items[start + 1:j])
            if it.kind != "open":
                out.append(it)
            i = j + 1
            continue
        if it.kind != "close":
            out.append(it)
        i += 1
    return out


def _segment_steps(seg: list[Item], mods: dict[str, list[float]]) -> list[Step]:
    ops = {it.value for it in seg}
    steps: list[Step] = []
    for n, it in enumerate(seg):
        nxt = seg[n + 1].value if n + 1 < len(seg) else ""
        if it.value == "add" and ops & {"residual", "bias"}:
            continue  # "residual add", "add bias": the add is the residual/bias itself
        if it.value == "mul" and nxt == "scale":
            continue  # "multiply by scale", "* scale"
        if it.value == "mul" and it.numbers:
            steps.append(Step("scale", "pointwise", it.numbers))  # "* 0.125"
            continue
        if it.value == "where" and ("causal" in mods or nxt == "where"):  # "where mask", "masked fill"
            continue  # "causal masked softmax": the mask is the causal one
        if it.value == "tanh" and "gelu" in ops:
            continue  # "gelu tanh": the approximation, not a second op
        if it.value == "scale" and "dequantize" in ops:
            continue  # the dequantization scale
        if it.kind == "gated":
            steps.append(Step(it.value, "pointwise", it.numbers))
            steps.append(Step("mul", "pointwise"))
            continue
        steps.append(Step(it.value, it.kind, it.numbers))
    # a reduction in a joined group takes the adds and scales written after it as its prologue
    red = next((k for k, s in enumerate(steps) if s.kind == "reduction"), None)
    if red is not None:
        moved = [s for s in steps[red + 1:] if s.op in PRE_REDUCTION]
        steps = [s for s in steps[: red] + moved] + [steps[red]] + [s for s in steps[red + 1:] if s not in moved]
    return steps


# ---- steps -> graph --------------------------------------------------------------------------------
def _build(steps: list[Step], mods: dict[str, list[float]], understood: list[str]) -> FusionGraph:
    def fail(reason: str):
        raise ParseFailure(reason, understood)

    has_red = any(s.kind == "reduction" for s in steps)
    has_mm = any(s.kind == "matmul" for s in steps)
    generic_binary = any(s.op in BINARY for s in steps)
    if has_mm:
        primary, operand_names = "a", iter(["c", "d", "e", "f"])
    elif generic_binary and not has_red:
        primary, operand_names = "a", iter(["b", "c", "d", "e"])
    else:
        primary, operand_names = "x", iter(["z", "u", "t", "s"])
    if "causal" in mods:
        causal_at = next((k for k, s in enumerate(steps) if s.kind == "reduction"), None)
        if causal_at is None or steps[causal_at].op not in MASK_FILL_NEG_INF:
            fail("a causal mask needs a softmax, log_softmax, logsumexp or max after it")
        steps.insert(causal_at, Step("causal", "pointwise"))

    g = FusionGraph(inputs=[])
    names: set[str] = set()

    def add_input(inp: Input) -> str:
        if inp.name in names:
            base, k = inp.name, 2
            while f"{base}{k}" in names:
                k += 1
            inp = Input(f"{base}{k}", inp.role, inp.dtype, inp.fill, inp.default)
        names.add(inp.name)
        g.inputs.append(inp)
        return inp.name

    counter = iter(range(1, 1000))
    cur = primary
    phase = "pre"
    residual_node: str | None = None
    first_fill = "randn"
    nodes: list[Node] = []
    primary_dtype = "input"

    for k, s in enumerate(steps):
        target = g.prologue if phase == "pre" else g.epilogue
        if s.kind == "matmul":
            if k != 0 or has_red:
                fail("a matmul takes no pointwise prologue and no reduction (only a pointwise epilogue)")
            add_input(Input("a", "lhs"))
            add_input(Input("b", "rhs"))
            g.matmul = Matmul("a", "b", "mm")
            cur, phase = "mm", "post"
            continue
        if s.kind == "reduction":
            if g.reduction is not None:
                fail("at most one row reduction per kernel")
            if k == 0:
                add_input(Input(primary, "rows", fill=first_fill))
            red = _reduction(s, cur, mods, add_input)
            g.reduction = red
            if red.kind in ("rms_norm", "layer_norm") and nodes and nodes[-1].op == "residual" \
                    and nodes[-1].out == cur:
                residual_node = cur
            cur, phase = "r", "post"
            continue
        if k == 0:
            if s.op == "dequantize":
                primary_dtype = "int8"
            if s.op in NEEDS_POSITIVE:
                first_fill = "positive"
            add_input(Input(primary, "rows", dtype=primary_dtype, fill="int8" if primary_dtype == "int8" else
                            first_fill))
        if s.op == "dequantize" and k != 0:
            fail("dequantize must come first (it reads the int8 tensor)")
        if g.row_scalar_output and phase == "post" and s.op not in _ROW_SCALAR_OK:
            fail(f"after a {g.reduction.kind} (one value per row) only unary ops and scale can follow, not {s.op}")
        out = f"h{next(counter)}"
        node = _pointwise(s, cur, out, steps[k + 1:], mods, operand_names, add_input, fail)
        target.append(node)
        nodes.append(node)
        cur = out

    if g.matmul is None and not any(i.role == "rows" for i in g.inputs):
        fail("no tensor input found")
    if g.causal:
        g.inputs = [Input(i.name, "rows4d", i.dtype, i.fill, i.default) if i.role == "rows" else i
                    for i in g.inputs]
    g.outputs = [cur] + ([residual_node] if residual_node else [])
    g.output_names = ["y"] + (["h"] if residual_node else [])
    last = g.epilogue[-1] if g.epilogue else (g.prologue[-1] if g.prologue and not g.reduction else None)
    if last is not None and last.op == "cast":
        g.out_dtype = last.param("dtype")
    return g


_ROW_SCALAR_OK = ("relu", "leaky_relu", "gelu", "silu", "sigmoid", "tanh", "softplus", "hardswish", "mish", "abs",
                  "neg", "square", "sqrt", "rsqrt", "exp", "log", "clamp", "cast", "scale")


def _reduction(s: Step, cur: str, mods: dict[str, list[float]], add_input) -> Reduction:
    kind = s.op
    weight = bias = eps = None
    eps_value = (mods.get("eps") or s.numbers or [DEFAULT_EPS.get(kind, 0.0)])[0]
    if kind in ("rms_norm", "layer_norm") and "no_weight" not in mods:
        weight = add_input(Input("weight", "cols"))
        if kind == "layer_norm":
            bias = add_input(Input("ln_bias", "cols"))
    if kind in DEFAULT_EPS:
        eps = add_input(Input("eps", "scalar", default=float(eps_value)))
    return Reduction(kind, cur, "r", weight, bias, eps)


def _pointwise(s: Step, cur: str, out: str, rest: list[Step], mods, operand_names, add_input, fail) -> Node:
    op, nums = s.op, s.numbers
    if op in BINARY:
        nxt = rest[0].op if rest else ""
        fill = "positive" if op == "div" or nxt in NEEDS_POSITIVE else "randn"
        other = add_input(Input(next(operand_names), "rows", fill=fill))
        if nums:  # "add 1.0": a scalar operand
            fail(f"{op} with a number is not supported; use scale for a constant factor")
        return Node(out, op, (cur, other))
    if op == "residual":
        return Node(out, "residual", (cur, add_input(Input("residual", "rows"))))
    if op == "bias":
        return Node(out, "bias", (cur, add_input(Input("bias", "cols"))))
    if op == "scale":
        value = nums[0] if nums else 0.125
        return Node(out, "scale", (cur, add_input(Input("scale", "scalar", default=float(value)))))
    if op == "where":
        nxt = next((r for r in rest if r.kind == "reduction"), None)
        fill = float("-inf") if nxt is not None and nxt.op in MASK_FILL_NEG_INF else 0.0
        return Node(out, "where", (add_input(Input("mask", "rows", dtype="bool", fill="rand")), cur),
                    (("fill", fill),))
    if op == "causal":
        return Node(out, "causal", (cur,))
    if op == "dequantize":
        if "per_tensor" in mods:
            scale = add_input(Input("scale", "scalar", default=float(nums[0]) if nums else 0.05))
        else:
            role = "cols" if "per_col" in mods else "per_row"
            scale = add_input(Input("scale", role, fill="positive"))
        return Node(out, "dequantize", (cur, scale))
    if op == "clamp":
        lo, hi = (nums + [-1.0, 1.0][len(nums):])[:2] if len(nums) < 2 else nums[:2]
        lo_name = add_input(Input("lo", "scalar", default=float(min(lo, hi))))
        hi_name = add_input(Input("hi", "scalar", default=float(max(lo, hi))))
        return Node(out, "clamp", (cur, lo_name, hi_name))
    if op == "leaky_relu":
        slope = (mods.get("slope") or nums or [0.01])[0]
        return Node(out, "leaky_relu", (cur, add_input(Input("negative_slope", "scalar", default=float(slope)))))
    if op == "gelu":
        approx = "tanh" if "tanh_approx" in mods else "none"
        return Node(out, "gelu", (cur,), (("approximate", approx),))
    if op == "cast":
        dtypes = [d for d in ("bfloat16", "float16", "float32") if d in mods]
        if len(dtypes) != 1:
            fail("cast needs exactly one target dtype (bf16, fp16 or fp32)")
        return Node(out, "cast", (cur,), (("dtype", dtypes[0]),))
    return Node(out, op, (cur,))


__all__ = ["understand", "ParseFailure", "REDUCTIONS"]
