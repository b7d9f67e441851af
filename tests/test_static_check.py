"""Static check of candidate source (an allowlist): what a kernel file or a reference may not do is rejected
with its line, and every library kernel and reference passes."""

from pathlib import Path

import pytest

from kernelgen.spec import load_spec
from kernelgen.verify.static import check_reference, check_source

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
        ("boom = lambda f=torch.os.abort: f()", "torch.os.abort is not allowed"),
        ("g = (lambda: 0).__globals__", "'__globals__'"),
        ("b = torch.__builtins__", "'__builtins__'"),
        ("subs = object.__subclasses__()", "'object'"),
        ("subs = (1).__class__.__subclasses__()", "'__class__'"),
        ("c = (lambda: 0).__code__", "'__code__'"),
        ("def f(x):\n    return getattr(torch, 'o' + 's')", "getattr() is not allowed"),
        ("def f(x):\n    return getattr(torch, 'float32')", "getattr() is not allowed"),
        ("setattr(torch, 'sys', 1)", "'setattr'"),
        ("def f(x):\n    return x.gi_frame", "'gi_frame'"),
        ("def f(x):\n    return x.f_back.f_locals", "'f_back'"),
        ("def f(x):\n    return x.tb_frame", "'tb_frame'"),
        ("lib = torch.library.Library('aten', 'IMPL')", "torch.library.Library is not allowed"),
        ("op = torch.ops.aten.add", "torch.ops.aten.add is not allowed"),
        ("from torch.utils._python_dispatch import _disable_current_modes", "torch.utils._python_dispatch"),
        ("c = torch._C", "torch._C is not allowed"),
        ("def f(x):\n    return torch.compile(x)", "torch.compile is not allowed"),
        ("def f(x):\n    return torch.cuda.synchronize()", "torch.cuda.synchronize is not allowed"),
        ("def f(x):\n    return torch.sigmoid(x)", "torch.sigmoid is not allowed"),
        ("def f(x):\n    return x.numpy()", "'numpy'"),
        ("T = torch", "may not be used as a value"),
        ("_CALLS = [0]", "mutable constant"),
        ("_CALLS = []", "mutable constant"),
        ("_STATE = ([], 1)", "mutable constant"),
        ("_STATE = (1, {'calls': 0})", "mutable constant"),
        ("import functools\n@functools.lru_cache\ndef _state():\n    return {}", "functools.lru_cache is not allowed"),
        ("def f(x, _n=[0]):\n    return _n", "default argument must be a constant"),
        ("def f(x):\n    global _N", "global _N is not allowed"),
        ("def f(x):\n    f.calls = 1", "assigning the attribute 'calls'"),
        ("class Cache:\n    pass", "not ClassDef"),
        ("x = torch.empty(3)", "module level may not call functions"),
        ("for i in range(3):\n    pass", "not For"),
        ("from torch import cuda\nsync = cuda.synchronize", "torch.cuda.synchronize is not allowed"),
        ("w = torch.load('weights.pt')", "torch.load is not allowed"),
        ("h = typing.get_type_hints(f)", "'get_type_hints'"),
        ("def f(x, opener=open):\n    return opener", "'open'"),
        ("open = print", "'open'"),
    ],
)
def test_forbidden_source_is_rejected_with_its_line(line, words):
    source = HEADER + "\n" + line + "\n"
    message = check_source(source)
    assert message is not None, line
    assert f"line {HEADER.count(chr(10)) + 2}" in message or f"line {HEADER.count(chr(10)) + 3}" in message
    assert any(part.strip()[:40] in message for part in line.splitlines())
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
        "def _block(n):\n    return triton.next_power_of_2(n)\n\n"
        "def aten_adapter(input, dim, dtype=None):\n    if input.dim() == 0:\n        return NotImplemented\n"
        "    y = torch.empty_like(input)\n    seen = {}\n    seen['a'] = 1\n"
        "    return torch.float32, input.stride(), math.sqrt(2.0), tl.load, getattr(input, 'dtype', None), y\n\n"
        "FLOAT_DTYPES = (torch.float32, torch.bfloat16)\n_CONFIGS = [triton.Config({'B': 1}, num_warps=4)]\n"
        "_k = triton.autotune(configs=_CONFIGS, key=['n'])(_block)\n"
    )
    assert check_source(source) is None


@pytest.mark.parametrize(
    "reference, words",
    [
        ("import os\ndef reference(x):\n    return x", "import of 'os'"),
        ("_x = torch.ones(3).sum()\ndef reference(x):\n    return x", "module level may not call"),
        ("def reference(x):\n    return torch.ops.aten.relu(x)", "torch.ops.aten.relu is not allowed"),
        ("def reference(x):\n    torch.library.Library('aten', 'IMPL')\n    return x", "torch.library"),
        ("def reference(x):\n    return getattr(torch, 'relu')(x)", "getattr() is not allowed"),
        ("def reference(x):\n    torch.save(x, 'f')\n    return x", "torch.save is not allowed"),
        ("def reference(x):\n    print(x)\n    return x", "'print'"),
    ],
)
def test_reference_profile_rejects_reflection_io_and_load_time_code(reference, words):
    message = check_reference(reference + "\n")
    assert message is not None and words in message, message


def test_reference_profile_allows_torch_compute():
    source = ("import math\n\nSCALE = 2.0\n\ndef reference(x, w):\n"
              "    return F.silu(torch.softmax(x, -1)) * torch.linalg.vector_norm(w) * math.pi * SCALE\n")
    assert check_reference(source) is None


@pytest.mark.parametrize("kernel", LIBRARY_OPS, ids=lambda p: p.parent.name)
def test_every_library_kernel_and_reference_passes(kernel):
    assert check_source(kernel.read_text()) is None
    spec = load_spec(kernel.parent / "spec.toml")
    assert check_reference(spec.reference) is None
