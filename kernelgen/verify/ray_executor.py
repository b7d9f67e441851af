"""Verification fanned out over a Ray cluster: one task per candidate, one GPU per task on GPU backends.

Each task runs the very path a local run takes (`sandbox.check_candidate`: static check, then a fresh
worker subprocess), so a verdict is the same wherever it was computed. A task gets the op's files, not a
path: the cluster's machines need no shared filesystem. Records are written here, in the driver, by the
same rule as locally (`sandbox.record_verdict`).

    RAY_ADDRESS=ray://head:10001 kernelgen regen --backend cuda --executor ray
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from kernelgen.library import tuning_path, variant_path
from kernelgen.scratch import scratch_prefix
from kernelgen.verify.sandbox import DEFAULT_TIMEOUT, check_candidate, record_verdict
from kernelgen.verify.verdict import Verdict


def bundle(folder: Path, backend: str) -> dict[str, bytes]:
    """The files that decide the op's behaviour on `backend`, by path relative to the op folder."""
    files = [folder / "kernel.py", folder / "spec.toml", variant_path(folder, backend), tuning_path(folder, backend)]
    return {str(p.relative_to(folder)): p.read_bytes() for p in files if p.is_file()}


def verify_bundle(name: str, files: dict[str, bytes], backend: str, options: dict[str, Any]) -> tuple[dict, bool]:
    """Body of one Ray task: rebuild the op folder in scratch space and verify it there."""
    with tempfile.TemporaryDirectory(prefix=scratch_prefix("ray")) as tmp:
        folder = Path(tmp) / name  # the folder name is the op name, as in a library
        for rel, data in files.items():
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_bytes(data)
        verdict, ran = check_candidate(folder, backend, **options)
        return verdict.to_dict(), ran


def connect(address: str | None = None, **init_kwargs: Any) -> None:
    """Join the cluster at `address` (default: RAY_ADDRESS); with neither, start a local instance."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    # Every node needs kernelgen (and the backend's plugin) installed: tasks import it by name.
    ray.init(address=address, include_dashboard=False, log_to_driver=False, **init_kwargs)


def verify_many_ray(folders: Sequence[str | Path], backend: str, address: str | None = None,
                    timeout: float = DEFAULT_TIMEOUT, perf: bool = True, trials: int = 3, write: bool = False,
                    with_compile: bool = True, seed: int | None = None,
                    on_start: Callable[[Path], None] | None = None,
                    on_done: Callable[[Verdict], None] | None = None) -> list[Verdict]:
    """`verify_many` on a Ray cluster: verdicts in the order of `folders`, records written by the driver."""
    import ray

    from kernelgen.backends import get_backend

    be = get_backend(backend)
    connect(address)
    gpus = 0 if be.interpret or be.device == "cpu" else 1
    task = ray.remote(num_gpus=gpus, max_retries=0)(verify_bundle)
    options = dict(timeout=timeout, perf=perf, trials=trials, with_compile=with_compile, seed=seed)
    paths = [Path(f).resolve() for f in folders]
    pending = {}
    for i, path in enumerate(paths):
        if on_start:
            on_start(path)
        pending[task.remote(path.name, bundle(path, backend), backend, options)] = i
    results: list[Verdict | None] = [None] * len(paths)
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        i = pending.pop(done[0])
        try:
            data, ran = ray.get(done[0])
            verdict = Verdict.from_dict(data)
        except Exception as exc:  # a task lost with its node is a verdict, like a crashed worker
            verdict, ran = Verdict.fail(paths[i].name, backend, "sandbox",
                                        f"ray task failed: {type(exc).__name__}: {exc}"), False
        if write:
            record_verdict(paths[i], backend, verdict, ran)
        results[i] = verdict
        if on_done:
            on_done(verdict)
    return [v for v in results if v is not None]
