"""What `kernelgen new` and `kernelgen resume` print while a run goes on and when it ends."""

from __future__ import annotations

import time

from rich.text import Text

from kernelgen.cli_output import first_line, print_table, styled, table

RUN_OK = ("merged", "reused", "dry-run", "kept-existing")


class _Elapsed:
    """A status line that shows how long it has been up (re-rendered by rich's live display)."""

    def __init__(self, text: str) -> None:
        self.text, self.t0 = text, time.monotonic()

    def __rich__(self) -> Text:
        return Text(f"  {self.text} ({time.monotonic() - self.t0:.0f} s)")


def progress_listener(out):
    """Listener for the run's nodes: a header per stage, then one line per event."""

    spinner: list = []  # the live status line of a long step (verification), on terminals only

    def listen(stage: str, message: str, style: str) -> None:
        while spinner:
            spinner.pop().stop()
        if style == "stage":
            out.print(f"[bold cyan]▸ {stage}[/]", highlight=False)
        elif message.endswith(": running") and out.is_terminal:
            spinner.append(out.status(_Elapsed(message)))
            spinner[-1].start()
        elif message:
            out.print(Text(f"  {message}", style=style or ""), highlight=False, soft_wrap=True)

    return listen


def _verdict_cell(v: dict | None) -> Text:
    if v is None:
        return Text("-", style="dim")
    if v["passed"]:
        sp = v.get("speedup_vs_eager")
        return Text("passed", style="green") + Text(f" {sp:.2f}x" if sp else "")
    return Text(v["check"], style="red") + Text(f": {first_line(v['message'])}")


def print_run(result: dict, out) -> None:
    backends = result.get("backends") or []
    if result.get("candidates"):
        t = table(f"candidates for {result.get('name')!r}", ["candidate", "origin", *backends], keep=["candidate"],
                  flex=backends)
        for c in result["candidates"]:
            label = ("★ " if c["id"] == result.get("winner") else "") + c["id"]
            origin = c["origin"] + (f" (repair {c['round']})" if c["round"] else "")
            t.add_row(styled(label, "bold"), origin, *[_verdict_cell(c["backends"].get(b)) for b in backends])
        print_table(t, out)
    for note in result.get("messages") or []:
        out.print(Text("note: ", style="yellow") + Text(note), highlight=False, soft_wrap=True)
    status = result.get("status")
    line = Text(str(status), style="green" if status in RUN_OK else "red")
    if status == "merged":
        line += Text(f": {result['name']} -> {result['merged']}")
    elif status == "reused":
        line += Text(f": {result['reuse']['reason']} ({result['reuse']['path']})")
    elif status == "dry-run":
        line += Text(f": {result['name']} passed ({result.get('decision')}); not merged (--dry-run)")
    elif status == "kept-existing":
        line += Text(f": {result.get('decision')}")
    elif status == "failed":
        line += Text(": no candidate passed verification; nothing was merged")
    out.print(line, highlight=False, soft_wrap=True)
    out.print(f"run {result.get('run_id')} in {result.get('wall_s', 0):.1f} s", highlight=False, soft_wrap=True)
