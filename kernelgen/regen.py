"""`kernelgen regen`: bring the library to one backend (a new chip, a new driver, a new Triton).

Phase 1 verifies every selected op on the backend (writing only `verified/<backend>.json`). Phase 2 takes
each op that fails there, or passes but is slower than eager, and tries, in order:

1. re-tune: launch parameters from the backend's `tuning_space()` that the op's launcher accepts, and a
   smaller `max_block`; the winner is written as `tune/<backend>.json`;
2. regenerate: the op's own reference through the deterministic generator (as `kernelgen new` lowers a
   reference), its request (or description) through the composer, and the LLM when configured with the
   failing verdict; the winner is written as `variants/<backend>/kernel.py`.

Every candidate is verified in a staged copy of the op folder (never the op itself), so a failed attempt
leaves no trace; a winner's files are then moved in and its verdict becomes the record. Only this
backend's files are ever written: `kernel.py`, `spec.toml` and other backends' records stay byte-identical,
and their records stay fresh (`source_hash` of another backend does not cover this backend's files).
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kernelgen.errors import KernelgenError, OpNotFound
from kernelgen.library import Op, discover, load_op, ops_dir, tuning_path, variant_path
from kernelgen.scratch import scratch_prefix
from kernelgen.verify.sandbox import DEFAULT_TIMEOUT, record_verdict, verify_many
from kernelgen.verify.verdict import Verdict

ACTIONS = ("kept", "retuned", "regenerated", "still failing")
EXECUTORS = ("local", "ray")
Event = Callable[[str, str], None]  # (op name, message)


@dataclass
class OpOutcome:
    op: str
    path: str
    before: Verdict
    after: Verdict
    action: str  # one of ACTIONS
    detail: str = ""  # what was done, or why nothing worked
    written: list[str] = field(default_factory=list)  # files written in the op folder (relative)

    def to_dict(self) -> dict[str, Any]:
        return {"op": self.op, "path": self.path, "action": self.action, "detail": self.detail,
                "written": self.written, "passed_before": self.before.passed, "passed_after": self.after.passed,
                "speedup_before": self.before.speedup_vs_eager, "speedup_after": self.after.speedup_vs_eager,
                "before": self.before.to_dict(), "after": self.after.to_dict()}


@dataclass
class RegenResult:
    backend: str
    ops: list[OpOutcome]
    reports: dict[str, Path] = field(default_factory=dict)

    @property
    def all_passing(self) -> bool:
        return all(o.action != "still failing" for o in self.ops)

    def summary(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "total": len(self.ops),
            "passing_before": sum(o.before.passed for o in self.ops),
            "passing_after": sum(o.after.passed for o in self.ops),
            "actions": {a: sum(o.action == a for o in self.ops) for a in ACTIONS},
            "speedups": {o.op: {"before": o.before.speedup_vs_eager, "after": o.after.speedup_vs_eager}
                         for o in self.ops},
        }

    def to_dict(self) -> dict[str, Any]:
        return {"summary": self.summary(), "ops": [o.to_dict() for o in self.ops],
                "reports": {k: str(v) for k, v in self.reports.items()}}


def problem(verdict: Verdict, measures_performance: bool) -> str:
    """Why this verdict needs work on the backend ("" when it does not): a failure, or slower than eager."""
    if not verdict.passed:
        return f"failed check '{verdict.check}': {verdict.message}"
    slowest = verdict.min_speedup_vs_eager
    if measures_performance and slowest is not None and slowest < 1.0:
        return f"slower than eager ({slowest:.2f}x on its slowest shape)"
    return ""


def select_ops(ops: Sequence[str] | None, library: str | Path | None) -> list[Op]:
    """The ops of `library` (a library or ops folder), or of every library root; `ops` narrows them."""
    if library is not None:
        folder = ops_dir(Path(library).expanduser().resolve())
        if not folder.is_dir():
            raise KernelgenError(f"library {library} is not a folder")
        found = [load_op(p) for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith((".", "_"))]
    else:
        found = discover()
    if ops:
        by_name = {o.name: o for o in found}
        missing = [n for n in ops if n not in by_name]
        if missing:
            raise OpNotFound(f"no op named {missing[0]!r} in the library (see `kernelgen list`)")
        found = [by_name[n] for n in dict.fromkeys(ops)]
    return found


def launcher_params(source: str, function: str) -> set[str]:
    """Parameter names of the launcher `function` in kernel source (read, not imported: this process may
    not run kernels). Follows one `name = other` alias."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return set()
    defs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    for n in tree.body:
        if isinstance(n, ast.Assign) and isinstance(n.value, ast.Name) and n.value.id in defs:
            for t in n.targets:
                if isinstance(t, ast.Name) and t.id == function:
                    function = n.value.id
    fn = defs.get(function)
    if fn is None:
        return set()
    return {a.arg for a in fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs}


def tuning_configs(backend, params: set[str]) -> list[dict[str, Any]]:
    """The backend's tuning space restricted to what the launcher accepts, then `max_block`s from the
    backend's largest block down (production calls launchers with their defaults: a backend whose blocks
    are smaller than a launcher's default gets its limit through the tuning file)."""
    configs = [dict(c) for c in backend.tuning_space() if c and set(c) <= params]
    if "max_block" in params:
        configs += [{"max_block": backend.max_block_size // k} for k in (1, 2, 4) if backend.max_block_size // k >= 16]
    unique: list[dict[str, Any]] = []
    for c in configs:
        if c not in unique:
            unique.append(c)
    return unique


@dataclass
class _Candidate:
    op: Op
    kind: str  # "retune" or "regenerate"
    label: str  # e.g. "tune {'BLOCK': 128}", "composer", "llm"
    folder: Path  # staged op folder
    files: dict[str, str]  # relative path -> text, what moves into the op folder if it wins


def _verify_candidates(cands: list[_Candidate], verify: Callable[[list[Path], bool], list[Verdict]],
                       measures_performance: bool) -> list[tuple[_Candidate, Verdict]]:
    """The candidates' verdicts, each op's in the order tried. Where speed is measured every candidate runs
    (the fastest passing one wins). Elsewhere the first passing one wins, so an op's next candidate runs only
    when the ones before it failed: round by round, the next candidate of every op still without a winner,
    side by side (a verdict that cannot change the outcome is not worth a verification)."""
    if measures_performance:
        return list(zip(cands, verify([c.folder for c in cands], False)))
    queues: dict[str, list[_Candidate]] = {}
    for c in cands:
        queues.setdefault(c.op.name, []).append(c)
    tried: list[tuple[_Candidate, Verdict]] = []
    while queues:
        batch = [queue.pop(0) for queue in queues.values()]
        for c, cv in zip(batch, verify([c.folder for c in batch], False)):
            tried.append((c, cv))
            if not problem(cv, measures_performance):
                queues[c.op.name].clear()
        queues = {name: queue for name, queue in queues.items() if queue}
    return tried


def _stage(root: Path, op: Op, backend: str, files: dict[str, str]) -> Path:
    """A copy of what the op is on `backend` (kernel, spec, its variant and tuning), plus `files`."""
    folder = root / f"{len(list(root.iterdir())):04d}" / op.name  # the folder name must be the op name
    folder.mkdir(parents=True)
    for rel in ("kernel.py", "spec.toml"):
        shutil.copy2(op.path / rel, folder / rel)
    for src in (variant_path(op.path, backend), tuning_path(op.path, backend)):
        if src.is_file():
            dst = folder / src.relative_to(op.path)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    for rel, text in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text)
    return folder


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _verdict_text(backend, verdict: Verdict, why: str) -> str:
    return (f"- {backend.name}: {why}\n"
            f"  constraints of {backend.name}: dtypes {', '.join(backend.dtypes)}; largest block "
            f"{backend.max_block_size} elements (launchers are verified with their own defaults, as production "
            f"calls them; a launcher taking `max_block` gets max_block={backend.max_block_size} from the tuning)")


def _reference_source(op: Op, notes: list[str]) -> str | None:
    """The deterministic generator's kernel for the op's own reference (the path `kernelgen new` takes: trace
    the reference, lower it, write the kernel from the templates), or None with a note when no template fits."""
    from kernelgen.codegen.from_reference import generate
    from kernelgen.frontends.reference import Reference

    spec = op.spec
    assert spec is not None
    ref = Reference(request=spec.request or spec.description, origin="spec", source=spec.reference,
                    inputs=list(spec.inputs), outputs=list(spec.outputs), test_shapes=list(spec.test_shapes),
                    bench_shapes=list(spec.bench_shapes), name=op.name, row_dim=spec.row_dim, col_dim=spec.col_dim,
                    dtypes=list(spec.dtypes))
    try:
        gen = generate(ref, op.name)
    except Exception as exc:  # noqa: BLE001 - a reference the generator cannot take: the other candidates remain
        notes.append(f"reference: cannot generate ({type(exc).__name__}: {str(exc)[:120]})")
        return None
    if not gen.lowered:
        notes.append(f"reference: no kernel template fits ({gen.refusal[:120]})")
        return None
    source = gen.kernel_source
    if gen.spec.function != spec.function:  # the op's spec names the launcher
        source += f"\n\n{spec.function} = {gen.spec.function}\n"
    return source


def _regen_sources(op: Op, backend, verdict: Verdict, why: str, use_llm: bool,
                   notes: list[str]) -> list[tuple[str, str]]:
    """(label, kernel source) candidates for a variant: the generator's kernel for the op's reference, the
    composer's for its request, then the LLM's."""
    assert op.spec is not None
    out: list[tuple[str, str]] = []
    request = op.spec.request or op.spec.description
    from kernelgen.frontends.composer import ComposeError, compose

    generated = _reference_source(op, notes)
    if generated is not None:
        out.append(("reference", generated))

    try:
        comp = compose(request, name=op.name)
        source = comp.kernel_source
        if comp.spec.function != op.spec.function:  # the op's spec names the launcher
            source += f"\n\n{op.spec.function} = {comp.spec.function}\n"
        out.append(("composer", source))
    except ComposeError as exc:
        notes.append(f"composer: cannot compose {request[:80]!r} ({str(exc).splitlines()[0][:120]})")
    if use_llm:
        from kernelgen.agents import llm as llm_mod
        from kernelgen.agents.nodes import _contract, _system

        prompt = llm_mod.render("repair", request=request, spec=(op.path / "spec.toml").read_text(),
                                source=op.kernel_path_for(backend.name).read_text(),
                                verdicts=_verdict_text(backend, verdict, why), contract=_contract())
        try:
            answer = llm_mod.parse_answer(llm_mod.LLMClient().complete(_system(), prompt))
        except llm_mod.LLMError as exc:
            notes.append(f"LLM unavailable: {exc}")
        else:
            if answer.get("kernel"):
                out.append(("llm", answer["kernel"]))
            else:
                notes.append("LLM: the answer has no ```python block")
    return out


def regenerate(backend: str, ops: Sequence[str] | None = None, jobs: int = 1, executor: str = "local",
               out: str | Path | None = None, library: str | Path | None = None, trials: int = 3,
               timeout: float = DEFAULT_TIMEOUT, perf: bool = True, with_compile: bool = True,
               llm: bool | None = None, address: str | None = None, on_event: Event | None = None) -> RegenResult:
    """Verify the selected ops on `backend`, re-tune or regenerate those that fail or are slower than
    eager there, and record the outcome (see the module docstring). `llm=None`: the LLM joins when one is
    configured. `executor="ray"` runs verifications as Ray tasks (`address`, default RAY_ADDRESS)."""
    from kernelgen.agents.llm import llm_configured
    from kernelgen.backends import get_backend

    if executor not in EXECUTORS:
        raise KernelgenError(f"executor must be one of {', '.join(EXECUTORS)}, not {executor!r}")
    if jobs < 1 or trials < 1 or timeout <= 0:
        raise KernelgenError("jobs and trials must be >= 1 and timeout > 0")
    be = get_backend(backend)
    if not be.available():
        raise KernelgenError(f"backend {backend!r} is not available on this machine")
    selected = select_ops(ops, library)
    use_llm = llm_configured() if llm is None else llm
    say = on_event or (lambda op, msg: None)
    options = dict(timeout=timeout, perf=perf, trials=trials, with_compile=with_compile)

    def verify(folders: list[Path], write: bool) -> list[Verdict]:
        if executor == "ray":
            from kernelgen.verify.ray_executor import verify_many_ray

            return verify_many_ray(folders, backend, address=address, write=write, **options)
        return verify_many(folders, backend, jobs=jobs, write=write, **options)

    # Phase 1: where the library stands on this backend (records written for this backend only).
    say("", f"verifying {len(selected)} op(s) on {backend}")
    before = verify([o.path for o in selected], write=True)
    outcomes: dict[str, OpOutcome] = {}
    todo: list[tuple[Op, Verdict, str]] = []
    for op, v in zip(selected, before):
        why = problem(v, be.measures_performance)
        say(op.name, f"before: {'pass' if not why else why.splitlines()[0][:160]}")
        if not why:
            outcomes[op.name] = OpOutcome(op.name, str(op.path), v, v, "kept")
        elif op.broken:
            outcomes[op.name] = OpOutcome(op.name, str(op.path), v, v, "still failing", f"broken op folder: {op.error}")
        else:
            todo.append((op, v, why))

    stage_root = Path(tempfile.mkdtemp(prefix=scratch_prefix("regen")))
    try:
        notes: dict[str, list[str]] = {op.name: [] for op, _, _ in todo}
        # Phase 2a: re-tune. Phase 2b: regenerate what re-tuning could not fix.
        for kind in ("retune", "regenerate"):
            cands: list[_Candidate] = []
            for op, v, why in todo:
                if op.name in outcomes:
                    continue
                assert op.spec is not None
                if kind == "retune":
                    params = launcher_params(op.kernel_path_for(backend).read_text(), op.spec.function)
                    configs = tuning_configs(be, params)
                    if not configs:
                        notes[op.name].append("re-tune: the launcher takes none of the backend's tuning parameters")
                    for cfg in configs:
                        doc = {"backend": backend, "launch": cfg,
                               "note": f"written by kernelgen regen: {why.splitlines()[0][:200]}"}
                        files = {str(tuning_path(Path(), backend)): json.dumps(doc, indent=2) + "\n"}
                        cands.append(_Candidate(op, kind, f"tune {cfg}", _stage(stage_root, op, backend, files),
                                                files))
                else:
                    for label, source in _regen_sources(op, be, v, why, use_llm, notes[op.name]):
                        files = {str(variant_path(Path(), backend)): source}
                        if "max_block" in launcher_params(source, op.spec.function):
                            # The variant runs with its defaults in production: the backend's block limit
                            # comes with it as its tuning.
                            doc = {"backend": backend, "launch": {"max_block": be.max_block_size},
                                   "note": "written by kernelgen regen: the backend's largest block"}
                            files[str(tuning_path(Path(), backend))] = json.dumps(doc, indent=2) + "\n"
                        cands.append(_Candidate(op, kind, label, _stage(stage_root, op, backend, files), files))
            if not cands:
                continue
            say("", f"{kind}: verifying {len(cands)} candidate(s) on {backend}")
            by_op: dict[str, list[tuple[_Candidate, Verdict]]] = {}
            for c, cv in _verify_candidates(cands, verify, be.measures_performance):
                by_op.setdefault(c.op.name, []).append((c, cv))
                if cv.passed:
                    say(c.op.name, f"{kind} {c.label}: pass")
                else:
                    first = (cv.message.splitlines() or [""])[0][:160]
                    say(c.op.name, f"{kind} {c.label}: {cv.check}: {first}")
            for op, v, _why in todo:
                if op.name in outcomes or op.name not in by_op:
                    continue
                good = [(c, cv) for c, cv in by_op[op.name] if not problem(cv, be.measures_performance)]
                if not good:
                    c, cv = by_op[op.name][0]
                    notes[op.name].append(f"{kind}: {len(by_op[op.name])} candidate(s) failed (first, {c.label}: "
                                          f"{problem(cv, be.measures_performance).splitlines()[0][:200]})")
                    continue
                # The fastest where speed is measured; else the first (the order tried).
                c, cv = max(good, key=lambda g: g[1].speedup_vs_eager or 0.0) if be.measures_performance else good[0]
                for rel, text in c.files.items():
                    _write_atomic(op.path / rel, text)
                written = record_verdict(op.path, backend, cv, True)
                action = "retuned" if kind == "retune" else "regenerated"
                detail = f"{c.label}" + ("" if written else " (record not written: the op changed meanwhile)")
                outcomes[op.name] = OpOutcome(op.name, str(op.path), v, cv, action, detail,
                                              sorted(c.files) + ([f"verified/{backend}.json"] if written else []))
                say(op.name, f"{action}: {detail}")
        for op, v, why in todo:
            if op.name not in outcomes:
                detail = "; ".join([why.splitlines()[0][:200]] + notes[op.name])
                outcomes[op.name] = OpOutcome(op.name, str(op.path), v, v, "still failing", detail)
                say(op.name, f"still failing: {detail}")
    finally:
        shutil.rmtree(stage_root, ignore_errors=True)

    result = RegenResult(backend, [outcomes[o.name] for o in selected])
    if out is not None:
        from kernelgen.verify.report import write_regen_reports

        result.reports = write_regen_reports(result, out)
    return result
