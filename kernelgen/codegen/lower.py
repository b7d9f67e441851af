"""A traced reference (ATen graph) -> the `FusionGraph` the templates lower, or the reason it does not fit.

What fits today's templates: a pointwise prologue of any arity (inputs broadcast like PyTorch), then at
most one row reduction over the last dim (softmax, log_softmax, logsumexp, sum, mean, var, max, layer_norm,
and the decomposed forms of rms_norm, l2 normalize and log_softmax) or one matmul of two inputs (a weight
may be transposed, as a Linear's is), then a pointwise epilogue. Anything else is refused with the first
ATen op or pattern that has no template, e.g. "aten.convolution.default: no convolution template yet".

Only the nodes the outputs depend on are read: a KernelBench reference also traces the construction of its
module on the meta device, whose nodes feed nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from kernelgen.codegen.graph import MASK_FILL_NEG_INF, FusionGraph, Input, Matmul, Node, Reduction
from kernelgen.codegen.lower_graph import (
    flatten,
    float32,
    fresh,
    is_tensor_node,
    literal,
    live_nodes,
    no_template,
    renumbered,
    viewable_as_rows,
)
from kernelgen.codegen.lower_ops import (
    POINTWISE,
    ROW_SCALAR,
    LoweringError,
    causal_mask,
    is_last_dim,
    kwarg,
    pointwise_nodes,
    refuse,
    shape_of,
    whole_slice,
)
from kernelgen.codegen.trace import Trace, TraceError, op_name
from kernelgen.frontends.reference import Reference

ALIASES = ("aten.clone.default", "aten.alias.default", "aten.detach.default", "aten.contiguous.default")
# launcher / kernel locals an input must not shadow (it would be renamed)
RESERVED = {"y", "h", "r", "v", "e", "d", "mm", "acc", "row", "rows", "cols", "shape", "mean", "rstd", "denom",
            "in_bounds", "query", "start", "grid", "kernel", "limit", "block_n", "block_m", "max_block", "N", "M",
            "K", "a_mask", "b_mask", "lhs", "rhs", "offs_m", "offs_n", "offs_k", "pid", "torch", "triton", "tl",
            "math", "F"}


@dataclass
class _Val:
    name: str  # FusionGraph value name (an input, h<k>, r, mm) or a literal
    kind: str  # input | scalar | value | transposed | size
    shape: tuple[str, ...] = ()
    stage: int = 0  # 0 before the reduction or matmul, 1 after


def lower(trace: Trace, ref: Reference) -> FusionGraph:
    """The fusion graph of a traced reference; `LoweringError(reason)` when it does not fit."""
    g = _Lowering(trace, ref).run()
    _check_scalars(g, ref)
    return g


def _check_scalars(g: FusionGraph, ref: Reference) -> None:
    """Tracing bakes scalar inputs in as constants; the lowering names a constant after the scalar of the
    same value. That is right only if the graph is the same when every scalar has another value: else a
    constant computed from a scalar was baked in (the launcher would ignore the value it is passed), or an
    unrelated constant of the same value was taken for the scalar."""
    import dataclasses

    from kernelgen.codegen.trace import trace_reference

    if not any(i.kind != "tensor" for i in ref.inputs):
        return
    moved = dataclasses.replace(ref, inputs=[i if i.kind == "tensor" else dataclasses.replace(
        i, value=_another_value(i.kind, i.value)) for i in ref.inputs])
    names = [i.name for i in ref.inputs if i.kind != "tensor"]
    names = names[0] if len(names) == 1 else names
    try:
        other = _Lowering(trace_reference(moved), moved).run()
    except (TraceError, LoweringError) as exc:  # another value changes what runs (a dim, a flag)
        raise LoweringError(f"scalar input {names} decides what the reference computes ({exc}), so it cannot be "
                            "a kernel argument: no template takes it") from None
    if other.describe() != g.describe():
        raise LoweringError(f"scalar input {names} does not reach the kernel as "
                            "an argument (a constant computed from it, or another constant of the same value): "
                            "no template takes it")


def _another_value(kind: str, value):
    """A value of the same kind as a scalar input's, unlikely to equal a constant of the reference."""
    if kind == "bool":
        return not value
    if kind == "int":
        return int(value) + 1  # an int stays an int: a dim, a count
    return float(value) * 1.3719 + 0.7313  # an odd shift


class _Lowering:
    def __init__(self, trace: Trace, ref: Reference):
        self.trace, self.ref = trace, ref
        self.vals: dict = {}
        self.inputs: list[Input] = []
        self.prologue: list[Node] = []
        self.epilogue: list[Node] = []
        self.reduction: Reduction | None = None
        self.matmul: Matmul | None = None
        self.consumed: set = set()  # nodes folded into a pattern (a decomposed norm)
        self.count = 0
        self.row_shape: tuple[str, ...] | None = None
        self.cols_inputs: set[str] = set()
        self.late: list[str] = []  # refusals about the inputs, raised after the ops
        self.per_row_inputs: set[str] = set()  # inputs read as x[..., None]: one value per row

    # ---- driver ------------------------------------------------------------------------------------
    def run(self) -> FusionGraph:
        nodes = list(self.trace.graph.nodes)
        out_node = next(n for n in nodes if n.op == "output")
        outputs = flatten(out_node.args[0])
        if not outputs or not all(hasattr(o, "op") for o in outputs):
            raise LoweringError("the reference returns no tensor")
        live = live_nodes(outputs)
        self._bind_inputs([n for n in nodes if n.op == "placeholder"], live)
        for node in nodes:  # a causal mask's ones/triu belong to its masked_fill, which comes after them
            if node in live and node.op == "call_function" and op_name(node.target) == "aten.masked_fill.Scalar":
                self.consumed.update(causal_mask(node) or [])
        for node in nodes:
            if node.op != "call_function" or node not in live or node in self.consumed:
                continue
            self._visit(node)
        return self._graph(outputs)

    def _bind_inputs(self, placeholders: list, live: set) -> None:
        if len(placeholders) != len(self.ref.inputs):
            raise LoweringError(f"the trace has {len(placeholders)} inputs, the reference {len(self.ref.inputs)}")
        taken = {i.name for i in self.ref.inputs}
        scalar_values: dict[float, list[str]] = {}
        for node, spec in zip(placeholders, self.ref.inputs):
            name = spec.name
            if name in RESERVED or re.fullmatch(r"h\d+", name):
                name = fresh(f"{name}_in", taken)
            if spec.kind != "tensor":
                if not isinstance(spec.value, (int, float)):
                    raise LoweringError(f"scalar input {spec.name} of kind {spec.kind}: no template")
                self.inputs.append(Input(name, "scalar", default=float(spec.value)))
                # the value as written, and rounded to float32 (a decomposed norm adds eps in float32)
                for v in {float(spec.value), float32(spec.value)}:
                    scalar_values.setdefault(v, []).append(name)
                self.vals[node] = _Val(name, "scalar")
                continue
            # checked once every op has been read, so that an op without a template is named first
            if spec.dtype not in ("input", "int8", "bool"):
                self.late.append(f"input {spec.name} of dtype {spec.dtype}: no template takes it")
            if node not in live:
                self.late.append(f"input {spec.name} is not used by the reference's result")
            self.inputs.append(Input(name, "rows", spec.dtype, spec.fill))
            self.vals[node] = _Val(name, "input", shape_of(node))
        # a constant equal to exactly one scalar input's value is that input (the launcher's argument)
        self.scalar_names = {v: names[0] for v, names in scalar_values.items() if len(names) == 1}

    # ---- one ATen node -----------------------------------------------------------------------------
    def _visit(self, node) -> None:
        name = op_name(node.target)
        if not is_tensor_node(node):
            self.vals[node] = _Val(str(node.name), "size")  # shape arithmetic (sym_size, floordiv...)
            return
        if name in ALIASES or (name == "aten.expand.default" and self._expand_is_broadcast(node)) or (
                name == "aten.slice.Tensor" and whole_slice(node)):
            self.vals[node] = self._val(node.args[0])
            return
        if name in POINTWISE:
            self._pointwise(node, name)
        elif name in ("aten.mm.default", "aten.addmm.default"):
            self._matmul(node, name)
        elif name == "aten.t.default" or (name == "aten.permute.default" and list(node.args[1]) == [1, 0]):
            if self._val(node.args[0]).kind != "input" or any(
                    op_name(u.target) not in ("aten.mm.default", "aten.addmm.default") for u in node.users):
                raise refuse(name, "a transpose that is not a matmul operand has no template yet")
            self.vals[node] = _Val("", "transposed", shape_of(node))
            self.transposed = getattr(self, "transposed", {})
            self.transposed[node] = node.args[0]
        elif name in ("aten._softmax.default", "aten._log_softmax.default"):
            self._row_reduction(node, "softmax" if "log" not in name else "log_softmax", node.args[0], node.args[1])
        elif name == "aten.native_layer_norm.default":
            self._layer_norm(node)
        elif name == "getitem":
            src, index = node.args
            if src in self.vals and index == 0:
                self.vals[node] = self.vals[src]
            else:
                raise refuse(f"{op_name(src.target)} (output {index})", "only its first output has a template")
        elif name in ROW_SCALAR:
            self._row_scalar(node, name)
        elif name == "aten.masked_fill.Scalar" and causal_mask(node):
            self._causal(node)
        elif name == "aten._to_copy.default" and self._upcast(node):
            self.vals[node] = self._val(node.args[0])
        elif name == "aten.unsqueeze.default" and self._val(node.args[0]).kind == "input":
            self._unsqueeze(node)
        else:
            raise refuse(name, no_template(name))

    def _val(self, node) -> _Val:
        if not hasattr(node, "op"):
            return _Val(literal(node, self.scalar_names), "scalar")
        if node not in self.vals:
            raise refuse(op_name(node.target), no_template(op_name(node.target)))
        return self.vals[node]

    def _expand_is_broadcast(self, node) -> bool:
        # an expand feeding only pointwise ops is the broadcast they would do anyway
        return all(op_name(u.target) in POINTWISE for u in node.users)

    def _new(self) -> str:
        self.count += 1
        return f"h{self.count}"

    # ---- pointwise ---------------------------------------------------------------------------------
    def _pointwise(self, node, name: str) -> None:
        args = [self._val(a) if hasattr(a, "op") else None for a in node.args]
        if any(a is not None and a.kind == "transposed" for a in args):
            raise refuse("aten.t.default", "a transpose feeding a pointwise op has no template")
        stage = 1 if (self.reduction or self.matmul) else 0
        if stage and self.reduction and self.reduction.row_scalar:
            tensor_inputs = [a for a in args if a is not None and a.kind == "input"]
            if tensor_inputs:
                raise refuse(name, f"input {tensor_inputs[0].name} used after a row reduction that gives one "
                                   "value per row")
        if stage and any(a is not None and a.kind == "value" and a.stage == 0 for a in args):
            raise refuse(name, "a value from before the reduction or matmul used after it")
        names = [self._val(a).name if hasattr(a, "op") else literal(a, self.scalar_names) for a in node.args]
        steps = pointwise_nodes(name, names, node.args, node.kwargs, self._new)
        (self.epilogue if stage else self.prologue).extend(steps)
        self.vals[node] = _Val(steps[-1].out if steps else names[0], "value", shape_of(node), stage)

    # ---- row reductions ----------------------------------------------------------------------------
    def _reduction_arg(self, node, arg, dims) -> _Val:
        name = op_name(node.target)
        if self.reduction or self.matmul:
            raise refuse(name, "a second reduction or a reduction after a matmul: one per kernel in today's "
                               "templates")
        val = self._val(arg)
        if val.kind not in ("input", "value"):
            raise refuse(name, "reduces something other than a tensor")
        if not is_last_dim(dims, len(val.shape)):
            raise refuse(name, f"reduction over dim {dims} of a {len(val.shape)}-d tensor, not the last dim: "
                               "no template yet")
        self.row_shape = val.shape
        return val

    def _row_reduction(self, node, kind: str, arg, dim, weight=None, bias=None, eps=None) -> None:
        val = self._reduction_arg(node, arg, dim)
        self.reduction = Reduction(kind, val.name, "r", weight, bias, eps)
        self.vals[node] = _Val("r", "value", shape_of(node), 1)
        self.reduction_arg = arg

    def _layer_norm(self, node) -> None:
        x, normalized, weight, bias, eps = node.args
        if len(normalized) != 1:
            raise refuse("aten.native_layer_norm.default", f"layer norm over {len(normalized)} dims: the "
                                                           "template normalizes the last dim only")
        names = []
        for t in (weight, bias):
            if t is None:
                names.append(None)
                continue
            v = self._val(t)
            if v.kind != "input" or len(v.shape) != 1:
                raise refuse("aten.native_layer_norm.default", "a weight or bias that is not a 1-d input")
            names.append(v.name)
            self.cols_inputs.add(v.name)
        self._row_reduction(node, "layer_norm", x, -1, names[0], names[1], literal(eps, self.scalar_names))

    def _row_scalar(self, node, name: str) -> None:
        kind, dims, keepdim = ROW_SCALAR[name](node)
        if keepdim and self._stat_users_pattern(node, dims):
            return
        if kind == "norm":
            raise refuse(name, "a vector norm that is not part of an l2 normalize: no template yet")
        if name == "aten.var.correction" and kwarg(node, "correction", 1) != 1:
            raise refuse(name, f"variance with correction={kwarg(node, 'correction', 1)}: the template is the "
                               "unbiased (correction=1) one")
        val = self._reduction_arg(node, node.args[0], dims)
        self.reduction = Reduction(kind, val.name, "r", keepdim=bool(keepdim))
        self.vals[node] = _Val("r", "value", shape_of(node), 1)

    # ---- decomposed norms: a keepdim statistic combined with its own row ---------------------------
    def _stat_users_pattern(self, stat, dims) -> bool:
        """rms_norm, l2 normalize or log_softmax written out: the statistic's only chain of users ends in
        an op that combines it with the row it was computed from."""
        from kernelgen.codegen.lower_ops import match_row_pattern

        match = match_row_pattern(stat)
        if match is None:
            return False
        kind, row, eps, chain, combine = match
        val = self._reduction_arg(stat, row, dims)
        eps = None if eps is None else literal(eps, self.scalar_names)
        self.reduction = Reduction(kind, val.name, "r", eps=eps)
        self.consumed.update(chain)
        folded = {self.vals[n].name for n in chain if n in self.vals}  # x ** 2, already lowered
        self.prologue = [p for p in self.prologue if p.out not in folded]
        self.vals[combine] = _Val("r", "value", shape_of(combine), 1)
        self.consumed.add(combine)
        self.reduction_arg = row
        return True

    def _upcast(self, node) -> bool:
        """A cast to float32 or float64 of an input: the kernel computes in float32 from every load anyway."""
        import torch

        extra = set(node.kwargs) - {"dtype", "layout", "device", "memory_format"}
        return (node.kwargs.get("dtype") in (torch.float32, torch.float64) and not extra
                and self._val(node.args[0]).kind == "input")

    def _unsqueeze(self, node) -> None:
        """An input with a 1 inserted: in front it is broadcasting; at the end, one value per row."""
        val = self._val(node.args[0])
        ndim = len(shape_of(node))
        dim = int(node.args[1]) % ndim
        if dim == ndim - 1 and ndim >= 2:
            self.per_row_inputs.add(val.name)
        elif dim != 0:
            raise refuse("aten.unsqueeze.default", f"a size-1 dim inserted at {dim} of {ndim}: no template yet")
        self.vals[node] = _Val(val.name, "input", shape_of(node))

    def _causal(self, node) -> None:
        """x.masked_fill(ones(M, N).triu(N - M + 1), -inf): the causal mask, bottom-right aligned."""
        val = self._val(node.args[0])
        if self.reduction or self.matmul or val.kind not in ("input", "value"):
            raise refuse("aten.masked_fill.Scalar", "a causal mask after the reduction or matmul")
        out = self._new()
        self.prologue.append(Node(out, "causal", (val.name,)))
        self.vals[node] = _Val(out, "value", shape_of(node), 0)

    # ---- matmul ------------------------------------------------------------------------------------
    def _matmul(self, node, name: str) -> None:
        if self.reduction or self.matmul or self.prologue:
            raise refuse(name, "a matmul after other ops: the template takes its operands as inputs")
        bias = None
        if name == "aten.addmm.default":
            bias, a, b = node.args[:3]
            if kwarg(node, "beta", 1) != 1 or kwarg(node, "alpha", 1) != 1:
                raise refuse(name, "addmm with beta or alpha other than 1")
        else:
            a, b = node.args[:2]
        va = self._val(a)
        transposed = getattr(self, "transposed", {})
        b_src = transposed.get(b, b)
        vb = self._val(b_src)
        if va.kind != "input" or vb.kind != "input" or len(va.shape) != 2 or len(vb.shape) != 2:
            raise refuse(name, "the matmul template takes two 2-d inputs (a computed operand has no template)")
        self._set_role(va.name, "lhs")
        self._set_role(vb.name, "rhs_t" if b in transposed else "rhs")
        self.matmul = Matmul(va.name, vb.name, "mm")
        self.row_shape = shape_of(node)
        self.vals[node] = _Val("mm", "value", shape_of(node), 1)
        if bias is not None:
            vbias = self._val(bias)
            out = self._new()
            self.epilogue.append(Node(out, "add", ("mm", vbias.name)))
            self.vals[node] = _Val(out, "value", shape_of(node), 1)

    def _set_role(self, name: str, role: str) -> None:
        self.inputs = [Input(i.name, role, i.dtype, i.fill, i.default) if i.name == name else i
                       for i in self.inputs]

    # ---- the graph ---------------------------------------------------------------------------------
    def _graph(self, outputs: list) -> FusionGraph:
        if self.late:
            raise LoweringError(self.late[0])
        main = self._val(outputs[0])
        if main.kind == "input":
            raise LoweringError("the reference returns an input unchanged: nothing to compute")
        if main.kind != "value":
            raise LoweringError("the reference's result is not a computed tensor")
        out_values = [main.name]
        names = ["y"]
        if len(outputs) > 1:
            second = self._val(outputs[1]) if len(outputs) == 2 else None
            ok = (second is not None and self.reduction is not None and not self.reduction.row_scalar
                  and outputs[1] is getattr(self, "reduction_arg", None) and second.kind == "value")
            if not ok:
                raise LoweringError(f"{len(outputs)} outputs: today's templates write one (or a norm's "
                                    "input as a second)")
            out_values.append(second.name)
            names.append("h")
        row = self.row_shape or main.shape
        operands = {i.name for i in self.inputs if i.role in ("lhs", "rhs", "rhs_t")}
        reused = operands & {a for n in self.epilogue for a in n.args}
        if reused:
            raise LoweringError(f"input {sorted(reused)[0]} is a matmul operand and is used again after the "
                                "matmul: no template yet")
        inputs = []
        for i in self.inputs:
            if i.role in ("scalar", "lhs", "rhs", "rhs_t"):
                inputs.append(i)
                continue
            shape = next(v.shape for v in self.vals.values() if v.kind == "input" and v.name == i.name)
            inputs.append(Input(i.name, self._role(i.name, shape, row), i.dtype, i.fill, i.default))
        g = renumbered(FusionGraph(inputs, self.prologue, self.reduction, self.matmul, self.epilogue, out_values,
                                    names))
        if any(n.op == "causal" for n in self.prologue) and (
                not self.reduction or self.reduction.kind not in MASK_FILL_NEG_INF):
            raise LoweringError("aten.masked_fill.Scalar: a causal mask has a template only before softmax, "
                                "log_softmax, logsumexp or max")
        if not self.matmul and not [i for i in inputs if i.role == "rows"]:
            raise LoweringError("no input has the shape of the result rows")
        return g

    def _role(self, name: str, shape: tuple[str, ...], row: tuple[str, ...]) -> str:
        if name in self.per_row_inputs:
            if tuple(shape) != tuple(row[:-1]):
                raise LoweringError(f"input {name} of shape {list(shape)} is not one value per row of {list(row)}")
            return "per_row"
        if name in self.cols_inputs or ((self.reduction or self.matmul) and len(shape) == 1 and row
                                        and shape[0] == row[-1]):
            if len(shape) != 1 or shape[0] != row[-1]:
                raise LoweringError(f"input {name} of shape {list(shape)} is not one value per column")
            return "cols"
        if not viewable_as_rows(shape, row):
            raise LoweringError(f"input {name} of shape {list(shape)} broadcasts against {list(row)} over a "
                                "middle dim: no template yet")
        return "rows"

