"""The text the index embeds for one library op, and the metadata a search hit carries back."""

from __future__ import annotations

import ast
import json
import re
from typing import Any

from kernelgen.library import Op

CODE_DIGEST_CHARS = 600


def code_digest(source: str) -> str:
    """What a kernel file says about itself without its noise: the module docstring's first paragraph, the
    names of its functions and the `tl.*` primitives it uses (`tl.sigmoid`, `tl.exp`, `tl.sqrt`...)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return ""
    doc = (ast.get_docstring(tree) or "").split("\n\n")[0].replace("\n", " ")
    funcs = sorted({n.name.strip("_") for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)})
    prims = sorted(set(re.findall(r"\btl\.([a-z_][a-z0-9_]*)\s*\(", source)))
    keep = {"exp", "exp2", "log", "log2", "sqrt", "rsqrt", "sigmoid", "tanh", "erf", "cos", "sin", "max", "sum",
            "maximum", "minimum", "dot", "fma", "abs"}
    prims = [p for p in prims if p in keep]
    text = f"{doc} functions: {' '.join(funcs)} uses: {' '.join(prims)}"
    return text[:CODE_DIGEST_CHARS]


def op_document(op: Op) -> str:
    """One op as text: name, description, tags, family, signature, ATen overloads, request, code digest.
    The name comes twice: it is the strongest evidence of what the op is."""
    spec = op.spec
    assert spec is not None, op.error
    name_words = op.name.replace("_", " ")
    args = ", ".join(i.name for i in spec.inputs)
    lines = [
        f"{name_words}. {name_words}.",
        spec.description,
        "tags: " + ", ".join(spec.tags),
        f"family: {spec.family}" if spec.family else "",
        f"signature: {spec.function}({args}) -> {', '.join(spec.outputs)}",
        "aten: " + ", ".join(a.overload for a in spec.aten) if spec.aten else "",
        f"request: {spec.request}" if spec.request else "",
        "code: " + code_digest(op.kernel_path.read_text()) if op.kernel_path.is_file() else "",
    ]
    return "\n".join(line for line in lines if line)


def op_metadata(op: Op) -> dict[str, Any]:
    """chromadb metadata values must be scalars: the ATen list travels as JSON."""
    spec = op.spec
    assert spec is not None, op.error
    # No folder: identical libraries in different places share an index (see index.py).
    return {
        "name": op.name,
        "description": spec.description,
        "aten": json.dumps([a.overload for a in spec.aten]),
        "family": spec.family,
        "source_hash": op.source_hash(),
    }
