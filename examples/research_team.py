"""A research team of four agents sharing memory through the memos kernel.

A planner sets the agenda in the shared team cube; two researchers record findings (one keeps a private note);
the writer recalls the researchers' findings by meaning, corrects one (a new version, with provenance), and tries
to read a researcher's private note (refused by the kernel and written to the audit log). At the end the team
cube's history shows who wrote what.

Run it with ``memos run examples/research_team.py`` (or ``python examples/research_team.py``).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from memos.errors import NotFound, PermissionDenied
from memos.runtime import Runtime

TEAM = "team/research"

FINDINGS = {
    "agent:researcher-a": [
        "Solid-state batteries use a solid electrolyte instead of a liquid one, which lowers fire risk.",
        "The pilot line in Nagoya produced 1,200 solid-state cells per day in its first quarter.",
        "Dendrite growth at the lithium anode is the main failure mode that limits cycle life.",
    ],
    "agent:researcher-b": [
        "Sodium-ion cells cost about 30% less per kWh than lithium iron phosphate cells at pack level.",
        "Sodium-ion energy density is still roughly 160 Wh/kg, below the 250 Wh/kg of NMC cells.",
        "Grid storage buyers care more about cost per cycle than about energy density.",
    ],
}


def run(runtime: Runtime) -> dict[str, Any]:
    """Run the workflow; return a summary (printed by ``memos run``)."""
    thread = f"thread-{uuid.uuid4().hex[:8]}"
    planner = runtime.client("agent:planner")
    writer = runtime.client("agent:writer")
    researchers = {name: runtime.client(name) for name in FINDINGS}
    latencies: list[float] = []

    def timed(fn: Any, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            latencies.append(time.perf_counter() - start)

    # The planner owns the team cube and lets every team member read and write it.
    timed(planner.create_cube, TEAM, "shared findings of the research team", exist_ok=True)
    for member in [*FINDINGS, "agent:writer"]:
        timed(planner.grant, TEAM, member, "write")
    agenda = timed(planner.write, TEAM, "Agenda: compare solid-state and sodium-ion batteries for grid storage.",
                   tags=["agenda"], source_refs=[f"{thread}/msg-0"], metadata={"thread": thread})

    # Each researcher records findings in the team cube and a private note in its own cube.
    private_notes = {}
    for i, (name, facts) in enumerate(FINDINGS.items()):
        client = researchers[name]
        for j, fact in enumerate(facts):
            timed(client.write, TEAM, fact, tags=["finding"], source_refs=[f"{thread}/{name}/msg-{j}"],
                  metadata={"thread": thread})
        own = f"agent/{name.split(':')[1]}/notes"
        timed(client.create_cube, own, "private scratchpad", exist_ok=True)
        private_notes[name] = timed(client.write, own, f"Private hunch #{i}: the Nagoya numbers may be optimistic.")

    # The writer recalls findings by meaning, not by keyword.
    recalled = timed(writer.search, "Which battery chemistry is cheaper per kWh?", TEAM, k=3)
    # A correction: version 2 of a finding, conditional on version 1 still being current.
    wrong = timed(writer.search, "energy density of sodium-ion cells", TEAM, k=1)[0].memory
    fixed = timed(writer.update, wrong.id, content=wrong.content.replace("160", "175"),
                  expected_version=wrong.version, source_refs=[f"{thread}/writer/msg-1"])
    history = timed(writer.history, fixed.id)

    # The writer has no right on a researcher's private cube: the kernel refuses and audits it.
    denials = []
    note = private_notes["agent:researcher-a"]
    for attempt in (lambda: writer.read(note.id), lambda: writer.search("Nagoya", note.cube)):
        try:
            timed(attempt)
        except (PermissionDenied, NotFound) as exc:
            denials.append(f"{type(exc).__name__}: {exc}")

    stats = timed(planner.stats)
    # Who wrote what in the team cube: every memory's versions with their authors.
    team_history = [
        f"{m.id} v{v.version} {v.provenance.operation} by {v.provenance.author}: {v.content[:50]}"
        for m in timed(planner.list, TEAM, limit=1000)
        if m.metadata.get("thread") == thread
        for v in timed(planner.history, m.id)
    ]
    latencies.sort()
    return {
        "thread": thread,
        "recalled_by_writer": [(h.memory.provenance.author, round(h.score, 4), h.memory.content) for h in recalled],
        "corrected": {"id": fixed.id, "versions": [(m.version, m.provenance.author, m.content) for m in history]},
        "denials": denials,
        "team_cube_history": team_history,
        "memories_by_kind": stats.memories,
        "syscalls": len(latencies),
        "latency_ms": {
            "p50": round(latencies[len(latencies) // 2] * 1000, 2),
            "p95": round(latencies[int(len(latencies) * 0.95) - 1] * 1000, 2),
        },
    }


if __name__ == "__main__":
    from memos.cli import main

    raise SystemExit(main(["run", __file__]))
