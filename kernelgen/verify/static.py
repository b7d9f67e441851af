"""Static check of candidate source before anything runs it: an allowlist, with the line that breaks it.

Two profiles. A kernel file (`check_source`) may import triton, triton.language[.*], torch, math, functools
and typing; reach only listed `torch.*` attributes (dtypes, allocation, `finfo`...) and the public parts of
triton's kernel API; define functions and constants at module level; and keep no state between calls (no
`global`/`nonlocal`, no writes into module-level names, no attribute assignment, no mutable defaults). A
spec reference (`check_reference`) may compute with torch (not torch.library, torch.ops, torch.utils,
torch._C, file or process APIs) and import only torch, math and torch.nn.functional. Both: no reflection
(`getattr` with a computed name, `vars`, `globals`, frames, code objects...), no I/O, no dunders.

A filter that explains itself so an LLM can repair the candidate from the message, not the wall: the
sandbox (`kernelgen.verify.wall`) contains whatever slips through.
"""

from __future__ import annotations

import ast
import threading

ALLOWED_IMPORTS = ("triton", "triton.language", "torch", "math", "functools", "typing", "__future__")
ALLOWED_IMPORT_PREFIXES = ("triton.language.",)  # triton.language.extra.libdevice: tanh, erf, ...
REFERENCE_IMPORTS = ("torch", "math", "torch.nn.functional", "torch.nn", "__future__")

FORBIDDEN_NAMES = frozenset({
    "open", "exec", "eval", "compile", "__import__", "globals", "locals", "vars", "breakpoint", "input",
    "os", "sys", "subprocess", "socket", "ctypes", "importlib", "builtins", "pathlib", "shutil",
    "getattr", "setattr", "delattr", "hasattr", "memoryview", "exit", "quit", "help", "object", "super",
    "classmethod", "staticmethod", "property", "dir", "id", "print", "__builtins__", "__loader__", "__spec__",
})
# getattr with a literal, harmless attribute name and a default is `t.dtype` that tolerates a non-tensor
# (error messages of generated kernels use it); any other use of getattr is reflection.
SAFE_GETATTR = frozenset({"dtype", "shape", "device"})
ALLOWED_DUNDERS = frozenset({"__name__", "__doc__", "__init__", "__call__", "__future__"})
# Frame, generator, coroutine, code and traceback attributes: the way from a value to the caller's locals.
FRAME_ATTRS = frozenset({"f_back", "f_locals", "f_globals", "f_builtins", "f_code", "f_trace", "f_lasti", "f_lineno"})
FRAME_PREFIXES = ("gi_", "cr_", "ag_", "co_", "tb_")
# Methods of tensors (and anything else) that leave the device computation or reach raw memory.
FORBIDDEN_ATTRS = frozenset({
    "numpy", "tolist", "apply_", "map_", "map2_", "register_hook", "untyped_storage", "storage", "set_",
    "data_ptr",  # launch plans (kernelgen/plans.py) rely on launchers never depending on addresses
    "share_memory_", "from_file", "from_numpy", "frombuffer", "system", "popen", "fork", "kill", "_exit",
    "get_type_hints", "ForwardRef", "_eval_type",
})

# torch attributes a kernel file may use: dtypes, tensor types, allocation, views, type queries.
TORCH_KERNEL_ATTRS = frozenset({
    "float32", "float16", "bfloat16", "float64", "float", "half", "double", "int8", "int16", "int32", "int64",
    "uint8", "bool", "long", "int", "float8_e4m3fn", "float8_e5m2", "dtype", "Tensor", "Size", "device",
    "empty", "empty_like", "empty_strided", "zeros", "zeros_like", "ones", "ones_like", "full", "full_like",
    "arange", "finfo", "iinfo", "is_tensor", "is_floating_point", "promote_types", "result_type",
    "broadcast_shapes", "get_default_dtype", "is_grad_enabled",
    "cuda.is_available", "cuda.current_device", "cuda.device_count", "cuda.get_device_capability",
    "cuda.get_device_properties",
})
TRITON_ATTRS = frozenset({"jit", "autotune", "Config", "heuristics", "cdiv", "next_power_of_2", "language",
                          "constexpr"})
# Not lru_cache/cache: a cached function returning a list or dict is state between calls.
FUNCTOOLS_ATTRS = frozenset({"partial", "wraps", "reduce"})
# What a reference may not reach under torch (the rest of torch's public compute is fine).
TORCH_REFERENCE_BLOCKED = frozenset({
    "library", "ops", "utils", "compile", "cuda", "backends", "load", "save", "hub", "jit", "package",
    "distributed", "multiprocessing", "from_file", "fx", "export", "classes", "overrides", "serialization",
    "testing", "profiler", "autograd", "random", "manual_seed", "seed", "set_default_dtype",
    "set_default_device", "set_num_threads", "use_deterministic_algorithms", "set_printoptions", "mps",
    "xpu", "cpu", "storage", "Storage", "UntypedStorage", "TypedStorage", "Generator", "futures", "monitor",
    "onnx", "quantization", "sparse", "func", "nested", "masked", "amp", "set_grad_enabled",
    "inference_mode", "enable_grad", "no_grad", "from_numpy", "frombuffer", "as_strided", "as_tensor",
})
REFERENCE_SUBMODULES = ("nn.functional", "linalg", "fft", "special")
# blocked modules' functions a reference may call: functional_call runs a module with given tensors (KernelBench)
REFERENCE_EXCEPTIONS = ("func.functional_call",)
MUTATING_METHODS = frozenset({"append", "extend", "insert", "pop", "popitem", "clear", "update", "setdefault",
                              "add", "discard", "remove", "sort", "reverse"})


def _dunder(name: str) -> bool:
    return name.startswith("__") and name.endswith("__") and name not in ALLOWED_DUNDERS


class _Checker(ast.NodeVisitor):
    def __init__(self, reference: bool) -> None:
        self.reference = reference
        self.in_class = False  # inside a reference's module-level class (a KernelBench `Model`)
        self.problems: list[tuple[int, int, int, str]] = []
        self.modules: dict[str, str] = {}  # name bound by an import -> dotted module path
        self.module_level: set[str] = set()  # names assigned at module level (read-only inside functions)
        self.params: list[set[str]] = []
        self.locals: list[set[str]] = []

    def _flag(self, node: ast.AST, why: str) -> None:
        line, col = getattr(node, "lineno", 0), getattr(node, "col_offset", 0)
        self.problems.append((line, col, getattr(node, "end_col_offset", None) or col, why))

    @property
    def problem(self) -> tuple[int, str] | None:
        """The leftmost, innermost offence: in `__import__('os').system(...)` that is `__import__`."""
        if not self.problems:
            return None
        line, _, _, why = min(self.problems, key=lambda p: p[:3])
        return line, why

    # ---- module level ----
    def check_module(self, tree: ast.Module) -> None:
        for stmt in tree.body:
            for target in _assigned_names(stmt):
                self.module_level.add(target)
        for stmt in tree.body:
            if isinstance(stmt, (ast.Import, ast.ImportFrom, ast.FunctionDef)):
                pass
            elif isinstance(stmt, (ast.Assign, ast.AnnAssign)):
                targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
                if not all(isinstance(t, (ast.Name, ast.Tuple)) for t in targets):
                    self._flag(stmt, "module level may assign names only")
                if stmt.value is not None and _holds_mutable(stmt.value):
                    self._flag(stmt, "a mutable constant (list, dict, set) at module level is not allowed: use a "
                               "tuple (module-level state would let calls differ)")
                for call in (c for c in ast.walk(stmt.value) if isinstance(c, ast.Call)) if stmt.value else ():
                    if not self._load_time_call_ok(call):
                        self._flag(call, "module level may not call functions (code that runs at import); only "
                                   "triton.jit/autotune/heuristics/Config and type(x)")
            elif isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(
                    stmt.value.value, str):
                pass  # a docstring
            elif isinstance(stmt, ast.ClassDef) and self.reference:
                self._check_class(stmt)  # a KernelBench problem's `class Model(nn.Module)`
            else:
                self._flag(stmt, f"module level may hold only imports, constants and defs, not {type(stmt).__name__}")
            self.visit(stmt)

    def _check_class(self, cls: ast.ClassDef) -> None:
        """A class in a reference: no decorators, no keywords (metaclasses), and a body that, like module level,
        runs nothing when it is defined: defs, a docstring, plain constants."""
        if cls.decorator_list or cls.keywords:
            self._flag(cls, "a class in a reference may have no decorators or class keywords")
        for stmt in cls.body:
            if isinstance(stmt, ast.FunctionDef) and not stmt.decorator_list:
                continue
            if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
                continue  # a docstring
            if isinstance(stmt, ast.Assign) and isinstance(stmt.value, ast.Constant) and all(
                    isinstance(tg, ast.Name) for tg in stmt.targets):
                continue
            self._flag(stmt, f"a class body in a reference may hold only defs and constants, not "
                       f"{type(stmt).__name__}")

    def _load_time_call_ok(self, call: ast.Call) -> bool:
        func = call.func
        if isinstance(func, ast.Call):  # triton.autotune(...)(kernel)
            func = func.func
        if self.reference:
            return False
        if isinstance(func, ast.Name):
            return func.id == "type" and len(call.args) == 1
        return self._module_path(func) in ("triton.jit", "triton.autotune", "triton.heuristics", "triton.Config",
                                           "triton.language.constexpr")

    # ---- imports ----
    def _import_ok(self, module: str) -> bool:
        if self.reference:
            return module in REFERENCE_IMPORTS
        return module in ALLOWED_IMPORTS or module.startswith(ALLOWED_IMPORT_PREFIXES)

    def _allowed_list(self) -> str:
        return ", ".join(REFERENCE_IMPORTS if self.reference else ALLOWED_IMPORTS)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if not self._import_ok(alias.name):
                self._flag(node, f"import of {alias.name!r} is not allowed (allowed: {self._allowed_list()})")
            elif alias.asname in FORBIDDEN_NAMES:
                self._flag(node, f"import alias {alias.asname!r} is a forbidden name")
            else:
                self.modules[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else (
                    alias.name.split(".")[0])

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        if node.level:
            self._flag(node, "relative imports are not allowed: a kernel file stands alone")
            return
        if module == "__future__":
            return
        for alias in node.names:
            full = f"{module}.{alias.name}"
            if alias.name == "*":
                self._flag(node, f"'from {module} import *' is not allowed: name what you use")
            elif self._import_ok(full) or (self._import_ok(module) and self._path_ok(full)
                                           and alias.name not in FORBIDDEN_NAMES and not self._is_leaf(full)):
                self.modules[alias.asname or alias.name] = full  # a module or namespace: its attributes are checked
            elif not self._import_ok(module):
                self._flag(node, f"import from {module!r} is not allowed (allowed: {self._allowed_list()})")
                return
            elif alias.name in FORBIDDEN_NAMES or _dunder(alias.name) or not self._path_ok(full):
                self._flag(node, f"importing {alias.name!r} from {module!r} is not allowed")

    # ---- attribute paths on modules ----
    def _path_ok(self, path: str) -> bool:
        root, _, rest = path.partition(".")
        if not rest:
            return True
        if any(p.startswith("_") for p in rest.split(".")):
            return False
        if root == "torch":
            if self.reference:
                first = rest.split(".")[0]
                if first in TORCH_REFERENCE_BLOCKED:
                    return rest in REFERENCE_EXCEPTIONS
                return "." not in rest or any(rest == s or rest.startswith(s + ".") for s in REFERENCE_SUBMODULES) \
                    or (rest.count(".") == 1 and rest.startswith("nn."))  # torch.nn.functional via nn
            return rest in TORCH_KERNEL_ATTRS or any(a.startswith(rest + ".") for a in TORCH_KERNEL_ATTRS)
        if root == "triton":
            return rest.split(".")[0] in TRITON_ATTRS
        if root == "functools":
            return rest in FUNCTOOLS_ATTRS
        return True  # math, typing: pure functions and types

    def _module_path(self, node: ast.AST) -> str | None:
        parts = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if isinstance(node, ast.Name) and node.id in self.modules and not self._shadowed(node.id):
            return ".".join([self.modules[node.id]] + parts[::-1])
        return None

    def _shadowed(self, name: str) -> bool:
        return any(name in p for p in self.params) or any(name in s for s in self.locals)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        attr = node.attr
        if _dunder(attr):
            self._flag(node, f"access to the dunder attribute {attr!r} is not allowed")
        elif attr in FRAME_ATTRS or attr.startswith(FRAME_PREFIXES):
            self._flag(node, f"access to the frame/code attribute {attr!r} is not allowed")
        elif attr in FORBIDDEN_ATTRS:
            self._flag(node, f"access to the attribute {attr!r} is not allowed")
        path = self._module_path(node)
        if path is not None:
            if not self._path_ok(path):
                self._flag(node, f"{path} is not allowed in a {'reference' if self.reference else 'kernel file'}")
            elif not isinstance(getattr(node, "parent", None), ast.Attribute) and not self._is_leaf(path):
                self._flag(node, f"{path} may not be used as a value (only its listed attributes)")
            return  # the inner parts of an allowed chain are prefixes of it
        if isinstance(node.ctx, (ast.Store, ast.Del)) and not (
                self.in_class and isinstance(node.value, ast.Name) and node.value.id == "self"):
            self._flag(node, f"assigning the attribute {attr!r} is not allowed (no state outside the call)")
        self.generic_visit(node)

    def _is_leaf(self, path: str) -> bool:
        root, _, rest = path.partition(".")
        if root == "torch" and not self.reference:
            return rest in TORCH_KERNEL_ATTRS
        if root == "torch" and self.reference:
            return rest not in ("cuda", "nn", "linalg", "fft", "special") or rest == "nn.functional"
        return True

    # ---- names ----
    def visit_Name(self, node: ast.Name) -> None:
        name = node.id
        if (name in FORBIDDEN_NAMES or _dunder(name)) and not (
                isinstance(node.ctx, ast.Load) and any(name in p for p in self.params)) and not (
                self.in_class and name == "super" and isinstance(node.ctx, ast.Load)):
            parent = getattr(node, "parent", None)
            if not (name == "getattr" and isinstance(parent, ast.Call) and parent.func is node):
                self._flag(node, f"use of {name!r} is not allowed")  # a getattr call is judged in visit_Call
        if isinstance(node.ctx, ast.Load) and name in self.modules and not self._shadowed(name):
            if not isinstance(getattr(node, "parent", None), ast.Attribute):
                self._flag(node, f"the module {name!r} may not be used as a value (only its listed attributes)")
        if self.params and isinstance(node.ctx, ast.Store):
            self.locals[-1].add(name)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Name) and func.id == "getattr" and not self._shadowed("getattr"):
            lit = node.args[1] if len(node.args) == 3 else None
            if not (isinstance(lit, ast.Constant) and lit.value in SAFE_GETATTR):
                self._flag(node, "getattr() is not allowed (reflection); write the attribute out")
        if isinstance(func, ast.Name) and func.id == "type" and len(node.args) != 1:
            self._flag(node, "type() with more than one argument creates a class: not allowed")
        if (isinstance(func, ast.Attribute) and func.attr in MUTATING_METHODS and isinstance(func.value, ast.Name)
                and self.params and func.value.id in self.module_level and not self._shadowed(func.value.id)):
            self._flag(node, f"{func.value.id}.{func.attr}() changes a module-level value: no state between calls")
        self.generic_visit(node)

    # ---- functions: no state between calls ----
    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> None:
        args = node.args
        for d in list(args.defaults) + [d for d in args.kw_defaults if d is not None]:
            if not isinstance(d, (ast.Constant, ast.Name, ast.Attribute, ast.Tuple, ast.UnaryOp)):
                self._flag(d, "a default argument must be a constant (a mutable default keeps state between calls)")
            self.visit(d)
        for dec in getattr(node, "decorator_list", []):
            self.visit(dec)
        names = {a.arg for a in args.posonlyargs + args.args + args.kwonlyargs}
        names |= {a.arg for a in (args.vararg, args.kwarg) if a is not None}
        for n in names:
            if _dunder(n):
                self._flag(node, f"parameter name {n!r} is not allowed")
        for a in args.posonlyargs + args.args + args.kwonlyargs:
            if a.annotation is not None:
                self.visit(a.annotation)
        if getattr(node, "returns", None) is not None:
            self.visit(node.returns)
        self.params.append(names)
        self.locals.append(set())
        for stmt in node.body if isinstance(node.body, list) else [node.body]:
            self.visit(stmt)
        self.params.pop()
        self.locals.pop()

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        if (node.name in FORBIDDEN_NAMES or _dunder(node.name)) and not (self.in_class and node.name == "__init__"):
            self._flag(node, f"defining {node.name!r} is not allowed")
        if self.locals:
            self.locals[-1].add(node.name)
        self._function(node)

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]

    def visit_Lambda(self, node: ast.Lambda) -> None:
        self._function(node)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        if self.reference and not self.params and not self.locals:  # a module-level class of a reference
            for base in node.bases:
                self.visit(base)
            # its methods get every rule a function gets, but may be `__init__`, call `super()` and set
            # attributes of `self` (the instance lives for one call of the reference)
            self.in_class = True
            try:
                for stmt in node.body:
                    self.visit(stmt)
            finally:
                self.in_class = False
            return
        self._flag(node, f"defining a class ({node.name!r}) is not allowed: plain functions only")

    def visit_Global(self, node: ast.Global) -> None:
        if self.reference and not self.in_class:
            # a KernelBench reference sets the problem's module-level sizes from its inputs on every call (so
            # the Model builds for them); a reference's state cannot touch a verdict: the parent compares
            return
        self._flag(node, f"global {', '.join(node.names)} is not allowed (no state between calls)")

    def visit_Nonlocal(self, node: ast.Nonlocal) -> None:
        self._flag(node, f"nonlocal {', '.join(node.names)} is not allowed (no state between calls)")

    def _store_into(self, target: ast.AST, node: ast.AST) -> None:
        base = target
        while isinstance(base, (ast.Subscript, ast.Attribute)):
            base = base.value
        if (isinstance(target, ast.Subscript) and isinstance(base, ast.Name) and self.params
                and base.id in self.module_level and not self._shadowed(base.id)):
            self._flag(node, f"writing into the module-level {base.id!r} is not allowed (no state between calls)")

    def visit_Assign(self, node: ast.Assign) -> None:
        for t in node.targets:
            self._store_into(t, node)
        self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self._store_into(node.target, node)
        self.generic_visit(node)


# CPython 3.11 keeps the AST conversion's recursion depth in shared state: two threads parsing at once
# (verify_many with --jobs) can fail with "AST constructor recursion depth mismatch". One parse at a time.
_PARSE_LOCK = threading.Lock()


def parse(source: str, filename: str = "<source>") -> ast.Module:
    with _PARSE_LOCK:
        return ast.parse(source, filename=filename)


def _assigned_names(stmt: ast.stmt) -> list[str]:
    if isinstance(stmt, ast.Assign):
        return [n.id for t in stmt.targets for n in ast.walk(t) if isinstance(n, ast.Name)]
    if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
        return [stmt.target.id]
    return []


def _holds_mutable(node: ast.AST) -> bool:
    """A list, dict or set literal anywhere in a module-level value (`_S = ([],)` is state as much as
    `_S = []`), except a list of autotuning configs; the arguments of calls are judged with the call."""
    if isinstance(node, (ast.Dict, ast.Set, ast.DictComp, ast.SetComp, ast.ListComp)):
        return True
    if isinstance(node, ast.List):
        return not _config_list(node)
    if isinstance(node, ast.Call):
        return False
    return any(_holds_mutable(child) for child in ast.iter_child_nodes(node))


def _config_list(node: ast.List) -> bool:
    """A module-level list of autotuning configs: `[triton.Config(...), ...]`."""
    return bool(node.elts) and all(
        isinstance(e, ast.Call) and isinstance(e.func, ast.Attribute) and e.func.attr == "Config" for e in node.elts)


def _check(source: str, filename: str, reference: bool) -> str | None:
    try:
        tree = parse(source, filename)
    except SyntaxError as exc:
        text = (exc.text or "").strip()
        return f"{filename} line {exc.lineno}: syntax error: {exc.msg}" + (f" in `{text[:120]}`" if text else "")
    for parent in ast.walk(tree):
        for child in ast.iter_child_nodes(parent):
            child.parent = parent  # type: ignore[attr-defined]
    checker = _Checker(reference)
    if reference:
        checker.modules.update({"torch": "torch", "F": "torch.nn.functional", "math": "math"})
    checker.check_module(tree)
    if checker.problem is None:
        return None
    lineno, why = checker.problem
    lines = source.splitlines()
    text = lines[lineno - 1].strip() if 0 < lineno <= len(lines) else ""
    return f"{filename} line {lineno}: `{text[:120]}`: {why}"


def check_source(source: str, filename: str = "kernel.py") -> str | None:
    """None when a kernel file is acceptable, else one line: where, the offending text, and why."""
    return _check(source, filename, reference=False)


def check_reference(source: str, filename: str = "spec.toml reference") -> str | None:
    """None when a spec's reference is acceptable, else one line (the reference profile: torch compute
    allowed, no reflection, no I/O, imports of torch, math and torch.nn.functional only)."""
    return _check(source, filename, reference=True)


def module_functions(source: str) -> dict[str, list[str]]:
    """Top-level function names of a kernel file and their parameter names (read without importing it)."""
    out: dict[str, list[str]] = {}
    for stmt in parse(source).body:
        if isinstance(stmt, ast.FunctionDef):
            a = stmt.args
            out[stmt.name] = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs]
        elif isinstance(stmt, ast.Assign):
            for t in stmt.targets:
                if isinstance(t, ast.Name):
                    out.setdefault(t.id, [])
    return out
