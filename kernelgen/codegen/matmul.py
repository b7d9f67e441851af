"""The matmul template: a grouped-order, autotuned tl.dot kernel with the pointwise epilogue fused."""

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
    _views,
)

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
    epi_inputs = [i for i in g.tensor_inputs() if i.role not in ("lhs", "rhs", "rhs_t")]
    ptrs, strides = ["lhs_ptr", "rhs_ptr"], ["stride_am", "stride_ak", "stride_bk", "stride_bn"]
    a_name = next(i.name for i in g.inputs if i.role == "lhs")
    b_name = next(i.name + ("_t" if i.role == "rhs_t" else "") for i in g.inputs if i.role in ("rhs", "rhs_t"))
    call = [f"{a_name}.stride(0)", f"{a_name}.stride(1)", f"{b_name}.stride(0)", f"{b_name}.stride(1)"]
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
    call.append("y2.stride(0)")
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
        "        a = tl.load(lhs_ptr + offs_m[:, None] * stride_am + (k + offs_k[None, :]) * stride_ak, mask=a_mask,"
        " other=0.0)",
        "        b = tl.load(rhs_ptr + (k + offs_k[:, None]) * stride_bk + offs_n[None, :] * stride_bn, mask=b_mask,"
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
    lhs = next(i.name for i in g.inputs if i.role == "lhs")
    rhs_in = next(i for i in g.inputs if i.role in ("rhs", "rhs_t"))
    # a right operand given as [N, K] (a Linear's weight) is used through its transposed view
    rhs = f"{rhs_in.name}_t" if rhs_in.role == "rhs_t" else rhs_in.name
    launcher = [
        _signature(g, fn),
        f'    """{g.describe()}\n\n'
        f'    {lhs} [..., M, K] @ {rhs_in.name} {"[N, K] transposed" if rhs_in.role == "rhs_t" else "[K, N]"} with the'
        f' epilogue fused;\n    {rhs_in.name} any strides, the rows of {lhs} at one stride (leading dims a view can'
        ' merge). max_block caps the N tile."""',
        *_input_checks(g),
        *([f"    {rhs} = {rhs_in.name}.t()"] if rhs_in.role == "rhs_t" else []),
        f"    if {lhs}.dim() < 2 or {rhs}.dim() != 2 or {lhs}.shape[-1] != {rhs}.shape[0]:",
        f'        raise ValueError(f"{lhs} [..., M, K] and a [K, N] right operand expected, got "'
        f'f"{{tuple({lhs}.shape)}} and {{tuple({rhs}.shape)}}")',
        f"    y_lead = tuple({lhs}.shape[:-1])",
        f"    K, N = {rhs}.shape",
        "    M = 1",
        f"    for d in {lhs}.shape[:-1]:",
        "        M *= d",
        "    # like a @ b: the leading dims of the left operand are rows, seen as one row dim through a view (the",
        "    # rows must sit at one uniform stride, whatever K's stride); a layout that needs a copy is refused",
        "    try:",
        f"        {lhs} = {lhs}.view(M, K)",
        "    except RuntimeError:",
        f'        raise ValueError(f"{lhs} of shape {{tuple(y_lead)}} x K cannot be seen as [M, K] rows without a "',
        '                         "copy (its rows are not at one uniform stride)") from None',
        "    shape = (*y_lead, N)",
        f"    y = torch.empty(shape, dtype={_out_dtype(g)}, device={lhs}.device)",
        "    if y.numel() == 0:",
        "        return y",
        "    y2 = y.view(M, N)",
        *_views(g),
        '    grid = lambda meta: (_cdiv(M, meta["BLOCK_M"]) * _cdiv(N, meta["BLOCK_N"]),)',
        f"    _{fn}_tuned[grid]({lhs}, {rhs}, {''.join(f'{i.name}2, ' for i in epi_inputs)}y2,",
        f"        {', '.join(call + ['M', 'N', 'K', 'max_block or 1 << 30'] + _scalar_call(g))},",
        f"        FP32_DOT=_fp32_dot({lhs}, {rhs}))",
        "    return y",
    ]
    return _assemble(g, request, "Matmul with a fused pointwise epilogue (tl.dot, autotuned tiles).",
                     [MATMUL_CONFIGS] + kernel, launcher)


