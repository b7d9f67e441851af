"""Triton's CPU interpreter (`TRITON_INTERPRET=1`) on CPU tensors: correct but slow.

It proves kernels right on any machine (tests, CI) and never produces a speed figure.
"""

from __future__ import annotations

import os
import platform

from kernelgen.backends.base import Backend, triton_interpreting
from kernelgen.errors import BackendError

_NOT_RUN = object()
_probe_result: object = _NOT_RUN  # the interpreter self-test runs once per process


class InterpreterBackend(Backend):
    name = "interpreter"
    device = "cpu"
    dispatch_key = "CPU"
    interpret = True
    measures_performance = False
    description = "Triton interpreter on CPU tensors (accuracy only)"

    def available(self) -> bool:
        import importlib.util

        return importlib.util.find_spec("triton") is not None and triton_interpreting() is not False

    def prepare(self) -> None:
        # Triton fixes interpreter-or-compiler for the whole process when it is first imported.
        mode = triton_interpreting()
        if mode is None:
            os.environ["TRITON_INTERPRET"] = "1"
        elif mode is False:
            raise BackendError(
                "the interpreter backend needs TRITON_INTERPRET=1 before triton is imported "
                "(set it in the environment, or use the interpreter in its own process)"
            )
        global _probe_result
        if _probe_result is _NOT_RUN:
            from kernelgen.backends.interpreter_probe import loops_work

            _probe_result = loops_work()
        if _probe_result is not None:
            import numpy
            import triton

            raise BackendError(
                f"Triton {triton.__version__}'s interpreter cannot run loops with NumPy {numpy.__version__} "
                f"({_probe_result}); install numpy<2.3 or a newer Triton"
            )

    def device_name(self) -> str:
        return f"Triton interpreter on {platform.machine() or 'cpu'}"

    def copy_bandwidth(self) -> float:
        raise NotImplementedError("the interpreter backend does not measure performance")
