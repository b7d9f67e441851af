"""Static check of candidate source: what a kernel file may not do is rejected with its line, and every
library kernel passes."""

from pathlib import Path

import pytest

from kernelgen.spec import load_spec
from kernelgen.verify.static import check_source

LIBRARY_OPS = sorted((Path(__file__).resolve().parents[1] / "library" / "ops").glob("*/kernel.py"))
HEADER = "import torch\nimport triton\nimport triton.language as tl\n\n"


@pytest.mark.parametrize(
    "line, words",
    [
        ("import os", "import of 'os'"),
        ("import subprocess as sp", "import of 'subprocess'"),
        ("from os import path", "import from 'os'"),
        ("from socket import socket", "import from 'socket'"),
        ("import numpy", "import of 'numpy'"),
        ("from . import helper", "relative imports"),
        ("from triton.language import *", "import *"),
        ("data = open('/etc/passwd').read()", "'open'"),
        ("exec('x = 1')", "'exec'"),
        ("y = eval('1 + 1')", "'eval'"),
        ("code = compile('1', 'f', 'eval')", "'compile'"),
        ("m = __import__('os')", "'__import__'"),
        ("g = globals()", "'globals'"),
        ("breakpoint()", "'breakpoint'"),
        ("boom = lambda f=torch.os.abort: f()", "'os'"),
        ("g = (lambda: 0).__globals__", "'__globals__'"),
        ("b = torch.__builtins__", "'__builtins__'"),
        ("subs = object.__subclasses__()", "'__subclasses__'"),
        ("c = (lambda: 0).__code__", "'__code__'"),
        ("f = getattr(torch, 'o' + 's')", "computed attribute name"),
        ("f = getattr(torch, '__loader__')", "'__loader__'"),
        ("setattr(torch, 'sys', 1)", "'sys'"),
        ("w = torch.load('weights.pt')", "torch.load"),
        ("h = typing.get_type_hints(f)", "'get_type_hints'"),
        ("def f(x, opener=open):\n    return opener", "'open'"),
        ("open = print", "'open'"),
    ],
)
def test_forbidden_source_is_rejected_with_its_line(line, words):
    source = HEADER + "\n" + line + "\n"
    message = check_source(source)
    assert message is not None, line
    assert f"line {HEADER.count(chr(10)) + 2}" in message
    assert line.splitlines()[0].strip()[:40] in message
    assert words in message


def test_innermost_offence_is_named_first():
    message = check_source("__import__('os').system('true')\n")
    assert message is not None and "'__import__'" in message


def test_syntax_error_names_the_line():
    message = check_source("import torch\n\ndef launcher(x:\n    return x\n")
    assert message is not None and "syntax error" in message and "line 3" in message


def test_ordinary_kernel_code_is_accepted():
    source = "from __future__ import annotations\n" + HEADER + (
        "import math\nimport functools\nfrom typing import Optional\n"
        "from triton.language.extra import libdevice\n\n"
        "@functools.lru_cache\ndef _block(n):\n    return triton.next_power_of_2(n)\n\n"
        "def aten_adapter(input, dim, dtype=None):\n    if input.dim() == 0:\n        return NotImplemented\n"
        "    return getattr(torch, 'float32'), input.stride(), math.sqrt(2.0), tl.load\n"
    )
    assert check_source(source) is None


@pytest.mark.parametrize("kernel", LIBRARY_OPS, ids=lambda p: p.parent.name)
def test_every_library_kernel_and_reference_passes(kernel):
    assert check_source(kernel.read_text()) is None
    spec = load_spec(kernel.parent / "spec.toml")
    assert check_source(spec.reference, "spec.toml reference") is None
