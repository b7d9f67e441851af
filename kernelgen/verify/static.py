"""Static check of candidate source before anything runs it: imports from an allowlist only, no names or
attributes that reach the file system, processes, the network or the interpreter's internals.

This is the first filter, not the wall: the sandbox (a fresh subprocess with a timeout) contains whatever
slips through. It rejects anything a kernel file has no business doing, with the line that does it, so
an LLM can repair the candidate from the message alone.
"""

from __future__ import annotations

import ast

ALLOWED_IMPORTS = ("triton", "triton.language", "torch", "math", "functools", "typing", "__future__")
# `triton.language.extra.libdevice` and friends hold the math functions (tanh, erf, ...) kernels need.
ALLOWED_IMPORT_PREFIXES = ("triton.language.",)

# Builtins and modules that reach the host: referencing any of them by name is rejected.
FORBIDDEN_NAMES = frozenset({
    "open", "exec", "eval", "compile", "__import__", "globals", "locals", "vars", "breakpoint", "input",
    "os", "sys", "subprocess", "socket", "ctypes", "importlib", "builtins", "pathlib", "shutil",
    "delattr", "memoryview", "exit", "quit", "help",
})
# Attribute names that reach the same places through an allowed module (`torch.os` is the os module,
# `typing.get_type_hints` evaluates strings, `torch.load` reads files).
FORBIDDEN_ATTRS = frozenset({
    "os", "sys", "subprocess", "socket", "ctypes", "importlib", "builtins", "pathlib", "shutil",
    "system", "popen", "spawn", "fork", "execv", "execve", "abort", "kill", "_exit",
    "get_type_hints", "ForwardRef", "_eval_type", "cpp_extension", "_C", "hub", "serialization", "package",
    "multiprocessing", "distributed", "from_file", "save", "load_library",
})
TORCH_FILE_ATTRS = frozenset({"load"})  # `torch.load` (but `tl.load` is every kernel's bread)
ALLOWED_DUNDERS = frozenset({"__name__", "__doc__", "__all__", "__init__", "__call__"})
ATTR_BUILTINS = frozenset({"getattr", "setattr", "hasattr", "delattr"})


def _dunder(name: str) -> bool:
    return name.startswith("__") and name.endswith("__") and name not in ALLOWED_DUNDERS


def _import_allowed(module: str) -> bool:
    return module in ALLOWED_IMPORTS or module.startswith(ALLOWED_IMPORT_PREFIXES)


class _Checker(ast.NodeVisitor):
    def __init__(self) -> None:
        self.problems: list[tuple[int, int, int, str]] = []  # (line, col, end col, why)
        self.params: list[set[str]] = []  # parameter names of the enclosing functions, innermost last

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

    # ---- imports ----
    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if not _import_allowed(alias.name):
                self._flag(node, f"import of {alias.name!r} is not allowed (allowed: {', '.join(ALLOWED_IMPORTS)})")
            elif alias.asname and alias.asname in FORBIDDEN_NAMES:
                self._flag(node, f"import alias {alias.asname!r} is a forbidden name")

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        if node.level:
            self._flag(node, "relative imports are not allowed: a kernel file stands alone")
            return
        if not _import_allowed(module):
            self._flag(node, f"import from {module!r} is not allowed (allowed: {', '.join(ALLOWED_IMPORTS)})")
            return
        for alias in node.names:
            if alias.name == "*":
                self._flag(node, f"'from {module} import *' is not allowed: name what you use")
            elif alias.name in FORBIDDEN_NAMES or alias.name in FORBIDDEN_ATTRS or _dunder(alias.name):
                self._flag(node, f"importing {alias.name!r} from {module!r} is not allowed")
            elif module == "torch" and alias.name in TORCH_FILE_ATTRS:
                self._flag(node, f"importing {alias.name!r} from torch is not allowed (file access)")

    # ---- names: a forbidden name is fine only as a parameter of an enclosing function ----
    def visit_Name(self, node: ast.Name) -> None:
        name = node.id
        if name in FORBIDDEN_NAMES or _dunder(name):
            if not (isinstance(node.ctx, ast.Load) and any(name in p for p in self.params)):
                self._flag(node, f"use of {name!r} is not allowed")

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> None:
        args = node.args
        # Defaults and decorators are evaluated in the enclosing scope: check them before the parameters
        # come into scope (`lambda f=open: ...` must not pass as a parameter named open).
        for d in list(args.defaults) + [d for d in args.kw_defaults if d is not None]:
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
        body = node.body if isinstance(node.body, list) else [node.body]
        for stmt in body:
            self.visit(stmt)
        self.params.pop()

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        if node.name in FORBIDDEN_NAMES or _dunder(node.name):
            self._flag(node, f"defining {node.name!r} is not allowed")
        self._function(node)

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]

    def visit_Lambda(self, node: ast.Lambda) -> None:
        self._function(node)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        if node.name in FORBIDDEN_NAMES or _dunder(node.name):
            self._flag(node, f"defining {node.name!r} is not allowed")
        self.generic_visit(node)

    # ---- attributes ----
    def visit_Attribute(self, node: ast.Attribute) -> None:
        attr = node.attr
        if _dunder(attr):
            self._flag(node, f"access to the dunder attribute {attr!r} is not allowed")
        elif attr in FORBIDDEN_ATTRS:
            self._flag(node, f"access to the attribute {attr!r} is not allowed")
        elif attr in TORCH_FILE_ATTRS and isinstance(node.value, ast.Name) and node.value.id == "torch":
            self._flag(node, f"torch.{attr} is not allowed (file access)")
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Name) and func.id in ATTR_BUILTINS and not any(func.id in p for p in self.params):
            if len(node.args) < 2:
                self._flag(node, f"{func.id}() needs a literal attribute name")
            else:
                name = node.args[1]
                if not (isinstance(name, ast.Constant) and isinstance(name.value, str)):
                    self._flag(node, f"{func.id}() with a computed attribute name is not allowed")
                elif _dunder(name.value) or name.value in FORBIDDEN_ATTRS or name.value in FORBIDDEN_NAMES:
                    self._flag(node, f"{func.id}(..., {name.value!r}) is not allowed")
        self.generic_visit(node)

    def visit_Global(self, node: ast.Global) -> None:
        for n in node.names:
            if n in FORBIDDEN_NAMES or _dunder(n):
                self._flag(node, f"global {n!r} is not allowed")


def check_source(source: str, filename: str = "kernel.py") -> str | None:
    """None when the source is acceptable, else one line: where, the offending text, and why."""
    try:
        tree = ast.parse(source, filename=filename)
    except SyntaxError as exc:
        text = (exc.text or "").strip()
        return f"{filename} line {exc.lineno}: syntax error: {exc.msg}" + (f" in `{text[:120]}`" if text else "")
    checker = _Checker()
    checker.visit(tree)
    if checker.problem is None:
        return None
    lineno, why = checker.problem
    lines = source.splitlines()
    text = lines[lineno - 1].strip() if 0 < lineno <= len(lines) else ""
    return f"{filename} line {lineno}: `{text[:120]}`: {why}"
