"""Tests run kernels on CPU tensors through Triton's interpreter: set it before anything imports triton."""

import os

os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(scope="session")
def interpreter():
    from kernelgen.backends import get_backend

    backend = get_backend("interpreter")
    backend.prepare()
    return backend


@pytest.fixture(autouse=True)
def _no_overrides_leak():
    yield
    import kernelgen

    kernelgen.disable()


@pytest.fixture
def rng_seed():
    return int.from_bytes(os.urandom(4), "little")


torch.set_num_threads(2)
