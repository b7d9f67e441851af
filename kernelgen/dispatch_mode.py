"""A TorchDispatchMode that does not import Dynamo: the base of kernelgen's own modes.

By default torch wraps a mode's __torch_dispatch__ in torch._dynamo.disable, which imports Dynamo on the
mode's first call: 0.7 s on the development machine, over a second per verification worker (a worker on the
interpreter measured 2.9 s with it, 1.7 s without), and the first launch plan recorded in a model process
paid it on that call. The wrap only matters to code that Dynamo compiles while the mode is on, and nothing
runs compiled under kernelgen's modes: the verifier's guard watches a kernel file's calls (which cannot
reach torch.compile: the static check's allowlist; the torch.compile baseline runs after the guarded calls),
and a launch plan's recording watches one launcher call. A torch without this hook ignores it and wraps.
"""

from __future__ import annotations

from torch.utils._python_dispatch import TorchDispatchMode


class UncompiledDispatchMode(TorchDispatchMode):
    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        return False
