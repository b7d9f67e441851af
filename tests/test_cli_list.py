"""`kernelgen list` and `kernelgen backends`: statuses, JSON, broken folders, bad input."""

import json
import shutil

from typer.testing import CliRunner

from kernelgen.cli import app
from kernelgen.library import builtin_library, source_hash, write_record

runner = CliRunner()
RMS = builtin_library() / "ops" / "rms_norm"


def _lib(tmp_path, monkeypatch):
    lib = tmp_path / "lib"
    (lib / "ops").mkdir(parents=True)
    monkeypatch.setenv("KERNELGEN_LIBRARY", str(lib))
    return lib / "ops"


def test_list_json_shows_every_op_with_aten_overloads_and_status():
    result = runner.invoke(app, ["list", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert rows["rms_norm"]["aten"] == ["aten::rms_norm"]
    assert set(rows["rms_norm"]["backends"]) >= {"cuda", "interpreter"}


def test_list_reports_broken_folder_and_still_lists_the_others(tmp_path, monkeypatch):
    ops = _lib(tmp_path, monkeypatch)
    (ops / "half_written").mkdir()
    (ops / "half_written" / "spec.toml").write_text('name = "half_written"\n')
    result = runner.invoke(app, ["list", "--json"])
    assert result.exit_code == 0
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert rows["half_written"]["broken"] and "description" in rows["half_written"]["reason"]
    assert not rows["rms_norm"]["broken"]
    table = runner.invoke(app, ["list"])
    assert "broken" in table.stdout and "rms_norm" in table.stdout


def test_list_distinguishes_verified_stale_failing_and_unverified(tmp_path, monkeypatch):
    ops = _lib(tmp_path, monkeypatch)
    for name in ("fresh", "edited", "bad", "new"):
        shutil.copytree(RMS, ops / name, ignore=shutil.ignore_patterns("verified"))
        spec = ops / name / "spec.toml"
        spec.write_text(spec.read_text().replace('name = "rms_norm"', f'name = "{name}"'))
    record = {"passed": True, "speedup_vs_eager": 1.5, "min_speedup_vs_eager": 1.1}
    write_record(ops / "fresh", "cuda", dict(record, source_hash=source_hash(ops / "fresh")))
    write_record(ops / "edited", "cuda", dict(record, source_hash=source_hash(ops / "edited")))
    (ops / "edited" / "kernel.py").write_text((ops / "edited" / "kernel.py").read_text() + "\n# edited\n")
    failing = dict(passed=False, failure="accuracy: differs", source_hash=source_hash(ops / "bad"))
    write_record(ops / "bad", "cuda", failing)
    result = runner.invoke(app, ["list", "--backend", "cuda", "--json"])
    status = {r["name"]: r["backends"]["cuda"]["status"] for r in json.loads(result.stdout)}
    assert (status["fresh"], status["edited"], status["bad"], status["new"]) == (
        "verified", "stale", "failing", "unverified")
    text = runner.invoke(app, ["list", "--backend", "cuda"]).stdout
    assert "1.50x" in text


def test_list_with_unknown_backend_exits_2_with_one_line():
    result = runner.invoke(app, ["list", "--backend", "tpu9"])
    assert result.exit_code == 2
    assert "unknown backend 'tpu9'" in result.output


def test_backends_json_lists_builtins():
    result = runner.invoke(app, ["backends", "--json"])
    names = [b["name"] for b in json.loads(result.stdout)]
    assert names[:2] == ["cuda", "interpreter"]


def test_list_says_which_ops_enable_switches_on_and_why_not(tmp_path, monkeypatch):
    ops = _lib(tmp_path, monkeypatch)
    for name, speedups in (("always_faster", (1.2, 1.5)), ("faster_when_large", (0.8, 1.5))):
        shutil.copytree(RMS, ops / name, ignore=shutil.ignore_patterns("verified"))
        spec = ops / name / "spec.toml"
        spec.write_text(spec.read_text().replace('name = "rms_norm"', f'name = "{name}"'))
        perf = [{"dtype": "bfloat16", "dims": {"M": m, "N": 64}, "speedup_eager": s}
                for m, s in zip((1, 4096), speedups)]
        write_record(ops / name, "cuda", {"passed": True, "performance": perf, "min_speedup_vs_eager": min(speedups),
                                         "source_hash": source_hash(ops / name)})
    result = runner.invoke(app, ["list", "--backend", "cuda", "--backend", "interpreter", "--json"])
    rows = {r["name"]: r["backends"] for r in json.loads(result.stdout)}
    assert rows["always_faster"]["cuda"]["enable"] == {"verified": True, "by_size": True, "why_not": ""}
    slow_small = rows["faster_when_large"]["cuda"]["enable"]
    assert (slow_small["verified"], slow_small["by_size"]) == (False, True)
    assert "slower than eager" in slow_small["why_not"]
    assert not rows["always_faster"]["interpreter"]["enable"]["verified"]  # no record there, no speed figures
    # columns: op, library, overrides, cuda
    table = runner.invoke(app, ["list", "--backend", "cuda"], env={"COLUMNS": "200"}).stdout.splitlines()
    assert next(line for line in table if "always_faster" in line).split("│")[4].split()[-1] == "on"
    assert next(line for line in table if "faster_when_large" in line).split("│")[4].split()[-1] == "by_size"
