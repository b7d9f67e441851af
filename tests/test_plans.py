"""Launch plans (kernelgen/plans.py): a launcher's host work recorded once per signature and replayed.

No GPU here: Triton's compiled side is the fake of tests/fake_triton.py, and CPU tensors stand in for device
tensors (the plans' device check is pointed at device 0). The recording, the pointer mapping, the generated
replay and every refusal are the real code. `benchmarks/bench_launch_models.py --part check` compares
replays with the launchers themselves on a GPU, bit for bit, for every library op.
"""

from __future__ import annotations

import functools

import pytest
import torch
from fake_triton import fake_kernel, triton36_launcher

from kernelgen import launch, plan_build, plans


@pytest.fixture
def fake(monkeypatch):
    module, calls, compiled = fake_kernel(monkeypatch)
    monkeypatch.setattr(plans, "_device_index", lambda t: 0)
    return module, calls, compiled


def _launches(compiled):
    return compiled.log


def _planned(fn, signature=False):
    """fn planned, and the list its runs are counted in. signature=True: the counting wrapper shows fn's
    signature (its entry point then inlines fn's positional call shapes), else it takes *args (every call
    goes through the per-shape fronts)."""
    ran = []

    def counted(*args, **kwargs):
        ran.append(1)
        return fn(*args, **kwargs)

    if signature:
        counted = functools.wraps(fn)(counted)

    return plans.planned(counted), ran


def _scale_launcher(k):
    """A launcher of the fake kernel k: one launch over x with the scalar s, a fresh output."""
    def scale(x, s=0.5):
        y = torch.empty_like(x)
        k[(x.numel() // 16,)](x.view(-1), y, x.numel(), float(s), BLOCK=16, num_warps=2)
        return y

    return scale


def test_third_call_replays_with_the_new_pointers(fake):
    module, calls, compiled = fake
    fn, ran = _planned(_scale_launcher(module.k))
    for _ in range(2):  # the first call warms the caches, the second records
        fn(torch.randn(4, 16), 0.25)
    assert len(ran) == 2 and len(_launches(compiled)) == 1  # Triton's path first, then the cached one
    x = torch.randn(4, 16)
    y = fn(x, 0.25)
    assert len(ran) == 2  # replayed: the launcher did not run
    assert y.shape == x.shape and y.dtype == x.dtype and y.data_ptr() != x.data_ptr()
    args = _launches(compiled)[-1]
    assert args[:4] == (4, 1, 1, 777) and args[7:9] == (None, None)
    # pointers are handed over as integers: the new x and the new output
    assert args[9:] == (x.data_ptr(), y.data_ptr(), 64, 0.25, 16, False)
    fn(x, 0.5)  # another scalar value: another signature, the launcher runs
    fn(torch.randn(8, 16), 0.25)  # another shape
    fn(x.double(), 0.25)  # another dtype
    fn(torch.randn(65)[1:].view(4, 16), 0.25)  # not 16-byte aligned
    assert len(ran) == 6


def test_offsets_views_and_several_launches_replay_exactly(fake):
    module, _, compiled = fake
    k = module.k

    def two_steps(x):
        out = torch.empty((x.shape[0] * 2, x.shape[1]), dtype=x.dtype, device=x.device)
        k[(2,)](x[1:], out[3:], 5, 1.0, BLOCK=16)
        k[(1, 2)](out, x, 7, 2.0, BLOCK=32, FLAG=True)
        return out.view(2, -1)[1], NotImplemented

    fn, ran = _planned(two_steps)
    fn(torch.randn(6, 8))
    fn(torch.randn(6, 8))
    x = torch.randn(6, 8)
    out, flag = fn(x)
    assert len(ran) == 2 and flag is NotImplemented
    assert out.shape == (48,)
    first, second = _launches(compiled)[-2:]
    base = out.data_ptr() - 48 * 4  # the returned row is the second half of the allocation
    assert first[:4] == (2, 1, 1, 777) and first[9:11] == (x.data_ptr() + 8 * 4, base + 3 * 8 * 4)
    assert second[:4] == (1, 2, 1, 777) and second[9:11] == (base, x.data_ptr())
    assert second[11:] == (7, 2.0, 32, True)


def test_not_implemented_replays_without_running_the_adapter(fake):
    fn, ran = _planned(lambda x, dim: NotImplemented if dim != -1 else x)
    for _ in range(3):
        assert fn(torch.randn(4), 0) is NotImplemented
    assert len(ran) == 2
    x = torch.randn(4)
    assert fn(x, -1) is x and fn(x, -1) is x  # an argument returned as itself


@pytest.mark.parametrize("case", ["computes", "unknown pointer", "view of an argument", "cpu tensor", "object"])
def test_calls_a_plan_cannot_repeat_always_run_the_launcher(fake, monkeypatch, case):
    module, _, compiled = fake
    k = module.k
    outside = torch.randn(16)

    def launcher(x, extra=None):
        y = torch.empty_like(x)
        if case == "computes":
            x = x.contiguous().clone()  # a copy on the device: a replay would skip it
        ptr = outside if case == "unknown pointer" else x
        k[(1,)](ptr, y, 16, 1.0, BLOCK=16)
        return x[1:] if case == "view of an argument" else y

    if case == "cpu tensor":
        monkeypatch.setattr(plans, "_device_index", lambda t: -1)
    fn, ran = _planned(launcher, signature=True)
    extra = object() if case == "object" else None
    for _ in range(4):
        fn(torch.randn(16), extra)
    assert len(ran) == 4
    assert len(_launches(compiled)) == 3  # every call launched through the launcher itself


def test_zeroed_buffers_are_zeroed_again(fake):
    module, _, _ = fake

    def launcher(x):
        acc = torch.zeros(4, dtype=torch.float32, device=x.device)
        module.k[(1,)](x, acc, 4, 1.0, BLOCK=16)
        return acc

    fn, ran = _planned(launcher)
    fn(torch.randn(4))
    fn(torch.randn(4))
    out = fn(torch.randn(4))
    assert len(ran) == 2 and torch.equal(out, torch.zeros(4))
    assert ".zero_()" in fn.plans[next(iter(fn.plans))].source


@pytest.mark.parametrize("inline", [True, False], ids=["inline entry", "per-shape front"])
def test_replays_step_aside_for_counting_hooks_no_launch_and_switches(fake, inline):
    module, _, _ = fake

    def launcher(x):
        y = torch.empty_like(x)
        module.k[(1,)](x, y, 16, 1.0, BLOCK=16)
        return y

    fn, ran = _planned(launcher, signature=inline)
    x = torch.randn(16)
    fn(x)
    fn(x)
    fn(x)
    assert len(ran) == 2
    from kernelgen.verify.guard import count_launches

    with count_launches():  # the verifier must see every launch
        fn(x)
    with launch.no_launch():
        fn(x)
    before = launch.set_cached_launches(False)
    try:
        fn(x)
    finally:
        launch.set_cached_launches(before)
    assert len(ran) == 5
    fn(x)
    assert len(ran) == 5
    from triton import knobs

    hook = knobs.runtime.launch_enter_hook  # a profiler's launch hook must see every launch
    if hasattr(hook, "add"):  # Triton >= 3.7: a chain of hooks
        def profiler_hook(*a):
            return None

        hook.add(profiler_hook)
        try:
            fn(x)
        finally:
            hook.remove(profiler_hook)
    else:
        knobs.runtime.launch_enter_hook = lambda *a: None
        try:
            fn(x)
        finally:
            knobs.runtime.launch_enter_hook = hook
    assert len(ran) == 6
    fn(x)
    assert len(ran) == 6


def test_only_modules_whose_kernels_all_take_the_cached_path_get_plans(fake):
    import types

    from fake_triton import _scale_kernel
    from triton.runtime.jit import JITFunction

    module, _, _ = fake
    assert plans.plannable(module)
    other = types.ModuleType("other")
    other.k = JITFunction(_scale_kernel)  # not accelerated: its launches are invisible to a recording
    other.j = module.k
    assert not plans.plannable(other)
    assert not plans.plannable(types.ModuleType("no_kernels"))


def test_kernel_files_may_not_read_addresses():
    from kernelgen.verify.static import check_source

    problem = check_source("import torch\ndef f(x):\n    return x.data_ptr() % 16\n")
    assert problem and "data_ptr" in problem


def test_generated_signatures_equal_the_generic_one(fake):
    x = torch.randn(4, 16)
    w = torch.nn.Parameter(torch.randn(16))
    calls = [((x, w, 1e-6), {}), ((x, w, 1e-5), {}), ((x, None, 1e-6), {}), ((x.t(), w, 1e-6), {}),
             ((x.half(), w, 1e-6), {}), ((torch.randn(65)[1:].view(4, 16), w, 1e-6), {}),
             ((x, [16], 1), {}), ((x, (16,), True), {}), ((x, w, 1e-6), {"dim": -1}), ((x, w, 1e-6), {"dim": 0}),
             ((x, object(), 1.0), {}), ((x, [w], 1.0), {})]
    keys = set()
    for args, kwargs in calls:
        generic = plans.signature(args, kwargs)
        seen = []  # what the generated front hands its slow path (a first call): the key and the tensors
        front = plans.front_function(len(args), tuple(kwargs), {}, lambda *a, **k: "no plan",
                                     lambda a, k, key, tensors, plan, seen=seen: seen.append((key, tensors)))
        front(args, kwargs)
        if generic[0] is None:
            assert seen == []  # the argument no plan covers: the launcher itself ran
        else:
            ((key, tensors),) = seen
            assert key == generic[0] and hash(key) == hash(generic[0])
            assert len(tensors) == len(generic[1]) and all(a is b for a, b in zip(generic[1], tensors))
        keys.add(generic[0])
    assert len(keys) == len(calls) and None in keys  # each its own signature; the object gives none (None)


def test_triton_36_launchers_are_called_at_their_c_launch(fake, monkeypatch):
    import triton
    from fake_triton import FakeCompiled

    module, _, compiled = fake
    c_calls = []

    launcher36 = triton36_launcher(lambda *args: c_calls.append(args), pdl=True)
    monkeypatch.setattr(triton, "__version__", "3.6.0")
    monkeypatch.setattr(FakeCompiled, "run", launcher36)

    def launcher(x):
        y = torch.empty_like(x)
        module.k[(3,)](x, y, 16, 1.0, BLOCK=16)
        return y

    fn, _ = _planned(launcher)
    fn(torch.randn(16))
    fn(torch.randn(16))
    x = torch.randn(16)
    y = fn(x)
    (c,) = compiled.values()
    assert c_calls[-1] == (3, 1, 1, 777, c.function, False, True, None, None, c.packed_metadata, None, None, None,
                           x.data_ptr(), y.data_ptr(), 16, 1.0, 16, False)
    monkeypatch.setattr(triton, "__version__", "3.7.0")  # another layout: its __call__
    assert plan_build._direct_launch(launcher36) is None


def test_entry_points_inline_positional_shapes_and_hand_traced_calls_to_the_custom_op(fake):
    module, _, compiled = fake
    fn, ran = _planned(_scale_launcher(module.k), signature=True)
    assert plans._positional_counts(fn.unplanned) == (1, 2)
    tracing = []
    custom_calls = []
    entry = fn.compile_aware(lambda *a, **kw: custom_calls.append((a, kw)) or "custom", lambda: bool(tracing))
    x = torch.randn(4, 16)
    for call in (lambda: fn(x), lambda: entry(x), lambda: fn(x, s=0.5), lambda: entry(x, 0.5)):
        call()
    # fn(x) and entry(x) share one plan (the first call warms, the second records); x with s as a keyword
    # is another signature (through the per-shape fronts), as is (x, 0.5) given positionally
    assert len(ran) == 4 and list(fn.fronts) == [(1, ("s",))]  # only the keyword call needed a front
    launches = len(_launches(compiled))
    y1, y2 = fn(x), entry(x)  # both replay the plan: the launcher does not run, the kernel is launched
    assert len(ran) == 4 and len(_launches(compiled)) == launches + 2
    assert y1.shape == y2.shape == x.shape and y1.data_ptr() != y2.data_ptr() and not custom_calls
    tracing.append(1)  # as if Dynamo traced the call: the custom op takes it, the plan is not used
    assert entry(x, 0.25) == "custom" and custom_calls == [((x, 0.25), {})]
    assert len(ran) == 4 and len(_launches(compiled)) == launches + 2


def test_replays_use_kernelgen_lean_launch_where_it_covers_the_kernel(fake, monkeypatch):
    """On Triton 3.6's layout, a kernel with one CTA per program, no PDL or cooperative grid and plain parameter
    types is replayed through kernelgen's C launch (kernelgen/lean_launch.py): the grid, the stream, the
    function, 32 x num_warps threads, the shared memory, the type codes, then only the non-constexpr
    arguments. A kernel it does not cover keeps Triton's C launch."""
    import types as pytypes

    import triton
    from fake_triton import FakeCompiled

    from kernelgen import lean_launch

    module, _, compiled = fake
    lean_calls, c_calls = [], []

    monkeypatch.setattr(triton, "__version__", "3.6.0")
    monkeypatch.setattr(FakeCompiled, "run", triton36_launcher(lambda *args: c_calls.append(args)))
    monkeypatch.setattr(lean_launch, "launcher", lambda: lambda *args: lean_calls.append(args))

    def launcher(x):
        y = torch.empty_like(x)
        module.k[(3,)](x, y, 16, 1.5, BLOCK=16)
        return y

    for metadata, covered in (((4, 1, 512), True), ((4, 2, 512, 2, 1, 1), False)):
        fn, _ = _planned(launcher)
        fn(torch.randn(16))  # compiles (fake) once: now give the kernel Triton's signature and metadata
        (c,) = compiled.values()
        c.src = pytypes.SimpleNamespace(signature={"x_ptr": "*fp32", "y_ptr": "*fp32", "n": "i32", "scale": "fp32",
                                                   "BLOCK": "constexpr", "FLAG": "constexpr"})
        c.packed_metadata = metadata
        fn(torch.randn(16))  # records the plan
        x = torch.randn(16)
        y = fn(x)
        if covered:
            assert lean_calls[-1] == (3, 1, 1, 777, c.function, 128, 512, b"PPif", x.data_ptr(), y.data_ptr(), 16, 1.5)
        else:  # clusters: cuLaunchKernelEx's business, Triton's launch
            assert c_calls[-1][13:15] == (x.data_ptr(), y.data_ptr()) and len(lean_calls) == 1


def test_lean_launch_plans_only_plain_parameter_types():
    import types as pytypes

    from kernelgen import lean_launch

    def kernel(signature, metadata=(8, 1, 0, 1, 1, 1)):
        return pytypes.SimpleNamespace(src=pytypes.SimpleNamespace(signature=signature), packed_metadata=metadata)

    ok = kernel({"a": "*bf16", "b": "i64", "c": "constexpr", "d": "bf16", "e": "fp16", "f": "u8", "g": "i1"})
    assert lean_launch.plan(ok, 7) == (b"PlbhBc", (0, 1, 3, 4, 5, 6), 256, 0)
    assert lean_launch.plan(ok, 6) is None  # another argument count than the signature's
    assert lean_launch.plan(kernel({"a": "tensordesc<fp16[64, 64]>"}), 1) is None
    assert lean_launch.plan(kernel({"a": ("*fp32", "i32")}), 1) is None  # a tuple parameter
    assert lean_launch.plan(kernel({"a": "*fp32"}, (4, 2, 0, 2, 1, 1)), 1) is None  # a cluster of 2 CTAs
    assert lean_launch.plan(kernel({"a": "*fp32"}, (4, 1, 64)), 1) == (b"P", (0,), 128, 64)  # Triton 3.6's 3-tuple


def test_a_functional_route_replays_its_adapters_plan_inline(fake):
    """A route over a planned adapter (enable()'s F.softmax) replays the plan the adapter recorded, from the
    same key, and steps aside for everything a planned call steps aside for."""
    import torch.nn.functional as F

    from kernelgen import functional_routes

    module, _, compiled = fake
    k = module.k

    def adapter(x, dim, half_to_float):
        if dim not in (-1, x.dim() - 1):
            return NotImplemented
        y = torch.empty_like(x)
        k[(1,)](x, y, x.numel(), 1.0, BLOCK=16)
        return y

    planned, ran = _planned(adapter, signature=True)
    route = functional_routes.make_route(F.softmax, planned, functional_routes.ROUTES["aten::_softmax"], "cpu",
                                         "softmax")
    assert "plans.get(key)" in route.source  # the replay is inline, not behind the adapter's frame
    for _ in range(2):  # warms, then records (through the adapter's own entry point)
        route(torch.randn(4, 16), dim=-1)
    assert len(ran) == 2 and len(planned.plans) == 1
    x = torch.randn(4, 16)
    y = route(x, dim=-1)
    assert len(ran) == 2 and route.served == [3]  # replayed: the adapter did not run
    assert _launches(compiled)[-1][9:11] == (x.data_ptr(), y.data_ptr()) and y.shape == x.shape
    route(x, dim=1)  # 1 is the last dim too, but another argument value: another signature
    assert len(ran) == 3
    before = plans.set_replays(False)
    try:
        route(x, dim=-1)  # replays off: the adapter runs
    finally:
        plans.set_replays(before)
    assert len(ran) == 4
    with launch.no_launch():
        route(x, dim=-1)
    assert len(ran) == 5
    assert route(torch.randn(4, 16), dim=0).shape == (4, 16) and route.served == [6]  # NotImplemented: PyTorch's


def test_replays_are_one_call_of_the_cpp_replay_where_it_covers_them(fake, monkeypatch):
    """With kernelgen's C++ replay (kernelgen/lean_replay.py) available, a plan whose launches the lean C
    launch covers becomes one call: the allocations (as empty_like of an argument, or zeroed), every launch's
    grid, function, threads, shared memory and parameters (tensors by index and byte offset, scalars packed by
    type), and which allocation the call returns; a result built around the allocations is built in Python."""
    import struct
    import types as pytypes

    import triton
    from fake_triton import FakeCompiled

    from kernelgen import lean_launch, lean_replay

    module, _, compiled = fake
    made, runs = [], []

    class FakeReplayModule:
        @staticmethod
        def make(*description):
            made.append(description)
            return ("plan", len(made))

        @staticmethod
        def run(plan, stream, *tensors, how="run"):
            runs.append((how, plan, stream, tensors))
            _, _, returned, allocs, _ = made[plan[1] - 1]
            buffers = tuple(torch.zeros(a[1]) if a[4] else torch.empty_like(tensors[a[0]]) for a in allocs)
            return buffers[returned] if returned >= 0 else buffers

        @staticmethod
        def signature(device, *args):
            return repr((device, [(type(a), getattr(a, "shape", a)) for a in args])).encode()

        @staticmethod
        def fast(table, device, stream, *args):
            plan = table.get(FakeReplayModule.signature(device, *args))
            if plan is None:
                return lean_replay.MISS
            return FakeReplayModule.run(plan, stream, *(a for a in args if isinstance(a, torch.Tensor)), how="fast")

    monkeypatch.setattr(triton, "__version__", "3.6.0")
    monkeypatch.setattr(FakeCompiled, "run", triton36_launcher(lambda *args: pytest.fail("Triton's C launch ran")))
    monkeypatch.setattr(lean_launch, "launcher", lambda: lambda *args: pytest.fail("the Python replay ran"))
    monkeypatch.setattr(lean_replay, "module", lambda: FakeReplayModule)
    monkeypatch.setattr(lean_replay, "fast", FakeReplayModule.fast)

    def launcher(x, both=False):
        y = torch.empty_like(x)
        module.k[(3,)](x[4:], y, 16, 1.5, BLOCK=16)
        return (y, x) if both else y

    for both in (False, True):
        fn, ran = _planned(launcher)
        fn(torch.randn(32), both)  # compiles (fake): now give the kernel Triton's signature and metadata
        (c,) = compiled.values()
        c.src = pytypes.SimpleNamespace(signature={"x_ptr": "*fp32", "y_ptr": "*fp32", "n": "i32", "scale": "fp32",
                                                   "BLOCK": "constexpr", "FLAG": "constexpr"})
        c.packed_metadata, c.function = (4, 1, 512), 4242  # a CUfunction handle is an integer
        for entry in module.k.launch_cache().values():
            entry.function = c.function
        fn(torch.randn(32), both)  # records the plan
        x = torch.randn(32)
        out = fn(x, both)
        # replayed: one call with this stream and this argument; a plan returning its one allocation is also
        # filed under the call's C++ signature, looked up and replayed in that one call (fast)
        assert len(ran) == 2 and runs[-1][0] == ("run" if both else "fast") and runs[-1][2:] == (777, (x,))
        assert len(fn.fast_plans) == (0 if both else 1)
        n_inputs, device, returned, allocs, launches = made[-1]
        assert (n_inputs, allocs) == (1, ((0, (32,), (1,), torch.float32, False),))
        bits = (16, int.from_bytes(struct.pack("<f", 1.5), "little"))
        # x[4:] is the argument's pointer plus 16 bytes; y is the allocation (tensor 1: after the one argument)
        assert launches == ((3, 1, 1, 4242, 128, 512, ((0, 16, 0), (1, 0, 0), (-1, 0, bits[0]), (-1, 0, bits[1]))),)
        if both:
            assert returned == -1 and out[1] is x and out[0].shape == x.shape
        else:
            assert returned == 0 and out.shape == x.shape and "return c" in fn.plans[next(iter(fn.plans))].source
