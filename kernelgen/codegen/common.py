"""`FusionGraph` -> kernel.py text and the PyTorch reference.

Three kernel shapes, each written the way Triton's tutorials write them:
- pointwise only: a 2-D grid of (row block x column block) tiles over the rows of the broadcast output;
- one row reduction: one program per row, a single-block variant (the row stays in registers, one read)
  and a looped variant for rows longer than MAX_FUSED_N (the prologue is recomputed on each pass);
- matmul: a grouped-order `tl.dot` kernel, autotuned, with the pointwise epilogue applied to the
  float32 accumulator before the one store.
Every load and store is masked, row offsets are int64, arithmetic is float32 with one cast at the store.
"""

from __future__ import annotations

from kernelgen.codegen.expressions import TANH_HELPER, needs_tanh, torch_expr, triton_expr
from kernelgen.codegen.graph import FusionGraph, Input, Node


# ---- reference -------------------------------------------------------------------------------------
def reference_source(g: FusionGraph) -> str:
    args = ", ".join(i.name for i in g.inputs)
    lines = [f"def reference({args}):"]
    roles = {i.name: i.role for i in g.inputs}
    nodes_before = g.prologue
    last = g.epilogue[-1] if g.epilogue else None
    for n in nodes_before:
        final = (n is g.prologue[-1]) and not g.reduction and not g.matmul
        lines.append(f"    {n.out} = {torch_expr(n, final, roles.get(n.args[-1], ''))}")
    if g.matmul:
        lines.append(f"    {g.matmul.out} = {g.matmul.a} @ {g.matmul.b}")
    if g.reduction:
        r = g.reduction
        h = r.arg
        w, b, eps = r.weight or "None", r.bias or "None", r.eps
        expr = {
            "rms_norm": f"F.rms_norm({h}, ({h}.shape[-1],), {w}, {eps})",
            "layer_norm": f"F.layer_norm({h}, ({h}.shape[-1],), {w}, {b}, {eps})",
            "softmax": f"torch.softmax({h}, dim=-1)",
            "log_softmax": f"torch.log_softmax({h}, dim=-1)",
            "logsumexp": f"torch.logsumexp({h}, dim=-1)",
            "sum": f"{h}.sum(dim=-1)",
            "mean": f"{h}.mean(dim=-1)",
            "var": f"{h}.var(dim=-1)",
            "max": f"{h}.amax(dim=-1)",
            "l2_normalize": f"F.normalize({h}, dim=-1, eps={eps})",
        }[r.kind]
        lines.append(f"    {r.out} = {expr}")
    for n in g.epilogue:
        lines.append(f"    {n.out} = {torch_expr(n, n is last, roles.get(n.args[-1], ''))}")
    lines.append(f"    return {', '.join(g.outputs)}")
    return "\n" + "\n".join(lines) + "\n"


# ---- shared pieces of kernel.py --------------------------------------------------------------------
HELPERS = '''
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# Host-side arithmetic in plain Python: triton.next_power_of_2 and triton.cdiv are constexpr functions
# whose calls from the host cost about 10 us each, more than a small kernel takes on the GPU.
def _next_power_of_2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


def _num_warps(block: int) -> int:
    # about 1K elements per warp, between 1 and 8 warps: swept on the H100 (bf16, benchmarks/sweep_launch.py),
    # 4 warps for a 4K tile or row beat 16 by 5-10%, and 1 warp for rows of 1K let more rows be in flight per
    # SM (causal softmax 4x16x1024x1024: 94 vs 122 us at 8 warps)
    return max(1, min(8, block // 1024))


def _broadcast_shape(*shapes):
    """The broadcast of several shapes (PyTorch rules), computed on sizes only."""
    if all(s == shapes[0] for s in shapes):
        return tuple(shapes[0])  # the common case, without the general walk
    out = []
    for dims in zip(*[(1,) * (max(map(len, shapes)) - len(s)) + tuple(s) for s in shapes]):
        sizes = {d for d in dims if d != 1}
        if len(sizes) > 1:
            raise ValueError(f"shapes {[tuple(s) for s in shapes]} do not broadcast")
        out.append(sizes.pop() if sizes else 1)
    return tuple(out)


def _rows(t, shape):
    """t broadcast to `shape` and seen as rows [M, N] through views only (a broadcast dim has stride 0)."""
    if t.dim() == 2 and t.shape == shape:
        return t  # already rows: no view op to pay for on the host
    try:
        return t.expand(shape).view(-1, shape[-1])
    except RuntimeError:
        raise ValueError(f"a tensor of shape {tuple(t.shape)} and strides {t.stride()} cannot be seen as rows "
                         "without a copy") from None


def _per_row(t, shape):
    """A one-value-per-row tensor (shape[:-1]) seen as a 1-D view over the rows."""
    try:
        return t.expand(shape[:-1]).view(-1)
    except RuntimeError:
        raise ValueError(f"a per-row tensor of shape {tuple(t.shape)} must broadcast to {tuple(shape[:-1])}") from None


def _check(name, t, dtypes):
    if not isinstance(t, torch.Tensor) or t.dtype not in dtypes:
        got = t.dtype if isinstance(t, torch.Tensor) else type(t)
        raise TypeError(f"{name} must be a tensor of dtype {[str(d) for d in dtypes]}, got {got}")


def _result_dtype(*tensors):
    # PyTorch promotion among float32/float16/bfloat16: one dtype stays, any mix is float32
    dtypes = {t.dtype for t in tensors}
    return dtypes.pop() if len(dtypes) == 1 else torch.float32
'''


class _Loads:
    """Load expressions for one kernel shape: where a row, a column and the bounds masks live."""

    def __init__(self, g: FusionGraph, row: str, col: str, mask: str, col_mask: str, row_mask: str | None):
        self.g, self.row, self.col, self.mask, self.col_mask, self.row_mask = g, row, col, mask, col_mask, row_mask

    def load(self, inp: Input) -> str:
        n = inp.name
        if inp.role in ("rows", "rows4d"):
            expr = f"tl.load({n}_ptr + {self.row} * stride_{n}_row + {self.col} * stride_{n}_col, mask={self.mask}"
            if inp.dtype == "bool":
                return expr + ", other=0) != 0"  # a bool mask, as int1 whatever the pointer's element type
            expr += ", other=0.0)"
        elif inp.role == "cols":
            expr = f"tl.load({n}_ptr + {self.col} * stride_{n}, mask={self.col_mask}, other=0.0)"
        elif inp.role == "per_row":
            if self.row_mask:
                expr = f"tl.load({n}_ptr + {self.row} * stride_{n}, mask={self.row_mask}, other=0.0)"
            else:
                expr = f"tl.load({n}_ptr + {self.row} * stride_{n})"
        else:
            raise ValueError(inp.role)
        return expr if inp.dtype == "bool" else expr + ".to(tl.float32)"

    def code(self, nodes: list[Node], indent: str, extra_inputs: tuple[str, ...] = ()) -> list[str]:
        """Loads (just before first use) and the nodes' statements."""
        tensors = {i.name: i for i in self.g.tensor_inputs() if i.role not in ("lhs", "rhs", "rhs_t")}
        loaded: set[str] = set()
        lines = []

        def need(name: str):
            if name in tensors and name not in loaded:
                lines.append(f"{indent}{name} = {self.load(tensors[name])}")
                loaded.add(name)

        for name in extra_inputs:
            need(name)
        for n in nodes:
            for a in n.args:
                need(a)
            lines.append(f"{indent}{n.out} = {triton_expr(n)}")
        return lines


def _tensor_args(g: FusionGraph, outputs: list[str], row_scalar: bool) -> tuple[list[str], list[str], list[str]]:
    """(pointer params, stride params, launcher stride expressions) for inputs then outputs."""
    ptrs, strides, call = [], [], []
    for i in g.tensor_inputs():
        ptrs.append(f"{i.name}_ptr")
        v = f"{i.name}2"
        if i.role in ("rows", "rows4d"):
            strides += [f"stride_{i.name}_row", f"stride_{i.name}_col"]
            call += [f"{v}.stride(0)", f"{v}.stride(1)"]
        else:
            strides.append(f"stride_{i.name}")
            call.append(f"{v}.stride(0)")
    for o in outputs:
        ptrs.append(f"{o}_ptr")
        if not (row_scalar and o == "y"):
            strides.append(f"stride_{o}_row")
            call.append(f"{o}2.stride(0)")
    return ptrs, strides, call


def _params(head: str, params: list[str], tail: str) -> list[str]:
    """A def line wrapped at 110 columns, continuation lines aligned under the first parameter."""
    lines, cur = [], head + "("
    pad = " " * len(cur)
    for p in params + [tail]:
        piece = p if p == tail else p + ", "
        if len(cur) + len(piece) > 110 and cur.strip():
            lines.append(cur.rstrip())
            cur = pad
        cur += piece
    return lines + [cur]


def _scalars(g: FusionGraph) -> list[str]:
    return [i.name for i in g.scalar_inputs()]


def _jit(g: FusionGraph) -> str:
    names = _scalars(g)
    return f"@triton.jit(do_not_specialize={names!r})" if names else "@triton.jit"


def _store(out: str, value: str, row: str, col: str, mask: str) -> str:
    cast = f"{value}.to({out}_ptr.dtype.element_ty)"
    return f"tl.store({out}_ptr + {row} * stride_{out}_row + {col}, {cast}, mask={mask})"


def _signature(g: FusionGraph, fn: str, with_max_block: bool = True) -> str:
    params = []
    for i in g.inputs:
        params.append(f"{i.name}={i.default!r}" if not i.is_tensor else i.name)
    tail = ", *, max_block=None" if with_max_block else ""
    return f"def {fn}({', '.join(params)}{tail}):"


def _input_checks(g: FusionGraph) -> list[str]:
    lines = []
    for name, rank in g.ranks.items():
        lines += [f"    if {name}.dim() != {rank}:",
                  f'        raise ValueError(f"{name} must have {rank} dims (the reference names its dims by '
                  f'position), got {{{name}.dim()}}")']
    for i in g.tensor_inputs():
        if i.dtype == "int8":
            lines.append(f'    _check("{i.name}", {i.name}, (torch.int8,))')
        elif i.dtype == "bool":
            lines.append(f'    _check("{i.name}", {i.name}, (torch.bool,))')
        else:
            lines.append(f'    _check("{i.name}", {i.name}, FLOAT_DTYPES)')
    return lines


def _out_dtype(g: FusionGraph) -> str:
    if g.out_dtype:
        return f"torch.{g.out_dtype}"
    floats = [i.name for i in g.tensor_inputs() if i.dtype == "input"]
    return f"_result_dtype({', '.join(floats)})" if floats else "torch.float32"


def _views(g: FusionGraph, indent: str = "    ") -> list[str]:
    lines = []
    for i in g.tensor_inputs():
        if i.role in ("rows", "rows4d"):
            lines.append(f"{indent}{i.name}2 = _rows({i.name}, shape)")
        elif i.role == "per_row":
            lines.append(f"{indent}{i.name}2 = _per_row({i.name}, shape)")
        elif i.role == "cols":
            lines.append(f"{indent}if {i.name}.shape != (N,):")
            msg = f"{i.name} must have shape ({{N}},), got {{tuple({i.name}.shape)}}"
            lines.append(f'{indent}    raise ValueError(f"{msg}")')
            lines.append(f"{indent}{i.name}2 = {i.name}")
    return lines


def _scalar_call(g: FusionGraph) -> list[str]:
    return [f"float({s})" for s in _scalars(g)]


def _header(g: FusionGraph, request: str, what: str) -> str:
    doc = f'"""{what}\n\nComposed by kernelgen from the request: {request!r}\nUnderstood as: {g.describe()}\n"""\n'
    return doc + "\nimport torch\nimport triton\nimport triton.language as tl\n"


# ---- pointwise -------------------------------------------------------------------------------------

def _assemble(g: FusionGraph, request: str, what: str, kernels: list[str], launcher: list[str],
              constants: str = "") -> str:
    parts = [_header(g, request, what), constants]
    if needs_tanh(g.nodes()):
        parts.append(TANH_HELPER)
    parts.append("\n" + "\n".join(kernels) + "\n")
    parts.append(HELPERS)
    parts.append("\n\n" + "\n".join(launcher) + "\n")
    return "\n".join(p for p in parts if p)


