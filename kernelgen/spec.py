"""`OpSpec`: the one description of an op, loaded from and saved to `spec.toml`.

A spec says what an op computes (a PyTorch reference), how to call it (the launcher in `kernel.py`),
which ATen overloads it may replace, how to make inputs for it, which shapes and dtypes to test and
benchmark, and how many bytes and flops it must move (for the roofline). Validation errors name the
file, the field and what was expected, so a person editing a spec by hand can fix it in one go.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from kernelgen.errors import SpecError

NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
DTYPES = ("float32", "float16", "bfloat16")
INPUT_KINDS = ("tensor", "float", "int", "bool")
# How a tensor input is filled. Never zeros or constants: those hide unwritten outputs.
FILLS = ("randn", "rand", "positive", "int8", "uniform_pm1", "index")
# fill = "index": integers in [0, high) where `high` is a dim name or a positive int (class targets, gather and
# embedding indices); `sentinel` (optional) is an extra value some elements take, such as an ignore_index.
INDEX_DTYPES = ("int32", "int64")
# Input dtype: "input" means the dtype under test; anything else is a fixed torch dtype name.
FIXED_DTYPES = ("float32", "float16", "bfloat16", "int8", "int32", "int64", "bool")

# Default tolerances per output dtype (torch.testing.assert_close defaults, kept in one table).
DEFAULT_TOLERANCES: dict[str, tuple[float, float]] = {
    "float32": (1e-5, 1.3e-6),
    "float16": (1e-3, 1e-3),
    "bfloat16": (1.6e-2, 1e-2),
}


@dataclass(frozen=True)
class InputSpec:
    """One argument of the launcher: a tensor (shape in symbolic dims) or a scalar with a fixed value."""

    name: str
    kind: str = "tensor"
    shape: tuple[str, ...] = ()
    dtype: str = "input"
    fill: str = "randn"
    value: Any = None
    high: str = ""  # fill = "index": exclusive upper bound, a dim name or an integer
    sentinel: int | None = None  # fill = "index": a value some elements take instead (e.g. ignore_index)


@dataclass(frozen=True)
class AtenOverride:
    """An ATen overload this op replaces, and the adapter in kernel.py that takes the ATen arguments."""

    overload: str
    adapter: str


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float
    reason: str


@dataclass
class OpSpec:
    name: str
    description: str
    function: str
    inputs: list[InputSpec]
    outputs: list[str]
    reference: str
    test_shapes: list[dict[str, int]]
    bench_shapes: list[dict[str, int]]
    tags: list[str] = field(default_factory=list)
    family: str = ""
    aten: list[AtenOverride] = field(default_factory=list)
    dtypes: list[str] = field(default_factory=lambda: list(DTYPES))
    tolerances: dict[str, Tolerance] = field(default_factory=dict)
    bytes_model: str = ""
    flops_model: str = "0"
    # Dims (by name) the verifier may vary for edge cases, and the row dim that may be 1.
    row_dim: str = "M"
    col_dim: str = "N"
    request: str = ""  # the sentence that produced this op, when generated
    source: str = "spec.toml"

    # ---- derived helpers -------------------------------------------------------------------------
    def tolerance(self, dtype: str) -> tuple[float, float]:
        if dtype in self.tolerances:
            t = self.tolerances[dtype]
            return t.atol, t.rtol
        return DEFAULT_TOLERANCES.get(dtype, (1e-5, 1.3e-6))

    def tensor_inputs(self) -> list[InputSpec]:
        return [i for i in self.inputs if i.kind == "tensor"]

    def dims(self) -> set[str]:
        return {d for i in self.tensor_inputs() for d in i.shape if not d.isdigit()}

    def bytes_moved(self, dims: dict[str, int], elem_size: int) -> float:
        """Fewest bytes the op must move through memory for these dims (each input read once...)."""
        if not self.bytes_model:
            return 0.0
        return float(_eval_formula(self.bytes_model, dims, elem_size, self.source, "model.bytes"))

    def flops(self, dims: dict[str, int]) -> float:
        return float(_eval_formula(self.flops_model, dims, 0, self.source, "model.flops"))

    def to_dict(self) -> dict[str, Any]:
        """The TOML document this spec saves as (inverse of `from_dict`)."""
        doc: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "tags": list(self.tags),
        }
        if self.family:
            doc["family"] = self.family
        if self.request:
            doc["request"] = self.request
        doc["signature"] = {"function": self.function, "outputs": list(self.outputs)}
        doc["reference"] = self.reference
        doc["inputs"] = []
        for i in self.inputs:
            item: dict[str, Any] = {"name": i.name, "kind": i.kind}
            if i.kind == "tensor":
                item.update(shape=list(i.shape), dtype=i.dtype, fill=i.fill)
                if i.fill == "index":
                    item["high"] = int(i.high) if i.high.isdigit() else i.high
                    if i.sentinel is not None:
                        item["sentinel"] = i.sentinel
            else:
                item["value"] = i.value
            doc["inputs"].append(item)
        if self.aten:
            doc["aten"] = [{"overload": a.overload, "adapter": a.adapter} for a in self.aten]
        doc["shapes"] = {
            "row_dim": self.row_dim,
            "col_dim": self.col_dim,
            "test": [dict(s) for s in self.test_shapes],
            "bench": [dict(s) for s in self.bench_shapes],
        }
        doc["dtypes"] = list(self.dtypes)
        if self.tolerances:
            doc["tolerance"] = {
                k: {"atol": t.atol, "rtol": t.rtol, "reason": t.reason} for k, t in self.tolerances.items()
            }
        doc["model"] = {"bytes": self.bytes_model, "flops": self.flops_model}
        return doc

    @classmethod
    def from_dict(cls, doc: dict[str, Any], source: str = "<spec>") -> OpSpec:
        return _parse(doc, source)


# ---- loading and saving ----------------------------------------------------------------------------
def load_spec(path: str | Path) -> OpSpec:
    """Load `spec.toml` (or the folder holding it) and validate every field."""
    path = Path(path)
    if path.is_dir():
        path = path / "spec.toml"
    if not path.is_file():
        raise SpecError(f"{path}: no spec.toml found")
    try:
        doc = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path}: not valid TOML: {exc}") from None
    return _parse(doc, str(path))


def dump_spec(spec: OpSpec) -> str:
    import tomli_w

    return tomli_w.dumps(spec.to_dict())


def save_spec(spec: OpSpec, path: str | Path) -> None:
    path = Path(path)
    if path.is_dir():
        path = path / "spec.toml"
    path.write_text(dump_spec(spec))


# ---- validation ------------------------------------------------------------------------------------
def _need(doc: dict, key: str, typ: type | tuple, src: str, where: str = "") -> Any:
    field_name = f"{where}{key}"
    if key not in doc:
        raise SpecError(f"{src}: field '{field_name}' is missing")
    val = doc[key]
    if not isinstance(val, typ) or (typ is int and isinstance(val, bool)):
        want = typ.__name__ if isinstance(typ, type) else " or ".join(t.__name__ for t in typ)
        raise SpecError(f"{src}: field '{field_name}' must be {want}, got {type(val).__name__} {val!r}")
    return val


def _parse(doc: dict[str, Any], src: str) -> OpSpec:
    name = _need(doc, "name", str, src)
    if not NAME_RE.match(name):
        raise SpecError(f"{src}: field 'name' must be lower_snake_case (letters, digits, _), got {name!r}")
    description = _need(doc, "description", str, src)
    tags = doc.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise SpecError(f"{src}: field 'tags' must be a list of strings")
    sig = _need(doc, "signature", dict, src)
    function = _need(sig, "function", str, src, "signature.")
    outputs = _need(sig, "outputs", list, src, "signature.")
    if not all(isinstance(o, str) for o in outputs):
        raise SpecError(f"{src}: field 'signature.outputs' must be a list of output names")
    if not outputs:
        raise SpecError(f"{src}: field 'signature.outputs' must name at least one output")
    reference = _need(doc, "reference", str, src)
    try:
        compile(reference, src, "exec")
    except SyntaxError as exc:
        raise SpecError(f"{src}: field 'reference' is not valid Python: {exc.msg} (line {exc.lineno})") from None

    inputs: list[InputSpec] = []
    raw_inputs = _need(doc, "inputs", list, src)
    for n, item in enumerate(raw_inputs):
        where = f"inputs[{n}]."
        if not isinstance(item, dict):
            raise SpecError(f"{src}: field 'inputs[{n}]' must be a table")
        iname = _need(item, "name", str, src, where)
        kind = item.get("kind", "tensor")
        if kind not in INPUT_KINDS:
            raise SpecError(f"{src}: field '{where}kind' must be one of {INPUT_KINDS}, got {kind!r}")
        if kind == "tensor":
            shape = _need(item, "shape", list, src, where)
            if not all(isinstance(d, (str, int)) for d in shape):
                raise SpecError(f"{src}: field '{where}shape' must list dim names or integers")
            dtype = item.get("dtype", "input")
            if dtype != "input" and dtype not in FIXED_DTYPES:
                raise SpecError(f"{src}: field '{where}dtype' must be 'input' or one of {FIXED_DTYPES}")
            fill = item.get("fill", "randn")
            if fill not in FILLS:
                raise SpecError(f"{src}: field '{where}fill' must be one of {FILLS}, got {fill!r}")
            high, sentinel = _index_bounds(item, fill, dtype, src, where)
            inputs.append(InputSpec(iname, kind, tuple(str(d) for d in shape), dtype, fill, high=high,
                                    sentinel=sentinel))
        else:
            if "value" not in item:
                raise SpecError(f"{src}: field '{where}value' is missing (scalar inputs need a value)")
            inputs.append(InputSpec(iname, kind, value=item["value"]))

    aten = []
    raw_aten = doc.get("aten", [])
    if not isinstance(raw_aten, list):
        raise SpecError(f"{src}: field 'aten' must be a list of tables ([[aten]] entries), got "
                        f"{type(raw_aten).__name__}")
    for n, item in enumerate(raw_aten):
        where = f"aten[{n}]."
        if not isinstance(item, dict):
            raise SpecError(f"{src}: field 'aten[{n}]' must be a table with 'overload' and 'adapter'")
        overload = _need(item, "overload", str, src, where)
        if not overload.startswith("aten::"):
            raise SpecError(f"{src}: field '{where}overload' must look like 'aten::name[.overload]'")
        aten.append(AtenOverride(overload, _need(item, "adapter", str, src, where)))

    shapes = _need(doc, "shapes", dict, src)
    test_shapes = _shape_list(shapes, "test", src)
    bench_shapes = _shape_list(shapes, "bench", src) if "bench" in shapes else []
    dtypes = doc.get("dtypes", list(DTYPES))
    if not isinstance(dtypes, list) or not all(isinstance(d, str) for d in dtypes):
        raise SpecError(f"{src}: field 'dtypes' must be a list of dtype names such as [\"float32\"], got "
                        f"{type(dtypes).__name__} {dtypes!r}")
    bad = [d for d in dtypes if d not in DTYPES]
    if bad:
        raise SpecError(f"{src}: field 'dtypes' has {bad}; expected a subset of {DTYPES}")

    tolerances = {}
    raw_tol = doc.get("tolerance", {})
    if not isinstance(raw_tol, dict):
        raise SpecError(f"{src}: field 'tolerance' must be a table of [tolerance.<dtype>] tables")
    for dt, tol in raw_tol.items():
        where = f"tolerance.{dt}."
        if not isinstance(tol, dict):
            raise SpecError(f"{src}: field 'tolerance.{dt}' must be a table with atol, rtol and reason")
        if dt not in DTYPES:
            raise SpecError(f"{src}: field 'tolerance.{dt}' is not a dtype; expected one of {DTYPES}")
        reason = _need(tol, "reason", str, src, where)
        if not reason.strip():
            raise SpecError(f"{src}: field '{where}reason' must say why the tolerance is widened")
        tolerances[dt] = Tolerance(
            float(_need(tol, "atol", (int, float), src, where)),
            float(_need(tol, "rtol", (int, float), src, where)),
            reason,
        )

    model = doc.get("model", {})
    if not isinstance(model, dict):
        raise SpecError(f"{src}: field 'model' must be a table with 'bytes' and 'flops' formulas")
    spec = OpSpec(
        name=name,
        description=description,
        function=function,
        inputs=inputs,
        outputs=[str(o) for o in outputs],
        reference=reference,
        test_shapes=test_shapes,
        bench_shapes=bench_shapes,
        tags=tags,
        family=doc.get("family", ""),
        aten=aten,
        dtypes=list(dtypes),
        tolerances=tolerances,
        bytes_model=str(model.get("bytes", "")),
        flops_model=str(model.get("flops", "0")),
        row_dim=str(shapes.get("row_dim", "M")),
        col_dim=str(shapes.get("col_dim", "N")),
        request=str(doc.get("request", "")),
        source=src,
    )
    for n, i in enumerate(inputs):
        if i.fill == "index" and not i.high.isdigit() and i.high not in spec.dims():
            raise SpecError(f"{src}: field 'inputs[{n}].high' must name a dim of the inputs' shapes "
                            f"{sorted(spec.dims())} or be a positive integer, got {i.high!r}")
    missing = {d for s in test_shapes + bench_shapes for d in spec.dims() if d not in s}
    if missing:
        raise SpecError(f"{src}: field 'shapes' must give every dim used by inputs; missing {sorted(missing)}")
    for formula, fname in ((spec.bytes_model, "model.bytes"), (spec.flops_model, "model.flops")):
        if formula and test_shapes:
            _eval_formula(formula, test_shapes[0], 2, src, fname)
    return spec


def _index_bounds(item: dict, fill: str, dtype: str, src: str, where: str) -> tuple[str, int | None]:
    """(high, sentinel) of an index input, checked; ("", None) for any other fill."""
    if fill != "index":
        for key in ("high", "sentinel"):
            if key in item:
                raise SpecError(f"{src}: field '{where}{key}' only applies to fill = \"index\"")
        return "", None
    if dtype not in INDEX_DTYPES:
        raise SpecError(f"{src}: field '{where}dtype' must be one of {INDEX_DTYPES} for fill = \"index\", "
                        f"got {dtype!r}")
    high = _need(item, "high", (str, int), src, where)
    if isinstance(high, int) and high <= 0:
        raise SpecError(f"{src}: field '{where}high' must be a dim name or a positive integer, got {high}")
    sentinel = item.get("sentinel")
    if sentinel is not None and (not isinstance(sentinel, int) or isinstance(sentinel, bool)):
        raise SpecError(f"{src}: field '{where}sentinel' must be an integer, got {sentinel!r}")
    return str(high), sentinel


def _shape_list(shapes: dict, key: str, src: str) -> list[dict[str, int]]:
    val = _need(shapes, key, list, src, "shapes.")  # a list of tables: [{ M = 4, N = 64 }]
    out = []
    for n, s in enumerate(val):
        if not isinstance(s, dict) or not all(isinstance(v, int) and v >= 0 for v in s.values()):
            raise SpecError(f"{src}: field 'shapes.{key}[{n}]' must be a table of dim = non-negative int")
        out.append({str(k): int(v) for k, v in s.items()})
    return out


def _eval_formula(formula: str, dims: dict[str, int], elem: int, src: str, fname: str) -> float:
    env = {"__builtins__": {}, "elem": elem, "max": max, "min": min, **dims}
    try:
        return eval(compile(formula, fname, "eval"), env)  # formulas are arithmetic over dim names only
    except Exception as exc:
        raise SpecError(f"{src}: field '{fname}' ({formula!r}) could not be evaluated: {exc}") from None
