"""The op library on disk: finding op folders, loading their kernels, verification records, atomic merge.

Layout of one op folder (`library/ops/<name>/`):
    kernel.py               @triton.jit kernels + a plain launcher per public function (+ ATen adapters)
    spec.toml               the OpSpec
    verified/<backend>.json written only by the verifier
    tune/<backend>.json     optional launch parameters for that backend ({"launch": {kwarg: value}})
    variants/<backend>/kernel.py  optional kernel.py used on that backend instead (written by `kernelgen regen`)

Library roots, searched in order: the paths in KERNELGEN_LIBRARY (os.pathsep-separated), then the user
library (`user_library()`, when it exists), then the library shipped with the package.
An op name found in an earlier root shadows later ones.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kernelgen.errors import KernelgenError, OpNotFound, SpecError
from kernelgen.spec import OpSpec, load_spec, save_spec

PACKAGE_DIR = Path(__file__).resolve().parent


def builtin_library() -> Path:
    """The library shipped with kernelgen: inside the wheel, or at the repository root in a checkout."""
    installed = PACKAGE_DIR / "library"
    return installed if installed.is_dir() else PACKAGE_DIR.parent / "library"


def installed_package() -> bool:
    """True in a wheel install (the library ships inside the package), False in a source checkout."""
    return (PACKAGE_DIR / "library").is_dir()


def user_library() -> Path:
    """The per-user library: $XDG_DATA_HOME/kernelgen/library, else ~/.local/share/kernelgen/library.
    Searched after KERNELGEN_LIBRARY when it exists; `kernelgen new` merges there in a wheel install."""
    xdg = os.environ.get("XDG_DATA_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share") / "kernelgen" / "library"


def default_target_library() -> Path:
    """Where `kernelgen new` merges without --library: the first KERNELGEN_LIBRARY entry; else, in a wheel
    install, the user library (never site-packages); else (a checkout) the repository's library."""
    env = [p for p in os.environ.get("KERNELGEN_LIBRARY", "").split(os.pathsep) if p]
    if env:
        return Path(env[0]).expanduser()
    return user_library() if installed_package() else builtin_library()


def library_roots(extra: list[str | Path] | None = None) -> list[Path]:
    roots = [Path(p) for p in (extra or [])]
    env = os.environ.get("KERNELGEN_LIBRARY", "")
    roots += [Path(p) for p in env.split(os.pathsep) if p]
    if user_library().is_dir():
        roots.append(user_library())
    roots.append(builtin_library())
    seen, out = set(), []
    for r in roots:
        r = r.expanduser().resolve()
        if r not in seen:
            seen.add(r)
            out.append(r)
    return out


def ops_dir(root: Path) -> Path:
    """`<root>/ops` if the root is a library folder, else the root itself (a folder of op folders)."""
    return root / "ops" if (root / "ops").is_dir() else root


@dataclass
class Op:
    """One op folder. `spec` is None when the folder is broken; `error` then says why."""

    name: str
    path: Path
    spec: OpSpec | None = None
    error: str = ""
    broken_file: str = ""  # when broken: "spec.toml" or "kernel.py", the file at fault
    _modules: dict[str, types.ModuleType] = field(default_factory=dict, repr=False)

    @property
    def broken(self) -> bool:
        return self.spec is None

    @property
    def kernel_path(self) -> Path:
        return self.path / "kernel.py"

    def kernel_path_for(self, backend: str | None = None) -> Path:
        """`variants/<backend>/kernel.py` when the op has one for that backend, else `kernel.py`."""
        if backend:
            variant = variant_path(self.path, backend)
            if variant.is_file():
                return variant
        return self.kernel_path

    def source_hash(self, backend: str | None = None) -> str:
        return source_hash(self.path, backend)

    def module(self, backend: str | None = None) -> types.ModuleType:
        """The kernel module for `backend` (its variant if it has one, with its tuned launch parameters
        applied to the launcher), imported once per backend. No backend: plain kernel.py."""
        key = backend or ""
        if key not in self._modules:
            path = self.kernel_path_for(backend)
            launch = self.tuning(backend).get("launch", {}) if backend else {}
            own = backend and (path != self.kernel_path or launch)  # a module of its own for this backend
            module = load_kernel_module(path, f"{self.name}_{backend}" if own else self.name)
            if launch and self.spec is not None and hasattr(module, self.spec.function):
                # Replaced in the module itself, so ATen adapters that call the launcher get the tuning too.
                setattr(module, self.spec.function, with_launch_params(getattr(module, self.spec.function), launch))
            if self.spec is not None:
                with_plans(module, [self.spec.function] + [ov.adapter for ov in self.spec.aten])
            self._modules[key] = module
        return self._modules[key]

    def launcher(self, backend: str | None = None):
        assert self.spec is not None, self.error
        return getattr(self.module(backend), self.spec.function)

    def record(self, backend: str) -> dict[str, Any] | None:
        return read_record(self.path, backend)

    def tuning(self, backend: str) -> dict[str, Any]:
        p = tuning_path(self.path, backend)
        return json.loads(p.read_text()) if p.is_file() else {}


def variant_path(op_path: Path, backend: str) -> Path:
    return op_path / "variants" / backend / "kernel.py"


def tuning_path(op_path: Path, backend: str) -> Path:
    return op_path / "tune" / f"{backend}.json"


def source_hash(op_path: Path, backend: str | None = None) -> str:
    """Hash of what decides the op's behaviour: kernel.py and spec.toml, plus, for one backend, its
    `variants/<backend>/kernel.py` and `tune/<backend>.json` when they exist. A backend with neither gets
    the plain hash, so its records stay fresh when another backend gains a variant. Records with another
    hash are stale."""
    h = hashlib.sha256()
    for fname in ("kernel.py", "spec.toml"):
        p = op_path / fname
        h.update(fname.encode())
        h.update(p.read_bytes() if p.is_file() else b"")
    if backend:
        for p in (variant_path(op_path, backend), tuning_path(op_path, backend)):
            if p.is_file():
                h.update(str(p.relative_to(op_path)).encode())
                h.update(p.read_bytes())
    return h.hexdigest()[:16]


def with_launch_params(launcher, launch: dict[str, Any]):
    """The launcher with tuned keyword arguments. A tuned `max_block` only ever lowers the caller's limit;
    other tuned values win over the caller's (they are what was verified)."""
    import functools

    @functools.wraps(launcher)
    def tuned(*args, **kwargs):
        for key, value in launch.items():
            if key == "max_block" and kwargs.get(key) is not None:
                kwargs[key] = min(int(kwargs[key]), int(value))
            else:
                kwargs[key] = value
        return launcher(*args, **kwargs)

    return tuned


def with_plans(module: types.ModuleType, names: list[str]) -> None:
    """Give the module's launcher and ATen adapters launch plans (kernelgen/plans.py), replaced in the
    module itself so an adapter that calls the launcher finds the planned one. Only for a module whose
    kernels all take the cached launch path (compiled ones; the interpreter has nothing to replay)."""
    from kernelgen import plans

    if not plans.enabled() or not plans.plannable(module):
        return
    for name in names:
        fn = getattr(module, name, None)
        if callable(fn) and not hasattr(fn, "plans"):
            setattr(module, name, plans.planned(fn))


def load_kernel_module(path: Path, name: str) -> types.ModuleType:
    """Import a kernel file as its own module. Whether its @triton.jit kernels compile or run in Triton's
    interpreter is decided process-wide by TRITON_INTERPRET (see `Backend.prepare`); compiled ones get the
    cached launch path of `kernelgen.launch`."""
    mod_name = f"kernelgen_ops.{name}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise SpecError(f"{path}: cannot be imported")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception:
        sys.modules.pop(mod_name, None)
        raise
    from kernelgen.launch import accelerate

    accelerate(module)  # compiled kernels launch from a per-specialization cache (kernelgen/launch.py)
    return module


def _check_syntax(path: Path) -> None:
    """A kernel file that does not parse makes its op broken (not merely stale: no record can be fresh)."""
    try:
        compile(path.read_bytes(), str(path), "exec", dont_inherit=True)
    except SyntaxError as exc:  # worded like the verifier's static check, which LLM repair prompts quote
        text = (exc.text or "").strip()
        raise SpecError(f"{path} line {exc.lineno}: syntax error: {exc.msg}"
                        + (f" in `{text[:120]}`" if text else "")) from None
    except ValueError as exc:  # null bytes
        raise SpecError(f"{path}: syntax error: {exc}") from None


def load_op(path: Path) -> Op:
    op = Op(name=path.name, path=path)
    try:
        op.spec = load_spec(path / "spec.toml")
        if op.spec.name != path.name:
            raise SpecError(f"{path / 'spec.toml'}: field 'name' is {op.spec.name!r} but the folder is {path.name!r}")
    except SpecError as exc:
        op.spec, op.error, op.broken_file = None, str(exc), "spec.toml"
        return op
    try:
        if not op.kernel_path.is_file():
            raise SpecError(f"{path}: kernel.py is missing")
        _check_syntax(op.kernel_path)
    except SpecError as exc:
        op.spec, op.error, op.broken_file = None, str(exc), "kernel.py"
    return op


def discover(extra_roots: list[str | Path] | None = None) -> list[Op]:
    """Every op folder under the library roots (broken ones included, with their reason), sorted by name."""
    found: dict[str, Op] = {}
    for root in library_roots(extra_roots):
        folder = ops_dir(root)
        if not folder.is_dir():
            continue
        for p in sorted(folder.iterdir()):
            if p.is_dir() and not p.name.startswith((".", "_")) and p.name not in found:
                found[p.name] = load_op(p)
    return [found[k] for k in sorted(found)]


def get_op(name: str, extra_roots: list[str | Path] | None = None) -> Op:
    p = Path(name)
    if p.is_dir() and (p / "spec.toml").exists():
        return load_op(p.resolve())
    for op in discover(extra_roots):
        if op.name == name:
            return op
    raise OpNotFound(f"no op named {name!r} in the library (see `kernelgen list`)")


def library_hash(extra_roots: list[str | Path] | None = None) -> str:
    """Content hash of the whole library: changes whenever an op is added, removed or edited."""
    h = hashlib.sha256()
    for op in discover(extra_roots):
        h.update(op.name.encode())
        h.update(op.source_hash().encode())
    return h.hexdigest()[:16]


# ---- verification records --------------------------------------------------------------------------
def record_path(op_path: Path, backend: str) -> Path:
    return op_path / "verified" / f"{backend}.json"


def read_record(op_path: Path, backend: str) -> dict[str, Any] | None:
    p = record_path(op_path, backend)
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError:
        return None


# Fields of a record that differ on every run although nothing about the verdict did: a record whose other
# fields are unchanged is not rewritten, so re-verifying a checked-in op leaves `git status` clean.
VOLATILE_RECORD_FIELDS = ("wall_s", "seed")  # differ on every run of the same verdict


def _umask() -> int:
    """The process umask, read without changing it where the OS allows (os.umask can only set it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _shared_mode(path: Path, is_dir: bool) -> None:
    """mkdtemp/mkstemp create private (0700/0600) entries; what we publish into a library gets the modes
    a plain mkdir/open would have had under the user's umask, so a shared library stays readable."""
    os.chmod(path, (0o777 if is_dir else 0o666) & ~_umask())


def _same_record(old: dict[str, Any] | None, new: dict[str, Any]) -> bool:
    def lasting(rec: dict[str, Any]) -> Any:
        # through JSON, so tuples and lists (and float reprs) compare as they would be stored
        return json.loads(json.dumps({k: v for k, v in rec.items() if k not in VOLATILE_RECORD_FIELDS}))

    return old is not None and lasting(old) == lasting(new)


def write_record(op_path: Path, backend: str, record: dict[str, Any]) -> Path:
    """Atomic write of verified/<backend>.json (the verifier is the only caller). A record equal to the one
    on disk except for VOLATILE_RECORD_FIELDS is left as it is."""
    p = record_path(op_path, backend)
    if p.is_file() and _same_record(read_record(op_path, backend), record):
        return p
    if not p.parent.is_dir():
        p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, indent=2, sort_keys=False)
            f.write("\n")
        _shared_mode(Path(tmp), is_dir=False)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


def op_status(op: Op, backend: str) -> dict[str, Any]:
    """verified | stale | failing | unverified | broken, with the speedup vs eager when known."""
    if op.broken:
        return {"status": "broken", "reason": op.error}
    rec = op.record(backend)
    if rec is None:
        return {"status": "unverified"}
    out: dict[str, Any] = {"speedup": rec.get("speedup_vs_eager"), "device": rec.get("device", "")}
    if rec.get("source_hash") != op.source_hash(backend):
        out["status"] = "stale"
    elif not rec.get("passed"):
        out["status"] = "failing"
        out["reason"] = rec.get("failure", "")
    else:
        out["status"] = "verified"
    return out


# ---- merge -----------------------------------------------------------------------------------------
def merge_op(
    root: Path, spec: OpSpec, kernel_source: str, records: dict[str, dict] | None = None, replace: bool = False
) -> Path:
    """Write a complete op folder atomically: build it in a temporary sibling, then rename into place.
    A reader never sees a half-written folder; an interrupted merge leaves only a `.tmp-*` folder."""
    dest_parent = ops_dir(root) if root.is_dir() else root / "ops"
    dest_parent.mkdir(parents=True, exist_ok=True)
    dest = dest_parent / spec.name
    if dest.exists() and not replace:
        raise FileExistsError(f"{dest} already exists (use replace=True)")
    # the pid in the name tells a leftover (its process is gone) from another run's merge in progress
    tmp = Path(tempfile.mkdtemp(dir=dest_parent, prefix=f".tmp-{spec.name}-{os.getpid()}-"))
    try:
        _shared_mode(tmp, is_dir=True)
        (tmp / "kernel.py").write_text(kernel_source)
        save_spec(spec, tmp / "spec.toml")
        for backend, rec in (records or {}).items():
            rec = dict(rec, source_hash=source_hash(tmp))
            write_record(tmp, backend, rec)
        if dest.exists():
            old = dest_parent / f".old-{spec.name}-{os.getpid()}"
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def merge_leftovers(parent: Path, name: str) -> list[Path]:
    """`.tmp-<name>-<pid>-*` and `.old-<name>-<pid>` folders under `parent` left by merges whose process has
    ended (killed mid-merge). A merge of the same op still running in another process is not a leftover;
    folders named before the pid was part of the name are."""
    import re

    from kernelgen.scratch import pid_alive

    found = []
    pattern = re.compile(r"^\.(?:tmp|old)-" + re.escape(name) + r"-(?:(\d+)(?:-|$))?")
    for p in parent.glob(f".*-{name}-*") if parent.is_dir() else []:
        m = pattern.match(p.name)
        if m and p.is_dir() and not (m.group(1) and pid_alive(int(m.group(1)))):
            found.append(p)
    return sorted(found)


# ---- names: no op shadows another -------------------------------------------------------------------
class NameTaken(KernelgenError, ValueError):
    """The user chose an op name that another library already resolves."""


def library_of(op_path: Path) -> Path:
    """The library root an op folder belongs to (`<root>/ops/<name>` or `<root>/<name>`)."""
    parent = op_path.parent
    return parent.parent if parent.name == "ops" else parent


def holders(name: str, library: Path | None = None) -> list[Path]:
    """Every op folder named `name` that `kernelgen.ops` could resolve to with `library` among the roots
    (the target library, KERNELGEN_LIBRARY, the built-in library), in resolution order."""
    found = []
    for root in library_roots([library] if library is not None else None):
        p = ops_dir(root) / name
        if p.is_dir() and (p / "spec.toml").is_file():
            found.append(p)
    return found


def free_name(name: str, library: Path, replace: bool = False, fixed: bool = False) -> tuple[str, str]:
    """The name to merge an op under so that `kernelgen.ops.<name>` stays unambiguous: `name` when no
    library resolves it (or only the target library does and `replace` is on), else `name_2`, `name_3`, ...
    with a note saying why. With `fixed` (the user chose the name) a taken name is an error instead."""
    target = ops_dir(library).resolve() if library.is_dir() else None
    taken = [p for p in holders(name, library)
             if not (replace and target is not None and p.resolve().parent == target)]
    if not taken:
        return name, ""
    where = ", ".join(str(library_of(p)) for p in taken)
    if fixed:
        raise NameTaken(f"the name {name!r} is taken by an op in {where} (kernelgen.ops.{name} resolves to it); "
                         "choose another --name" + ("" if replace else " or pass --replace to replace it"))
    k = 2
    while holders(f"{name}_{k}", library):
        k += 1
    return f"{name}_{k}", f"the name {name!r} is taken by an op in {where}, so the new op is {name}_{k}"


def shadowed(extra_roots: list[str | Path] | None = None) -> dict[str, list[Path]]:
    """Op name -> the folders hidden behind the one `kernelgen.ops` resolves to (an op of the same name in
    an earlier root). Merges never create these; hand-made libraries may."""
    seen: dict[str, list[Path]] = {}
    for root in library_roots(extra_roots):
        folder = ops_dir(root)
        if folder.is_dir():
            for p in sorted(folder.iterdir()):
                if p.is_dir() and not p.name.startswith((".", "_")) and (p / "spec.toml").is_file():
                    seen.setdefault(p.name, []).append(p)
    return {n: paths[1:] for n, paths in seen.items() if len(paths) > 1}
