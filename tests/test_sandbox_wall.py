"""The wall itself, without the static check: small Python snippets run through `wall.run_walled` and must
not reach the network, write outside their scratch folder, kill the verifier, outlive the run, or take more
memory than the limit."""

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from kernelgen.verify import wall

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(bool(wall.sandbox_problem()), reason=wall.sandbox_problem() or "")


def run(code: str, scratch: Path, timeout: float = 60, **kw) -> wall.WalledRun:
    return wall.run_walled([sys.executable, "-c", textwrap.dedent(code)], scratch, timeout, **kw)


def test_a_snippet_runs_and_writes_its_scratch_folder(tmp_path):
    result = run("open('out.txt', 'w').write('ok')", tmp_path)
    assert result.returncode == 0 and result.sandboxed, result.stderr
    assert (tmp_path / "out.txt").read_text() == "ok"


def test_no_network_not_even_the_hosts_loopback(tmp_path):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    accepted = []
    threading.Thread(target=lambda: accepted.append(server.accept()), daemon=True).start()
    code = f"""
        import socket
        try:
            socket.create_connection(("127.0.0.1", {port}), timeout=5)
            result = "connected"
        except OSError as exc:
            result = "refused: " + type(exc).__name__
        try:
            socket.getaddrinfo("pypi.org", 443)
            result += " resolved"
        except OSError:
            pass
        open("net.txt", "w").write(result)
    """
    result = run(code, tmp_path)
    server.close()
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "net.txt").read_text().startswith("refused") and not accepted
    assert "resolved" not in (tmp_path / "net.txt").read_text()


def test_no_write_outside_the_scratch_folder(tmp_path):
    home = Path.home()
    targets = [home / "kernelgen-wall-test", REPO / "library" / "kernelgen-wall-test", REPO / "kernelgen-wall-test",
               tmp_path.parent / "kernelgen-wall-test"]
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    code = f"""
        import json
        results = {{}}
        for target in {[str(t) for t in targets]!r}:
            try:
                open(target, "w").write("escaped")
                results[target] = "written"
            except OSError as exc:
                results[target] = type(exc).__name__
        open("writes.json", "w").write(json.dumps(results))
    """
    result = run(code, scratch)
    assert result.returncode == 0, result.stderr
    import json

    writes = json.loads((scratch / "writes.json").read_text())
    assert set(writes) == {str(t) for t in targets}
    # Home, library and repository are read-only; /tmp is a private tmpfs (a write there stays inside).
    assert all(writes[str(t)] == "OSError" for t in targets[:3]), writes
    assert not any(t.exists() for t in targets)


def test_killing_its_parent_does_not_kill_the_verifier(tmp_path):
    """The snippet signals its parent and this test's pid: inside its PID namespace neither is us (if either
    reached us, this test process would be dead and the run with it)."""
    code = f"""
        import os, signal
        try:
            os.kill({os.getpid()}, signal.SIGKILL)
            result = "sent"
        except OSError as exc:
            result = type(exc).__name__
        open("kill.txt", "w").write(result)
        os.kill(os.getppid(), signal.SIGKILL)
    """
    result = run(code, tmp_path)
    assert (tmp_path / "kill.txt").read_text() == "ProcessLookupError", result.stderr


def _alive_with(token: str) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if token in (d / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(d.name))
            except OSError:
                pass
    return pids


def test_a_setsid_child_does_not_outlive_the_run(tmp_path):
    token = "3127.25"
    code = f"""
        import subprocess, time
        subprocess.Popen(["setsid", "sleep", "{token}"], start_new_session=True)
        subprocess.Popen(["sh", "-c", "nohup sleep {token} >/dev/null 2>&1 &"])
        time.sleep(0.5)
        open("started", "w").write("yes")
    """
    result = run(code, tmp_path)
    assert (tmp_path / "started").exists(), result.stderr
    deadline = time.time() + 5
    while _alive_with(token) and time.time() < deadline:
        time.sleep(0.1)
    assert not _alive_with(token)


def test_a_hang_is_killed_at_the_timeout(tmp_path):
    t0 = time.perf_counter()
    result = run("while True:\n    pass", tmp_path, timeout=3)
    assert result.timed_out and time.perf_counter() - t0 < 20


def test_memory_limit(tmp_path):
    code = """
        try:
            block = bytearray(3 << 30)
            open("mem.txt", "w").write("allocated")
        except MemoryError:
            open("mem.txt", "w").write("refused")
    """
    result = run(code, tmp_path, limits=wall.Limits(memory_bytes=1 << 30))
    assert (tmp_path / "mem.txt").read_text() == "refused", result.stderr


@pytest.mark.parametrize("sandbox", [True, False])
def test_the_child_dies_with_a_killed_verifier(tmp_path, sandbox):
    """SIGKILL the process that started the child: the child goes with it (bwrap's --die-with-parent, or
    PR_SET_PDEATHSIG in a plain process)."""
    token = "2718.5" if sandbox else "2718.75"
    driver = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from kernelgen.verify import wall
        wall.run_walled([sys.executable, "-c", "import time; open('up', 'w'); time.sleep({token})"],
                        Path({str(tmp_path)!r}), 300, sandbox={sandbox})
    """)
    proc = subprocess.Popen([sys.executable, "-c", driver], env=dict(os.environ, PYTHONPATH=str(REPO)))
    deadline = time.time() + 60
    while not (tmp_path / "up").exists() and time.time() < deadline:
        time.sleep(0.1)
    assert (tmp_path / "up").exists() and _alive_with(token)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 10
    while _alive_with(token) and time.time() < deadline:
        time.sleep(0.1)
    assert not _alive_with(token)


def test_without_bwrap_the_probe_names_the_fix(monkeypatch):
    monkeypatch.setenv("KERNELGEN_BWRAP", "/nonexistent/bwrap")
    assert wall._run_probe(False).endswith(wall.SANDBOX_FIX)
    assert "apt-get install bubblewrap" in wall.SANDBOX_FIX and "--no-sandbox" in wall.SANDBOX_FIX


def test_sanitize_runs_the_child_under_memcheck_without_the_caching_allocator(monkeypatch, tmp_path):
    """--sanitize: the worker runs under compute-sanitizer memcheck, with PyTorch's caching allocator off
    (memcheck sees only the driver's allocations: a read past a tensor inside a cached segment is invisible),
    and memcheck's exit code becomes the verdict's reason."""
    from kernelgen.backends import get_backend
    from kernelgen.verify import sandbox, wall

    seen = {}

    def fake_run(argv, scratch, timeout, **kwargs):
        seen["argv"], seen["env"] = argv, kwargs["env"]
        memcheck = ("========= COMPUTE-SANITIZER\n========= Invalid __global__ read of size 2 bytes\n"
                    "=========     at _rms_norm_row+0x2d0\n=========     Address 0x7f00 is out of bounds\n"
                    "Traceback (most recent call last):\ntorch.AcceleratorError: unspecified launch failure\n")
        return wall.WalledRun(sandbox.SANITIZER_EXIT, memcheck, False, False)

    monkeypatch.setattr(sandbox, "sanitizer_binary", lambda: "/opt/cuda/bin/compute-sanitizer")
    monkeypatch.setattr(wall, "run_walled", fake_run)
    results, why = sandbox.run_child({"folder": str(tmp_path)}, get_backend("interpreter"), 30, False, None,
                                     sanitize=True)
    assert results == {} and why.splitlines() == ["compute-sanitizer memcheck found invalid memory accesses:",
                                                 "========= Invalid __global__ read of size 2 bytes",
                                                 "=========     at _rms_norm_row+0x2d0",
                                                 "=========     Address 0x7f00 is out of bounds"]
    assert seen["argv"][:3] == ["/opt/cuda/bin/compute-sanitizer", "--tool", "memcheck"]
    assert seen["env"]["PYTORCH_NO_CUDA_MEMORY_CACHING"] == "1"
    monkeypatch.setattr(sandbox, "sanitizer_binary", lambda: None)
    assert "needs NVIDIA's compute-sanitizer" in sandbox.run_child({"folder": str(tmp_path)},
                                                                  get_backend("interpreter"), 30, False, None,
                                                                  sanitize=True)[1]
