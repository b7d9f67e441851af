"""`Reference`: what every request front end produces, and the only thing the code generator lowers.

A request comes in as words ("silu of x plus bias"), a formula ("y = silu(x + bias)"), a Python file (a
`reference(...)` function or a KernelBench-style `Model`), or an ATen overload name. Each front end turns it
into an explicit PyTorch reference: Python source defining `def reference(<inputs>)` with `torch`, `F` and
`math` in scope (the same form as a spec.toml `reference`), plus the inputs it takes (symbolic shapes,
dtypes, how to fill them) and the test and bench shapes. The user is shown `source` before anything is
generated; the kernel is then derived from the traced reference, never from the words.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kernelgen.spec import InputSpec

ORIGINS = ("words", "formula", "file", "kernelbench", "aten", "llm", "spec")  # spec: an op's spec.toml


@dataclass
class Reference:
    request: str  # what the user gave: the sentence, the formula, or the file path
    origin: str  # one of ORIGINS
    source: str  # Python source defining `def reference(...)`; torch, F and math are in scope
    inputs: list[InputSpec]  # the launcher's arguments, in order (tensors with dim names, scalars with values)
    outputs: list[str]  # names of what `reference` returns (one name per returned tensor)
    test_shapes: list[dict[str, int]]  # dim name -> size: small shapes for verification
    bench_shapes: list[dict[str, int]] = field(default_factory=list)  # realistic shapes for timing
    name: str = ""  # a suggested op name (snake_case); the user's --name wins
    notes: list[str] = field(default_factory=list)  # conventions chosen, printed with the reference
    row_dim: str = "M"  # the dim whose size may be 1 (one row) in edge cases
    col_dim: str = "N"  # the reduction / innermost dim varied in edge cases
    dtypes: list[str] = field(default_factory=lambda: ["float32", "float16", "bfloat16"])

    def function(self) -> Callable[..., Any]:
        """The `reference` callable (the source runs with torch, F and math in scope)."""
        import torch
        import torch.nn.functional as F

        scope: dict[str, Any] = {"torch": torch, "F": F, "math": math}
        exec(compile(self.source, f"<reference of {self.request[:60]!r}>", "exec"), scope)  # noqa: S102
        fn = scope.get("reference")
        if not callable(fn):
            raise ValueError("the reference source defines no `reference` function")
        return fn

    def show(self) -> str:
        """The reference as the user sees it: the source, then one line per convention chosen."""
        lines = [self.source.strip()]
        lines += [f"# {note}" for note in self.notes]
        return "\n".join(lines)
