"""The pointwise template: a 2-D grid of (row block x column block) tiles over the broadcast output."""

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

