"""Reference files -> `Reference`: a Python file with a `reference(...)` function, or a KernelBench problem.

A reference file is trusted user code: it runs in this process when it is loaded (never at import time of
kernelgen). Two forms:

1. A `reference(...)` function plus its inputs, either as symbolic shapes

       INPUTS = {"x": ["M", "N"], "bias": ["N"], "eps": 1e-6}   # shapes by dim name; a number is a scalar
       SHAPES = [{"M": 4, "N": 64}, {"M": 3, "N": 200}]           # test shapes (small)
       BENCH_SHAPES = [{"M": 4096, "N": 4096}]                    # optional: shapes for timing

   (an input may also be a table: {"shape": ["M", "N"], "dtype": "bool", "fill": "rand"}), or as example
   values: `get_inputs()` returning tensors (and scalars) in the order of reference's parameters; equal sizes
   get the same dim name (M for the first input's first dim, N for its last, then K, B, C, ...).
2. A KernelBench problem: `class Model(nn.Module)`, `get_inputs()`, `get_init_inputs()`. The model's
   parameters and floating-point buffers become inputs after forward's own arguments, named by their path
   (`linear.weight` -> `linear_weight`). The problem's sizes are module-level ints (`batch_size = 4096`):
   they are the bench shape, and scaled down by a power of two for the test shapes; each tensor dim takes the
   name of the global it follows at every scale, so verification can vary it, else a fixed size or a dim of
   its own. The model runs in eval mode (dropout off, batch norm on its running statistics).

The `source` of the Reference is self-contained (torch, F and math in scope, torch submodule imports turned
into assignments, as a spec.toml `reference` must be): for a KernelBench problem it is the problem's source
plus a `reference(...)` that sets the size globals from its inputs' shapes, builds `Model` on the meta device
and calls it with `torch.func.functional_call`.
"""

from __future__ import annotations

import ast
import inspect
import math
import re
from pathlib import Path
from typing import Any

from kernelgen.errors import KernelgenError
from kernelgen.frontends.reference import Reference
from kernelgen.spec import FILLS, FIXED_DTYPES, InputSpec

SCALE_ABOVE = 16  # module-level ints above this are sizes that test shapes scale down
TEST_NUMEL = 1 << 15  # the largest tensor of the first test shape holds at most this many elements
_DIM_LETTERS = ("M", "N", "K", "B", "C", "H", "W", "D", "L", "P", "Q", "R", "S", "T")
_FIXED = {"torch.int8": "int8", "torch.int32": "int32", "torch.int64": "int64", "torch.bool": "bool"}


class ReferenceFileError(KernelgenError, ValueError):
    """The file cannot be read as a reference; the message names the file and what is missing."""


def load_reference_file(path: str | Path, name: str | None = None) -> Reference:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ReferenceFileError(f"{path}: cannot read the reference file: {exc.strerror or exc}") from None
    portable = portable_source(text, path)
    scope = _run(portable, path)
    if isinstance(scope.get("Model"), type) and callable(scope.get("get_inputs")):
        ref = _kernelbench(path, portable, scope)
    elif callable(scope.get("reference")):
        ref = _function_file(path, portable, scope)
    else:
        raise ReferenceFileError(f"{path}: defines neither reference(...) nor a KernelBench problem "
                                 "(class Model, get_inputs(), get_init_inputs())")
    if name:
        ref.name = name
    return ref


def portable_source(text: str, path: Path | str = "<reference>") -> str:
    """The file with `import torch.nn as nn`-style imports turned into assignments (`nn = torch.nn`): a spec
    reference may import only torch and math, and has torch, F and math in scope anyway."""
    try:
        tree = ast.parse(text)
    except SyntaxError as exc:
        raise ReferenceFileError(f"{path}: not valid Python: {exc.msg} (line {exc.lineno})") from None
    lines = text.splitlines()
    for node in sorted(tree.body, key=lambda n: -n.lineno):
        new = None
        if isinstance(node, ast.Import) and all(a.name.startswith("torch.") and a.asname for a in node.names):
            new = [f"{a.asname} = {a.name}" for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] == "torch" \
                and all(a.name != "*" for a in node.names):
            new = [f"{a.asname or a.name} = {node.module}.{a.name}" for a in node.names]
        if new is not None:
            indent = " " * node.col_offset
            lines[node.lineno - 1: node.end_lineno] = [indent + "; ".join(new)]
    body = "\n".join(lines).strip("\n")
    return body if re.search(r"^import torch\s*$", body, re.M) else "import torch\n" + body


def _run(source: str, path: Path) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    scope: dict[str, Any] = {"torch": torch, "F": F, "math": math, "__name__": "kernelgen_reference"}
    try:
        exec(compile(source, str(path), "exec"), scope)  # noqa: S102 - the user's own file, run on request
    except Exception as exc:
        raise ReferenceFileError(f"{path}: running the file failed: {type(exc).__name__}: {exc}") from None
    return scope


def _snake(text: str) -> str:
    return re.sub(r"_+", "_", re.sub(r"[^a-z0-9]+", "_", text.lower())).strip("_")


# ---- form 1: a reference(...) function -------------------------------------------------------------
def _function_file(path: Path, source: str, scope: dict[str, Any]) -> Reference:
    params = _parameters(scope["reference"], path, "reference")
    name = _snake(path.stem) or "reference_op"
    name = name if name[0].isalpha() else "op_" + name
    if "INPUTS" in scope:
        inputs, test, bench = _declared_inputs(scope, params, path)
        notes = ["inputs and shapes from the file's INPUTS / SHAPES"]
    elif callable(scope.get("get_inputs")):
        values = _call(scope["get_inputs"], path, "get_inputs()")
        if len(values) != len(params):
            raise ReferenceFileError(f"{path}: get_inputs() returns {len(values)} values for reference's "
                                     f"{len(params)} parameters ({', '.join(params)})")
        inputs, dims = _inputs_from_examples(params, values)
        test = [dims] if dims else [{}]
        bench = _list_of_shapes(scope.get("BENCH_SHAPES", []), path, "BENCH_SHAPES")
        notes = ["dims named by equal sizes among get_inputs()'s tensors"]
    else:
        raise ReferenceFileError(f"{path}: reference(...) needs its inputs: INPUTS + SHAPES, or get_inputs()")
    outputs = scope.get("OUTPUTS") or ["y"]
    row, col = _row_col(inputs)
    return Reference(request=str(path), origin="file", source=source, inputs=inputs, outputs=list(outputs),
                     test_shapes=test, bench_shapes=bench, name=name, notes=notes, row_dim=row, col_dim=col,
                     dtypes=list(scope.get("DTYPES") or ["float32", "float16", "bfloat16"]))


def _parameters(fn, path: Path, what: str) -> list[str]:
    params = []
    for p in inspect.signature(fn).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise ReferenceFileError(f"{path}: {what} must name its parameters (no *args / **kwargs)")
        params.append(p.name)
    return params


def _call(fn, path: Path, what: str) -> list[Any]:
    try:
        out = fn()
    except Exception as exc:
        raise ReferenceFileError(f"{path}: {what} failed: {type(exc).__name__}: {exc}") from None
    return list(out) if isinstance(out, (list, tuple)) else [out]


def _list_of_shapes(value: Any, path: Path, what: str) -> list[dict[str, int]]:
    if not isinstance(value, (list, tuple)) or not all(
            isinstance(s, dict) and all(isinstance(v, int) and v >= 0 for v in s.values()) for s in value):
        raise ReferenceFileError(f"{path}: {what} must be a list of {{dim name: size}} tables")
    return [{str(k): int(v) for k, v in s.items()} for s in value]


def _declared_inputs(scope: dict, params: list[str], path: Path):
    declared = scope["INPUTS"]
    if not isinstance(declared, dict) or list(declared) != params:
        raise ReferenceFileError(f"{path}: INPUTS must be a table with reference's parameters in order: "
                                 f"{', '.join(params)}")
    inputs = []
    for key, item in declared.items():
        if isinstance(item, bool):
            inputs.append(InputSpec(key, "bool", value=item))
        elif isinstance(item, (int, float)):
            inputs.append(InputSpec(key, "int" if isinstance(item, int) else "float", value=item))
        elif isinstance(item, (list, tuple)):
            inputs.append(InputSpec(key, "tensor", tuple(str(d) for d in item)))
        elif isinstance(item, dict) and "shape" in item:
            dtype, fill = item.get("dtype", "input"), item.get("fill", "randn")
            if dtype != "input" and dtype not in FIXED_DTYPES or fill not in FILLS:
                raise ReferenceFileError(f"{path}: INPUTS[{key!r}]: dtype must be 'input' or one of "
                                         f"{FIXED_DTYPES}, fill one of {FILLS}")
            inputs.append(InputSpec(key, "tensor", tuple(str(d) for d in item["shape"]), dtype, fill))
        else:
            raise ReferenceFileError(f"{path}: INPUTS[{key!r}] must be a list of dim names, a number (a scalar) "
                                     "or a table with shape (and dtype, fill)")
    test = _list_of_shapes(scope.get("SHAPES", []), path, "SHAPES")
    bench = _list_of_shapes(scope.get("BENCH_SHAPES", []), path, "BENCH_SHAPES")
    dims = {d for i in inputs if i.kind == "tensor" for d in i.shape if not d.isdigit()}
    if dims and not test:
        raise ReferenceFileError(f"{path}: SHAPES must give the test sizes of {', '.join(sorted(dims))}")
    for n, s in enumerate(test + bench):
        if dims - set(s):
            raise ReferenceFileError(f"{path}: shape {n} misses {', '.join(sorted(dims - set(s)))}")
    return inputs, test or [{}], bench


def _dtype(t) -> str:
    return _FIXED.get(str(t.dtype), "input")


def _inputs_from_examples(params: list[str], values: list[Any]) -> tuple[list[InputSpec], dict[str, int]]:
    import torch

    tensors = [v for v in values if isinstance(v, torch.Tensor)]
    names: dict[int, str] = {}
    if tensors and tensors[0].dim():
        first = tensors[0].shape
        for size in (first[-1], first[0]):
            if size != 1 and size not in names:
                names[size] = "N" if size == first[-1] else "M"
    pool = iter(d for d in _DIM_LETTERS if d not in names.values())
    inputs = []
    for pname, v in zip(params, values):
        if isinstance(v, torch.Tensor):
            shape = []
            for size in v.shape:
                if size == 1:
                    shape.append("1")  # a broadcast dim stays 1
                    continue
                if size not in names:
                    names[size] = next(pool, f"D{len(names)}")
                shape.append(names[size])
            inputs.append(InputSpec(pname, "tensor", tuple(shape), _dtype(v)))
        else:
            kind = "bool" if isinstance(v, bool) else "int" if isinstance(v, int) else "float"
            inputs.append(InputSpec(pname, kind, value=v))
    return inputs, {n: int(s) for s, n in names.items()}


def _row_col(inputs: list[InputSpec]) -> tuple[str, str]:
    """The first tensor's first and last dims: the ones edge-case verification varies."""
    first = next((i for i in inputs if i.kind == "tensor" and i.shape), None)
    if first is None:
        return "M", "N"
    return first.shape[0], first.shape[-1]


# ---- form 2: a KernelBench problem -----------------------------------------------------------------
def _kernelbench(path: Path, source: str, scope: dict[str, Any]) -> Reference:
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
        largest = max((math.prod(s) for _, s, _ in shapes["tensors"]), default=0)
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
    """A size divided by 2^k: exactly while it divides, else rounded; small values (kernel sizes, dims,
    groups) are left alone, and a scaled size never drops below 8."""
    if isinstance(v, tuple):
        return tuple(_scale(e, k) for e in v)
    if v <= SCALE_ABOVE:
        return v
    d = 1 << k
    return max(8, v // d) if v % d == 0 else max(9, round(v / d))


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
            if forward and not strict:
                model(*args)  # shape checks only (pooling windows, groups): meta tensors hold no data
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
    return {"tensors": tensors, "scalars": scalars, "positive": positive}


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
