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
def assert_library_op_verifies(interpreter, rng_seed):
    """Check a library op against its upcast reference on every dtype and every edge case (3 fresh seeds,
    drawn from `rng_seed`, which a failure reports)."""

    def check(name: str) -> None:
        from kernelgen.library import get_op
        from kernelgen.verify.accuracy import check_accuracy

        op = get_op(name)
        result = check_accuracy(op.spec, op.launcher(), interpreter, trials=3, seed=rng_seed)
        assert result.passed, f"seed {rng_seed}: {result.message}"
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
    """A fresh seed per test (KERNELGEN_TEST_SEED replays one); a failing test reports it."""
    fixed = os.environ.get("KERNELGEN_TEST_SEED")
    return int(fixed) if fixed else int.from_bytes(os.urandom(4), "little")


torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch, tmp_path_factory):
    """Tests see neither the developer's libraries nor their Ray cluster: KERNELGEN_LIBRARY and RAY_ADDRESS
    are cleared, and the per-user library lives in a fresh data folder (a test sets them where it needs to)."""
    for var in ("KERNELGEN_LIBRARY", "RAY_ADDRESS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path_factory.mktemp("xdg-data")))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A failing test that drew random inputs from `rng_seed` says which seed, so the failure can be replayed."""
    report = yield
    seed = getattr(item, "funcargs", {}).get("rng_seed")
    if report.failed and seed is not None:
        report.sections.append(("random seed", f"rng_seed = {seed} (replay with KERNELGEN_TEST_SEED={seed})"))
    return report
