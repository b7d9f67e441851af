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


EDGE_CASES = {"one row", "non-power-of-two", "longer than one block", "strided rows", "zero rows"}


@pytest.fixture
def assert_library_op_verifies(interpreter):
    """Check a library op against its upcast reference on every dtype and every edge case (3 fresh seeds)."""

    def check(name: str) -> None:
        from kernelgen.library import get_op
        from kernelgen.verify.accuracy import check_accuracy

        op = get_op(name)
        result = check_accuracy(op.spec, op.launcher(), interpreter, trials=3)
        assert result.passed, result.message
        assert EDGE_CASES <= {r["case"].split(" {")[0] for r in result.rows}
        assert {r["dtype"] for r in result.rows} == {"float32", "float16", "bfloat16"}

    return check


@pytest.fixture(autouse=True)
def _no_overrides_leak():
    yield
    import kernelgen

    kernelgen.disable()


@pytest.fixture
def rng_seed():
    return int.from_bytes(os.urandom(4), "little")


torch.set_num_threads(2)
