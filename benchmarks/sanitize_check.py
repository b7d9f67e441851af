"""Does `kernelgen verify --sanitize` catch what only memcheck can? A positive control on the GPU machine.

    python benchmarks/sanitize_check.py --out OUT/sanitize_check.json

Two candidates, both verified with `--backend cuda --sanitize` (sandboxed, nothing written):
- the library's rms_norm, which must pass;
- a copy of it whose row load reads one element past the row (mask `offsets <= N`) and then discards it
  (`tl.where`): its outputs are right, so every other check passes it, but on a row that ends a tensor the
  read leaves the allocation. memcheck must reject it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORRECT_LOAD = ("x = tl.load(x_ptr + row * stride_x_row + offsets * stride_x_col, mask=mask, "
                "other=0.0).to(tl.float32)")
OVER_READ = ("x = tl.load(x_ptr + row * stride_x_row + offsets * stride_x_col, mask=offsets <= N, "
             "other=0.0).to(tl.float32)\n    x = tl.where(mask, x, 0.0)")


def over_reading_copy(folder: Path) -> Path:
    """The rms_norm op folder copied under `folder`, its fused-row load reading one element too far."""
    dest = folder / "rms_norm"  # the folder is named as its spec
    shutil.copytree(ROOT / "library" / "ops" / "rms_norm", dest, ignore=shutil.ignore_patterns("verified"))
    kernel = dest / "kernel.py"
    source = kernel.read_text()
    if source.count(CORRECT_LOAD) != 1:
        raise SystemExit("rms_norm's row load changed: update CORRECT_LOAD in this script")
    kernel.write_text(source.replace(CORRECT_LOAD, OVER_READ))
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    from kernelgen.verify.sandbox import verify_many

    with tempfile.TemporaryDirectory() as tmp:
        folders = [ROOT / "library" / "ops" / "rms_norm", over_reading_copy(Path(tmp))]
        verdicts = verify_many(folders, "cuda", sanitize=True, write=False, with_compile=False, timeout=400)
    rows = [{"candidate": name, "passed": v.passed, "check": v.check, "message": v.message[:600]}
            for name, v in zip(("rms_norm", "rms_norm over-reading its rows"), verdicts)]
    for row in rows:
        print(json.dumps(row), flush=True)
    good, over = rows
    result = {"rows": rows, "control_passes": good["passed"],
              "over_read_caught_by_memcheck": (not over["passed"]) and "memcheck" in over["message"]}
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
