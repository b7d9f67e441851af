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
2. A KernelBench problem (loaded by kernelbench.py): `class Model(nn.Module)`, `get_inputs()`,
   `get_init_inputs()`. The model's parameters and floating-point buffers become inputs after forward's own
   arguments, named by their path (`linear.weight` -> `linear_weight`). The problem's sizes are module-level
   ints (`batch_size = 4096`): they are the bench shape, and scaled down by a power of two for the test
   shapes; each tensor dim takes the name of the global it follows at every scale, so verification can vary
   it, else a fixed size or a dim of its own. The model runs in eval mode (dropout off, batch norm on its
   running statistics).

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
    source = without_metadata(portable)  # what the reference needs, without the file's shape declarations
    if isinstance(scope.get("Model"), type) and callable(scope.get("get_inputs")):
        from kernelgen.frontends.kernelbench import kernelbench_reference

        ref = kernelbench_reference(path, source, scope)
    elif callable(scope.get("reference")):
        ref = _function_file(path, source, scope)
    else:
        raise ReferenceFileError(f"{path}: defines neither reference(...) nor a KernelBench problem "
                                 "(class Model, get_inputs(), get_init_inputs())")
    if name:
        ref.name = name
    return ref


def portable_source(text: str, path: Path | str = "<reference>") -> str:
    """The file with imports of torch submodules that a spec reference may not import (`import torch.x as y`)
    turned into assignments (`y = torch.x`); imports the reference check accepts (torch, torch.nn,
    torch.nn.functional, math) stay as written."""
    try:
        tree = ast.parse(text)
    except SyntaxError as exc:
        raise ReferenceFileError(f"{path}: not valid Python: {exc.msg} (line {exc.lineno})") from None
    lines = text.splitlines()
    for node in sorted(tree.body, key=lambda n: -n.lineno):
        new = None
        if _allowed_import(node):
            continue  # the reference's static check accepts it as written
        if isinstance(node, ast.Import) and all(a.name.startswith("torch.") and a.asname for a in node.names):
            new = [f"{a.asname} = {a.name}" for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] == "torch" \
                and all(a.name != "*" for a in node.names):
            new = [f"{a.asname or a.name} = {node.module}.{a.name}" for a in node.names]
        if new is not None:
            indent = " " * node.col_offset
            lines[node.lineno - 1: node.end_lineno] = [indent + "; ".join(new)]
    return "\n".join(lines).strip("\n") + "\n"


def _allowed_import(node: ast.AST) -> bool:
    from kernelgen.verify.static import REFERENCE_IMPORTS

    if isinstance(node, ast.Import):
        return all(a.name in REFERENCE_IMPORTS for a in node.names)
    if isinstance(node, ast.ImportFrom) and not node.level:
        return node.module in REFERENCE_IMPORTS or all(
            f"{node.module}.{a.name}" in REFERENCE_IMPORTS for a in node.names)
    return False


METADATA = ("INPUTS", "SHAPES", "BENCH_SHAPES", "OUTPUTS", "DTYPES")


def without_metadata(source: str) -> str:
    """The source less its module-level INPUTS / SHAPES / BENCH_SHAPES / OUTPUTS / DTYPES assignments: they
    describe the inputs (read from the file's own run) and are no part of what the reference computes; as
    module-level dicts and lists they would also fail the reference's static check."""
    tree = ast.parse(source)
    lines = source.splitlines()
    for node in sorted(tree.body, key=lambda n: -n.lineno):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, ast.AnnAssign) else []
        if targets and all(isinstance(tg, ast.Name) and tg.id in METADATA for tg in targets):
            del lines[node.lineno - 1: node.end_lineno]
    return "\n".join(lines).strip("\n") + "\n"


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
