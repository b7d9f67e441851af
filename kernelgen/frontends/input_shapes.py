"""The inputs of a composed reference: kind, symbolic shape, dtype and fill, by a printed convention.

Convention: the main operand is x [M, N]; per-feature parameters (bias, weight, gamma, beta, a norm's
weight) are [N]; a matmul is a [M, K] @ b [K, N], bmm [B, M, K] @ [B, K, N], linear x [M, K] with weight
[N, K]; `s[:, None]` makes s per-row [M]; a causal mask works on [B, H, M, N]; class targets of
cross_entropy / nll_loss are int64 [M]; names such as scale, alpha, temperature, eps are float scalars.
How a name is used wins over its name ("x @ w" makes w [K, N] even though w is often a weight).
"""

from __future__ import annotations

import ast

from kernelgen.spec import InputSpec

SHAPES: dict[str, tuple[str, ...]] = {
    "rows": ("M", "N"), "rows4d": ("B", "H", "M", "N"), "feature": ("N",), "per_row": ("M",), "target": ("M",),
    "lhs": ("M", "K"), "rhs": ("K", "N"), "blhs": ("B", "M", "K"), "brhs": ("B", "K", "N"), "lin_x": ("M", "K"),
    "lin_w": ("N", "K"), "lhs_t": ("K", "M"), "rhs_t": ("N", "K"), "int8": ("M", "N"), "mask": ("M", "N"),
    "prob": ("M", "N"),
}
DTYPE = {"target": "int64", "int8": "int8", "mask": "bool"}
FILL = {"target": "index", "int8": "int8", "prob": "rand"}
SCALAR_NAMES = {"scale": 0.125, "alpha": 0.5, "temperature": 2.0, "temp": 2.0, "eps": 1e-5, "lo": -1.0,
                "hi": 1.0, "low": -1.0, "high": 1.0, "tau": 0.5, "factor": 0.5, "slope": 0.2, "lambd": 0.5,
                "gain": 1.5, "delta": 1.0, "sm_scale": 0.125, "softmax_scale": 0.125, "momentum": 0.1}
FEATURE_NAMES = {"bias", "weight", "gamma", "beta", "ln_weight", "ln_bias", "shift"}
POSITIVE_FUNCS = {"log", "log2", "log10", "log1p", "sqrt", "rsqrt", "reciprocal"}
SCALAR_ARGS = {"clamp", "clip", "clamp_min", "clamp_max", "leaky_relu", "elu", "celu", "softplus", "hardtanh",
               "softshrink", "hardshrink", "threshold"}
TENSOR_KEYWORDS = {"weight", "bias", "target", "input", "other", "mask", "out", "tensors"}

# test shapes: small, a non-power-of-two in the second; causal ops keep M <= N (bottom-right aligned mask)
TEST_SHAPES = [{"B": 2, "H": 2, "M": 4, "K": 32, "N": 64}, {"B": 1, "H": 3, "M": 3, "K": 40, "N": 100}]
CAUSAL_TEST_SHAPES = [{"B": 2, "H": 2, "M": 8, "N": 8}, {"B": 1, "H": 3, "M": 5, "N": 12}]
BENCH_SHAPES = [{"B": 8, "H": 16, "M": 4096, "K": 4096, "N": 4096}]


def _path(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def _name(node: ast.AST | None) -> str | None:
    return node.id if isinstance(node, ast.Name) else None


def usage_roles(statements: list[ast.stmt], causal: bool = False) -> tuple[dict[str, str], set[str], dict]:
    """Role per name from how the formula uses it, the names that must be positive, and scalar names."""
    roles: dict[str, str] = {}
    positive: set[str] = set()
    scalars: set[str] = set()

    def put(node: ast.AST | None, role: str) -> None:
        n = _name(node)
        if n is not None:
            roles.setdefault(n, role)

    for stmt in statements:
        for node in ast.walk(stmt):
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.MatMult):
                put(node.left, "lhs")
                put(node.right, "rhs")
                for side, role in ((node.left, "lhs_t"), (node.right, "rhs_t")):  # a @ b.T: b is [N, K]
                    if isinstance(side, ast.Attribute) and side.attr in ("T", "mT"):
                        put(side.value, role)
            elif isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Tuple):
                elts = node.slice.elts
                if len(elts) == 2 and isinstance(elts[0], ast.Slice) and isinstance(elts[1], ast.Constant) \
                        and elts[1].value is None:
                    put(node.value, "per_row")
            elif isinstance(node, ast.Call):
                _call_roles(node, put, positive, scalars)
    if causal:
        roles = {k: ("rows4d" if v == "rows" else v) for k, v in roles.items()}
    return roles, positive, {"scalars": scalars}


def _call_roles(node: ast.Call, put, positive: set[str], scalars: set[str]) -> None:
    path = _path(node.func)
    fn = path.rsplit(".", 1)[-1]
    a = node.args
    method = isinstance(node.func, ast.Attribute) and not path.startswith(("torch.", "F.", "math."))
    if method:
        receiver = node.func.value
        if fn in POSITIVE_FUNCS and _name(receiver):
            positive.add(_name(receiver))
        if fn == "masked_fill" and a:
            put(a[0], "mask")
        if fn in ("clamp", "clip") and len(a) > 0:
            for x in a:
                if _name(x):
                    scalars.add(_name(x))
    elif fn in ("matmul", "mm") and len(a) == 2:
        put(a[0], "lhs"), put(a[1], "rhs")
    elif fn == "bmm" and len(a) == 2:
        put(a[0], "blhs"), put(a[1], "brhs")
    elif fn == "addmm" and len(a) == 3:
        put(a[0], "feature"), put(a[1], "lhs"), put(a[2], "rhs")
    elif fn == "linear":
        for x, role in zip(a, ("lin_x", "lin_w", "feature")):
            put(x, role)
    elif fn in ("rms_norm", "layer_norm"):
        for x in a[2:4]:
            put(x, "feature")
    elif fn == "prelu" and len(a) == 2:
        put(a[1], "feature")
    elif fn in ("cross_entropy", "nll_loss") and len(a) >= 2:
        put(a[1], "target")
    elif fn == "binary_cross_entropy":
        for x in a[:2]:
            put(x, "prob")
    elif fn in ("binary_cross_entropy_with_logits", "kl_div") and len(a) >= 2:
        put(a[1], "prob")
    elif fn == "where" and a:
        put(a[0], "mask")
    if not method and fn in POSITIVE_FUNCS and a and _name(a[0]):
        positive.add(_name(a[0]))
    if not method and fn in SCALAR_ARGS:
        scalars.update(n for n in (_name(x) for x in a[1:]) if n)
    for kw in node.keywords:
        if kw.arg not in TENSOR_KEYWORDS and _name(kw.value):
            scalars.add(_name(kw.value))
        elif kw.arg in ("weight", "bias") and fn in ("rms_norm", "layer_norm", "linear"):
            put(kw.value, "feature")


def formula_inputs(names: list[str], statements: list[ast.stmt], causal: bool) -> list[InputSpec]:
    roles, positive, extra = usage_roles(statements, causal)
    scalars = extra["scalars"]
    out: list[InputSpec] = []
    for n in names:
        role = roles.get(n)
        if role is None and (n in scalars or n in SCALAR_NAMES):
            out.append(InputSpec(n, "float", value=SCALAR_NAMES.get(n, 0.5)))
            continue
        if role is None:
            role = "feature" if n in FEATURE_NAMES else ("rows4d" if causal else "rows")
        out.append(tensor(n, role, "positive" if n in positive else None))
    return out


def tensor(name: str, role: str, fill: str | None = None) -> InputSpec:
    fill = fill or FILL.get(role, "randn")
    # class targets index the class dim N of the logits: integers in [0, N)
    high = "N" if fill == "index" else ""
    return InputSpec(name, "tensor", SHAPES[role], DTYPE.get(role, "input"), fill, high=high)


def describe(inputs: list[InputSpec]) -> str:
    parts = []
    for i in inputs:
        if i.kind == "tensor":
            dt = "" if i.dtype == "input" else f" {i.dtype}"
            fill = "" if i.fill in ("randn", "int8", "index") else f" ({i.fill})"
            parts.append(f"{i.name}{dt} [{', '.join(i.shape)}]{fill}")
        else:
            parts.append(f"{i.name} = {i.value} ({i.kind})")
    return "inputs: " + ", ".join(parts)


def test_shapes(inputs: list[InputSpec]) -> list[dict[str, int]]:
    dims = {d for i in inputs if i.kind == "tensor" for d in i.shape}
    causal = {"B", "H", "M", "N"} <= dims and "K" not in dims
    table = CAUSAL_TEST_SHAPES if causal else TEST_SHAPES
    return [{d: v for d, v in s.items() if d in dims} for s in table] if dims else [{}]


def bench_shapes(inputs: list[InputSpec]) -> list[dict[str, int]]:
    dims = {d for i in inputs if i.kind == "tensor" for d in i.shape}
    return [{d: v for d, v in s.items() if d in dims} for s in BENCH_SHAPES] if dims else []
