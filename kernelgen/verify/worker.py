"""The sandbox's child process: verify one op folder on one backend and write the verdict as JSON.

    python -m kernelgen.verify.worker FOLDER --backend B --result FILE [--trials N] [--no-perf] ...

The parent (`kernelgen.verify.sandbox`) starts it in a new session with the environment the backend
needs (TRITON_INTERPRET=1 for the interpreter only) and reads the verdict from FILE. Whatever the
candidate does to this process — crash, hang, corrupt the GPU context — ends with this process.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import sys

MARK = "KERNELGEN-VERDICT "
# Errors that mean the process (or its GPU context) is no longer usable: the sandbox's business, not a
# wrong answer. The accuracy check reports them as "candidate raised ..."; they are re-labelled here.
FATAL_MARKERS = ("illegal memory access", "out of memory", "misaligned address", "unspecified launch failure",
                 "device-side assert", "CUDA error")


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m kernelgen.verify.worker")
    p.add_argument("folder")
    p.add_argument("--backend", required=True)
    p.add_argument("--result", required=True, help="file the verdict JSON is written to")
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--no-perf", dest="perf", action="store_false")
    p.add_argument("--no-compile", dest="with_compile", action="store_false")
    p.add_argument("--candidate", default="")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    faulthandler.enable()  # a SIGSEGV leaves a Python traceback in the stderr tail the parent reports
    args = parse(argv)
    from kernelgen.verify.engine import verify_path

    verdict = verify_path(args.folder, args.backend, trials=args.trials, perf=args.perf,
                          with_compile=args.with_compile, seed=args.seed, candidate=args.candidate)
    if verdict.check == "accuracy" and any(m in verdict.message for m in FATAL_MARKERS):
        verdict.check = "sandbox"
    payload = json.dumps(verdict.to_dict(), default=str)
    tmp = args.result + ".tmp"
    with open(tmp, "w") as f:
        f.write(payload)
    os.replace(tmp, args.result)
    sys.stdout.write(MARK + payload + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
