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

from kernelgen.agents.fusion import FusionGraph, Input, Node
from kernelgen.agents.templates import TANH_HELPER, needs_tanh, torch_expr, triton_expr


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
        got = getattr(t, "dtype", type(t))
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
        tensors = {i.name: i for i in self.g.tensor_inputs() if i.role not in ("lhs", "rhs")}
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
def pointwise_source(g: FusionGraph, fn: str, request: str) -> str:
    outputs = g.output_names
    ptrs, strides, call_strides = _tensor_args(g, outputs, False)
    loads = _Loads(g, "rows[:, None]", "cols[None, :]", "in_bounds", "cols[None, :] < N", "rows[:, None] < M")
    body = loads.code(g.prologue, "    ")
    params = ptrs + strides + ["M", "N"] + _scalars(g)
    kernel = [
        _jit(g),
        *_params(f"def _{fn}_kernel", params, "BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):"),
        "    # one program per tile of BLOCK_M rows x BLOCK_N columns; rows are int64 so large tensors don't overflow",
        "    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)",
        "    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)",
        "    in_bounds = (rows[:, None] < M) & (cols[None, :] < N)",
        *body,
        "    " + _store("y", g.outputs[0], "rows[:, None]", "cols[None, :]", "in_bounds"),
    ]
    rows_inputs = [i.name for i in g.tensor_inputs() if i.role == "rows"]
    launcher = [
        _signature(g, fn),
        f'    """{g.describe()}\n\n'
        '    Inputs broadcast like PyTorch ([N] or [..., N] against the rows); rows may be strided.\n'
        '    max_block caps the column tile."""',
        *_input_checks(g),
        f"    shape = _broadcast_shape({', '.join(f'{n}.shape' for n in rows_inputs)})",
        "    N = shape[-1]",
        f"    y = torch.empty(shape, dtype={_out_dtype(g)}, device={rows_inputs[0]}.device)",
        "    if y.numel() == 0:",
        "        return y",
        *_views(g),
        "    y2 = y.view(-1, N)",
        "    M = y2.shape[0]",
        "    block_n = min(_next_power_of_2(N), max_block or 1024, 1024)",
        "    block_m = max(1, min(_next_power_of_2(M), TILE_ELEMS // block_n))",
        "    grid = (_cdiv(M, block_m), _cdiv(N, block_n))",
        f"    _{fn}_kernel[grid]({', '.join(f'{i.name}2' for i in g.tensor_inputs())}, y2,",
        f"        {', '.join(call_strides + ['M', 'N'] + _scalar_call(g))},",
        "        BLOCK_M=block_m, BLOCK_N=block_n, num_warps=_num_warps(block_m * block_n))",
        "    return y",
    ]
    constants = "\n# elements per program: enough work per tile to hide memory latency\nTILE_ELEMS = 4096\n"
    return _assemble(g, request, "Pointwise kernel over the rows of the broadcast output.", kernel, launcher,
                     constants)


def _assemble(g: FusionGraph, request: str, what: str, kernels: list[str], launcher: list[str],
              constants: str = "") -> str:
    parts = [_header(g, request, what), constants]
    if needs_tanh(g.nodes()):
        parts.append(TANH_HELPER)
    parts.append("\n" + "\n".join(kernels) + "\n")
    parts.append(HELPERS)
    parts.append("\n\n" + "\n".join(launcher) + "\n")
    return "\n".join(p for p in parts if p)


# ---- row reduction ---------------------------------------------------------------------------------
_NEG_INF_MASKED = ("softmax", "log_softmax", "logsumexp", "max")


def _single_stats(kind: str, v: str, eps: str | None) -> list[str]:
    """Statements computing the reduction of a row held in one block (v: the masked-in row)."""
    if kind in _NEG_INF_MASKED:
        lines = [f'v = tl.where(in_bounds, {v}, float("-inf"))', "v_max = tl.max(v, axis=0)"]
        if kind == "max":
            return lines + ["r = v_max"]
        lines += ["e = tl.exp(v - v_max)", "denom = tl.sum(e, axis=0)"]
        return lines + {"softmax": ["r = e / denom"], "log_softmax": ["r = (v - v_max) - tl.log(denom)"],
                        "logsumexp": ["r = v_max + tl.log(denom)"]}[kind]
    lines = [f"v = tl.where(in_bounds, {v}, 0.0)"]
    if kind == "rms_norm":
        return lines + [f"rstd = 1.0 / tl.sqrt(tl.sum(v * v, axis=0) / N + {eps})", "r = v * rstd"]
    if kind == "l2_normalize":
        return lines + [f"r = v / tl.maximum(tl.sqrt(tl.sum(v * v, axis=0)), {eps})"]
    if kind == "sum":
        return lines + ["r = tl.sum(v, axis=0)"]
    if kind == "mean":
        return lines + ["r = tl.sum(v, axis=0) / N"]
    lines += ["mean = tl.sum(v, axis=0) / N", "d = tl.where(in_bounds, v - mean, 0.0)"]
    if kind == "var":
        return lines + ["r = tl.sum(d * d, axis=0) / (N - 1)"]  # unbiased, as torch.var
    return lines + [f"rstd = 1.0 / tl.sqrt(tl.sum(d * d, axis=0) / N + {eps})", "r = d * rstd"]  # layer_norm


def reduction_source(g: FusionGraph, fn: str, request: str) -> str:
    r = g.reduction
    assert r is not None
    outputs = g.output_names
    row_scalar = r.row_scalar
    ptrs, strides, call_strides = _tensor_args(g, outputs, row_scalar)
    extra = ["n_queries"] if g.causal else []
    params = ptrs + strides + ["N"] + extra + _scalars(g)
    loads = _Loads(g, "row", "cols", "in_bounds", "in_bounds", None)
    head = [
        "    row = tl.program_id(0).to(tl.int64)",
        *(["    query = row % n_queries  # causal: the row's position among the queries"] if g.causal else []),
    ]
    h_out = g.outputs[1] if len(g.outputs) > 1 else None
    affine_in = tuple(a for a in (r.weight, r.bias) if a)

    def affine(indent: str) -> list[str]:
        out = []
        if r.weight:
            out.append(f"{indent}r = r * {r.weight}")
        if r.bias:
            out.append(f"{indent}r = r + {r.bias}")
        return out

    def finish(indent: str) -> list[str]:
        lines = loads.code(g.epilogue, indent)
        final = g.outputs[0] if g.epilogue else "r"
        if row_scalar:
            lines.append(f"{indent}tl.store(y_ptr + row, {final}.to(y_ptr.dtype.element_ty))")
        else:
            lines.append(f"{indent}" + _store("y", final, "row", "cols", "in_bounds"))
        return lines

    # single block
    single = [
        _jit(g),
        *_params(f"def _{fn}_row", params, "BLOCK_N: tl.constexpr):"),
        "    # the whole row in one block: every input is read once",
        *head,
        "    cols = tl.arange(0, BLOCK_N)",
        "    in_bounds = cols < N",
        *loads.code(g.prologue, "    ", (r.arg,) + affine_in),
    ]
    if h_out:
        single.append("    " + _store("h", h_out, "row", "cols", "in_bounds"))
    single += ["    " + s for s in _single_stats(r.kind, r.arg, r.eps)]
    single += affine("    ") + finish("    ")

    # looped
    def block(indent: str, extra_inputs=()) -> list[str]:
        return [f"{indent}cols = start + tl.arange(0, BLOCK_N)", f"{indent}in_bounds = cols < N",
                *_Loads(g, "row", "cols", "in_bounds", "in_bounds", None).code(g.prologue, indent,
                                                                              (r.arg,) + tuple(extra_inputs))]

    v = r.arg
    loop = "    for start in range(0, N, BLOCK_N):"
    looped = [
        _jit(g),
        *_params(f"def _{fn}_looped", params, "BLOCK_N: tl.constexpr):"),
        "    # rows longer than one block: statistics first, then (for full rows) a second pass that",
        "    # recomputes the prologue from the inputs (re-read from L2) and writes the output",
        *head,
    ]
    k = r.kind
    if k in ("softmax", "log_softmax", "logsumexp"):
        looped += [
            '    m_acc = tl.full([BLOCK_N], float("-inf"), tl.float32)',
            "    s_acc = tl.zeros([BLOCK_N], dtype=tl.float32)", loop, *block("        "),
            f'        v = tl.where(in_bounds, {v}, float("-inf"))',
            "        m_new = tl.maximum(m_acc, v)",
            "        # online softmax per lane; a lane that has only seen -inf (causal) subtracts 0 instead of -inf",
            '        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)',
            "        s_acc = s_acc * tl.exp(m_acc - m_safe) + tl.exp(v - m_safe)",
            "        m_acc = m_new",
            "    v_max = tl.max(m_acc, axis=0)",
            "    denom = tl.sum(s_acc * tl.exp(m_acc - v_max), axis=0)",
        ]
        if k == "logsumexp":
            looped.append("    r = v_max + tl.log(denom)")
    elif k == "max":
        looped += ['    m_acc = tl.full([BLOCK_N], float("-inf"), tl.float32)', loop, *block("        "),
                   f'        m_acc = tl.maximum(m_acc, tl.where(in_bounds, {v}, float("-inf")))',
                   "    r = tl.max(m_acc, axis=0)"]
    else:
        square = k in ("rms_norm", "l2_normalize")
        looped += ["    acc = tl.zeros([BLOCK_N], dtype=tl.float32)", loop, *block("        "),
                   f"        v = tl.where(in_bounds, {v}, 0.0)",
                   "        acc += v * v" if square else "        acc += v"]
        if k == "rms_norm":
            looped.append(f"    rstd = 1.0 / tl.sqrt(tl.sum(acc, axis=0) / N + {r.eps})")
        elif k == "l2_normalize":
            looped.append(f"    inv_norm = 1.0 / tl.maximum(tl.sqrt(tl.sum(acc, axis=0)), {r.eps})")
        elif k == "sum":
            looped.append("    r = tl.sum(acc, axis=0)")
        else:
            looped.append("    mean = tl.sum(acc, axis=0) / N")
            if k == "mean":
                looped.append("    r = mean")
            else:
                looped += ["    acc = tl.zeros([BLOCK_N], dtype=tl.float32)", loop, *block("        "),
                           f"        d = tl.where(in_bounds, {v} - mean, 0.0)", "        acc += d * d"]
                looped.append("    r = tl.sum(acc, axis=0) / (N - 1)" if k == "var"
                              else f"    rstd = 1.0 / tl.sqrt(tl.sum(acc, axis=0) / N + {r.eps})")
    if row_scalar:
        looped += finish("    ")
    else:
        normalize = {"softmax": f"r = tl.exp({v} - v_max) / denom", "log_softmax": f"r = ({v} - v_max) - tl.log(denom)",
                     "rms_norm": f"r = {v} * rstd", "layer_norm": f"r = ({v} - mean) * rstd",
                     "l2_normalize": f"r = {v} * inv_norm"}[k]
        looped += [loop, *block("        ", affine_in)]
        if h_out:
            looped.append("        " + _store("h", h_out, "row", "cols", "in_bounds"))
        looped += ["        " + normalize] + affine("        ") + finish("        ")

    rows_inputs = [i.name for i in g.tensor_inputs() if i.role in ("rows", "rows4d")]
    out_shape = "shape[:-1]" if row_scalar else "shape"
    dev = f"{rows_inputs[0]}.device"
    launcher = [
        _signature(g, fn),
        f'    """{g.describe()}\n\n'
        '    Rows may be strided; max_block caps the block (longer rows take the looped kernel)."""',
        *_input_checks(g),
        f"    shape = _broadcast_shape({', '.join(f'{n}.shape' for n in rows_inputs)})",
        "    N = shape[-1]",
        f"    y = torch.empty({out_shape}, dtype={_out_dtype(g)}, device={dev})",
    ]
    if h_out:
        launcher.append(f"    h = torch.empty(shape, dtype=y.dtype, device={dev})")
    ret = "y, h" if h_out else "y"
    launcher += [
        "    if y.numel() == 0:",
        f"        return {ret}",
        *(["    if N == 0:", '        raise ValueError("cannot reduce rows of length 0")'] if row_scalar else []),
        *_views(g),
        "    y2 = y.view(-1)" if row_scalar else "    y2 = y.view(-1, N)",
        *(["    h2 = h.view(-1, N)"] if h_out else []),
        f"    M = {rows_inputs[0]}2.shape[0]",
        "    limit = min(MAX_FUSED_N, max_block or MAX_FUSED_N)",
        "    block_n = _next_power_of_2(N)",
        f"    kernel = _{fn}_row",
        "    if block_n > limit:",
        f"        kernel, block_n = _{fn}_looped, min(limit, 4096)",
        f"    kernel[(M,)]({', '.join([f'{i.name}2' for i in g.tensor_inputs()] + [f'{o}2' for o in outputs])},",
        f"        {', '.join(call_strides + ['N'] + (['shape[-2]'] if g.causal else []) + _scalar_call(g))},",
        "        BLOCK_N=block_n, num_warps=_num_warps(block_n))",
        f"    return {ret}",
    ]
    constants = "\n# longest row kept in registers in one block (8K float32 per row with 16 warps is 16 per thread)\n" \
                "MAX_FUSED_N = 8192\n"
    what = f"Row {r.kind} with a fused pointwise prologue/epilogue: one program per row."
    return _assemble(g, request, what, single + [""] * 2 + looped, launcher, constants)


# ---- matmul ----------------------------------------------------------------------------------------
MATMUL_CONFIGS = '''
# Tiles for H100-class GPUs (the tutorial's grid, trimmed); the autotuner times them once per (M, N, K).
_CONFIGS = [
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=8, num_stages=4),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 32, "GROUP_M": 8}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 32, "GROUP_M": 8}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "GROUP_M": 8}, num_warps=4, num_stages=4),
]


def _fp32_dot(a, b):
    # float32 inputs stay IEEE float32. Triton 3.9's interpreter gets bfloat16 tl.dot wrong (1e10 errors on a
    # 16x16 tile), so there bfloat16 tiles are upcast first: exact, since bf16 products fit in float32.
    if _INTERPRETED and torch.bfloat16 in (a.dtype, b.dtype):
        return True
    return a.dtype == torch.float32 and b.dtype == torch.float32


def _fit_max_block(configs, named_args, **kwargs):
    """Drop tiles wider than the caller's max_block (keep the narrowest if none fits)."""
    fits = [c for c in configs if c.kwargs["BLOCK_N"] <= named_args["max_tile_n"]]
    return fits or [min(configs, key=lambda c: c.kwargs["BLOCK_N"])]
'''


def matmul_source(g: FusionGraph, fn: str, request: str) -> str:
    epi_inputs = [i for i in g.tensor_inputs() if i.role not in ("lhs", "rhs")]
    ptrs, strides = ["a_ptr", "b_ptr"], ["stride_am", "stride_ak", "stride_bk", "stride_bn"]
    call = ["a.stride(0)", "a.stride(1)", "b.stride(0)", "b.stride(1)"]
    for i in epi_inputs:
        ptrs.append(f"{i.name}_ptr")
        if i.role == "rows":
            strides += [f"stride_{i.name}_row", f"stride_{i.name}_col"]
            call += [f"{i.name}2.stride(0)", f"{i.name}2.stride(1)"]
        else:
            strides.append(f"stride_{i.name}")
            call.append(f"{i.name}2.stride(0)")
    ptrs.append("y_ptr")
    strides.append("stride_y_row")
    call.append("y.stride(0)")
    params = ptrs + strides + ["M", "N", "K", "max_tile_n"] + _scalars(g)
    loads = _Loads(g, "offs_m[:, None]", "offs_n[None, :]", "in_bounds", "offs_n[None, :] < N", "offs_m[:, None] < M")
    kernel = [
        _jit(g),
        *_params(f"def _{fn}_kernel", params + ["FP32_DOT: tl.constexpr", "BLOCK_M: tl.constexpr",
                                                 "BLOCK_N: tl.constexpr", "BLOCK_K: tl.constexpr"],
                 "GROUP_M: tl.constexpr):"),
        "    # grouped ordering: GROUP_M row blocks share their B column blocks while they are in L2",
        "    pid = tl.program_id(0)",
        "    num_pid_m = tl.cdiv(M, BLOCK_M)",
        "    num_pid_n = tl.cdiv(N, BLOCK_N)",
        "    group = GROUP_M * num_pid_n",
        "    first_m = (pid // group) * GROUP_M",
        "    group_m = min(num_pid_m - first_m, GROUP_M)",
        "    pid_m = first_m + (pid % group) % group_m",
        "    pid_n = (pid % group) // group_m",
        "    offs_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)",
        "    offs_n = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)",
        "    offs_k = tl.arange(0, BLOCK_K)",
        "    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)",
        "    for k in range(0, K, BLOCK_K):",
        "        a_mask = (offs_m[:, None] < M) & (k + offs_k[None, :] < K)",
        "        b_mask = (k + offs_k[:, None] < K) & (offs_n[None, :] < N)",
        "        a = tl.load(a_ptr + offs_m[:, None] * stride_am + (k + offs_k[None, :]) * stride_ak, mask=a_mask,"
        " other=0.0)",
        "        b = tl.load(b_ptr + (k + offs_k[:, None]) * stride_bk + offs_n[None, :] * stride_bn, mask=b_mask,"
        " other=0.0)",
        "        if FP32_DOT:",
        "            # float32 math, no TF32 rounding (torch's default matmul precision)",
        '            acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")',
        "        else:",
        "            acc = tl.dot(a, b, acc)",
        "    in_bounds = (offs_m[:, None] < M) & (offs_n[None, :] < N)",
        "    mm = acc",
        *loads.code(g.epilogue, "    "),
        "    " + _store("y", g.outputs[0], "offs_m[:, None]", "offs_n[None, :]", "in_bounds"),
        "",
        "",
        "# Triton's CPU interpreter has no benchmarker: there the autotuner gets one config (never timed)",
        f'_INTERPRETED = type(_{fn}_kernel).__name__ == "InterpretedFunction"',
        f"_{fn}_tuned = triton.autotune(configs=_CONFIGS[-1:] if _INTERPRETED else _CONFIGS,",
        '                               key=["M", "N", "K", "max_tile_n"],',
        '                               prune_configs_by={"early_config_prune": _fit_max_block})'
        f"(_{fn}_kernel)",
    ]
    launcher = [
        _signature(g, fn),
        f'    """{g.describe()}\n\n'
        '    a [M, K] @ b [K, N] with the epilogue fused; any strides. max_block caps the N tile."""',
        *_input_checks(g),
        "    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[0]:",
        '        raise ValueError(f"a [M, K] and b [K, N] expected, got {tuple(a.shape)} and {tuple(b.shape)}")',
        "    M, K = a.shape",
        "    N = b.shape[1]",
        "    shape = (M, N)",
        f"    y = torch.empty(shape, dtype={_out_dtype(g)}, device=a.device)",
        "    if y.numel() == 0:",
        "        return y",
        *[ln for ln in _views(g) if "a2 =" not in ln and "b2 =" not in ln],
        '    grid = lambda meta: (_cdiv(M, meta["BLOCK_M"]) * _cdiv(N, meta["BLOCK_N"]),)',
        f"    _{fn}_tuned[grid](a, b, {''.join(f'{i.name}2, ' for i in epi_inputs)}y,",
        f"        {', '.join(call + ['M', 'N', 'K', 'max_block or 1 << 30'] + _scalar_call(g))},",
        "        FP32_DOT=_fp32_dot(a, b))",
        "    return y",
    ]
    return _assemble(g, request, "Matmul with a fused pointwise epilogue (tl.dot, autotuned tiles).",
                     [MATMUL_CONFIGS] + kernel, launcher)


def kernel_source(g: FusionGraph, fn: str, request: str) -> str:
    if g.matmul:
        return matmul_source(g, fn, request)
    if g.reduction:
        return reduction_source(g, fn, request)
    return pointwise_source(g, fn, request)
