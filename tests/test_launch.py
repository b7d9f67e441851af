"""The cached launch path (kernelgen/launch.py) and the cost of `kernelgen.ops.NAME`.

No GPU here: the compiled-kernel side is played by a fake Triton run that records what it is asked to launch
and hands back a fake compiled kernel; the JITFunction, the key, the cache, the argument order and every
fallback to Triton's path are the real code. (`benchmarks/bench_launch_models.py --part check` checks the
same thing on a GPU against Triton's own cache.)
"""

from __future__ import annotations

import time

import pytest
import torch
from fake_triton import fake_kernel

import kernelgen
from kernelgen import launch


@pytest.fixture
def kernel(monkeypatch):
    module, calls, compiled = fake_kernel(monkeypatch)
    return module.k, calls, compiled


def test_second_call_launches_the_cached_kernel_with_every_argument_in_order(kernel):
    k, calls, compiled = kernel
    x, y = torch.randn(64), torch.empty(64)
    k[(4,)](x, y, 64, 0.5, BLOCK=16, num_warps=2)
    assert len(calls) == 1  # first call: Triton's path
    k[(4,)](x, y, 64, 0.25, BLOCK=16, num_warps=2)
    assert len(calls) == 1  # second call: cached
    (c,) = compiled.values()
    (args,) = c.launches
    assert args[:7] == (4, 1, 1, 777, c.function, c.packed_metadata, None)
    # then both hooks (None), then the parameters in order: positional ones, BLOCK, FLAG's default
    assert args[7:9] == (None, None)
    assert args[9] is x and args[10] is y and args[11:] == (64, 0.25, 16, False)


@pytest.mark.parametrize("change", ["dtype", "alignment", "constexpr", "num_warps", "int_divisibility",
                                    "int_is_one", "keyword_set"])
def test_a_different_specialization_takes_tritons_path(kernel, change):
    k, calls, _ = kernel
    x, y = torch.randn(65), torch.empty(64)
    base = dict(args=(x[:64], y, 64, 0.5), kwargs=dict(BLOCK=16, num_warps=2))
    k[(1,)](*base["args"], **base["kwargs"])
    args, kwargs = list(base["args"]), dict(base["kwargs"])
    if change == "dtype":
        args[0] = x[:64].double()
    elif change == "alignment":
        args[0] = x[1:]  # 4 bytes past a 16-byte boundary
    elif change == "constexpr":
        kwargs["BLOCK"] = 32
    elif change == "num_warps":
        kwargs["num_warps"] = 4
    elif change == "int_divisibility":
        args[2] = 63
    elif change == "int_is_one":
        args[2] = 1
    else:
        kwargs["FLAG"] = False  # same value, given by name: a different key (finer than Triton's is allowed)
    k[(1,)](*args, **kwargs)
    assert len(calls) == 2
    k[(1,)](*args, **kwargs)
    assert len(calls) == 2  # and that one is cached in turn


def test_unkeyable_calls_hooks_and_counting_take_tritons_path(kernel, monkeypatch):
    k, calls, _ = kernel
    x, y = torch.randn(64), torch.empty(64)
    k[(1,)](x, y, 64, 0.5, BLOCK=16)
    k[(1,)](x, y, 64, 0.5, BLOCK=16)
    assert len(calls) == 1
    k[(1,)](x, y, "64", 0.5, BLOCK=16)  # an argument type we do not key: Triton decides
    k[lambda meta: (1,)](x, y, 64, 0.5, BLOCK=16)  # callable grid
    k[(1,)](x, y, 64, 0.5, BLOCK=16, extra=[1])  # an unhashable keyword value (Triton raises on it)
    assert len(calls) == 4
    k.pre_run_hooks.append(lambda *a, **kw: None)
    k[(1,)](x, y, 64, 0.5, BLOCK=16)
    assert len(calls) == 5
    k.pre_run_hooks.clear()
    from kernelgen.verify.guard import count_launches

    with count_launches():  # the verifier counts launches by wrapping JITFunction.run: it must see them
        k[(1,)](x, y, 64, 0.5, BLOCK=16)
    assert len(calls) == 6
    k[(1,)](x, y, 64, 0.5, BLOCK=16)  # not counting any more: cached again
    assert len(calls) == 6


def test_specialization_key_follows_tritons_properties():
    mask = (False, False, True)
    x = torch.randn(16)
    key = launch.specialization_key
    assert key(mask, (x, 16, 8), {}) == key(mask, (torch.randn(16), 32, 8), {})  # same dtype/alignment/div16
    assert key(mask, (x, 16, 8), {}) != key(mask, (x, 17, 8), {})
    assert key(mask, (x, 16, 8), {}) != key(mask, (x, 16, 16), {})  # constexpr by value
    assert key(mask, (x, 2**40, 8), {}) != key(mask, (x, 2**4, 8), {})  # 64-bit int
    assert key(mask, (x, 16, 8), {}) != key(mask, (x.half(), 16, 8), {})
    assert key(mask, (x[1:], 16, 8), {}) != key(mask, (x, 16, 8), {})
    assert key(mask, (x, [1], 8), {}) is None
    assert key(mask, (x, 16, 8, 9), {}) is None  # more arguments than parameters


def test_generated_key_separates_calls_as_specialization_key_does():
    mask = (False, False, True, True)
    x = torch.randn(16)
    calls = [(x, 16, 8), (torch.randn(16), 32, 8), (x, 17, 8), (x, 16, 16), (x, 2**40, 8), (x, 2**64 - 1, 8),
             (x, 1, 8), (x.half(), 16, 8), (x[1:], 16, 8), (x, 16.0, 8), (x, True, 8), (x, None, 8),
             (torch.nn.Parameter(x), 16, 8)]
    kwargs = [{}, {"BLOCK": 4}, {"BLOCK": 8}]
    for kw in kwargs:
        for a in calls:
            for b in calls:
                for kw2 in kwargs:
                    same = launch.specialization_key(mask, a, kw, 0) == launch.specialization_key(mask, b, kw2, 0)
                    key = launch.key_function(mask, 3)
                    assert (key(a, kw, 0) == key(b, kw2, 0)) == same, (a, b, kw, kw2)
    assert launch.key_function(mask, 3)((x, [1], 8), {}, 0) is None  # a type we do not key
    assert launch.key_function(mask, 3)((x, "16", 8), {}, 0) is None
    assert launch.key_function(mask, 5)((x, 16, 8, 9, 1), {}, 0) is None  # more arguments than parameters
    assert launch.key_function(mask, 0)((), {"BLOCK": 4}, 0) == (0, (("BLOCK", 4),))
    assert launch.key_function(mask, 1)((x,), {}, 0) == (0, (x.dtype, True), ())


def test_no_launch_skips_launches_but_launchers_still_allocate(interpreter):
    x, w = torch.randn(4, 64), torch.randn(64)
    with launch.no_launch():
        y = kernelgen.ops.rms_norm.launcher(x, w, 1e-6)
    assert y.shape == x.shape and y.dtype == x.dtype
    ref = torch.nn.functional.rms_norm(x, (64,), w, 1e-6)
    torch.testing.assert_close(kernelgen.ops.rms_norm(x, w, 1e-6), ref)


def test_ops_lookup_is_resolved_once(interpreter):
    kernelgen.ops.reload()
    first = kernelgen.ops.softmax
    assert kernelgen.ops.softmax is first
    n = 20000
    t0 = time.perf_counter()
    for _ in range(n):
        kernelgen.ops.softmax  # noqa: B018
    per_access_us = (time.perf_counter() - t0) / n * 1e6
    assert per_access_us < 1.0, per_access_us  # a dict read; the first access imports the kernel (ms)
    kernelgen.ops.reload()
    assert kernelgen.ops.softmax is not first
    with pytest.raises(AttributeError):
        kernelgen.ops.no_such_op  # noqa: B018


def test_cached_launches_can_be_switched_off(kernel):
    k, calls, _ = kernel
    x, y = torch.randn(64), torch.empty(64)
    before = launch.set_cached_launches(False)
    try:
        k[(1,)](x, y, 64, 0.5, BLOCK=16)
        k[(1,)](x, y, 64, 0.5, BLOCK=16)
        assert len(calls) == 2
    finally:
        launch.set_cached_launches(before)
    k[(1,)](x, y, 64, 0.5, BLOCK=16)
    k[(1,)](x, y, 64, 0.5, BLOCK=16)
    assert len(calls) == 3
