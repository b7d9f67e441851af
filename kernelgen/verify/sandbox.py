"""Running candidates where they cannot hurt the run, and the public entry points of verification.

Each candidate gets one child process (`python -m kernelgen.verify.worker`) per backend, behind the wall
(`kernelgen.verify.wall`: bubblewrap, no network, read-only system, private scratch folder, PID namespace,
rlimits). It receives a plan of calls with their inputs and returns outputs; a hang is killed after the
timeout with everything it started, a crash (SIGSEGV, SIGABRT, an OOM kill) is a verdict for that
candidate only, and no GPU context or Triton state is shared between candidates. Comparisons, verdicts and
verification records (`verified/<backend>.json`) happen here, in the parent.

Trust: a candidate kernel is always untrusted. A spec's reference is trusted when the op comes from the
shipped library (or the caller says so); otherwise it is evaluated in a sandboxed process of its own. When
no sandbox can start, shipped-library ops still run in plain processes (with a warning) and anything else
is refused (`SandboxUnavailable`), unless the caller turned the sandbox off (`--no-sandbox`).
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kernelgen.library import builtin_library, library_roots, load_op, ops_dir, source_hash, write_record
from kernelgen.scratch import scratch_prefix
from kernelgen.verify import wall
from kernelgen.verify.static import check_reference, check_source
from kernelgen.verify.verdict import Verdict
from kernelgen.verify.wall import SandboxUnavailable

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
    "SIGXCPU": "CPU time limit exceeded",
    "SIGXFSZ": "file size limit exceeded",
}
_no_sandbox = False  # set by --no-sandbox: every candidate runs in a plain process (trusted code only)
_warned: set[str] = set()
_warn_lock = threading.Lock()


def set_no_sandbox(flag: bool = True) -> None:
    """Process-wide: run candidates without the sandbox (the CLI's --no-sandbox, for trusted code only)."""
    global _no_sandbox
    _no_sandbox = flag
    if flag:
        _warn_once("off", "the sandbox is OFF (--no-sandbox): candidate code runs with your rights, network and "
                   "files; use it for trusted code only")


def sandbox_disabled() -> bool:
    """Whether --no-sandbox is in effect in this process (callers that start their own sandboxed work,
    such as the agent's reuse check, follow it)."""
    return _no_sandbox


def _warn_once(key: str, message: str) -> None:
    with _warn_lock:
        if key in _warned:
            return
        _warned.add(key)
    print(f"warning: {message}", file=sys.stderr)
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def is_shipped_op(folder: Path) -> bool:
    """An op folder of the library shipped with kernelgen (its reference is trusted)."""
    return Path(folder).resolve().parent == ops_dir(builtin_library()).resolve()


def sandbox_mode(folder: Path, backend: str, sandbox: bool | None) -> bool:
    """Whether this candidate runs behind the wall. Raises SandboxUnavailable when it must but cannot."""
    from kernelgen.backends import get_backend

    if sandbox is False or (sandbox is None and _no_sandbox):
        return False
    problem = wall.sandbox_problem(get_backend(backend).device == "cuda")
    if not problem:
        return True
    if sandbox is None and is_shipped_op(folder):
        _warn_once("plain", f"{problem}; shipped library ops are verified in plain processes")
        return False
    raise SandboxUnavailable(problem)


def require_sandbox(backend: str) -> None:
    """Raise SandboxUnavailable (one line naming the fix) unless untrusted candidates can run here."""
    from kernelgen.backends import get_backend

    if _no_sandbox:
        return
    problem = wall.sandbox_problem(get_backend(backend).device == "cuda")
    if problem:
        raise SandboxUnavailable(problem)


def broken_check(op) -> str:
    """The check a broken op folder fails: "static" for a missing or unparsable kernel.py (the candidate's
    code), "spec" for a spec.toml that does not validate (the file load_op found at fault)."""
    return "static" if op.broken_file == "kernel.py" else "spec"


def static_verdict(folder: Path, backend: str, candidate: str = "") -> Verdict | None:
    """A failing verdict before anything runs: "spec" when spec.toml does not validate, "static" when kernel.py
    is missing or its code (or the reference) fails the static check."""
    op = load_op(folder)
    if op.broken:
        return Verdict.fail(folder.name, backend, broken_check(op), op.error,
                            candidate=candidate or folder.name)
    assert op.spec is not None
    kernel = op.kernel_path_for(backend)
    problem = check_source(kernel.read_text(), str(kernel.relative_to(folder)))
    if problem is None:
        problem = check_reference(op.spec.reference, "spec.toml reference")
    if problem is None:
        return None
    return Verdict.fail(op.name, backend, "static", problem, source_hash=op.source_hash(backend),
                        candidate=candidate or op.name)


def child_env(scratch: Path, interpret: bool, device: str | None = None) -> dict[str, str]:
    extra = {"PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2])] + [
        p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
    if device is not None:
        extra["CUDA_VISIBLE_DEVICES"] = device  # one GPU per parallel worker (verify_many with jobs > 1)
    # Replays stay in Python in the child: the C++ replay (kernelgen/lean_replay.py) would be compiled again
    # in every child (its HOME is the scratch folder), for host time that no verdict measures.
    extra["KERNELGEN_LEAN_REPLAY"] = "0"
    env = wall.sandbox_env(scratch, extra)
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    else:
        env.pop("TRITON_INTERPRET", None)  # compiled kernels: a stray 1 would silently interpret them
    return env


def compile_cache(folder: Path, backend: str) -> Path:
    """Triton's (and torch.compile's) cache for one candidate source on one backend, kept between
    verifications (compiling every kernel again each time would dominate a GPU run). Keyed by the source
    hash, so what a candidate writes there can only ever be read by a later run of that very source, never
    by another op or by production (which uses Triton's own cache)."""
    root = os.environ.get("KERNELGEN_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "kernelgen")
    path = Path(root).expanduser() / "sandbox-triton" / backend / source_hash(folder, backend)
    path.mkdir(parents=True, exist_ok=True)
    return path


def child_argv(scratch: Path, reference: bool = False) -> list[str]:
    return [sys.executable, "-m", "kernelgen.verify.worker", str(scratch)] + (["--reference"] if reference else [])


def _tail(text: str) -> str:
    """The last lines of stderr, whole lines only, led by the fatal-error line if the dump has one."""
    lines = [ln.rstrip() for ln in text.strip().splitlines() if ln.strip()]
    fatal = [ln for ln in lines if ln.startswith("Fatal Python error")][:1]
    tail = lines[-STDERR_TAIL_LINES:]
    while tail and len("\n".join(fatal + tail)) > STDERR_TAIL_CHARS:
        tail = tail[1:]
    return "\n".join((fatal if fatal and fatal[0] not in tail else []) + tail)


def _signal_name(returncode: int) -> str:
    # A negative code is the signal that ended the child; shells report 128+N for the same thing.
    num = -returncode if returncode < 0 else returncode - 128 if returncode > 128 else 0
    try:
        return signal.Signals(num).name if num else ""
    except ValueError:
        return f"signal {num}"


def describe_exit(run: wall.WalledRun, timeout: float) -> str:
    if run.timed_out:
        return (f"timed out after {timeout:g}s (hang or infinite loop); it was killed with everything it started")
    sig = _signal_name(run.returncode)
    how = f"was killed by {sig} ({SIGNAL_HINTS[sig]})" if sig in SIGNAL_HINTS else (
        f"was killed by {sig}" if sig else f"exited with code {run.returncode} without results")
    tail = _tail(run.stderr)
    return how + (f"; stderr tail:\n{tail}" if tail else "")


SANITIZER_EXIT = 86  # compute-sanitizer's exit code when memcheck found an error


def sanitizer_binary() -> str | None:
    import shutil

    found = shutil.which("compute-sanitizer")
    if found:
        return found
    for home in (os.environ.get("CUDA_HOME", ""), "/usr/local/cuda"):
        candidate = Path(home) / "bin" / "compute-sanitizer"
        if home and candidate.is_file():
            return str(candidate)
    return None


def _memcheck_report(stderr: str) -> str:
    """memcheck's own lines (`========= Invalid __global__ read ...`, where, which thread, the address), its
    first errors; the child's own stderr tail when there are none."""
    lines = [ln.rstrip() for ln in stderr.splitlines() if ln.startswith("=========") and ln.strip("= ")]
    lines = [ln for ln in lines if "COMPUTE-SANITIZER" not in ln]
    return "\n".join(lines[:12])[:STDERR_TAIL_CHARS] if lines else _tail(stderr)


def run_child(wire: dict[str, Any], backend, timeout: float, sandbox: bool, device: str | None,
              sanitize: bool = False) -> tuple[dict[str, Any], str]:
    """Run the plan in a fresh child; (results, "") or ({}, why the child gave no results). `sanitize`:
    under NVIDIA's compute-sanitizer memcheck (out-of-bounds and misaligned accesses), CUDA only."""
    import torch

    from kernelgen.verify.worker import PLAN, RESULTS

    with tempfile.TemporaryDirectory(prefix=scratch_prefix("verify")) as tmp:
        scratch = Path(tmp)
        torch.save(wire, scratch / PLAN)
        env = child_env(scratch, backend.interpret, device)
        writable = []
        if not backend.interpret:
            cache = compile_cache(Path(wire["folder"]), backend.name)
            env["TRITON_CACHE_DIR"] = str(cache / "triton")
            env["TORCHINDUCTOR_CACHE_DIR"] = str(cache / "inductor")  # the torch.compile baseline's
            writable.append(cache)
        argv = child_argv(scratch)
        if sanitize:
            tool = sanitizer_binary()
            if tool is None:
                return {}, "--sanitize needs NVIDIA's compute-sanitizer (CUDA toolkit) on PATH or in CUDA_HOME/bin"
            argv = [tool, "--tool", "memcheck", "--error-exitcode", str(SANITIZER_EXIT), "--print-limit", "10",
                    "--target-processes", "all"] + argv
            # memcheck knows only the driver's allocations: with PyTorch's caching allocator a tensor is a
            # slice of a larger segment and a read past its end stays inside that segment, unseen. Without
            # the cache every tensor is its own allocation.
            env["PYTORCH_NO_CUDA_MEMORY_CACHING"] = "1"
        run = wall.run_walled(argv, scratch, timeout, sandbox=sandbox,
                              cuda=backend.device == "cuda", env=env, readable=[Path(wire["folder"])],
                              writable=writable)
        results = scratch / RESULTS
        if sanitize and run.returncode == SANITIZER_EXIT:
            return {}, "compute-sanitizer memcheck found invalid memory accesses:\n" + _memcheck_report(run.stderr)
        if run.timed_out or not results.is_file():
            return {}, f"worker {describe_exit(run, timeout)}"
        try:
            return torch.load(results, weights_only=True, map_location="cpu"), ""
        except Exception as exc:  # a truncated or forged file: whatever it is, it is not a result
            return {}, f"unreadable results from the worker: {type(exc).__name__}: {exc}"[:500]


def is_library_op(folder: Path) -> bool:
    """True for a folder inside an `ops/` folder or directly in a library root: where op folders live in
    a library (records go only there; candidate folders of a generation run live elsewhere)."""
    folder = folder.resolve()
    return folder.parent.name == "ops" or any(folder.parent == ops_dir(root).resolve() for root in library_roots())


def check_candidate(folder: str | Path, backend: str, timeout: float = DEFAULT_TIMEOUT, perf: bool = True,
                    trials: int = 3, with_compile: bool = True, seed: int | None = None, candidate: str = "",
                    device: str | None = None, sandbox: bool | None = None,
                    trusted_reference: bool | None = None, sanitize: bool = False) -> tuple[Verdict, bool]:
    """Static check, spec rules, then the sandboxed run; writes nothing. The flag says whether the candidate
    ran (only then may its verdict become a record). `device`: the CUDA_VISIBLE_DEVICES the worker gets.
    `sandbox`: None = behind the wall when one can start (see `sandbox_mode`); `trusted_reference`: None =
    trusted only for ops of the shipped library. Raises SandboxUnavailable when the candidate may not run."""
    from kernelgen.backends import get_backend
    from kernelgen.verify.engine import verify_folder

    folder = Path(folder).resolve()
    get_backend(backend)  # raises BackendError for an unknown name: a usage error, not a verdict
    rejected = static_verdict(folder, backend, candidate)
    if rejected is not None:
        return rejected, False
    walled = sandbox_mode(folder, backend, sandbox)
    trusted = is_shipped_op(folder) if trusted_reference is None else trusted_reference
    before = source_hash(folder, backend)
    verdict, ran = verify_folder(folder, backend, trials=trials, perf=perf, with_compile=with_compile, seed=seed,
                                 candidate=candidate, timeout=timeout, sandbox=walled, trusted_reference=trusted,
                                 device=device, sanitize=sanitize)
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
                     candidate: str = "", device: str | None = None, sandbox: bool | None = None,
                     trusted_reference: bool | None = None, sanitize: bool = False) -> Verdict:
    """Static check, then the sandboxed run. `write`: store the verdict as the op's verified/<backend>.json
    (library ops only, and only when the candidate actually ran and its source did not change meanwhile)."""
    verdict, ran = check_candidate(folder, backend, timeout=timeout, perf=perf, trials=trials,
                                   with_compile=with_compile, seed=seed, candidate=candidate, device=device,
                                   sandbox=sandbox, trusted_reference=trusted_reference, sanitize=sanitize)
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
                on_done: Callable[[Verdict], None] | None = None, sandbox: bool | None = None,
                trusted_reference: bool | None = None, sanitize: bool = False) -> list[Verdict]:
    """Verify every folder (in order of `folders` in the result), `jobs` subprocesses at a time. A candidate
    that fails in any way — even the verifier failing on it — is a verdict; the run always goes on. Raises
    SandboxUnavailable before anything runs when some folder needs a sandbox that cannot start."""
    import queue

    paths = [Path(f) for f in folders]
    for path in paths:
        sandbox_mode(path.resolve(), backend, sandbox)  # refuse the whole run up front, not op by op
    slots: queue.Queue = queue.Queue()
    for device in gpu_slots(backend, min(jobs, len(paths))):
        slots.put(device)

    def one(path: Path) -> Verdict:
        if on_start:
            on_start(path)
        device = slots.get()  # a worker holds its GPU for the whole candidate
        try:
            v = verify_candidate(path, backend, timeout=timeout, perf=perf, trials=trials, write=write,
                                 with_compile=with_compile, seed=seed, device=device, sandbox=sandbox,
                                 trusted_reference=trusted_reference, sanitize=sanitize)
        except SandboxUnavailable:
            raise
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
