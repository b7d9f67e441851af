"""The row-reduction template: one program per row, a single-block and a looped variant."""

from __future__ import annotations

from kernelgen.codegen.common import (
    FusionGraph,
    _assemble,
    _input_checks,
    _jit,
    _Loads,
    _out_dtype,
    _params,
    _scalar_call,
    _scalars,
    _signature,
    _store,
    _tensor_args,
    _views,
)

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
    out_shape = ("shape[:-1] + (1,)" if r.keepdim else "shape[:-1]") if row_scalar else "shape"
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
