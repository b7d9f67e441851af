"""The wall around untrusted code: a process under bubblewrap with no network, a read-only system, one
private writable scratch folder, its own PID namespace and rlimits.

Untrusted code (a candidate kernel.py, a reference from a generated spec) runs only through `run_walled`.
The tool is bubblewrap (`bwrap`, Debian package `bubblewrap`; `KERNELGEN_BWRAP` names another binary):

- `--unshare-all`: no network (an empty network namespace), own PID, IPC, UTS and mount namespaces; a
  process it forks (even with `setsid`) dies with the namespace when the run ends;
- `--ro-bind / /` then `--bind SCRATCH SCRATCH`: the library, the cache and the home folder are readable
  but not writable; `/tmp` is a fresh tmpfs; HOME and the Triton cache live in the scratch folder;
- `--die-with-parent`: killing the verifier (even with SIGKILL) kills the sandbox; `--new-session`: the
  child cannot push characters into the terminal it came from;
- on CUDA each `/dev/nvidia*` node is bound in (the GPU is the one device the candidate needs);
- rlimits set before bwrap starts, inherited by everything inside: memory, CPU seconds, file size,
  processes.

Without bwrap (`sandbox=False`) the same command runs in a plain process in its own session that dies
with its parent (PR_SET_PDEATHSIG): enough for trusted code, not a wall.
"""

from __future__ import annotations

import ctypes
import glob
import os
import resource
import shutil
import signal
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

SANDBOX_FIX = "install bubblewrap (apt-get install bubblewrap) or, for trusted code only, pass --no-sandbox"
GIB = 1 << 30
STDERR_KEEP = 64 << 10  # bytes of the child's stderr tail kept for the verdict
PR_SET_PDEATHSIG = 1


class SandboxUnavailable(RuntimeError):
    """No sandbox can start on this machine and the code to run is not trusted."""


@dataclass
class Limits:
    memory_bytes: int = 0  # 0: the default (see default_memory)
    cpu_seconds: int = 0  # 0: derived from the timeout
    file_bytes: int = 2 * GIB  # largest file it may write (tensors it returns are files; stderr too)
    processes: int = 4096  # threads count: torch and Triton's compiler start many


@dataclass
class WalledRun:
    returncode: int
    stderr: str
    timed_out: bool
    sandboxed: bool


def bwrap_binary() -> str | None:
    explicit = os.environ.get("KERNELGEN_BWRAP", "").strip()
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    return shutil.which("bwrap")


_probe_lock = threading.Lock()
_probe: dict[bool, str] = {}  # cuda -> "" when bwrap starts, else why not (one probe per process)


def sandbox_problem(cuda: bool = False) -> str:
    """"" when a bwrap sandbox starts here, else one line saying why not and how to fix it."""
    with _probe_lock:
        if cuda not in _probe:
            _probe[cuda] = _run_probe(cuda)
        return _probe[cuda]


def _run_probe(cuda: bool) -> str:
    binary = bwrap_binary()
    if binary is None:
        return f"no sandbox: bwrap was not found; {SANDBOX_FIX}"
    import tempfile

    with tempfile.TemporaryDirectory(prefix="kernelgen-probe-") as tmp:
        cmd = bwrap_command(binary, Path(tmp), cuda) + ["/bin/sh", "-c", "exit 0"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"no sandbox: bwrap did not start ({exc}); {SANDBOX_FIX}"
    if proc.returncode != 0:
        why = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1][:200]
        return f"no sandbox: bwrap cannot start here ({why}); {SANDBOX_FIX}"
    return ""


def gpu_nodes() -> list[str]:
    return sorted(p for p in glob.glob("/dev/nvidia*") if not os.path.isdir(p)) + sorted(
        glob.glob("/dev/nvidia-caps/*"))


def bwrap_command(binary: str, scratch: Path, cuda: bool, readable: list[Path] | None = None,
                  writable: list[Path] | None = None) -> list[str]:
    """`readable`: folders to show read-only even where the sandbox hides the host (under /tmp);
    `writable`: folders besides the scratch folder it may write (a compile cache of its own)."""
    scratch = scratch.resolve()
    cmd = [binary, "--unshare-all", "--die-with-parent", "--new-session", "--ro-bind", "/", "/",
           "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
    for path in readable or []:
        if path.exists():
            cmd += ["--ro-bind", str(path.resolve()), str(path.resolve())]
    for path in [scratch] + [p.resolve() for p in writable or []]:
        cmd += ["--bind", str(path), str(path)]
    cmd += ["--chdir", str(scratch)]
    if cuda:
        for node in gpu_nodes():
            cmd += ["--dev-bind", node, node]
    return cmd


def default_memory(cuda: bool) -> int:
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    env = os.environ.get("KERNELGEN_SANDBOX_MEMORY_GB", "").strip()
    if env:
        return int(float(env) * GIB)
    # Address space, not resident memory: torch reserves a lot it never touches (thread arenas, stacks).
    return max(8 * GIB, min(64 * GIB, total * 3 // 4)) if not cuda else max(8 * GIB, total * 3 // 4)


def _preexec(limits: Limits, cuda: bool, timeout: float):
    memory = limits.memory_bytes or default_memory(cuda)
    cpu = limits.cpu_seconds or int(max(60, timeout * 4))  # all threads' CPU time; a spin burns it too

    def setup() -> None:
        # The child dies with the thread that started it, whatever kills the verifier.
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except Exception:
            pass
        # CUDA maps far more address space than it uses: on a GPU only the data segment is limited.
        resource.setrlimit(resource.RLIMIT_DATA if cuda else resource.RLIMIT_AS, (memory, memory))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 5))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_bytes, limits.file_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        _, hard = resource.getrlimit(resource.RLIMIT_NPROC)
        if hard == resource.RLIM_INFINITY or hard > limits.processes:
            resource.setrlimit(resource.RLIMIT_NPROC, (limits.processes, limits.processes))

    return setup


# Settings of the tools the child runs (torch, Triton, CUDA, OpenMP) pass through; nothing else does.
PASSED_PREFIXES = ("TORCH", "PYTORCH_", "TRITON_", "CUDA_", "NVIDIA_", "OMP_", "MKL_", "KERNELGEN_SANDBOX_")


def sandbox_env(scratch: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """A small environment: what Python, torch and Triton need, HOME and caches inside the scratch folder."""
    keep = ("PATH", "LANG", "LC_ALL", "PYTHONPATH", "TRITON_INTERPRET", "CUDA_VISIBLE_DEVICES", "LD_LIBRARY_PATH",
            "CUDA_HOME", "TRITON_PTXAS_PATH", "TRITON_LIBCUDA_PATH", "VIRTUAL_ENV", "OMP_NUM_THREADS")
    env = {k: v for k, v in os.environ.items() if k in keep or k.startswith(PASSED_PREFIXES)}
    home = scratch / "home"
    home.mkdir(exist_ok=True)
    env.update(HOME=str(home), TRITON_CACHE_DIR=str(scratch / "triton-cache"), TMPDIR="/tmp",
               XDG_CACHE_HOME=str(home / ".cache"), TORCHINDUCTOR_CACHE_DIR=str(scratch / "inductor-cache"),
               PYTHONFAULTHANDLER="1", PYTHONDONTWRITEBYTECODE="1")
    env.update(extra or {})
    return env


def run_walled(argv: list[str], scratch: Path, timeout: float, *, sandbox: bool = True, cuda: bool = False,
               env: dict[str, str] | None = None, limits: Limits | None = None,
               readable: list[Path] | None = None, writable: list[Path] | None = None) -> WalledRun:
    """Run `argv` in `scratch` (inside bwrap when `sandbox`), kill it and everything it started after
    `timeout` seconds. Raises SandboxUnavailable when `sandbox` is asked for and bwrap cannot start.
    `readable`: folders the child must read (the candidate's folder, the kernelgen package, Python itself)
    even when they live under /tmp, which the sandbox replaces with its own."""
    scratch = Path(scratch).resolve()
    if sandbox:
        problem = sandbox_problem(cuda)
        if problem:
            raise SandboxUnavailable(problem)
        import sys

        shown = [Path(sys.prefix), Path(sys.base_prefix), Path(__file__).resolve().parents[2]] + list(readable or [])
        # What the child imports (a plugin backend on PYTHONPATH) may live under /tmp too.
        shown += [Path(p) for p in (env or {}).get("PYTHONPATH", "").split(os.pathsep) if p]
        argv = bwrap_command(bwrap_binary() or "bwrap", scratch, cuda, shown, writable) + list(argv)
    import tempfile

    # stderr goes to a file outside the scratch folder and only its tail is read: a child that floods it
    # costs disk up to the file-size limit, never the verifier's memory.
    with tempfile.TemporaryFile() as err_file:
        proc = subprocess.Popen(argv, cwd=scratch, env=env if env is not None else sandbox_env(scratch),
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err_file,
                                start_new_session=True, preexec_fn=_preexec(limits or Limits(), cuda, timeout))
        try:
            proc.wait(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            kill_group(proc)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            timed_out = True
        kill_group(proc)  # without bwrap: helpers left in its process group go with it
        size = err_file.seek(0, os.SEEK_END)
        err_file.seek(max(0, size - STDERR_KEEP))
        err = err_file.read().decode(errors="replace")
    return WalledRun(proc.returncode, err, timed_out, sandbox)


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
