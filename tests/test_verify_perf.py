"""The timing path without a GPU: a plugin backend that runs the interpreter but "measures performance",
so the sandboxed child times the kernel and eager PyTorch and the parent checks the timed runs' outputs."""

import shutil
import sys
import textwrap

import pytest

from kernelgen import backends
from kernelgen.library import get_op
from kernelgen.verify.wall import sandbox_problem

PLUGIN = textwrap.dedent('''
    import time
    from kernelgen.backends.interpreter import InterpreterBackend


    class TimingChip(InterpreterBackend):
        name = "timingchip"
        measures_performance = True
        description = "test plugin: the interpreter, timed with a wall clock"

        def bench(self, fn, warmup_ms=25, rep_ms=100):
            fn()
            t0 = time.perf_counter()
            for _ in range(2):
                fn()
            return (time.perf_counter() - t0) / 2 * 1e3

        def copy_bandwidth(self):
            return 1.0
''')


@pytest.fixture
def timingchip(tmp_path, monkeypatch):
    plugins = tmp_path / "plugins"
    dist = plugins / "timingchip_plugin-0.1.dist-info"
    dist.mkdir(parents=True)
    (plugins / "timingchip_plugin.py").write_text(PLUGIN)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: timingchip-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[kernelgen.backends]\ntimingchip = timingchip_plugin:TimingChip\n")
    monkeypatch.syspath_prepend(str(plugins))
    monkeypatch.setenv("PYTHONPATH", str(plugins))  # the sandboxed child finds the plugin on its path
    backends._instances.pop("timingchip", None)
    yield "timingchip"
    backends._instances.pop("timingchip", None)
    sys.modules.pop("timingchip_plugin", None)


@pytest.mark.skipif(bool(sandbox_problem()), reason=sandbox_problem() or "")
def test_timed_runs_are_measured_in_the_sandbox_and_their_outputs_checked(timingchip, tmp_path, monkeypatch):
    from kernelgen.verify import engine
    from kernelgen.verify.sandbox import verify_candidate

    folder = tmp_path / "ops" / "rms_norm"
    shutil.copytree(get_op("rms_norm").path, folder, ignore=shutil.ignore_patterns("verified"))
    spec = folder / "spec.toml"
    lines = [ln if not ln.startswith("bench = ") else 'bench = [{ M = 4, N = 256 }]'
             for ln in spec.read_text().splitlines()]
    spec.write_text("\n".join(lines) + "\n")
    checked = []
    original = engine._timed_outputs

    def spy(spec, timed, refs_of):
        checked.extend(timed)
        clean = original(spec, timed, refs_of)
        timed[0]["outputs"][0].mul_(1.1)  # what the check says when a timed run computed something else
        checked.append(original(spec, timed, refs_of))
        return clean

    monkeypatch.setattr(engine, "_timed_outputs", spy)
    v = verify_candidate(folder, timingchip, trials=1, with_compile=False)
    assert v.passed, v.message
    assert {(p["dtype"], p["dims"]["N"]) for p in v.performance} == {("bfloat16", 256), ("float16", 256)}
    assert all(p["kernel_ms"] > 0 and p["eager_ms"] > 0 for p in v.performance)
    timed, verdict_on_corrupted = checked[:-1], checked[-1]
    assert len(timed) == 2 and all(t["outputs"][0].shape == (4, 256) for t in timed)
    assert "timed run" in verdict_on_corrupted and "differs from the reference" in verdict_on_corrupted
