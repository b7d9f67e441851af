"""How one recorded call becomes its replay (see kernelgen/plans.py for when calls are recorded and replayed).

`build(launches, watch, out, inputs)` turns what a recording saw (the cached launches with their grids and
arguments, the allocations the call made, what it returned, its tensor arguments) into a generated function
`replay(t0, t1, ..., stream)`: allocate the same buffers, launch the same kernels with the new pointers,
return the same structure. The launches go, in order of preference, through kernelgen's C++ replay (the whole
call in one C++ call, kernelgen/lean_replay.py), kernelgen's lean C launch (kernelgen/lean_launch.py),
Triton 3.6's C launch, or the compiled kernel's own launcher. Anything the replay could not repeat exactly
raises Unplannable.
"""

from __future__ import annotations

import struct
import types

import torch


class Unplannable(Exception):
    """A recorded call that a replay could not repeat exactly."""


def _span(t: torch.Tensor) -> tuple[int, int]:
    """[first byte, past last byte) of the elements a tensor reaches."""
    lo = hi = t.data_ptr()
    if t.numel() == 0:
        return lo, lo
    size = t.element_size()
    for n, s in zip(t.shape, t.stride()):
        reach = (n - 1) * s * size
        if reach < 0:
            lo += reach
        else:
            hi += reach
    return lo, hi + size


def _owner(ptr: int, owners: list[tuple[str, int, torch.Tensor]]):
    """The one (kind, index, offset) whose tensor holds ptr, or raise Unplannable."""
    found = []
    for kind, i, t in owners:
        lo, hi = _span(t)
        if lo <= ptr < hi or ptr == t.data_ptr():
            found.append((kind, i, ptr - t.data_ptr()))
    if len(found) != 1:
        raise Unplannable  # pointing nowhere known, or into two arguments at once
    return found[0]


class _Source:
    """Builds the source of one replay function, binding objects under generated names."""

    def __init__(self):
        self.scope: dict = {"empty_like": torch.empty_like, "empty_strided": torch.empty_strided,
                            "as_strided": torch.as_strided}
        self.lines: list[str] = []

    def bind(self, value) -> str:
        name = f"c{len(self.scope)}"
        self.scope[name] = value
        return name


def _tensor_ref(kind: str, i: int) -> str:
    return f"t{i}" if kind == "input" else f"b{i}"


def _output_expr(out, inputs, buffers, src: _Source) -> str:
    if isinstance(out, torch.Tensor):
        for i, t in enumerate(inputs):
            if out is t:
                return f"t{i}"
        for j, b in enumerate(buffers):
            if out.untyped_storage().data_ptr() == b.untyped_storage().data_ptr() and out.device == b.device:
                if (out.shape, out.stride(), out.storage_offset(), out.dtype) == (b.shape, b.stride(),
                                                                                 b.storage_offset(), b.dtype):
                    return f"b{j}"  # the allocation itself (whatever Python object holds it)
                return (f"as_strided(b{j}, {src.bind(tuple(out.shape))}, {src.bind(tuple(out.stride()))}, "
                        f"{out.storage_offset()})")
        raise Unplannable  # a view of an argument, or a tensor from elsewhere
    if isinstance(out, (tuple, list)):
        items = [_output_expr(o, inputs, buffers, src) for o in out]
        body = "(" + "".join(f"{e}, " for e in items) + ")"
        return body if type(out) is tuple else f"{src.bind(type(out))}({body})"
    if out is None or out is NotImplemented or type(out) in (int, float, bool):
        return src.bind(out)
    raise Unplannable


def _like_input(t: torch.Tensor, zeroed: bool, inputs) -> int | None:
    """The input whose empty_like is this allocation, if one is."""
    for i, x in enumerate(inputs):
        # empty_like keeps the strides of a dense input, so the same metadata means the same buffer
        if (x.shape == t.shape and x.stride() == t.stride() and x.dtype == t.dtype and x.device == t.device
                and x.is_contiguous() and not zeroed):
            return i
    return None


def _buffer_expr(t: torch.Tensor, zeroed: bool, inputs, src: _Source) -> str:
    i = _like_input(t, zeroed, inputs)
    if i is not None:
        return f"empty_like(t{i})"
    expr = (f"empty_strided({src.bind(tuple(t.shape))}, {src.bind(tuple(t.stride()))}, dtype={src.bind(t.dtype)}, "
            f"device={src.bind(t.device)})")
    return expr + ".zero_()" if zeroed else expr


def _direct_launch(run):
    """(C launch, cooperative-grid flag, PDL flag) of a Triton 3.6 launcher whose kernel needs no scratch
    memory, else None. Its Python __call__ only allocates the two scratch buffers (None without scratch)
    and passes these flags ahead of the arguments; calling the C launch directly saves that frame. Other
    Triton versions lay the call out differently and keep __call__."""
    import triton

    if not triton.__version__.startswith("3.6."):
        return None
    c_launch = getattr(run, "launch", None)
    if (not callable(c_launch) or getattr(run, "global_scratch_size", 1) != 0
            or getattr(run, "profile_scratch_size", 1) != 0
            or not hasattr(run, "launch_cooperative_grid") or not hasattr(run, "launch_pdl")):
        return None
    return c_launch, run.launch_cooperative_grid, run.launch_pdl


def _lean_launch(entry, n_args: int, direct):
    """(kernelgen's C launch, its plan for this kernel) when it covers the launch (kernelgen/lean_launch.py):
    Triton 3.6's layout without scratch (`direct`), no cooperative grid, no PDL; else None."""
    if direct is None or direct[1] or direct[2]:
        return None
    from kernelgen import lean_launch

    c_launch = lean_launch.launcher()
    plan = lean_launch.plan(entry.kernel, n_args) if c_launch is not None else None
    return None if plan is None else (c_launch, plan)


def _one_call(launches: list, watch, out, inputs: list, owners: list, src: _Source) -> bool:
    """Fill src with a replay that is one call of kernelgen's C++ replay (kernelgen/lean_replay.py): the
    allocations and every launch in C++. False (src untouched) where it does not cover the call: a launch the
    lean C launch does not cover, a scalar its parameter type cannot hold, an allocation off CUDA."""
    from kernelgen import lean_replay

    if not launches:
        return False
    module = lean_replay.module()
    if module is None:
        return False
    specs = []
    for entry, grid, args in launches:
        lean = _lean_launch(entry, len(args), _direct_launch(entry.run))
        if lean is None:
            return False
        _, (codes, positions, threads, shared) = lean
        params = []
        for position, code in zip(positions, codes.decode()):
            a = args[position]
            if isinstance(a, torch.Tensor):
                kind, i, offset = _owner(a.data_ptr(), owners)
                params.append((i if kind == "input" else len(inputs) + i, offset, 0))
                continue
            try:
                params.append((-1, 0, lean_replay.scalar_bits(code, a)))
            except (struct.error, TypeError, KeyError, OverflowError):
                return False
        if type(entry.function) is not int:
            return False
        specs.append((*(int(v) for v in grid), entry.function, threads, shared, tuple(params)))
    allocs, devices = [], set()
    for t, zeroed in watch.allocations:
        like = _like_input(t, zeroed, inputs)
        if like is None:
            devices.add(t.device)  # allocated on the plan's CUDA device (empty_like: on its argument's)
        allocs.append((-1 if like is None else like, tuple(t.shape), tuple(t.stride()), t.dtype, bool(zeroed)))
    if any(d.type != "cuda" for d in devices) or len(devices) > 1:
        return False
    device = next(iter(devices)).index if devices else 0
    buffers = [t for t, _ in watch.allocations]
    result = _output_expr(out, inputs, buffers, src)
    single = result.startswith("b") and result[1:].isdigit()  # the call returns one allocation as it is
    try:
        plan = module.make(len(inputs), device or 0, int(result[1:]) if single else -1, tuple(allocs), tuple(specs))
    except (TypeError, ValueError, OverflowError):
        return False
    call = f"{src.bind(module.run)}({src.bind(plan)}, stream{''.join(f', t{i}' for i in range(len(inputs)))})"
    src.fast_plan = plan if single else None  # what the call returns is the one allocation: fast() can replay it
    if single:
        src.lines.append(f"return {call}")
    else:
        src.lines.append(f"{''.join(f'b{j}, ' for j in range(len(buffers)))}= {call}" if buffers else call)
        src.lines.append(f"return {result}")
    return True


def build(launches: list, watch, out, inputs: list) -> types.FunctionType:
    """The replay function `replay(t0, t1, ..., stream)` of a recorded call, or raise Unplannable."""
    if watch.computes is not None:
        raise Unplannable
    buffers = [t for t, _ in watch.allocations]
    owners = [("input", i, t) for i, t in enumerate(inputs)] + [("buffer", j, b) for j, b in enumerate(buffers)]
    src = _Source()
    if _one_call(launches, watch, out, inputs, owners, src):
        replay = _compiled_replay(src, len(inputs))
        replay.fast_plan = src.fast_plan
        return replay
    for j, (t, zeroed) in enumerate(watch.allocations):
        src.lines.append(f"b{j} = {_buffer_expr(t, zeroed, inputs, src)}")
    for entry, grid, args in launches:
        call_args = []
        for a in args:
            if isinstance(a, torch.Tensor):
                kind, i, offset = _owner(a.data_ptr(), owners)
                call_args.append(f"{_tensor_ref(kind, i)}.data_ptr()" + (f" + {offset}" if offset else ""))
            else:
                call_args.append(src.bind(a))
        g = ", ".join(str(int(v)) for v in grid)
        direct = _direct_launch(entry.run)
        lean = _lean_launch(entry, len(args), direct)
        if lean is not None:  # our own C launch: the parameters packed by type, cuLaunchKernel
            c_launch, (types, positions, threads, shared) = lean
            src.lines.append(f"{src.bind(c_launch)}({g}, stream, {src.bind(entry.function)}, {threads}, {shared}, "
                             f"{src.bind(types)}{''.join(', ' + call_args[i] for i in positions)})")
            continue
        if direct is not None:  # Triton 3.6's C launch, without the Python __call__ around it
            c_launch, cooperative, pdl = direct
            head = (f"{src.bind(c_launch)}({g}, stream, {src.bind(entry.function)}, {src.bind(cooperative)}, "
                    f"{src.bind(pdl)}, None, None, {src.bind(entry.metadata)}")
        else:
            head = f"{src.bind(entry.run)}({g}, stream, {src.bind(entry.function)}, {src.bind(entry.metadata)}"
        src.lines.append(f"{head}, None, None, None, {', '.join(call_args)})")
    src.lines.append(f"return {_output_expr(out, inputs, buffers, src)}")
    return _compiled_replay(src, len(inputs))


def _compiled_replay(src: _Source, n_inputs: int) -> types.FunctionType:
    params = "".join(f"t{i}, " for i in range(n_inputs))
    code = f"def replay({params}stream):\n" + "".join(f"    {line}\n" for line in src.lines)
    exec(code, src.scope)  # noqa: S102 - source built above from recorded positions; objects are bound by name
    replay = src.scope["replay"]
    replay.source = code
    return replay
