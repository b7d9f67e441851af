"""A stand-in for Triton's compiled side, for testing the launch path without a GPU.

`fake_kernel(monkeypatch)` makes a module holding one JITFunction, `k(x_ptr, y_ptr, n, scale, BLOCK, FLAG)`,
accelerated by `kernelgen.launch`, and replaces Triton's `JITFunction.run` by a fake that records what it is
asked to launch and hands back a fake compiled kernel whose `run` (the C launcher's place) records its
arguments. Everything of ours (the key, the cache, the argument order, the fallbacks, launch plans) is real.
"""

from __future__ import annotations

import types

import triton.language as tl
from triton.runtime.jit import JITFunction

from kernelgen import launch


def _scale_kernel(x_ptr, y_ptr, n, scale, BLOCK: tl.constexpr, FLAG: tl.constexpr = False):
    pass  # never compiled here: the fake run stands in for Triton


class FakeCompiled:
    def __init__(self, tag, log):
        self.tag, self.function, self.packed_metadata, self.launches = tag, f"fn-{tag}", ("meta", tag), []
        self.log = log  # the launches of every fake kernel, in order

    def run(self, *args):
        self.launches.append(args)
        self.log.append(args)


class Compiled(dict):
    """Fake compiled kernels by tag; `.log` holds all their launches in order."""

    def __init__(self):
        super().__init__()
        self.log = []


def fake_kernel(monkeypatch):
    """(module, calls through Triton's path, compiled kernels by (dtype of x, BLOCK, FLAG))."""
    compiled, calls = Compiled(), []

    def fake_run(self, *args, grid, warmup, **kwargs):
        calls.append((args, grid, dict(kwargs)))
        tag = (args[0].dtype, kwargs.get("BLOCK"), kwargs.get("FLAG", False))
        return compiled.setdefault(tag, FakeCompiled(tag, compiled.log))

    monkeypatch.setattr(JITFunction, "run", fake_run)
    monkeypatch.setattr(launch, "_TRITON_RUN", fake_run)
    monkeypatch.setattr(launch, "_device_and_stream", (lambda: 0, lambda device: 777))
    module = types.ModuleType("fake_kernels")
    module.k = JITFunction(_scale_kernel)
    assert launch.accelerate(module) == ["k"]
    assert type(module.k) is launch.CachedLaunchJIT
    return module, calls, compiled


def triton36_launcher(c_launch, pdl=False):
    """A stand-in for a Triton 3.6 compiled kernel's launcher object (`__call__` around a C `launch`) with no
    scratch memory and no cooperative grid; its C launch is c_launch(*args)."""

    class Launcher36:
        global_scratch_size = profile_scratch_size = 0
        launch_cooperative_grid, launch_pdl = False, pdl

        def __call__(self, *args):  # what the cached launch path (not a replay) calls
            pass

        def launch(self, *args):
            c_launch(*args)

    return Launcher36()

