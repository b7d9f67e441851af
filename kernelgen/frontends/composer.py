"""The composer: the embedded, deterministic generator behind `kernelgen new` (no network, no LLM).

`compose(request)` reads the request against a fixed vocabulary (`vocabulary()`), builds a small fusion
graph (pointwise prologue -> at most one row reduction or a matmul -> pointwise epilogue), and emits a
complete op folder: the `OpSpec` (with a PyTorch reference) and the Triton `kernel.py`. A request it
cannot read raises `ComposeError` saying what it understood, what it did not, and the vocabulary.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from kernelgen.codegen import kernel_source, reference_source
from kernelgen.codegen.graph import FusionGraph, Input
from kernelgen.errors import KernelgenError
from kernelgen.frontends import lexicon
from kernelgen.frontends.parse import ParseFailure, understand
from kernelgen.spec import NAME_RE, OpSpec, dump_spec

ELEM = {"int8": "1", "bool": "1", "bfloat16": "2", "float16": "2", "float32": "4", "input": "elem"}


class ComposeError(KernelgenError, ValueError):
    """The request could not be composed; the message says what was understood and lists the vocabulary."""


@dataclass
class Composition:
    request: str
    graph: FusionGraph
    spec: OpSpec
    kernel_source: str
    summary: str

    def write(self, folder: str | Path) -> Path:
        """Write the op folder (kernel.py + spec.toml) into `folder`, created if missing."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "kernel.py").write_text(self.kernel_source)
        (folder / "spec.toml").write_text(dump_spec(self.spec))
        return folder


def vocabulary() -> dict[str, list[str]]:
    return lexicon.vocabulary()


def compose(request: str, name: str | None = None) -> Composition:
    try:
        graph = understand(request)
    except ParseFailure as exc:
        raise ComposeError(_message(request, exc)) from None
    op_name = name or derive_name(graph)
    if not NAME_RE.match(op_name):
        raise ComposeError(f"op name {op_name!r} must be lower_snake_case (letters, digits, _)")
    summary = graph.describe()
    source = kernel_source(graph, op_name, request)
    spec = build_spec(graph, op_name, request, summary)
    spec = OpSpec.from_dict(spec.to_dict(), source=f"<composed {op_name}>")  # the same checks as a spec.toml
    return Composition(request, graph, spec, source, summary)


def _message(request: str, exc: ParseFailure) -> str:
    vocab = "; ".join(f"{cat}: {', '.join(words)}" for cat, words in vocabulary().items())
    understood = ", ".join(exc.understood) or "nothing"
    unknown = ", ".join(repr(w) for w in exc.unknown) or "none"
    return (f"cannot compose {request!r}: {exc.reason}. Understood: {understood}. Not understood: {unknown}. "
            f"Vocabulary -- {vocab}")


# ---- naming ----------------------------------------------------------------------------------------
_NAME_PART = {"residual": "add", "bias": "bias", "scale": "scale", "where": "masked", "causal": "causal",
              "dequantize": "dequantize_int8"}


def derive_name(g: FusionGraph) -> str:
    parts: list[str] = []
    for n in g.prologue:
        parts.append(_node_part(n))
    if g.matmul:
        parts.append("matmul")
    if g.reduction:
        parts.append(("row_" if g.reduction.row_scalar else "") + g.reduction.kind)
    parts += [_node_part(n) for n in g.epilogue]
    if len(g.outputs) > 1:
        parts.append("residual")
    name = "_".join(p for p in parts if p)
    return re.sub(r"_+", "_", name)[:60].strip("_") or "composed_op"


def _node_part(n) -> str:
    if n.op == "gelu" and n.param("approximate") == "tanh":
        return "gelu_tanh"
    if n.op == "cast":
        return f"to_{n.param('dtype')}"
    return _NAME_PART.get(n.op, n.op)


# ---- spec ------------------------------------------------------------------------------------------
def _shape(inp: Input) -> list[str]:
    return {"rows": ["M", "N"], "rows4d": ["B", "H", "M", "N"], "cols": ["N"], "per_row": ["M"],
            "lhs": ["M", "K"], "rhs": ["K", "N"]}[inp.role]


def _size(shape: list[str]) -> str:
    return " * ".join(shape)


def build_spec(g: FusionGraph, name: str, request: str, summary: str) -> OpSpec:
    from kernelgen.spec import InputSpec

    inputs = []
    for i in g.inputs:
        if i.is_tensor:
            inputs.append(InputSpec(i.name, "tensor", tuple(_shape(i)), i.dtype, i.fill))
        else:
            inputs.append(InputSpec(i.name, "float", value=i.default))
    floats = [i for i in g.tensor_inputs() if i.dtype == "input"]
    out_elem = ELEM[g.out_dtype] if g.out_dtype else ("elem" if floats else "4")
    row_shape = ["B", "H", "M", "N"] if g.causal else ["M", "N"]
    out_shape = (["M", "N"] if g.matmul else (row_shape[:-1] if g.row_scalar_output else row_shape))
    terms = [f"{_size(_shape(i))} * {ELEM[i.dtype]}" for i in g.tensor_inputs()]
    terms += [f"{_size(out_shape)} * {out_elem}"]
    if len(g.outputs) > 1:
        terms.append(f"{_size(row_shape)} * {out_elem}")
    elems = _size(row_shape)
    if g.matmul:
        flops = f"2 * M * N * K + {len(g.epilogue)} * M * N"
        test = [{"M": 16, "K": 32, "N": 64}, {"M": 33, "K": 40, "N": 72}]
        bench = [{"M": 4096, "K": 4096, "N": 4096}]
    elif g.causal:
        flops = f"{len(g.nodes()) + 4} * {elems}"
        test = [{"B": 2, "H": 2, "M": 8, "N": 8}, {"B": 1, "H": 3, "M": 16, "N": 16}]
        bench = [{"B": 1, "H": 1, "M": 4096, "N": 4096}, {"B": 4, "H": 16, "M": 1024, "N": 1024}]
    else:
        flops = f"{len(g.nodes()) + (4 if g.reduction else 0)} * {elems}"
        test = [{"M": 4, "N": 64}, {"M": 3, "N": 200}]
        bench = [{"M": 4096, "N": 4096}]
    description = f"Composed from the request {request!r}: {summary}."
    if g.causal:
        description += (" Causal mask aligned bottom-right (flash-attention's rule for M queries over N >= M keys):"
                        " key j is masked for query i when j > i + N - M; M = N is the square causal mask and"
                        " M = 1 a decode step, so the verifier may vary M and N independently.")
    tags = ["composed"] + sorted({n.op for n in g.nodes()} | ({g.reduction.kind} if g.reduction else set())
                                 | ({"matmul"} if g.matmul else set()))
    return OpSpec(
        name=name,
        description=description,
        function=name,
        inputs=inputs,
        outputs=list(g.output_names),
        reference=reference_source(g),
        test_shapes=test,
        bench_shapes=bench,
        tags=tags,
        family="composed",
        dtypes=["float32", "float16", "bfloat16"] if floats else ["float32"],
        bytes_model=" + ".join(f"({t})" if " + " in t else t for t in terms),
        flops_model=flops,
        row_dim="M",
        col_dim="N",
        request=request,
    )
