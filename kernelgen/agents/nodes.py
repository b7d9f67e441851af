"""The nodes of the generation graph: plain functions `state -> partial state`, each testable alone.

    understand ─► retrieve ─► generate ─► verify ─► (repair ─► verify)* ─► select ─► merge ─► report
                     └── reuse an existing op ─────────────────────────────────────────────────► report

The state is plain data (str, int, float, bool, list, dict) so the SQLite checkpointer can store it, and a
node may run twice (`kernelgen resume` re-runs the node that was interrupted): nodes compute their output
from the state alone and write nothing outside the run's work folder, except `merge`, which is atomic and
recognises its own finished work. Progress goes to an optional listener (`set_listener`), never the state.

The stages live one module each (`understand`, `retrieve`, `generate`, `check` = verify + repair, `merge` =
select + merge + report) over the shared `state` helpers; this module gathers them for the graph.
"""

from kernelgen.agents.check import after_verify, candidate_folder, passes, repair, verify
from kernelgen.agents.generate import after_generate, generate
from kernelgen.agents.merge import merge, replace_decision, report, select
from kernelgen.agents.retrieve import after_retrieve, retrieve, same_reference
from kernelgen.agents.state import Listener, emit, set_listener
from kernelgen.agents.understand import short_compose_error, understand

__all__ = [
    "Listener", "after_generate", "after_retrieve", "after_verify", "candidate_folder", "emit",
    "generate", "merge", "passes", "repair", "replace_decision", "report", "retrieve", "same_reference", "select",
    "set_listener", "short_compose_error", "understand", "verify",
]
