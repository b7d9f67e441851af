"""ATen overrides through torch.library: routing, fallbacks, policies, enable/disable/use."""

import warnings

import pytest
import torch
import torch.nn.functional as F

import kernelgen
from kernelgen.verify.guard import count_launches


def test_enable_routes_rms_norm_to_our_kernel_and_matches_aten(interpreter):
    x, w = torch.randn(5, 96), torch.randn(96)
    expected = F.rms_norm(x, (96,), w, 1e-6)
    on = kernelgen.enable(backend="interpreter", policy="all", include=["rms_norm"])
    assert on == ["rms_norm"]
    with count_launches() as launches:
        got = F.rms_norm(x, (96,), w, 1e-6)
    assert launches.total_launches == 1
    assert kernelgen.status()["interpreter"]["calls"]["rms_norm"] == 1
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    kernelgen.disable()
    with count_launches() as launches:
        F.rms_norm(x, (96,), w, 1e-6)
    assert launches.total_launches == 0


def test_unsupported_cases_fall_back_to_aten(interpreter):
    kernelgen.enable(backend="interpreter", policy="all", include=["rms_norm"])
    x = torch.randn(4, 6, 8, dtype=torch.float64)
    with count_launches() as launches:
        a = F.rms_norm(x, (6, 8))  # two normalized dims and float64: not ours
    assert launches.total_launches == 0
    torch.testing.assert_close(a, x / x.pow(2).mean((-2, -1), keepdim=True).add(torch.finfo(x.dtype).eps).sqrt())


def test_grad_requiring_inputs_keep_autograd(interpreter):
    x = torch.randn(3, 16, requires_grad=True)
    g = torch.randn(3, 16)
    (F.rms_norm(x, (16,)) * g).sum().backward()
    expected = x.grad.clone()
    x.grad = None
    kernelgen.enable(backend="interpreter", policy="all", include=["rms_norm"])
    (F.rms_norm(x, (16,)) * g).sum().backward()
    torch.testing.assert_close(x.grad, expected)
    assert kernelgen.status()["interpreter"]["fallbacks"]["rms_norm"] == 1


def test_use_scopes_the_override(interpreter):
    x = torch.randn(2, 32)
    with kernelgen.use(backend="interpreter", policy="all", include=["rms_norm"]):
        with count_launches() as inside:
            F.rms_norm(x, (32,))
    with count_launches() as outside:
        F.rms_norm(x, (32,))
    assert inside.total_launches == 1 and outside.total_launches == 0


def test_verified_policy_never_enables_without_speed_figures(interpreter):
    # The interpreter records accuracy only, so nothing can be shown faster than eager on it.
    assert kernelgen.enable(backend="interpreter") == []


def test_enable_with_unknown_policy_or_op_raises(interpreter):
    with pytest.raises(ValueError, match="policy"):
        kernelgen.enable(backend="interpreter", policy="fast")
    with pytest.raises(ValueError, match="unknown op"):
        kernelgen.enable(backend="interpreter", include=["no_such_op"])


def test_enable_without_accelerator_does_nothing_and_warns_once(monkeypatch):
    from kernelgen import aten

    monkeypatch.setattr(aten, "default_backend", lambda: None)
    monkeypatch.setattr(aten, "_warned_no_backend", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert kernelgen.enable() == []
        assert kernelgen.enable() == []
    assert len([w for w in caught if "no accelerator" in str(w.message)]) == 1


def _timed_copy_of_rms_norm(tmp_path, monkeypatch, speedups):
    """A library copy of rms_norm with a passing record whose timings say `speedups` per M (N = 64)."""
    import shutil

    from kernelgen.backends import get_backend
    from kernelgen.library import builtin_library, source_hash, write_record

    lib = tmp_path / "lib" / "ops"
    shutil.copytree(builtin_library() / "ops" / "rms_norm", lib / "rms_norm", ignore=shutil.ignore_patterns("verified"))
    perf = [{"dtype": "float32", "dims": {"M": m, "N": 64}, "speedup_eager": s} for m, s in speedups.items()]
    record = {"passed": True, "performance": perf, "min_speedup_vs_eager": min(speedups.values()),
              "source_hash": source_hash(lib / "rms_norm")}
    write_record(lib / "rms_norm", "interpreter", record)
    monkeypatch.setenv("KERNELGEN_LIBRARY", str(tmp_path / "lib"))
    # Pretend the interpreter measured speed, so the verified policy reads the record's timings.
    monkeypatch.setattr(get_backend("interpreter"), "measures_performance", True)


def test_verified_policy_keeps_off_an_op_slower_on_any_recorded_shape(tmp_path, monkeypatch, interpreter):
    # Every call of an overridden op pays a Python dispatch, the ones handed back to ATen too: an op that
    # loses on small inputs stays off unless by_size asks for it.
    _timed_copy_of_rms_norm(tmp_path, monkeypatch, {1: 0.5, 8: 0.9, 64: 1.2, 512: 1.5})
    assert kernelgen.enable(backend="interpreter", include=["rms_norm"]) == []
    assert kernelgen.status()["interpreter"]["ops"] == {}


def test_verified_policy_switches_on_an_op_faster_on_every_recorded_shape(tmp_path, monkeypatch, interpreter):
    _timed_copy_of_rms_norm(tmp_path, monkeypatch, {1: 1.1, 64: 1.2, 512: 1.5})
    assert kernelgen.enable(backend="interpreter", include=["rms_norm"]) == ["rms_norm"]
    assert kernelgen.status()["interpreter"]["min_numel"] == {}
    with count_launches() as small:
        F.rms_norm(torch.randn(1, 64), (64,), torch.randn(64))
    assert small.total_launches == 1


def test_by_size_switches_on_only_from_the_size_where_the_kernel_was_faster(tmp_path, monkeypatch, interpreter):
    _timed_copy_of_rms_norm(tmp_path, monkeypatch, {1: 0.5, 8: 0.9, 64: 1.2, 512: 1.5})
    assert kernelgen.enable(backend="interpreter", include=["rms_norm"], by_size=True) == ["rms_norm"]
    assert kernelgen.status()["interpreter"]["min_numel"] == {"rms_norm": 64 * 64}
    w = torch.randn(64)
    with count_launches() as small:
        got_small = F.rms_norm(torch.randn(8, 64), (64,), w)  # measured slower there: ATen runs
    with count_launches() as large:
        x = torch.randn(64, 64)
        got_large = F.rms_norm(x, (64,), w)
    assert small.total_launches == 0 and large.total_launches == 1
    assert got_small.shape == (8, 64)
    torch.testing.assert_close(got_large, x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1.1920928955078125e-07) * w)


def test_verified_policy_keeps_off_an_op_slower_on_its_largest_shape(tmp_path, monkeypatch, interpreter):
    _timed_copy_of_rms_norm(tmp_path, monkeypatch, {1: 1.5, 64: 1.2, 512: 0.97})
    assert kernelgen.enable(backend="interpreter", include=["rms_norm"]) == []
    assert kernelgen.enable(backend="interpreter", include=["rms_norm"], by_size=True) == []
    assert kernelgen.enable(backend="interpreter", include=["rms_norm"], policy="correct") == ["rms_norm"]


def test_use_restores_the_registration_that_was_there_before(interpreter):
    x = torch.randn(2, 32)
    kernelgen.enable(backend="interpreter", policy="all", include=["rms_norm", "softmax"])
    with kernelgen.use(backend="interpreter", policy="all", include=["softmax"]):
        with count_launches() as inside:
            F.rms_norm(x, (32,))
    with count_launches() as after:
        F.rms_norm(x, (32,))
        torch.softmax(x, -1)
    assert inside.total_launches == 0 and after.total_launches == 2
    assert sorted(kernelgen.status()["interpreter"]["ops"]) == ["rms_norm", "softmax"]
