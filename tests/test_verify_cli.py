"""`kernelgen verify`: exit codes, Markdown and JSON output, the three report files, and `--changed`
picking exactly the changed ops in a throwaway git repository. The command over the whole hostile battery is
tests/test_sandbox.py."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kernelgen.cli import app
from kernelgen.verify.changes import changed_op_folders

HOSTILE = Path(__file__).resolve().parent / "hostile"
runner = CliRunner()


def _verify(*args):
    return runner.invoke(app, ["verify", *args])


@pytest.mark.parametrize(
    "args, words",
    [
        ([], "name the ops"),
        (["rms_norm", "--all"], "exactly one of"),
        (["--all", "--changed"], "exactly one of"),
        (["rms_norm", "--base", "main"], "--base only goes with --changed"),
        (["rms_norm", "--format", "html"], "--format must be one of"),
        (["no_such_op"], "no op named 'no_such_op'"),
        (["rms_norm", "--backend", "nope"], "unknown backend 'nope'"),
        (["rms_norm", "--timeout", "0"], "--timeout must be > 0"),
    ],
)
def test_bad_usage_exits_2_with_one_line(args, words, tmp_path):
    result = _verify(*args, "--out", str(tmp_path / "out"))
    assert result.exit_code == 2, result.output
    assert words in result.stderr
    assert not (tmp_path / "out").exists()  # nothing written before the arguments check out


def test_failures_exit_1_and_markdown_report_names_the_check(tmp_path):
    out = tmp_path / "report"
    result = _verify(str(HOSTILE / "identity"), str(HOSTILE / "exec_string"), "--format", "md", "--out", str(out),
                     "--backend", "interpreter", "--jobs", "2")
    assert result.exit_code == 1, result.output
    md = result.stdout
    assert "0 of 2 passed on interpreter" in md
    assert "| op | backend | result | failing check | message | vs eager | vs compile |" in md
    assert "| identity | interpreter | **FAIL** | anticheat | launched no Triton kernel" in md
    assert "| exec_string | interpreter | **FAIL** | static | kernel.py line 27" in md
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "report.md", "speedup.png"]
    assert (out / "report.md").read_text() == md
    png = out / "speedup.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    assert matplotlib.image.imread(png).ndim == 3
    doc = json.loads((out / "report.json").read_text())
    assert [v["check"] for v in doc["verdicts"]] == ["anticheat", "static"]


def _git(repo, *args):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args], cwd=repo, check=True,
                   capture_output=True)


def _op(repo, name):
    folder = repo / "library" / "ops" / name
    shutil.copytree(HOSTILE / "correct", folder)
    spec = folder / "spec.toml"
    spec.write_text(spec.read_text().replace('name = "correct"', f'name = "{name}"'))
    return folder


@pytest.fixture
def repo(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    alpha, beta = _op(repo, "alpha"), _op(repo, "beta")
    (repo / "README.md").write_text("x\n")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "two ops")
    _git(repo, "checkout", "-q", "-b", "feature")
    kernel = beta / "kernel.py"
    kernel.write_text(kernel.read_text().replace("BLOCK=1024", "BLOCK=512"))  # a real edit of beta
    (alpha / "verified").mkdir()
    (alpha / "verified" / "cuda.json").write_text("{}\n")  # a refreshed record alone is not a change
    (repo / "README.md").write_text("y\n")  # neither is a file outside any op folder
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "tune beta")
    return repo


def test_changed_picks_exactly_the_changed_ops(repo):
    assert changed_op_folders(cwd=repo) == [repo / "library" / "ops" / "beta"]
    assert changed_op_folders("main", cwd=repo / "library") == [repo / "library" / "ops" / "beta"]
    # uncommitted work and new op folders count too
    gamma = _op(repo, "gamma")
    assert changed_op_folders(cwd=repo) == [repo / "library" / "ops" / "beta", gamma]


def test_verify_changed_verifies_only_changed_ops_and_records_accuracy_only(repo, monkeypatch):
    monkeypatch.chdir(repo)
    result = _verify("--changed", "--format", "json", "--backend", "interpreter")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert [v["op"] for v in doc["verdicts"]] == ["beta"]
    assert doc["verdicts"][0]["passed"] is True
    record = json.loads((repo / "library" / "ops" / "beta" / "verified" / "interpreter.json").read_text())
    assert record["passed"] is True
    assert not {"performance", "speedup_vs_eager", "speedup_vs_compile"} & set(record)
    assert not (repo / "library" / "ops" / "alpha" / "verified" / "interpreter.json").exists()


def test_verify_changed_with_unknown_base_exits_2(repo, monkeypatch):
    monkeypatch.chdir(repo)
    result = _verify("--changed", "--base", "no-such-branch")
    assert result.exit_code == 2
    assert "no-such-branch" in result.stderr


def test_verify_changed_with_nothing_changed_passes(repo, monkeypatch):
    monkeypatch.chdir(repo)
    result = _verify("--changed", "--base", "HEAD", "--format", "md")
    assert result.exit_code == 0, result.output
    assert "No op to verify" in result.stdout
