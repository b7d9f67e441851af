"""Reports rendered from verdicts: JSON (machines), Markdown (pull-request comments), PNG (speedup chart).

Nothing here verifies anything; every figure comes from the `Verdict`s it is given.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kernelgen.verify.verdict import Verdict

MESSAGE_CHARS = 300  # a table cell, not a log: the full message is in report.json


def summary(verdicts: Sequence[Verdict]) -> dict[str, Any]:
    failed = [v for v in verdicts if not v.passed]
    return {
        "total": len(verdicts),
        "passed": len(verdicts) - len(failed),
        "failed": len(failed),
        "backends": sorted({v.backend for v in verdicts}),
        "devices": sorted({v.device for v in verdicts if v.device}),
        "failures": [{"op": v.op, "backend": v.backend, "check": v.check} for v in failed],
    }


def to_json(verdicts: Sequence[Verdict]) -> dict[str, Any]:
    return {"summary": summary(verdicts), "verdicts": [v.to_dict() for v in verdicts]}


def _cell(text: str) -> str:
    """Markdown table cells: one line, no pipes."""
    text = " ".join(str(text).split())
    if len(text) > MESSAGE_CHARS:
        text = text[: MESSAGE_CHARS - 1] + "…"
    return text.replace("|", "\\|")


def _shape(dims: dict[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in dims.items())


def _ms(x: float | None) -> str:
    return f"{x:.4f}" if isinstance(x, (int, float)) else "–"


def _x(x: float | None) -> str:
    return f"{x:.2f}x" if isinstance(x, (int, float)) else "–"


def _pct(x: float | None) -> str:
    return f"{100 * x:.0f}%" if isinstance(x, (int, float)) else "–"


def summary_line(verdicts: Sequence[Verdict]) -> str:
    s = summary(verdicts)
    if not s["total"]:
        return "No op to verify."
    where = ", ".join(s["backends"]) + (f" ({', '.join(s['devices'])})" if s["devices"] else "")
    mark = "✅" if not s["failed"] else "❌"
    failed = f"; {s['failed']} failed" if s["failed"] else ""
    return f"{mark} {s['passed']} of {s['total']} passed on {where}{failed}"


def to_markdown(verdicts: Sequence[Verdict], title: str = "kernelgen verify") -> str:
    lines = [f"### {title}", "", f"**{summary_line(verdicts)}**", ""]
    if not verdicts:
        return "\n".join(lines)
    lines += ["| op | backend | result | failing check | message | vs eager | vs compile |",
              "|---|---|---|---|---|---|---|"]
    for v in verdicts:
        result = "pass" if v.passed else "**FAIL**"
        message = _cell(v.message) if v.message else "–"
        lines.append(f"| {_cell(v.op)} | {_cell(v.backend)} | {result} | {v.check or '–'} | {message} | "
                     f"{_x(v.speedup_vs_eager)} | {_x(v.speedup_vs_compile)} |")
    perf = [(v, p) for v in verdicts for p in v.performance]
    if perf:
        lines += ["", "#### Performance (median ms; speedup = baseline time / kernel time; roofline = fraction of "
                  "the measured copy bandwidth)", "",
                  "| op | dtype | shape | kernel ms | eager ms | compile ms | vs eager | vs compile | roofline |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for v, p in perf:
            lines.append(
                f"| {_cell(v.op)} | {p.get('dtype', '')} | {_shape(p.get('dims', {}))} | {_ms(p.get('kernel_ms'))} | "
                f"{_ms(p.get('eager_ms'))} | {_ms(p.get('compile_ms'))} | {_x(p.get('speedup_eager'))} | "
                f"{_x(p.get('speedup_compile'))} | {_pct(p.get('kernel_bw_frac'))} |"
            )
    elif any(v.passed for v in verdicts):
        lines += ["", "_No timings: accuracy only (the interpreter backend never measures speed)._"]
    accuracy_only = [v for v in verdicts if v.passed and not v.performance]
    if accuracy_only and perf:
        lines += ["", "_Accuracy only: " + ", ".join(v.op for v in accuracy_only) + "._"]
    widened = [(v, t) for v in verdicts for t in getattr(v, "tolerances", [])]
    if widened:  # a spec that relaxes the bar says so where reviewers look
        lines += ["", "#### Widened tolerances", "", "| op | dtype | atol | rtol | default | reason |",
                  "|---|---|---|---|---|---|"]
        for v, t in widened:
            lines.append(f"| {_cell(v.op)} | {t['dtype']} | {t['atol']:g} | {t['rtol']:g} | "
                         f"{t['default'][0]:g}, {t['default'][1]:g} | {_cell(t['reason'])} |")
    unsandboxed = [v.op for v in verdicts if v.check not in ("static", "spec") and not getattr(v, "sandboxed", True)]
    if unsandboxed:
        lines += ["", "_Verified without the sandbox: " + ", ".join(unsandboxed) + "._"]
    return "\n".join(lines) + "\n"


def speedup_png(verdicts: Sequence[Verdict], path: str | Path) -> Path:
    """Bar chart: speedup vs eager and vs torch.compile per shape, one bar group per op (log scale)."""
    import matplotlib

    matplotlib.use("Agg", force=True)  # files only: never open a window, never need a display
    import matplotlib.pyplot as plt

    path = Path(path)
    groups = [(v, [p for p in v.performance if p.get("speedup_eager")]) for v in verdicts]
    groups = [(v, rows) for v, rows in groups if rows]
    width = max(6.0, 1.2 + 0.9 * sum(len(rows) for _, rows in groups))
    fig, ax = plt.subplots(figsize=(min(width, 40.0), 5.5), dpi=100)
    if not groups:
        ax.axis("off")
        ax.text(0.5, 0.5, "no timings in these verdicts (accuracy only)", ha="center", va="center", fontsize=12)
    else:
        bar, x, ticks, labels, group_mid = 0.38, 0.0, [], [], []
        for v, rows in groups:
            start = x
            for p in rows:
                ax.bar(x - bar / 2, p["speedup_eager"], bar, color="#4C72B0",
                       label="vs eager" if not ticks else None)
                if p.get("speedup_compile"):
                    ax.bar(x + bar / 2, p["speedup_compile"], bar, color="#DD8452",
                           label="vs torch.compile" if not ticks else None)
                ticks.append(x)
                labels.append(f"{p.get('dtype', '')}\n{_shape(p.get('dims', {}))}")
                x += 1.0
            group_mid.append(((start + x - 1.0) / 2, v.op + ("" if v.passed else " (FAIL)")))
            x += 0.6  # a gap between ops
        ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
        ax.set_yscale("log")
        from matplotlib.ticker import FuncFormatter

        label = FuncFormatter(lambda y, _: f"{y:g}x")  # 0.5x, 2x: not 5x10^-1
        ax.yaxis.set_major_formatter(label)
        ax.yaxis.set_minor_formatter(label)
        ax.tick_params(axis="y", which="minor", labelsize=7)
        ax.set_ylabel("speedup (baseline ms / kernel ms)")
        ax.set_xticks(ticks)
        ax.set_xticklabels(labels, fontsize=7, rotation=90)
        for i, (mid, name) in enumerate(group_mid):  # names of neighbouring ops on two rows: long ones overlap
            ax.annotate(name, (mid, 1.0), xycoords=("data", "axes fraction"), xytext=(0, 4 + 12 * (i % 2)),
                        textcoords="offset points", ha="center", fontsize=9, fontweight="bold")
        ax.legend(loc="upper right", fontsize=8)
        devices = sorted({v.device for v, _ in groups if v.device})
        ax.set_title("kernelgen speedup" + (f" on {', '.join(devices)}" if devices else ""), pad=30)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


def write_reports(verdicts: Sequence[Verdict], out_dir: str | Path) -> dict[str, Path]:
    """report.json, report.md and speedup.png in out_dir (created if needed)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "md": out / "report.md", "png": out / "speedup.png"}
    paths["json"].write_text(json.dumps(to_json(verdicts), indent=2, default=str) + "\n")
    paths["md"].write_text(to_markdown(verdicts))
    speedup_png(verdicts, paths["png"])
    return paths


# ---- kernelgen regen: before/after on one backend ---------------------------------------------------
def regen_markdown(result) -> str:
    """The before/after table of a `kernelgen regen` run (a `kernelgen.regen.RegenResult`)."""
    s = result.summary()
    acts = ", ".join(f"{n} {a}" for a, n in s["actions"].items() if n)
    lines = [f"### kernelgen regen on {s['backend']}", "",
             f"**{s['passing_before']} of {s['total']} passing before, {s['passing_after']} after** ({acts})", "",
             "| op | before | after | action | detail | vs eager before | vs eager after |",
             "|---|---|---|---|---|---|---|"]
    for o in result.ops:
        lines.append(f"| {_cell(o.op)} | {'pass' if o.before.passed else 'FAIL ' + o.before.check} | "
                     f"{'pass' if o.after.passed else 'FAIL ' + o.after.check} | {o.action} | "
                     f"{_cell(o.detail) or '–'} | {_x(o.before.speedup_vs_eager)} | {_x(o.after.speedup_vs_eager)} |")
    return "\n".join(lines) + "\n"


def regen_png(result, path: str | Path) -> Path:
    """Two panels: ops passing before/after, and per-op speedup vs eager before/after (when timed)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    path = Path(path)
    s = result.summary()
    timed = [o for o in result.ops if o.before.speedup_vs_eager or o.after.speedup_vs_eager]
    fig, (left, right) = plt.subplots(1, 2, figsize=(max(8.0, 4 + 0.8 * len(timed)), 4.0), dpi=100,
                                      gridspec_kw={"width_ratios": [1, 2]})
    left.bar(["before", "after"], [s["passing_before"], s["passing_after"]], color=["#C44E52", "#55A868"])
    left.axhline(s["total"], color="black", linewidth=0.8, linestyle="--")
    left.set_ylim(0, max(1, s["total"]) * 1.15)
    left.set_ylabel(f"ops passing (of {s['total']})")
    left.set_title(f"passing on {s['backend']}")
    if timed:
        xs = range(len(timed))
        right.bar([x - 0.2 for x in xs], [o.before.speedup_vs_eager or 0 for o in timed], 0.4, label="before",
                  color="#8172B2")
        right.bar([x + 0.2 for x in xs], [o.after.speedup_vs_eager or 0 for o in timed], 0.4, label="after",
                  color="#4C72B0")
        right.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
        right.set_xticks(list(xs))
        right.set_xticklabels([o.op for o in timed], rotation=30, ha="right", fontsize=8)
        right.set_ylabel("speedup vs eager (geomean over shapes)")
        right.legend(fontsize=8)
    else:
        right.axis("off")
        right.text(0.5, 0.5, f"no timings on {s['backend']} (accuracy only)", ha="center", va="center")
    right.set_title("speedup before / after")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


def write_regen_reports(result, out_dir: str | Path) -> dict[str, Path]:
    """report.json / report.md / speedup.png of the verdicts after regen (as `kernelgen verify` writes
    them), with the before/after summary added to report.json ("regen") and report.md, plus regen.png."""
    after = [o.after for o in result.ops]
    paths = write_reports(after, out_dir)
    doc = json.loads(paths["json"].read_text())
    doc["regen"] = {"summary": result.summary(),
                    "ops": [{k: v for k, v in o.to_dict().items() if k not in ("before", "after")}
                            | {"before": o.before.to_dict()} for o in result.ops]}
    paths["json"].write_text(json.dumps(doc, indent=2, default=str) + "\n")
    paths["md"].write_text(regen_markdown(result) + "\n" + to_markdown(after, title="verdicts after regen"))
    paths["regen_png"] = regen_png(result, Path(out_dir) / "regen.png")
    return paths
