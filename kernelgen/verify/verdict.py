"""`Verdict`: the outcome of verifying one candidate on one backend. Reports render from these."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

# The first failing check of a verdict, in the order they run:
# static (kernel or reference source), spec (the spec lowers the bar), sandbox (crash, hang, violation),
# anticheat, outputs (dtype/shape/device/fresh storage), inputs (changed by the call), accuracy, adapter
# (an [[aten]] adapter through the dispatcher), performance.
CHECKS = ("static", "spec", "sandbox", "accuracy", "outputs", "inputs", "adapter", "anticheat", "performance")
SPEED_KEYS = ("performance", "speedup_vs_eager", "speedup_vs_compile", "min_speedup_vs_eager")


@dataclass
class Verdict:
    op: str
    backend: str
    passed: bool = False
    check: str = ""  # the first failing check, one of CHECKS; "" when passed
    message: str = ""  # short enough to hand back to an LLM on repair
    source_hash: str = ""
    device: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    accuracy: list[dict[str, Any]] = field(default_factory=list)
    performance: list[dict[str, Any]] = field(default_factory=list)
    launches: int = 0
    wall_s: float = 0.0
    candidate: str = ""  # label of the candidate (library op, composer, llm-1, ...)
    seed: int = 0  # base seed of the accuracy inputs (rerun with --seed to reproduce)
    sandboxed: bool = False  # the candidate ran behind the wall (bubblewrap), not in a plain process
    trusted_reference: bool = False  # the spec's reference was evaluated in the parent (shipped library op)
    tolerances: list[dict[str, Any]] = field(default_factory=list)  # widened tolerances and their reasons

    @classmethod
    def fail(cls, op: str, backend: str, check: str, message: str, **kw: Any) -> Verdict:
        return cls(op=op, backend=backend, passed=False, check=check, message=message[:2000], **kw)

    @property
    def speedup_vs_eager(self) -> float | None:
        """Geometric mean over the measured shapes (None when nothing was timed)."""
        return _geomean([p["speedup_eager"] for p in self.performance if p.get("speedup_eager")])

    @property
    def speedup_vs_compile(self) -> float | None:
        return _geomean([p["speedup_compile"] for p in self.performance if p.get("speedup_compile")])

    @property
    def min_speedup_vs_eager(self) -> float | None:
        vals = [p["speedup_eager"] for p in self.performance if p.get("speedup_eager")]
        return min(vals) if vals else None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["speedup_vs_eager"] = self.speedup_vs_eager
        d["speedup_vs_compile"] = self.speedup_vs_compile
        d["min_speedup_vs_eager"] = self.min_speedup_vs_eager
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Verdict:
        names = cls.__dataclass_fields__.keys()
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_record(self, speed: bool = True) -> dict[str, Any]:
        """The `verified/<backend>.json` document. `speed=False` (accuracy-only backends such as the
        interpreter): no speed figure at all, not even an empty one."""
        d = self.to_dict()
        d["failure"] = "" if self.passed else f"{self.check}: {self.message}"
        if not speed:
            for key in SPEED_KEYS:
                d.pop(key, None)
        return d


def _geomean(vals: list[float]) -> float | None:
    vals = [v for v in vals if v and v > 0]
    if not vals:
        return None
    return math.exp(sum(math.log(v) for v in vals) / len(vals))
