"""Per-op code for the composer: the PyTorch reference expression and the Triton expression of each node.

Triton expressions work on float32 values (inputs are upcast at the load); the result is cast once at the
store. `tanh` has no `tl` function, so kernels that need it get a small `@triton.jit` helper.
"""

from __future__ import annotations

from kernelgen.codegen.graph import Node

TORCH_DTYPE = {"bfloat16": "torch.bfloat16", "float16": "torch.float16", "float32": "torch.float32"}
TL_DTYPE = {"bfloat16": "tl.bfloat16", "float16": "tl.float16", "float32": "tl.float32"}

TANH_HELPER = '''
@triton.jit
def _tanh(x):
    # tanh(x) = 2 * sigmoid(2x) - 1: no tl.tanh in every Triton version; error < 1e-7 absolute in float32
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0
'''

_TORCH_UNARY = {
    "relu": "torch.relu({0})", "gelu": "F.gelu({0}, approximate={approx!r})", "silu": "F.silu({0})",
    "sigmoid": "torch.sigmoid({0})", "tanh": "torch.tanh({0})", "softplus": "F.softplus({0})",
    "hardswish": "F.hardswish({0})", "mish": "F.mish({0})", "abs": "torch.abs({0})", "neg": "-{0}",
    "square": "torch.square({0})", "sqrt": "torch.sqrt({0})", "rsqrt": "torch.rsqrt({0})", "exp": "torch.exp({0})",
    "log": "torch.log({0})",
}
_TORCH_BINARY = {
    "add": "{0} + {1}", "residual": "{0} + {1}", "bias": "{0} + {1}", "sub": "{0} - {1}", "mul": "{0} * {1}",
    "scale": "{0} * {1}", "div": "{0} / {1}", "maximum": "torch.maximum({0}, {1})",
    "minimum": "torch.minimum({0}, {1})",
}


def torch_expr(node: Node, final: bool, scale_role: str = "") -> str:
    a = node.args
    if node.op in _TORCH_UNARY:
        return _TORCH_UNARY[node.op].format(*a, approx=node.param("approximate", "none"))
    if node.op in _TORCH_BINARY:
        return _TORCH_BINARY[node.op].format(*a)
    if node.op == "leaky_relu":
        return f"F.leaky_relu({a[0]}, {a[1]})"
    if node.op == "clamp":
        return f"torch.clamp({a[0]}, {a[1]}, {a[2]})"
    if node.op == "where":
        return f"torch.where({a[0]}, {a[1]}, {_float_literal(node.param('fill'))})"
    if node.op == "causal":
        # bottom-right aligned (as flash-attention with fewer queries than keys): query i sits at key position
        # i + N - M, so one query row is a decode step that sees every key
        return (f"{a[0]}.masked_fill(torch.ones({a[0]}.shape[-2:], dtype=torch.bool, device={a[0]}.device)"
                f".triu({a[0]}.shape[-1] - {a[0]}.shape[-2] + 1), float(\"-inf\"))")
    if node.op == "dequantize":
        if scale_role == "per_row":
            return f"{a[0]}.to({a[1]}.dtype) * {a[1]}[..., None]"
        if scale_role == "cols":
            return f"{a[0]}.to({a[1]}.dtype) * {a[1]}"
        return f"{a[0]}.to(torch.float64) * {a[1]}"  # the reference runs in float64
    if node.op == "cast":
        dt = TORCH_DTYPE[node.param("dtype")]
        return f"{a[0]}.to({dt})" if final else f"{a[0]}.to({dt}).to({a[0]}.dtype)"
    raise ValueError(f"no reference for op {node.op}")


def triton_expr(node: Node) -> str:
    a = node.args
    x = a[0]
    table = {
        "relu": f"tl.maximum({x}, 0.0)",
        "silu": f"{x} * tl.sigmoid({x})",
        "sigmoid": f"tl.sigmoid({x})",
        "tanh": f"_tanh({x})",
        "softplus": f"tl.maximum({x}, 0.0) + tl.log(1.0 + tl.exp(-tl.abs({x})))",
        "hardswish": f"{x} * tl.minimum(tl.maximum({x} + 3.0, 0.0), 6.0) / 6.0",
        "mish": f"{x} * _tanh(tl.maximum({x}, 0.0) + tl.log(1.0 + tl.exp(-tl.abs({x}))))",
        "abs": f"tl.abs({x})",
        "neg": f"-{x}",
        "square": f"{x} * {x}",
        "sqrt": f"tl.sqrt({x})",
        "rsqrt": f"tl.rsqrt({x})",
        "exp": f"tl.exp({x})",
        "log": f"tl.log({x})",
        "causal": f"tl.where(cols <= query + N - n_queries, {x}, float(\"-inf\"))",
        "hardsigmoid": f"tl.minimum(tl.maximum({x} / 6.0 + 0.5, 0.0), 1.0)",
        "erf": f"tl.erf({x})",
        # log1p and expm1 through exp/log lose digits near 0; the verifier's tolerances decide if that is enough
        "log1p": f"tl.log(1.0 + {x})",
        "expm1": f"tl.exp({x}) - 1.0",
    }
    if node.op in table:
        return table[node.op]
    if node.op in ("add", "residual", "bias"):
        return f"{x} + {a[1]}"
    if node.op == "sub":
        return f"{x} - {a[1]}"
    if node.op in ("mul", "scale", "dequantize"):
        return f"{x} * {a[1]}"
    if node.op == "div":
        return f"{x} / {a[1]}"
    if node.op == "maximum":
        return f"tl.maximum({x}, {a[1]})"
    if node.op == "minimum":
        return f"tl.minimum({x}, {a[1]})"
    if node.op == "leaky_relu":
        return f"tl.where({x} >= 0, {x}, {x} * {a[1]})"
    if node.op == "elu":  # args: x, alpha, scale, input_scale (selu is elu with its constants)
        return f"{a[2]} * tl.where({x} > 0, {x}, {a[1]} * (tl.exp({x} * {a[3]}) - 1.0))"
    if node.op == "clamp":
        return f"tl.minimum(tl.maximum({x}, {a[1]}), {a[2]})"
    if node.op == "where":
        return f"tl.where({x}, {a[1]}, {_float_literal(node.param('fill'))})"
    if node.op == "gelu":
        if node.param("approximate") == "tanh":
            return f"0.5 * {x} * (1.0 + _tanh(0.7978845608028654 * ({x} + 0.044715 * {x} * {x} * {x})))"
        return f"0.5 * {x} * (1.0 + tl.erf({x} * 0.7071067811865476))"
    if node.op == "cast":
        return f"{x}.to({TL_DTYPE[node.param('dtype')]}).to(tl.float32)"
    raise ValueError(f"no Triton code for op {node.op}")


def needs_tanh(nodes: list[Node]) -> bool:
    return any(n.op in ("tanh", "mish") or (n.op == "gelu" and n.param("approximate") == "tanh") for n in nodes)


def _float_literal(v) -> str:
    v = float(v)
    if v == float("-inf"):
        return 'float("-inf")'
    return repr(v)
