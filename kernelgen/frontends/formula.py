"""Formulas: Python syntax over named inputs -> the source of a PyTorch `reference(...)`.

`y = silu(x + bias)`, `out = a * torch.sigmoid(b)`, `h = x + r; y = 0.5 * h + h`. The text is parsed
with `ast` and never evaluated: every node must be of an allowed kind, every call must name an allowed
torch / F / tensor-method function or a vocabulary word (which is rewritten to its PyTorch snippet), and
the reference source is written back from the checked tree. Names read before they are assigned are the
op's inputs; their shapes follow a printed convention (see `infer_inputs`).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from typing import Any

from kernelgen.frontends.vocabulary import Src, Word, callable_names, render

TORCH_FUNCS = set("""
abs neg negative exp exp2 expm1 log log2 log10 log1p sqrt rsqrt square sigmoid tanh sin cos tan asin acos atan
atan2 sinh cosh erf erfc sign floor ceil round trunc frac clamp clip clamp_min clamp_max pow reciprocal maximum
minimum fmax fmin where sum mean amax amin max min prod var std logsumexp softmax log_softmax cumsum cumprod
matmul mm bmm addmm baddbmm einsum relu arange ones ones_like zeros_like full_like empty_like rand_like triu
tril outer cat stack transpose permute reshape flatten unsqueeze squeeze chunk split masked_fill lerp addcmul
addcdiv hypot fmod remainder mul add sub subtract div divide true_divide logaddexp isfinite isnan nan_to_num
rsub cdist dot mv norm diag eye full argmax argmin
""".split())
LINALG_FUNCS = {"vector_norm", "norm", "matrix_norm"}
F_FUNCS = set("""
relu relu6 leaky_relu elu selu celu gelu silu mish softplus softsign hardtanh hardsigmoid hardswish sigmoid
tanh logsigmoid tanhshrink softshrink hardshrink threshold glu prelu softmax log_softmax softmin normalize
layer_norm rms_norm group_norm instance_norm batch_norm linear bilinear mse_loss l1_loss smooth_l1_loss
huber_loss cross_entropy nll_loss kl_div binary_cross_entropy binary_cross_entropy_with_logits
cosine_similarity pairwise_distance conv1d conv2d conv3d conv_transpose1d conv_transpose2d max_pool1d
max_pool2d avg_pool1d avg_pool2d adaptive_avg_pool1d adaptive_avg_pool2d pad one_hot embedding
scaled_dot_product_attention margin_ranking_loss hinge_embedding_loss soft_margin_loss triplet_margin_loss
cosine_embedding_loss poisson_nll_loss gaussian_nll_loss multi_margin_loss
""".split())
METHODS = set("""
sum mean amax amin max min var std prod exp log sqrt rsqrt abs neg sigmoid tanh relu softmax log_softmax
logsumexp float half bfloat16 double to clamp clip clamp_min clamp_max pow square reciprocal masked_fill
transpose t unsqueeze squeeze reshape view flatten expand expand_as contiguous cumsum chunk norm sign floor
ceil round exp2 log1p expm1 erf sin cos size type_as permute matmul mm bmm add sub mul div maximum minimum
argmax argmin split where
""".split())
ATTRIBUTES = {"shape", "device", "dtype", "T", "mT", "ndim"}
TORCH_CONSTANTS = {"float16", "bfloat16", "float32", "float64", "float", "half", "double", "int8", "int32",
                   "int64", "long", "bool", "inf", "nan", "pi", "e"}
MATH_NAMES = {"pi", "e", "inf", "sqrt", "log", "exp", "tanh", "erf", "cos", "sin", "log2"}
RESERVED = {"torch", "F", "math", "reference", "None", "True", "False"}
NODES = (ast.Module, ast.Assign, ast.Expr, ast.Return, ast.Name, ast.Load, ast.Store, ast.Constant, ast.BinOp,
         ast.UnaryOp, ast.Call, ast.keyword, ast.Attribute, ast.Subscript, ast.Slice, ast.Tuple, ast.List,
         ast.Compare, ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow, ast.MatMult, ast.USub,
         ast.UAdd, ast.Not, ast.Invert, ast.Gt, ast.GtE, ast.Lt, ast.LtE, ast.Eq, ast.NotEq, ast.BitAnd, ast.BitOr)


class FormulaError(ValueError):
    """The formula uses something outside the allowed Python subset; the message says what."""


@dataclass
class Program:
    statements: list[ast.stmt]  # assignments, checked and rewritten to plain torch / F calls
    outputs: list[str]  # names returned, in order
    inputs: list[str]  # names read before they are assigned, in order of first use
    vocabulary_calls: list[Word] = field(default_factory=list)  # words used as functions
    notes: list[str] = field(default_factory=list)  # their conventions, where the formula did not set them


def looks_like_formula(text: str) -> bool:
    """Whether the text parses as Python whose names are all inputs or known functions (so "add + relu",
    which parses too, is left to the words reader: `add` and `relu` are words, not inputs)."""
    try:
        tree = ast.parse(text.strip())
    except SyntaxError:
        return False
    if not tree.body or any(isinstance(n, (ast.BoolOp, ast.IfExp, ast.Lambda)) for n in ast.walk(tree)):
        return False
    called = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    words = callable_names()
    for n in ast.walk(tree):
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load) and id(n) not in called and n.id in words:
            return False  # a word used as a value: "add + relu"
    return any(isinstance(n, (ast.BinOp, ast.Call, ast.Assign, ast.UnaryOp, ast.Compare)) for n in ast.walk(tree))


def parse_program(text: str) -> Program:
    try:
        tree = ast.parse(text.strip())
    except SyntaxError as exc:
        raise FormulaError(f"not a Python formula: {exc.msg} at column {exc.offset}") from None
    for node in ast.walk(tree):
        if not isinstance(node, NODES):
            raise FormulaError(f"{type(node).__name__} is not allowed in a formula")
        if isinstance(node, ast.Name) and node.id.startswith("_") or \
                isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            raise FormulaError("names starting with '_' are not allowed in a formula")
    _refuse_runaway_constants(tree)
    body = list(tree.body)
    if not body:
        raise FormulaError("the formula is empty")
    for stmt in body[:-1]:
        if not isinstance(stmt, ast.Assign):
            raise FormulaError(f"only the last statement may be a bare expression: {ast.unparse(stmt)!r}")
    last = body[-1]
    if isinstance(last, ast.Return):
        last = ast.Expr(last.value) if last.value is not None else None
        if last is None:
            raise FormulaError("the formula returns nothing")
    if isinstance(last, ast.Expr):
        if isinstance(last.value, ast.Tuple) and all(isinstance(e, ast.Name) for e in last.value.elts):
            outputs = [e.id for e in last.value.elts]
            body = body[:-1]
        else:
            body[-1] = ast.Assign(targets=[ast.Name("y", ast.Store())], value=last.value, lineno=0)
            outputs = ["y"]
    else:
        outputs = _assigned(last)
    rewriter = _Rewriter()
    statements = [ast.fix_missing_locations(rewriter.visit(s)) for s in body]
    inputs = _free_names(statements, outputs)
    return Program(statements, outputs, inputs, rewriter.words, rewriter.notes)


ALLOCATORS = {"arange", "ones", "eye", "full"}
MAX_CONSTANT_SIZE = 1 << 16


def _constant(node: ast.AST) -> bool:
    return not any(isinstance(n, ast.Name) for n in ast.walk(node))


def _small_number(node: ast.AST, limit: float) -> bool:
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        node = node.operand
    return isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and abs(node.value) <= limit


def _refuse_runaway_constants(tree: ast.AST) -> None:
    """The reference runs once here on tiny shapes: a constant power tower (`2 ** 10 ** 10`) or a tensor
    sized by a constant (`torch.ones(10 ** 12)`) would hang or exhaust memory instead of being refused."""
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow) and _constant(node.left) and \
                _constant(node.right) and not _small_number(node.right, 64):
            raise FormulaError("a power of a constant must have a constant exponent of at most 64")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ALLOCATORS:
            for a in list(node.args) + [k.value for k in node.keywords]:
                if _constant(a) and not isinstance(a, ast.Constant) and not _small_number(a, MAX_CONSTANT_SIZE):
                    raise FormulaError(f"{node.func.attr}() sizes must be plain numbers or input sizes")
                if isinstance(a, ast.Constant) and isinstance(a.value, (int, float)) and \
                        abs(a.value) > MAX_CONSTANT_SIZE:
                    raise FormulaError(f"{node.func.attr}() with a constant size over {MAX_CONSTANT_SIZE}")


def _assigned(stmt: ast.stmt) -> list[str]:
    if not isinstance(stmt, ast.Assign) or len(stmt.targets) != 1:
        raise FormulaError("each statement must assign one name or a tuple of names")
    t = stmt.targets[0]
    if isinstance(t, ast.Name):
        return [t.id]
    if isinstance(t, ast.Tuple) and all(isinstance(e, ast.Name) for e in t.elts):
        return [e.id for e in t.elts]
    raise FormulaError(f"cannot assign to {ast.unparse(t)!r}")


def _free_names(statements: list[ast.stmt], outputs: list[str]) -> list[str]:
    assigned: set[str] = set()
    free: list[str] = []
    for stmt in statements:
        targets = _assigned(stmt)
        names = sorted((n for n in ast.walk(stmt.value) if isinstance(n, ast.Name)),
                       key=lambda n: (getattr(n, "lineno", 0), getattr(n, "col_offset", 0)))
        for n in names:
            if isinstance(n, ast.Name) and n.id not in assigned and n.id not in free and n.id not in RESERVED:
                free.append(n.id)
        assigned.update(targets)
    for o in outputs:
        if o not in assigned and o not in free:
            raise FormulaError(f"the output {o!r} is never computed")
    return free


class _Rewriter(ast.NodeTransformer):
    """Checks every call and attribute against the allowlists and rewrites vocabulary calls
    (`silu(x)`, `rms_norm(h, w)`) into their PyTorch snippets."""

    def __init__(self) -> None:
        self.callables = callable_names()
        self.words: list[Word] = []
        self.notes: list[str] = []

    def visit_Call(self, node: ast.Call) -> ast.AST:
        node = self.generic_visit(node)
        f = node.func
        if isinstance(f, ast.Name):
            if f.id in ("max", "min") and not node.keywords and len(node.args) in (1, 2):
                return self._python_min_max(f.id, node)
            if f.id in self.callables:
                return self._vocabulary_call(self.callables[f.id], node)
            raise FormulaError(f"unknown function {f.id!r}" + _suggest(f.id, self.callables))
        return node

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        node = self.generic_visit(node)
        path = _dotted(node)
        if path and path[0] in ("torch", "F", "math"):
            self._check_module_path(path)
            if path[:3] == ["torch", "nn", "functional"]:
                return ast.Attribute(ast.Name("F", ast.Load()), path[3], ast.Load())
            return node
        if node.attr in ATTRIBUTES or node.attr in METHODS:
            return node
        raise FormulaError(f"attribute or method {node.attr!r} is not allowed in a formula")

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if isinstance(node.ctx, ast.Store) and node.id in RESERVED:
            raise FormulaError(f"{node.id!r} cannot be assigned")
        return node

    @staticmethod
    def _check_module_path(path: list[str]) -> None:
        head, rest = path[0], path[1:]
        ok = False
        if head == "math":
            ok = len(rest) == 1 and rest[0] in MATH_NAMES
        elif head == "F":
            ok = len(rest) == 1 and rest[0] in F_FUNCS
        elif rest in (["nn"], ["nn", "functional"], ["linalg"]):
            ok = True  # the inner part of torch.nn.functional.X / torch.linalg.X (X is checked on the outer node)
        elif rest[:2] == ["nn", "functional"]:
            ok = len(rest) == 3 and rest[2] in F_FUNCS
        elif rest[:1] == ["linalg"]:
            ok = len(rest) == 2 and rest[1] in LINALG_FUNCS
        else:
            ok = len(rest) == 1 and (rest[0] in TORCH_FUNCS or rest[0] in TORCH_CONSTANTS)
        if not ok:
            raise FormulaError(f"{'.'.join(path)} is not an allowed function")

    def _python_min_max(self, fn: str, node: ast.Call) -> ast.AST:
        """Python's max(x) is the largest element (torch.amax over every element); max(a, b) is elementwise."""
        args = [ast.unparse(a) for a in node.args]
        if len(args) == 1:
            self.notes.append(f"{fn}(...) of one tensor: over every element (torch.a{fn})")
            return ast.parse(f"torch.a{fn}({args[0]})", mode="eval").body
        op = "maximum" if fn == "max" else "minimum"
        for u, v in ((args[0], args[1]), (args[1], args[0])):
            if isinstance(ast.parse(v, mode="eval").body, (ast.Constant, ast.UnaryOp)):
                return ast.parse(f"torch.clamp({u}, {'min' if fn == 'max' else 'max'}={v})", mode="eval").body
        return ast.parse(f"torch.{op}({args[0]}, {args[1]})", mode="eval").body

    def _vocabulary_call(self, word: Word, node: ast.Call) -> ast.AST:
        args = list(node.args)
        operands: dict[str, str | None] = {}
        params: dict[str, Any] = {}
        from kernelgen.frontends.vocabulary import number_call

        plain = number_call(word, [ast.unparse(a) for a in args])
        if plain is not None and not node.keywords:  # sqrt(2): a number, not a tensor
            return ast.parse(plain, mode="eval").body
        for name in word.operands:
            if args:
                operands[name] = ast.unparse(args.pop(0))
            elif name in word.optional:
                operands[name] = None
        for p in word.params:
            if args:
                params[p] = Src(ast.unparse(args.pop(0)))
        if args:
            raise FormulaError(f"{word.name}() takes at most {len(word.operands) + len(word.params)} arguments")
        for kw in node.keywords:
            if kw.arg in word.operands:
                operands[kw.arg] = ast.unparse(kw.value)
            elif kw.arg in word.params:
                params[kw.arg] = Src(ast.unparse(kw.value))
            else:
                raise FormulaError(f"{word.name}() has no argument {kw.arg!r}")
        missing = [o for o in word.operands if o not in operands]
        if missing:
            raise FormulaError(f"{word.name}() needs {len(word.operands) - len(word.optional)} tensor arguments")
        required = [p for p in word.params if "{" + p + "}" in word.template and word.params[p] is None
                    and p not in params]
        if required and word.name != "clamp":
            raise FormulaError(f"{word.name}() needs {', '.join(required)}")
        self.words.append(word)
        if word.note and not (word.note_param and word.note_param in params) and word.note not in self.notes:
            self.notes.append(word.note)
        return ast.parse(render(word, operands, params), mode="eval").body


def _dotted(node: ast.AST) -> list[str] | None:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return [node.id] + parts[::-1]
    return None


def _suggest(word: str, known) -> str:
    import difflib

    close = difflib.get_close_matches(word, list(known), n=3, cutoff=0.6)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def source(program: Program, input_names: list[str]) -> str:
    """`def reference(<inputs>):` with the program's statements and the return of its outputs."""
    lines = [f"def reference({', '.join(input_names)}):"]
    lines += ["    " + ast.unparse(s) for s in program.statements]
    lines.append("    return " + ", ".join(program.outputs))
    return "\n".join(lines) + "\n"
