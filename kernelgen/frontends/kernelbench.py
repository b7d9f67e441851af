"""KernelBench problems -> `Reference` (`class Model(nn.Module)`, `get_inputs()`, `get_init_inputs()`).

Forward's arguments come first, then the model's parameters and floating-point buffers, named by their path
(`linear.weight` -> `linear_weight`). The problem's module-level ints (`batch_size = 4096`, and tuples of
them) are its sizes: as written they are the bench shape; divided by a power of two (on the meta device,
nothing allocated, until the largest tensor is small) they give the test shapes. Each tensor dim is named
after the size global it follows at every scale (so verification can vary it; globals equal at every scale
share the name), else it is a fixed size or a dim of its own. The reference sets those globals from its
inputs' shapes, builds `Model` on the meta device in eval mode and calls `torch.func.functional_call`.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from kernelgen.frontends.reference import Reference
from kernelgen.frontends.reference_file import ReferenceFileError, _dtype, _parameters, _row_col, _snake
from kernelgen.spec import InputSpec

SCALE_ABOVE = 16  # module-level ints above this are sizes that test shapes scale down
TEST_NUMEL = 1 << 15  # the largest tensor of the first test shape holds at most this many elements


def kernelbench_reference(path: Path, source: str, scope: dict[str, Any]) -> Reference:
    sizes = {k: v for k, v in scope.items() if not k.startswith("_") and _is_size(v)}
    base = dict(sizes)
    bench = _problem_tensors(path, scope, base)
    scales = []
    # every dim of the largest tensor halves per step: start a little below the step that makes it small
    largest = max(bench["tensors"], key=lambda t: math.prod(t[1]), default=("", (), ""))[1]
    start = max(0, int(math.log2(max(1.0, math.prod(largest) / TEST_NUMEL)) / max(1, len(largest))) - 1)
    best = _smallest_sizes(path, scope, base, True, start) or _smallest_sizes(path, scope, base, False, start)
    if best is not None:
        _, k, scaled, shapes = best
        scales.append((k, scaled, shapes))
        nxt = {g: _scale(v, k + 1) for g, v in base.items()}
        more = _problem_tensors(path, scope, nxt, strict=False) if nxt != scaled else None
        more = more if more is None or len(more["tensors"]) == len(shapes["tensors"]) else None
        if more is not None:
            scales.append((k + 1, nxt, more))
    scope.update(base)
    if not scales:
        raise ReferenceFileError(f"{path}: found no smaller sizes at which the problem builds; give a reference "
                                 "file with INPUTS and SHAPES instead")
    forward_params = _parameters(scope["Model"].forward, path, "Model.forward")[1:]
    names = _input_names(forward_params, bench, path)
    # one name per tensor axis: the size global it follows at every scale, a fixed size, or a dim of its own
    runs = [bench] + [s for _, _, s in scales]
    globals_at = [_flat(base)] + [_flat(s) for _, s, _ in scales]
    dims_by_key: dict[tuple, str] = {}
    followers: dict[str, list[str]] = {}
    inputs: list[InputSpec] = []
    for n, (label, shape, dtype) in enumerate(bench["tensors"]):
        dims = []
        for axis in range(len(shape)):
            key = tuple(r["tensors"][n][1][axis] for r in runs)
            if len(set(key)) == 1:
                dims.append(str(key[0]))
                continue
            if key not in dims_by_key:
                match = [g for g in globals_at[0] if all(ga.get(g) == size for ga, size in zip(globals_at, key))]
                dims_by_key[key] = match[0] if match else f"d{len(dims_by_key)}"
                followers[dims_by_key[key]] = match  # every global of that size follows the dim
            dims.append(dims_by_key[key])
        fill = "positive" if label in bench["positive"] else "randn"
        inputs.append(InputSpec(names[label], "tensor", tuple(dims), dtype, fill))
    for label, value in bench["scalars"]:
        kind = "bool" if isinstance(value, bool) else "int" if isinstance(value, int) else "float"
        inputs.insert(forward_params.index(label) if label in forward_params else len(inputs),
                      InputSpec(names[label], kind, value=value))
    shape_of = [{d: size for d, size in zip(dims_by_key.values(), _transpose(dims_by_key, i))}
                for i in range(len(runs))]
    row, col = _row_col(inputs)
    level = re.match(r"level(\d+)$", path.parent.name)
    op_name = "kb_" + (f"l{level.group(1)}_" if level else "") + _snake(path.stem)
    notes = [
        "KernelBench problem: Model(*get_init_inputs()) in eval mode (dropout off, batch norm on running stats)",
        "module parameters and buffers are inputs: " + (", ".join(
            f"{names[label]} = {label}" for label, _, _ in bench["tensors"] if label not in forward_params) or "none"),
        "test shapes: the problem's sizes divided by 2^" + " and 2^".join(str(k) for k, _, _ in scales)
        + "; bench shape: the problem's own sizes",
    ]
    ref_source = source + "\n\n\n" + _kernelbench_reference(forward_params, bench, names, inputs, base,
                                                              followers)
    return Reference(request=str(path), origin="kernelbench", source=ref_source, inputs=inputs, outputs=["y"],
                     test_shapes=shape_of[1:], bench_shapes=shape_of[:1], name=op_name, notes=notes,
                     row_dim=row, col_dim=col, dtypes=["float32", "float16", "bfloat16"])


def _smallest_sizes(path: Path, scope: dict, base: dict, forward: bool, start: int = 0):
    """(largest tensor, k, sizes, shapes) for the first 2^k division of the sizes whose tensors are all
    small, else the smallest that builds (and, with `forward`, runs forward on the meta device)."""
    best = None
    for k in range(start, 40):
        scaled = {g: _scale(v, k) for g, v in base.items()}
        if best is not None and scaled == best[2]:
            break  # nothing left to scale
        shapes = _problem_tensors(path, scope, scaled, strict=False, forward=forward)
        if shapes is None:
            continue
        # inputs and the result (a matmul's output can be much larger than its operands)
        largest = max([math.prod(s) for _, s, _ in shapes["tensors"]] + [shapes["out_numel"]])
        if best is None or largest < best[0]:
            best = (largest, k, scaled, shapes)
        if largest <= TEST_NUMEL:
            break
    return best


def _is_size(v: Any) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, int):
        return True
    return isinstance(v, tuple) and bool(v) and all(isinstance(e, int) and not isinstance(e, bool) for e in v)


def _scale(v, k: int):
    """A size halved k times while it is even and stays at least 8 (so divisibility by groups and heads
    survives); an odd size is divided by what is left and rounded. Sizes of 16 or less (kernel sizes,
    dims, group counts) are left alone."""
    if isinstance(v, tuple):
        return tuple(_scale(e, k) for e in v)
    if v <= SCALE_ABOVE:
        return v
    for step in range(k):
        if v % 2:
            return max(9, round(v / (1 << (k - step))))
        if v // 2 < 8:
            break
        v //= 2
    return v


def _flat(sizes: dict[str, Any]) -> dict[str, int]:
    out = {}
    for g, v in sizes.items():
        if isinstance(v, tuple):
            out.update({f"{g}_{i}": e for i, e in enumerate(v)})
        else:
            out[g] = v
    return out


def _transpose(dims_by_key: dict[tuple, str], i: int) -> list[int]:
    return [key[i] for key in dims_by_key]


def _problem_tensors(path: Path, scope: dict, sizes: dict, strict: bool = True, forward: bool = True):
    """Shapes of forward's tensor inputs then the model's parameters and float buffers, built on the meta
    device with the size globals set to `sizes` (nothing is allocated)."""
    import torch

    scope.update(sizes)
    try:
        with torch.device("meta"):
            args = scope["get_inputs"]()
            init = scope["get_init_inputs"]() if callable(scope.get("get_init_inputs")) else []
            model = scope["Model"](*init).eval()
            out = None
            if forward and not strict:
                out = model(*args)  # shape checks (pooling windows, groups): meta tensors hold no data
    except Exception as exc:
        if not strict:
            return None
        raise ReferenceFileError(f"{path}: building the problem failed: {type(exc).__name__}: {exc}") from None
    forward = _parameters(scope["Model"].forward, path, "Model.forward")[1:]
    if len(args) != len(forward):
        raise ReferenceFileError(f"{path}: get_inputs() returns {len(args)} values for forward's "
                                 f"{len(forward)} parameters")
    tensors, scalars, positive = [], [], set()
    for label, a in zip(forward, args):
        if isinstance(a, torch.Tensor):
            tensors.append((label, tuple(a.shape), _dtype(a)))
        else:
            scalars.append((label, a))
    state = list(model.named_parameters()) + [(k, b) for k, b in model.named_buffers() if b.is_floating_point()]
    for label, t in state:
        tensors.append((label, tuple(t.shape), "input"))
        if "var" in label.rsplit(".", 1)[-1]:
            positive.add(label)  # a running variance must stay positive
    out_numel = out.numel() if isinstance(out, torch.Tensor) else 0
    return {"tensors": tensors, "scalars": scalars, "positive": positive, "out_numel": out_numel}


def _input_names(forward: list[str], bench: dict, path: Path) -> dict[str, str]:
    names = {label: label for label in forward}
    taken = set(forward)
    for label, _, _ in bench["tensors"][len([t for t in bench["tensors"] if t[0] in forward]):]:
        n = _snake(label) or "param"
        n = n if n[0].isalpha() else "p_" + n
        while n in taken:
            n += "_p"
        names[label] = n
        taken.add(n)
    return names


def _kernelbench_reference(forward: list[str], bench: dict, names: dict[str, str], inputs: list[InputSpec],
                           base: dict[str, Any], followers: dict[str, list[str]]) -> str:
    """reference(...): the size globals from the inputs' shapes, the model on the meta device, and a
    functional call with the inputs as its parameters and buffers."""
    args = ", ".join(i.name for i in inputs)
    where: dict[str, str] = {}  # size global -> where its size is read from
    for i in inputs:
        for axis, d in enumerate(i.shape):
            for g in followers.get(d, []):
                where.setdefault(g, f"{i.name}.shape[{axis}]")
    dims = set(where)
    # a scaled size no input shows (a group count, a hidden width) follows the first size global that
    # one does, in proportion: the problem's sizes scale together
    anchor = next((g for g in base if g in where and isinstance(base[g], int) and base[g] > SCALE_ABOVE), None)
    for g, v in base.items():
        if anchor and g not in where and isinstance(v, int) and v > SCALE_ABOVE and g != anchor:
            where[g] = f"max(1, {v} * {where[anchor]} // {base[anchor]})"
            dims.add(g)
    assigns = []
    for g, v in base.items():
        if isinstance(v, tuple):
            parts = [where.get(f"{g}_{n}", repr(e)) if f"{g}_{n}" in dims else repr(e) for n, e in enumerate(v)]
            if any(f"{g}_{n}" in dims for n in range(len(v))):
                assigns.append(f"    {g} = ({', '.join(parts)}{',' if len(parts) == 1 else ''})")
        elif g in dims:
            assigns.append(f"    {g} = {where[g]}")
    state = [label for label, _, _ in bench["tensors"] if label not in forward]
    device = f"{inputs[0].name}.device" if inputs and inputs[0].kind == "tensor" else "None"
    lines = [
        f"def reference({args}):",
        "    # the problem's sizes follow the inputs' shapes; the model's parameters and buffers are inputs",
    ]
    globals_set = [a.split(" = ")[0].strip() for a in assigns]
    if globals_set:
        lines.append(f"    global {', '.join(globals_set)}")
    lines += assigns
    lines += [
        '    with torch.device("meta"):',
        "        model = Model(*get_init_inputs())",
        "    model.eval()",
        "    tensors = {" + ", ".join(f"{label!r}: {names[label]}" for label in state) + "}",
        "    for key, buf in model.named_buffers():",
        "        if not buf.is_floating_point():",
        f"            tensors[key] = torch.zeros(buf.shape, dtype=buf.dtype, device={device})",
        f"    return torch.func.functional_call(model, tensors, ({''.join(names[f] + ', ' for f in forward)}))",
    ]
    return "\n".join(lines) + "\n"
