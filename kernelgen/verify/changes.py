"""Which op folders a branch changed: the set `kernelgen verify --changed` (the pull-request check) verifies.

An op counts as changed when any file in its folder differs from the merge base with the base revision
(committed, staged, unstaged or new untracked files alike), except its `verified/` records: those are the
verifier's output, and a pull request that only refreshes them has nothing new to verify.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from kernelgen.errors import KernelgenError

DEFAULT_BASES = ("main", "origin/main")


class GitError(KernelgenError):
    """git is missing, this is not a repository, or the base revision does not exist."""


def _git(args: list[str], cwd: Path) -> str:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise GitError("git is not installed (needed by --changed)") from None
    if done.returncode != 0:
        raise GitError(f"git {' '.join(args)} failed: {done.stderr.strip().splitlines()[-1:] or done.returncode}")
    return done.stdout


def repo_root(cwd: str | Path = ".") -> Path:
    try:
        return Path(_git(["rev-parse", "--show-toplevel"], Path(cwd)).strip())
    except GitError:
        raise GitError(f"{Path(cwd).resolve()} is not inside a git repository (needed by --changed)") from None


def merge_base(root: Path, base: str | None = None) -> str:
    """The merge base of HEAD with `base` (default: main, else origin/main), as a commit id."""
    candidates = [base] if base else list(DEFAULT_BASES)
    for rev in candidates:
        try:
            _git(["rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], root)
        except GitError:
            continue
        try:
            return _git(["merge-base", "HEAD", rev], root).strip()
        except GitError:
            return _git(["rev-parse", f"{rev}^{{commit}}"], root).strip()  # unrelated histories: diff to rev
    raise GitError(f"base revision {' or '.join(candidates)!s} not found (fetch it, or pass --base REV)")


def changed_files(root: Path, base: str | None = None) -> list[str]:
    rev = merge_base(root, base)
    files = set(_git(["diff", "--name-only", rev], root).split("\n"))
    files |= set(_git(["ls-files", "--others", "--exclude-standard"], root).split("\n"))
    return sorted(f for f in files if f)


def op_folder_of(root: Path, rel: str) -> Path | None:
    """The op folder (`.../ops/<name>/` with a spec.toml) holding the file `rel`, or None."""
    parts = Path(rel).parts
    for i in range(len(parts) - 1, 0, -1):
        if parts[i - 1] == "ops":
            folder = root.joinpath(*parts[: i + 1])
            if (folder / "spec.toml").is_file():
                inside = parts[i + 1:]
                return None if inside[:1] == ("verified",) else folder
    return None


def changed_op_folders(base: str | None = None, cwd: str | Path = ".") -> list[Path]:
    """Op folders that differ from the merge base with `base`; deleted ops are not listed."""
    root = repo_root(cwd)
    found = {op_folder_of(root, f) for f in changed_files(root, base)}
    return sorted(f for f in found if f is not None)
