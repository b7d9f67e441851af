"""kernelgen/lean_replay.py: the C++ plan replay builds against the installed torch, allocates as the Python
replay does and refuses malformed calls. Its launches need libcuda (checked on the GPU by the `check` part of
benchmarks/bench_launch_models.py: replays bit-identical to Triton's own launch)."""

import os
import shutil
import struct

import pytest
import torch

from kernelgen import lean_replay


@pytest.fixture(scope="module")
def module(tmp_path_factory):
    if shutil.which("g++") is None:
        pytest.skip("no C++ compiler on this machine")
    from triton.backends.nvidia import driver

    before = os.environ.get("KERNELGEN_CACHE_DIR")
    os.environ["KERNELGEN_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    try:
        built = lean_replay.build(driver.include_dirs)
    finally:
        if before is None:
            os.environ.pop("KERNELGEN_CACHE_DIR")
        else:
            os.environ["KERNELGEN_CACHE_DIR"] = before
    assert built is not None, lean_replay._built.get("error")
    return built


def test_allocations_are_fresh_and_shaped_like_pythons(module):
    x = torch.randn(4, 8)
    # b0: empty_like(t0); b1: zeroed like t0; returned one by one or all together
    allocs = ((0, (4, 8), (8, 1), torch.float32, False), (0, (4, 8), (8, 1), torch.float32, True))
    one = module.make(1, 0, 0, allocs, ())
    y = module.run(one, 0, x)
    assert y.shape == x.shape and y.stride() == x.stride() and y.dtype == x.dtype and y.data_ptr() != x.data_ptr()
    both = module.make(1, 0, -1, allocs, ())
    y, z = module.run(both, 0, x)
    assert z.shape == (4, 8) and torch.equal(z, torch.zeros(4, 8)) and y.data_ptr() != z.data_ptr()
    h = torch.randn(3, 5, dtype=torch.float16)
    assert module.run(one, 0, h).dtype == torch.float16  # like the argument of this call, not the recorded one


def test_malformed_plans_and_calls_are_refused(module):
    allocs = ((0, (4,), (1,), torch.float32, False),)
    plan = module.make(1, 0, 0, allocs, ())
    with pytest.raises(TypeError):
        module.run(plan, 0)  # a tensor short
    with pytest.raises(TypeError):
        module.run(plan, 0, [1.0, 2.0])  # not a tensor
    with pytest.raises(ValueError):
        module.make(1, 0, 3, allocs, ())  # the output names no allocation
    with pytest.raises(ValueError):
        module.make(1, 0, 0, allocs, ((1, 1, 1, 0, 32, 0, ((5, 0, 0),)),))  # a parameter names no tensor
    with pytest.raises(ValueError):
        module.make(1, 0, 0, allocs, ((1, 1, 1, 0, 32, 0, ((0, 0, 0),) * 97),))  # more parameters than it holds
    with pytest.raises(TypeError):
        module.make(1, 0, 0, ((0, (4,), (1,), "float32", False),), ())  # a dtype that is not a torch.dtype


def test_launches_without_a_cuda_driver_raise_instead_of_crashing(module):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA driver")
    plan = module.make(1, 0, 0, ((0, (4,), (1,), torch.float32, False),), ((1, 1, 1, 0, 32, 0, ((0, 0, 0),)),))
    with pytest.raises(RuntimeError, match="libcuda|context"):
        module.run(plan, 0, torch.randn(4))


def test_scalars_are_packed_as_the_lean_c_launch_packs_them():
    assert lean_replay.scalar_bits("i", -1) == 0xFFFFFFFF
    assert lean_replay.scalar_bits("l", -1) == 0xFFFFFFFFFFFFFFFF
    assert lean_replay.scalar_bits("f", 0.5) == int.from_bytes(struct.pack("<f", 0.5), "little")
    assert lean_replay.scalar_bits("b", 1.0) == 0x3F80  # bf16 1.0: float32's upper half
    assert lean_replay.scalar_bits("P", None) == 0
    for code, value in (("i", 1 << 40), ("P", 3), ("c", 300)):
        with pytest.raises((struct.error, TypeError)):
            lean_replay.scalar_bits(code, value)


def test_signatures_separate_what_plans_keys_separate(module):
    sig = module.signature
    # scalars: by type and value (1, 1.0 and True are three signatures, as (type, value) keys are)
    keys = {sig(0, 1), sig(0, 1.0), sig(0, True), sig(0, False), sig(0, None), sig(0, 2), sig(1, 1)}
    assert len(keys) == 7 and all(type(k) is bytes for k in keys)
    assert sig(0, 1) == sig(0, 1) and sig(0, 0.5) == sig(0, 0.5)
    # sequences of ints: by type, length and values
    seqs = {sig(0, (1, 2)), sig(0, [1, 2]), sig(0, (1,)), sig(0, (2, 1)), sig(0, ()), sig(0, [])}
    assert len(seqs) == 6 and sig(0, (1, 2)) == sig(0, (1, 2)) and not seqs & keys
    # anything else has no C++ signature: the Python key decides
    for arg in ("str", torch.float32, (1, 2.0), [True], torch.Size([2]), 1 << 70, torch.randn(3), object()):
        assert sig(0, arg) is None, arg


def test_fast_replays_a_filed_plan_and_misses_otherwise(module):
    # no tensors here (a CPU tensor has no device signature): a plan with no allocations and no launches
    plan = module.make(0, 0, -1, (), ())
    table = {module.signature(0, 3, 0.5): plan}
    assert module.fast(table, 0, 0, 3, 0.5) == ()  # found: replayed (nothing allocated, nothing returned)
    for args in ((3, 0.25), (4, 0.5), (3,), ("x", 0.5)):
        assert module.fast(table, 0, 0, *args) is lean_replay.MISS
    assert module.fast(table, 1, 0, 3, 0.5) is lean_replay.MISS  # another current device


def test_a_failed_build_is_remembered_and_not_tried_again(tmp_path, monkeypatch):
    if shutil.which("g++") is None:
        pytest.skip("no C++ compiler on this machine")
    monkeypatch.setenv("KERNELGEN_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    with pytest.raises(FileNotFoundError):  # the compiler cannot even start: nothing is written
        lean_replay.build([])
    monkeypatch.setenv("CXX", "false")  # starts, fails
    assert lean_replay.build([]) is None
    (marker,) = tmp_path.glob("lean_replay/*/build-failed.txt")
    marker.write_text("remembered")
    lean_replay._built.pop("error", None)
    assert lean_replay.build([]) is None and lean_replay._built["error"] == "remembered"  # not tried again


def test_prefetch_builds_once_in_the_background_and_module_waits_for_it(monkeypatch):
    """enable()/patch() on CUDA start the build early; the first plan recorded waits for that same build
    instead of starting another; other backends start nothing."""
    import threading
    import types

    import triton

    builds, release, built = [], threading.Event(), types.SimpleNamespace(fast="its fast()")

    def slow_build(include_dirs):
        builds.append(threading.current_thread().name)
        release.wait(10)
        return built

    monkeypatch.setattr(lean_replay, "_built", {})
    monkeypatch.setattr(lean_replay, "fast", None)
    monkeypatch.setattr(lean_replay, "build", slow_build)
    monkeypatch.setattr(triton, "__version__", "3.6.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv("KERNELGEN_LEAN_REPLAY", raising=False)
    monkeypatch.delenv("KERNELGEN_LEAN_LAUNCH", raising=False)
    lean_replay.prefetch("cpu")
    assert builds == [] and "module" not in lean_replay._built
    lean_replay.prefetch("cuda")
    for _ in range(200):  # the background thread has started building
        if builds:
            break
        threading.Event().wait(0.01)
    lean_replay.prefetch("cuda")  # a second prefetch while building starts nothing
    waiter = threading.Thread(target=lambda: builds.append(("got", lean_replay.module())))
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive()  # module() waits for the build in progress
    release.set()
    waiter.join(5)
    assert builds == ["kernelgen-lean-replay-build", ("got", built)] and lean_replay.module() is built
    assert lean_replay.fast == "its fast()"
