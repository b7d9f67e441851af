"""A `Reference` -> the op folder: trace it, lower the trace to a fusion graph, write kernel.py from the
templates, and spec.toml from the reference itself.

The spec's `reference` is the Reference's own source (the user's file, the formula, the words' snippet),
never one regenerated from the fusion graph: the kernel is verified against something its generator did not
write. A reference that does not trace or does not fit a template still gets its spec (inputs, shapes,
dtypes come from the Reference), so an LLM can write the kernel; `refusal` says why no template fits.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from kernelgen.codegen import kernel_source
from kernelgen.codegen.graph import FusionGraph
from kernelgen.codegen.lower import lower
from kernelgen.codegen.lower_ops import LoweringError
from kernelgen.codegen.trace import Trace, TraceError, trace_reference
from kernelgen.frontends.reference import Reference
from kernelgen.spec import NAME_RE, OpSpec, Tolerance, dump_spec

ELEM = {"int8": "1", "bool": "1", "bfloat16": "2", "float16": "2", "float32": "4", "int32": "4", "int64": "8",
        "input": "elem"}


@dataclass
class Generated:
    reference: Reference
    spec: OpSpec
    graph: FusionGraph | None = None
    kernel_source: str | None = None  # None when no template fits
    refusal: str = ""  # why there is no kernel ("" when there is one)
    trace_mode: str = ""  # symbolic | fake | real, "" when the reference did not trace
    ops: list[str] = field(default_factory=list)  # the ATen ops of the trace

    @property
    def lowered(self) -> bool:
        return self.kernel_source is not None

    @property
    def summary(self) -> str:
        return self.graph.describe() if self.graph else f"no kernel template: {self.refusal}"

    def write(self, folder: str | Path) -> Path:
        """Write spec.toml (and kernel.py when there is one) into `folder`, created if missing."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if self.kernel_source is not None:
            (folder / "kernel.py").write_text(self.kernel_source)
        (folder / "spec.toml").write_text(dump_spec(self.spec))
        return folder


def generate(ref: Reference, name: str | None = None) -> Generated:
    op_name = name or ref.name or "reference_op"
    if not NAME_RE.match(op_name):
        raise ValueError(f"op name {op_name!r} must be lower_snake_case (letters, digits, _)")
    trace = None
    graph = None
    try:
        trace = trace_reference(ref)
        graph = lower(trace, ref)
        refusal = ""
    except TraceError as exc:
        refusal = f"the reference does not trace: {exc}"
    except LoweringError as exc:
        refusal = str(exc)
    spec = spec_from_reference(ref, op_name, graph, trace, refusal)
    if graph is not None and not _rowwise_reference(ref, spec):
        graph.ranks = {i.name: len(i.shape) for i in ref.inputs if i.kind == "tensor"}
    kernel = kernel_source(graph, op_name, ref.request) if graph else None
    return Generated(ref, spec, graph, kernel, refusal, trace.mode if trace else "", trace.ops() if trace else [])


def _rowwise_reference(ref: Reference, spec: OpSpec) -> bool:
    """Whether the reference computes the same rows when its row dim is split into several leading dims (as
    a launcher over [..., N] rows does). A reference that names dims by position (softmax over dim=1 of a
    2-d input) does not: its launcher then takes only the reference's ranks."""
    from kernelgen.verify.inputs import flatten_leading, make_inputs, nd_applies, rowwise, upcast

    if not nd_applies(spec) or not spec.test_shapes:
        return True
    try:
        fn = ref.function()
        args = upcast(make_inputs(spec, spec.test_shapes[0], "float32", "cpu", 0, layout="nd"))
        return rowwise(fn(*args), fn(*flatten_leading(spec, args)))
    except Exception:  # the reference rejects leading dims: the launcher must too
        return False


def spec_from_reference(ref: Reference, name: str, graph: FusionGraph | None = None, trace: Trace | None = None,
                        refusal: str = "") -> OpSpec:
    outputs = list(ref.outputs)
    n_out = _output_count(trace)
    if n_out and len(outputs) != n_out:
        outputs = ["y"] + [f"y{i}" for i in range(1, n_out)]
    floats = [i for i in ref.inputs if i.kind == "tensor" and i.dtype == "input"]
    out_dims = _output_dims(ref, trace)
    terms = [f"{_size(i.shape)} * {ELEM.get(i.dtype, '4')}" for i in ref.inputs if i.kind == "tensor"]
    if out_dims is not None:
        terms.append(f"{_size(out_dims)} * {'elem' if floats else '4'}")
    flops = "0"
    if graph is not None and out_dims is not None:
        flops = f"{max(1, len(graph.nodes()) + (4 if graph.reduction else 0))} * {_size(out_dims)}"
        if graph.matmul:
            lhs = next((i for i in ref.inputs if graph.matmul.a in (i.name, i.name + "_in")), None)
            if lhs is not None and lhs.shape:
                flops = f"2 * {_size(out_dims)} * {lhs.shape[-1]} + {flops}"
    what = {"words": "the words", "formula": "the formula", "file": "the reference file",
            "kernelbench": "the KernelBench problem", "aten": "the ATen op", "llm": "the LLM's reference"}
    description = f"From {what.get(ref.origin, 'the reference')} {ref.request!r}: " + (
        graph.describe() if graph else f"no kernel template ({refusal})") + "."
    tags = ["reference", ref.origin] + (sorted({n.op for n in graph.nodes()} | (
        {graph.reduction.kind} if graph.reduction else set()) | ({"matmul"} if graph.matmul else set()))
        if graph else [])
    dims = {d for i in ref.inputs if i.kind == "tensor" for d in i.shape if not d.isdigit()}
    row_dim, col_dim = ref.row_dim, ref.col_dim
    tolerances = {}
    if graph is not None and graph.matmul:
        if out_dims and len(out_dims) == 2:
            row_dim, col_dim = out_dims  # edge cases vary the output's rows and columns, not K
        k_dim = next((i.shape[-1] for i in ref.inputs if graph.matmul.a in (i.name, i.name + "_in")), None)
        if col_dim == k_dim:
            col_dim = row_dim  # the same dim for N and K: caught just below
        tolerances["float32"] = Tolerance(1e-4, 1e-4, "a float32 dot product over K terms rounds differently "
                                                      "from the float64 reference; the error grows with K")
    if col_dim == row_dim:
        # one dim for rows and columns (a square input or matmul): a row longer than one block would make
        # every operand that long squared, so no column edge case (one row and zero rows still run)
        col_dim = "-"
    spec = OpSpec(
        name=name,
        description=description,
        function=name,
        inputs=list(ref.inputs),
        outputs=outputs,
        reference=ref.source if ref.source.endswith("\n") else ref.source + "\n",
        test_shapes=[dict(s) for s in ref.test_shapes] or [{}],
        bench_shapes=[dict(s) for s in ref.bench_shapes],
        tags=tags,
        family="reference",
        dtypes=list(ref.dtypes) if floats else ["float32"],
        bytes_model=" + ".join(f"({t})" if " + " in t else t for t in terms),
        flops_model=flops,
        tolerances=tolerances,
        row_dim=row_dim if row_dim in dims else "M",
        col_dim=col_dim if col_dim in dims or col_dim == "-" else "N",
        request=ref.request,
    )
    return OpSpec.from_dict(spec.to_dict(), source=f"<reference {name}>")  # the checks a spec.toml gets


def _size(shape) -> str:
    return " * ".join(shape) if shape else "1"


def _output_count(trace: Trace | None) -> int:
    if trace is None:
        return 0
    out = next(n for n in trace.graph.nodes if n.op == "output").args[0]
    return len(out) if isinstance(out, (list, tuple)) else 1


def _output_dims(ref: Reference, trace: Trace | None) -> tuple[str, ...] | None:
    """The first output's shape in the reference's dim names (None when a size is not one of them)."""
    if trace is None:
        return None
    from kernelgen.codegen.lower_ops import shape_of

    names: dict[str, str] = {}
    placeholders = [n for n in trace.graph.nodes if n.op == "placeholder"]
    for node, spec in zip(placeholders, ref.inputs):
        if spec.kind == "tensor":
            for sym, dim in zip(shape_of(node), spec.shape):
                names.setdefault(sym, dim)
    out = next(n for n in trace.graph.nodes if n.op == "output").args[0]
    first = out[0] if isinstance(out, (list, tuple)) else out
    if not hasattr(first, "meta"):
        return None
    dims = []
    for sym in shape_of(first):
        if sym in names:
            dims.append(names[sym])
        elif re.fullmatch(r"\d+", sym) and trace.mode == "symbolic":
            dims.append(sym)
        else:
            return None
    return tuple(dims)
