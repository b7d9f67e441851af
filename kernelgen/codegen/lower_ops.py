"""The ATen ops the lowering knows: pointwise ops -> fusion-graph nodes, row reductions, and the decomposed
norm patterns (a keepdim statistic combined with the row it came from)."""

from __future__ import annotations

from collections.abc import Callable

from kernelgen.codegen.graph import Node
from kernelgen.codegen.trace import op_name
from kernelgen.errors import KernelgenError


class LoweringError(KernelgenError, ValueError):
    """The traced reference does not fit today's templates; the message names the op or pattern."""


def refuse(op: str, why: str) -> LoweringError:
    return LoweringError(f"{op}: {why}")


def shape_of(node) -> tuple[str, ...]:
    """The node's output shape as strings: symbolic sizes by their symbol, fixed ones by their value."""
    val = node.meta.get("val")
    if isinstance(val, (tuple, list)):
        val = val[0]
    return tuple(str(s) for s in getattr(val, "shape", ()))


def kwarg(node, key: str, default=None):
    return node.kwargs.get(key, default)


def arg_value(node, index: int, default=None):
    return node.args[index] if len(node.args) > index else default


def is_last_dim(dims, ndim: int) -> bool:
    if dims is None:
        return False
    dims = list(dims) if isinstance(dims, (list, tuple)) else [dims]
    return len(dims) == 1 and ndim > 0 and int(dims[0]) % ndim == ndim - 1


# ---- pointwise -------------------------------------------------------------------------------------
_UNARY = {f"aten.{op}.default": op for op in (
    "relu", "sigmoid", "tanh", "silu", "exp", "log", "sqrt", "rsqrt", "abs", "neg", "mish", "hardswish",
    "hardsigmoid", "erf", "log1p", "expm1")}
_BINARY = {}
for _op, _kind in (("add", "add"), ("sub", "sub"), ("mul", "mul"), ("div", "div")):
    _BINARY[f"aten.{_op}.Tensor"] = _kind
    _BINARY[f"aten.{_op}.Scalar"] = _kind
    _BINARY[f"aten.{_op}_.Tensor"] = _kind
    _BINARY[f"aten.{_op}_.Scalar"] = _kind
_BINARY["aten.maximum.default"] = "maximum"
_BINARY["aten.minimum.default"] = "minimum"
_OTHER = ("aten.rsub.Scalar", "aten.rsub.Tensor", "aten.reciprocal.default", "aten.gelu.default",
          "aten.leaky_relu.default", "aten.softplus.default", "aten.hardtanh.default", "aten.clamp.default",
          "aten.clamp_min.default", "aten.clamp_max.default", "aten.pow.Tensor_Scalar", "aten.elu.default",
          "aten.square.default")
POINTWISE = frozenset(_UNARY) | frozenset(_BINARY) | frozenset(_OTHER)


def pointwise_nodes(name: str, args: list[str], raw: tuple, kwargs: dict, new: Callable[[], str]) -> list[Node]:
    """Fusion-graph nodes computing one ATen pointwise op over value names / literals `args`."""
    def node(op, *a, params=()):
        return Node(new(), op, tuple(a), tuple(params))

    if name in _UNARY:
        return [node(_UNARY[name], args[0])]
    if name in _BINARY:
        if kwargs.get("alpha", 1) != 1 or len(raw) > 2:
            raise refuse(name, "alpha other than 1 has no template")
        if kwargs.get("rounding_mode") is not None:
            raise refuse(name, f"rounding_mode={kwargs['rounding_mode']!r} has no template")
        return [node(_BINARY[name], args[0], args[1])]
    if name in ("aten.rsub.Scalar", "aten.rsub.Tensor"):
        return [node("sub", args[1], args[0])]
    if name == "aten.reciprocal.default":
        return [node("div", "1.0", args[0])]
    if name == "aten.square.default":
        return [node("square", args[0])]
    if name == "aten.gelu.default":
        return [node("gelu", args[0], params=(("approximate", kwargs.get("approximate", "none")),))]
    if name == "aten.leaky_relu.default":
        return [node("leaky_relu", args[0], args[1] if len(args) > 1 else "0.01")]
    if name == "aten.softplus.default":
        beta = raw[1] if len(raw) > 1 else kwargs.get("beta", 1)
        if beta != 1:
            raise refuse(name, f"softplus with beta={beta}: the template has beta=1")
        return [node("softplus", args[0])]
    if name == "aten.hardtanh.default":
        lo = args[1] if len(args) > 1 else "-1.0"
        hi = args[2] if len(args) > 2 else "1.0"
        return [node("clamp", args[0], lo, hi)]
    if name == "aten.clamp.default":
        lo = raw[1] if len(raw) > 1 else kwargs.get("min")
        hi = raw[2] if len(raw) > 2 else kwargs.get("max")
        if lo is not None and hi is not None:
            return [node("clamp", args[0], args[1], args[2])]
        if lo is not None:
            return [node("maximum", args[0], args[1])]
        if hi is not None:
            return [node("minimum", args[0], _literal_of(hi))]
        return []
    if name == "aten.clamp_min.default":
        return [node("maximum", args[0], args[1])]
    if name == "aten.clamp_max.default":
        return [node("minimum", args[0], args[1])]
    if name == "aten.elu.default":
        alpha, scale, input_scale = (list(args[1:]) + ["1.0", "1.0", "1.0"])[:3]
        return [node("elu", args[0], alpha, scale, input_scale)]
    if name == "aten.pow.Tensor_Scalar":
        e = float(raw[1])
        x = args[0]
        if e == 1:
            return []
        if e == 2:
            return [node("square", x)]
        if e == 3:
            sq = node("square", x)
            return [sq, node("mul", sq.out, x)]
        if e == 0.5:
            return [node("sqrt", x)]
        if e == -0.5:
            return [node("rsqrt", x)]
        if e == -1:
            return [node("div", "1.0", x)]
        raise refuse(name, f"power {e:g} has no template (2, 3, 0.5, -0.5 and -1 do)")
    raise refuse(name, "no template yet")


def _literal_of(v) -> str:
    return repr(float(v))


# ---- row reductions --------------------------------------------------------------------------------
def _dims_keepdim(kind: str, dims_index: int = 1, keep_index: int = 2):
    def read(node):
        dims = arg_value(node, dims_index, kwarg(node, "dim"))
        keepdim = arg_value(node, keep_index, kwarg(node, "keepdim", False))
        return kind, dims, bool(keepdim)

    return read


ROW_SCALAR = {
    "aten.sum.dim_IntList": _dims_keepdim("sum"),
    "aten.mean.dim": _dims_keepdim("mean"),
    "aten.amax.default": _dims_keepdim("max"),
    "aten.max.dim": _dims_keepdim("max"),
    "aten.logsumexp.default": _dims_keepdim("logsumexp"),
    "aten.var.correction": _dims_keepdim("var"),
    "aten.linalg_vector_norm.default": _dims_keepdim("norm", 2, 3),
}


def _single_user(node):
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _is(node, *names: str) -> bool:
    return hasattr(node, "op") and node.op == "call_function" and op_name(node.target) in names


def match_row_pattern(stat):
    """(kind, row node, eps value, nodes folded, combining node) when the keepdim statistic `stat` is the
    inside of rms_norm, l2 normalize or log_softmax written out; else None."""
    name = op_name(stat.target)
    chain = [stat]
    cur = _single_user(stat)
    if name == "aten.mean.dim":
        src = stat.args[0]
        if _is(src, "aten.pow.Tensor_Scalar") and float(src.args[1]) == 2:
            row = src.args[0]
        elif _is(src, "aten.mul.Tensor") and src.args[0] is src.args[1]:
            row = src.args[0]
        else:
            return None
        if _single_user(src) is not stat:
            return None
        chain.append(src)
        eps = 0.0
        if _is(cur, "aten.add.Tensor", "aten.add.Scalar", "aten.add_.Scalar", "aten.add_.Tensor") \
                and cur.args[0] is stat and not hasattr(cur.args[1], "op"):
            eps = float(cur.args[1])
            chain.append(cur)
            cur = _single_user(cur)
        if _is(cur, "aten.rsqrt.default"):
            chain.append(cur)
            combine = _single_user(cur)
            if _is(combine, "aten.mul.Tensor") and row in combine.args and chain[-1] in combine.args:
                return "rms_norm", row, eps, chain, combine
        if _is(cur, "aten.sqrt.default"):
            chain.append(cur)
            combine = _single_user(cur)
            if _is(combine, "aten.div.Tensor") and combine.args[0] is row and combine.args[1] is chain[-1]:
                return "rms_norm", row, eps, chain, combine
        return None
    if name == "aten.linalg_vector_norm.default":
        row = stat.args[0]
        if float(arg_value(stat, 1, 2)) != 2:
            return None
        eps = 0.0
        if _is(cur, "aten.clamp_min.default"):
            eps = float(cur.args[1])
            chain.append(cur)
            cur = _single_user(cur)
        if _is(cur, "aten.expand.default"):
            chain.append(cur)
            cur = _single_user(cur)
        if _is(cur, "aten.div.Tensor") and cur.args[0] is row and cur.args[1] is chain[-1]:
            return "l2_normalize", row, eps, chain, cur
        return None
    if name == "aten.logsumexp.default":
        row = stat.args[0]
        if _is(cur, "aten.sub.Tensor") and cur.args[0] is row and cur.args[1] is stat:
            return "log_softmax", row, None, chain, cur
    return None


def causal_mask(node) -> list | None:
    """The nodes of `x.masked_fill(ones(M, N, bool).triu(N - M + 1), -inf)` (x [..., M, N]: key j masked for
    query i when j > i + N - M, bottom-right aligned), else None. With M and N one size in the trace the
    diagonal is the constant 1."""
    x, mask, value = node.args[:3]
    if value != float("-inf") or not _is(mask, "aten.triu.default") or not _is(mask.args[0], "aten.ones.default"):
        return None
    if mask.args[0].kwargs.get("dtype") is not None and str(mask.args[0].kwargs["dtype"]) != "torch.bool":
        return None
    rows = shape_of(x)
    if len(rows) < 2 or shape_of(mask) != rows[-2:]:
        return None
    diagonal = arg_value(mask, 1, kwarg(mask, "diagonal", 0))
    if hasattr(diagonal, "op"):
        val = diagonal.meta.get("val")
        sizes = x.meta["val"].shape
        try:
            ok = hasattr(val, "node") and (val.node.expr - (sizes[-1].node.expr - sizes[-2].node.expr + 1)) == 0
        except AttributeError:
            ok = False
    else:
        ok = diagonal == 1 and rows[-1] == rows[-2]
    if not ok or len(mask.users) != 1 or len(mask.args[0].users) != 1:
        return None
    return [mask, mask.args[0]]


def whole_slice(node) -> bool:
    """x[:, ...]: a slice from 0 to the end with step 1 (indexing with None traces to one)."""
    start, end, step = (list(node.args[2:]) + [None, None, None])[:3]
    return start in (None, 0) and (end is None or (isinstance(end, int) and end >= 1 << 62)) and step in (None, 1)
