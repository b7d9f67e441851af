"""The composer's fusion graph: what a request means, before any code is written.

Shape of every graph: a pointwise prologue, then at most one row reduction or one matmul, then a pointwise
epilogue. Values are named (SSA): inputs by their launcher argument names, node results `h1`, `h2`, ...
Tensor inputs have a *role* that says how they line up with the output rows:

- `rows`: [..., N], one element per output element (broadcast at run time if smaller, e.g. [N]);
- `cols`: [N], one value per column (bias, norm weight), shared by every row;
- `per_row`: [...], one value per row (a per-row dequantization scale);
- `lhs` / `rhs`: the matmul operands [M, K] and [K, N]; `rhs_t`: the right operand given as [N, K] (a
  Linear's weight), used transposed.
Scalars (`kind="float"`) are launcher arguments with a default (eps, scale, clamp bounds, slope).
"""

from __future__ import annotations

from dataclasses import dataclass, field

UNARY = (
    "relu", "leaky_relu", "gelu", "silu", "sigmoid", "tanh", "softplus", "hardswish", "mish",
    "abs", "neg", "square", "sqrt", "rsqrt", "exp", "log", "clamp", "cast",
)
BINARY = ("add", "sub", "mul", "div", "maximum", "minimum")
# Ops that combine the running value with a tensor or scalar of a fixed role.
COMBINE = ("residual", "bias", "scale", "where", "dequantize", "causal")
FULL_ROW_REDUCTIONS = ("rms_norm", "layer_norm", "softmax", "log_softmax", "l2_normalize")
ROW_SCALAR_REDUCTIONS = ("logsumexp", "sum", "mean", "var", "max")
REDUCTIONS = FULL_ROW_REDUCTIONS + ROW_SCALAR_REDUCTIONS
MASK_FILL_NEG_INF = ("softmax", "log_softmax", "logsumexp", "max")  # a masked-out element must lose


@dataclass(frozen=True)
class Input:
    name: str
    role: str = "rows"  # rows | cols | per_row | lhs | rhs | rhs_t | scalar
    dtype: str = "input"  # "input" (the dtype under test) or a fixed dtype: int8, bool
    fill: str = "randn"
    default: float | None = None  # scalars only

    @property
    def is_tensor(self) -> bool:
        return self.role != "scalar"


@dataclass(frozen=True)
class Node:
    """One pointwise step: `out = op(args..., **params)`; args name inputs or earlier nodes."""

    out: str
    op: str
    args: tuple[str, ...]
    params: tuple[tuple[str, object], ...] = ()

    def param(self, key: str, default=None):
        return dict(self.params).get(key, default)


@dataclass(frozen=True)
class Reduction:
    """A reduction over the last dim. Full-row kinds produce a row; the others one value per row."""

    kind: str
    arg: str
    out: str
    weight: str | None = None
    bias: str | None = None
    eps: str | None = None
    keepdim: bool = False  # a row-scalar result keeps its last dim as 1 ([..., 1] instead of [...])

    @property
    def row_scalar(self) -> bool:
        return self.kind in ROW_SCALAR_REDUCTIONS


@dataclass(frozen=True)
class Matmul:
    a: str
    b: str
    out: str


@dataclass
class FusionGraph:
    inputs: list[Input]
    prologue: list[Node] = field(default_factory=list)
    reduction: Reduction | None = None
    matmul: Matmul | None = None
    epilogue: list[Node] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)  # value names; the first is the main result
    output_names: list[str] = field(default_factory=list)  # launcher-facing names of the outputs
    out_dtype: str | None = None  # fixed output dtype (a final cast), else promoted from the inputs
    # tensor input -> the only rank the launcher takes: set when leading dims would change what the reference
    # computes (it names dims by position), so the launcher refuses them instead of reading them as rows
    ranks: dict[str, int] = field(default_factory=dict)

    # ---- queries -----------------------------------------------------------------------------------
    def input(self, name: str) -> Input:
        return next(i for i in self.inputs if i.name == name)

    def tensor_inputs(self) -> list[Input]:
        return [i for i in self.inputs if i.is_tensor]

    def scalar_inputs(self) -> list[Input]:
        return [i for i in self.inputs if not i.is_tensor]

    @property
    def causal(self) -> bool:
        return any(n.op == "causal" for n in self.prologue)

    @property
    def row_scalar_output(self) -> bool:
        return self.reduction is not None and self.reduction.row_scalar

    def nodes(self) -> list[Node]:
        return self.prologue + self.epilogue

    def describe(self) -> str:
        """One line: what was understood, e.g. `h1 = x + residual -> rms_norm(h1) -> (y, h)`."""
        parts = [_describe_node(n) for n in self.prologue]
        if self.matmul:
            parts.append(f"{self.matmul.out} = {self.matmul.a} @ {self.matmul.b}")
        if self.reduction:
            r = self.reduction
            extra = [a for a in (r.weight, r.bias, r.eps) if a]
            parts.append(f"{r.out} = {r.kind}({', '.join([r.arg] + extra)})")
        parts += [_describe_node(n) for n in self.epilogue]
        outs = ", ".join(f"{n}={v}" if n != v else n for n, v in zip(self.output_names, self.outputs))
        return " -> ".join(parts) + f" -> ({outs})"


_SYMBOL = {"add": "+", "sub": "-", "mul": "*", "div": "/", "residual": "+", "bias": "+", "scale": "*"}


def _describe_node(n: Node) -> str:
    if n.op in _SYMBOL:
        return f"{n.out} = {n.args[0]} {_SYMBOL[n.op]} {n.args[1]}"
    if n.op == "dequantize":
        return f"{n.out} = float({n.args[0]}) * {n.args[1]}"
    if n.op == "causal":
        return f"{n.out} = causal_mask({n.args[0]}, j > i -> -inf)"
    params = [f"{k}={v!r}" for k, v in n.params if k != "fill"]
    return f"{n.out} = {n.op}({', '.join(list(n.args) + params)})"
