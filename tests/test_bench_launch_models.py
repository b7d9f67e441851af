"""The GPU benchmark script's code path on the CPU (tiny shapes, Triton's interpreter), in a subprocess: the
parts that make sense there run and report, the GPU-only ones say they were skipped and why."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_tiny_cpu_run_reports_every_part(tmp_path):
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_launch_models.py"), "--tiny",
                           "--device", "cpu", "--out", str(tmp_path), "--models", "llama"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    parts = json.loads((tmp_path / "bench_launch_models.json").read_text())["parts"]
    assert set(parts) == {"check", "host", "device", "kernels", "compile", "models"}
    assert not any("error" in p for p in parts.values()), {k: p.get("error") for k, p in parts.items()}
    assert parts["check"]["passed"] and parts["check"]["cases"] == 48 and not parts["check"]["mismatches"]
    assert set(parts["host"]["ops"]) == {"rms_norm", "softmax", "silu_and_mul"}
    assert "through_enable" in parts["host"]["ops"]["rms_norm"]
    assert parts["device"]["skipped"] and parts["kernels"]["skipped"]
    assert parts["compile"]["graph_breaks"] == 0
    assert parts["compile"]["max_abs_err_vs_float32"] < 1e-5
    modes = parts["models"]["families"]["llama"]["modes"]
    assert set(modes) == {"eager", "patch", "patch_attention", "liger", "gems"}  # each measured, or skipped
    assert "decode_attention" not in modes["patch"]["details"]["patched"]  # opt-in
    assert modes["patch_attention"]["details"]["patched"]["decode_attention"] == 1
    assert all("ms" in modes[m] or modes[m].get("skipped") for m in modes), modes
    assert modes["patch"]["details"]["patched"]["rms_norm"] == 3  # 2 per layer + the final norm, 1 layer
    for phase in ("prefill", "decode"):
        assert modes["patch"]["errors"][phase]["max_abs_err"] < 1e-5  # float32 model on the CPU
