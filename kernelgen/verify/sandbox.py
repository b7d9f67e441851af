"""Running candidates where they cannot hurt the run: static check, then a fresh subprocess per candidate.

Each candidate gets its own Python process (`kernelgen.verify.worker`) in a new session, so a hang is
killed with its whole process group, a crash (SIGSEGV, SIGABRT, an OOM kill) is a verdict for that
candidate only, and no GPU context or Triton state is shared between candidates. Verification records
(`verified/<backend>.json`) are written here, in the parent, from the verdict the child returned.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from kernelgen.library import library_roots, load_op, ops_dir, source_hash, write_record
from kernelgen.verify.static import check_source
from kernelgen.verify.verdict import Verdict

DEFAULT_TIMEOUT = 120.0
STDERR_TAIL_LINES = 12
STDERR_TAIL_CHARS = 1200
SIGNAL_HINTS = {
    "SIGSEGV": "segmentation fault: a load or store outside any allocation",
    "SIGBUS": "bus error: misaligned or unmapped memory",
    "SIGABRT": "the process aborted",
    "SIGKILL": "killed (out of memory, or by the timeout)",
    "SIGFPE": "arithmetic fault",
    "SIGILL": "illegal instruction",
}


def static_verdict(folder: Path, backend: str, candidate: str = "") -> Verdict | None:
    """A "static" failing verdict when the op folder is broken or its code fails the static check."""
    op = load_op(folder)
    if op.broken:
        return Verdict.fail(folder.name, backend, "static", op.error, candidate=candidate or folder.name)
    assert op.spec is not None
    kernel = op.kernel_path_for(backend)
    problem = check_source(kernel.read_text(), str(kernel.relative_to(folder)))
    if problem is None:
        problem = check_source(op.spec.reference, "spec.toml reference")
    if problem is None:
        return None
    return Verdict.fail(op.name, backend, "static", problem, source_hash=op.source_hash(backend),
                        candidate=candidate or op.name)


def _worker_env(interpret: bool, device: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    if device is not None:
        env["CUDA_VISIBLE_DEVICES"] = device  # one GPU per parallel worker (verify_many with jobs > 1)
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    else:
        env.pop("TRITON_INTERPRET", None)  # compiled kernels: a stray 1 would silently interpret them
    # The child must import this very kernelgen, whatever its working directory.
    pkg_parent = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([pkg_parent] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["PYTHONFAULTHANDLER"] = "1"
    return env


def _tail(text: str) -> str:
    """The last lines of stderr, whole lines only, led by the fatal-error line if the dump has one."""
    lines = [ln.rstrip() for ln in text.strip().splitlines() if ln.strip()]
    fatal = [ln for ln in lines if ln.startswith("Fatal Python error")][:1]
    tail = lines[-STDERR_TAIL_LINES:]
    while tail and len("\n".join(fatal + tail)) > STDERR_TAIL_CHARS:
        tail = tail[1:]
    return "\n".join((fatal if fatal and fatal[0] not in tail else []) + tail)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _signal_name(returncode: int) -> str:
    # A negative code is the signal that ended the child; shells report 128+N for the same thing.
    num = -returncode if returncode < 0 else returncode - 128 if returncode > 128 else 0
    try:
        return signal.Signals(num).name if num else ""
    except ValueError:
        return f"signal {num}"


def run_worker(folder: Path, backend: str, interpret: bool, timeout: float, perf: bool, trials: int,
               with_compile: bool, seed: int | None, candidate: str, device: str | None = None) -> tuple[Verdict, bool]:
    """Verify `folder` in a fresh subprocess; every way that process can end becomes a verdict. The flag
    says whether the candidate got to run (False when the backend could not even be set up there)."""
    name = folder.name
    with tempfile.TemporaryDirectory(prefix="kernelgen-verify-") as tmp:
        result = Path(tmp) / "verdict.json"
        cmd = [sys.executable, "-m", "kernelgen.verify.worker", str(folder), "--backend", backend,
               "--result", str(result), "--trials", str(trials), "--candidate", candidate or name]
        if not perf:
            cmd.append("--no-perf")
        if not with_compile:
            cmd.append("--no-compile")
        if seed is not None:
            cmd += ["--seed", str(seed)]
        t0 = time.perf_counter()
        # cwd is the scratch folder: whatever the candidate writes relative to it goes away with it.
        proc = subprocess.Popen(cmd, cwd=tmp, env=_worker_env(interpret, device), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, errors="replace", start_new_session=True)
        try:
            _, err = proc.communicate(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            try:
                _, err = proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                err = ""
            timed_out = True
        _kill_group(proc)  # helpers it left behind (compile workers, a forked child) go with it
        wall = time.perf_counter() - t0
        base = dict(candidate=candidate or name, wall_s=wall)
        if timed_out:
            return Verdict.fail(name, backend, "sandbox", f"timed out after {timeout:g}s (hang or infinite loop); "
                                "the process group was killed", **base), True
        if result.is_file():
            try:
                verdict = Verdict.from_dict(json.loads(result.read_text()))
                verdict.wall_s = wall
                return verdict, bool(verdict.device)
            except (json.JSONDecodeError, TypeError) as exc:
                message = f"unreadable verdict from the worker: {exc}"
                return Verdict.fail(name, backend, "sandbox", message, **base), True
        sig = _signal_name(proc.returncode)
        how = f"killed by {sig} ({SIGNAL_HINTS[sig]})" if sig in SIGNAL_HINTS else (
            f"killed by {sig}" if sig else f"exited with code {proc.returncode} without a verdict")
        tail = _tail(err or "")
        message = f"worker {how}" + (f"; stderr tail:\n{tail}" if tail else "")
        return Verdict.fail(name, backend, "sandbox", message, **base), True


def is_library_op(folder: Path) -> bool:
    """True for a folder inside an `ops/` folder or directly in a library root: where op folders live in
    a library (records go only there; candidate folders of a generation run live elsewhere)."""
    folder = folder.resolve()
    return folder.parent.name == "ops" or any(folder.parent == ops_dir(root).resolve() for root in library_roots())


def check_candidate(folder: str | Path, backend: str, timeout: float = DEFAULT_TIMEOUT, perf: bool = True,
                    trials: int = 3, with_compile: bool = True, seed: int | None = None, candidate: str = "",
                    device: str | None = None) -> tuple[Verdict, bool]:
    """Static check, then the sandboxed run; writes nothing. The flag says whether the candidate ran (only
    then may its verdict become a record). `device`: the CUDA_VISIBLE_DEVICES the worker gets."""
    from kernelgen.backends import get_backend

    folder = Path(folder).resolve()
    be = get_backend(backend)  # raises BackendError for an unknown name: a usage error, not a verdict
    rejected = static_verdict(folder, backend, candidate)
    if rejected is not None:
        return rejected, False
    before = source_hash(folder, backend)
    verdict, ran = run_worker(folder, backend, be.interpret, timeout, perf and be.measures_performance, trials,
                              with_compile, seed, candidate, device)
    verdict.source_hash = verdict.source_hash or before
    return verdict, ran and source_hash(folder, backend) == before


def record_verdict(folder: str | Path, backend: str, verdict: Verdict, ran: bool) -> bool:
    """Store the verdict as the op's verified/<backend>.json: library ops only, only when the candidate
    ran, and only when the backend's view of the op (kernel, spec, its variant and tuning) is still the one
    that was verified. Returns whether it wrote."""
    from kernelgen.backends import get_backend

    folder = Path(folder).resolve()
    if not (ran and is_library_op(folder) and source_hash(folder, backend) == verdict.source_hash):
        return False
    write_record(folder, backend, verdict.to_record(speed=get_backend(backend).measures_performance))
    return True


def verify_candidate(folder: str | Path, backend: str, timeout: float = DEFAULT_TIMEOUT, perf: bool = True,
                     trials: int = 3, write: bool = False, with_compile: bool = True, seed: int | None = None,
                     candidate: str = "", device: str | None = None) -> Verdict:
    """Static check, then the sandboxed run. `write`: store the verdict as the op's verified/<backend>.json
    (library ops only, and only when the candidate actually ran and its source did not change meanwhile)."""
    verdict, ran = check_candidate(folder, backend, timeout=timeout, perf=perf, trials=trials,
                                   with_compile=with_compile, seed=seed, candidate=candidate, device=device)
    if write:
        record_verdict(folder, backend, verdict, ran)
    return verdict


def gpu_slots(backend: str, jobs: int) -> list[str | None]:
    """Devices for `jobs` parallel workers: one GPU each, round-robin, when the backend runs on CUDA and
    this machine has several; otherwise no pinning."""
    from kernelgen.backends import get_backend

    be = get_backend(backend)
    if jobs <= 1 or be.interpret or be.device != "cuda":
        return [None] * max(1, jobs)
    import torch

    count = torch.cuda.device_count()
    if count <= 1:
        return [None] * jobs
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [d.strip() for d in visible.split(",")][:count] if visible else [str(i) for i in range(count)]
    return [ids[i % len(ids)] for i in range(jobs)]


def verify_many(folders: Sequence[str | Path], backend: str, jobs: int = 1, timeout: float = DEFAULT_TIMEOUT,
                perf: bool = True, trials: int = 3, write: bool = False, with_compile: bool = True,
                seed: int | None = None, on_start: Callable[[Path], None] | None = None,
                on_done: Callable[[Verdict], None] | None = None) -> list[Verdict]:
    """Verify every folder (in order of `folders` in the result), `jobs` subprocesses at a time. A candidate
    that fails in any way — even the verifier failing on it — is a verdict; the run always goes on."""
    import queue

    paths = [Path(f) for f in folders]
    slots: queue.Queue = queue.Queue()
    for device in gpu_slots(backend, min(jobs, len(paths))):
        slots.put(device)

    def one(path: Path) -> Verdict:
        if on_start:
            on_start(path)
        device = slots.get()  # a worker holds its GPU for the whole candidate
        try:
            v = verify_candidate(path, backend, timeout=timeout, perf=perf, trials=trials, write=write,
                                 with_compile=with_compile, seed=seed, device=device)
        except Exception as exc:
            v = Verdict.fail(path.name, backend, "sandbox", f"verifier error: {type(exc).__name__}: {exc}")
        finally:
            slots.put(device)
        if on_done:
            on_done(v)
        return v

    if jobs <= 1 or len(paths) <= 1:
        return [one(p) for p in paths]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(one, paths))
