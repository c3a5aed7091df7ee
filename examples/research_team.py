"""A research team of four LangGraph agents sharing memory through the memos kernel, over two rounds.

    planner -> (researcher-a | researcher-b, in parallel) -> writer -> planner -> ... -> END

- The **planner** owns the run's team cube (``team/research/<run>``), lets the team write it, and keeps the plan
  as a LangGraph store item (memos is the graph's ``store``; round 2's plan is version 2 of the same memory, in
  the cube ``team/research/<run>/plan`` that the team may read). Before round 2 it recalls the writer's draft
  and promotes the team's most-read finding to activation memory (``migrate``: its KV cache is built once and
  injected instead of prefilled), then asks the writer about that finding.
- The **researchers** read their assignment from the plan (through a store acting as themselves), remember
  findings from their sources in the team cube and keep private notes in their own cubes
  (``agent/<name>/notes``); in round 2 each recalls the other's findings and remembers new ones based on them
  (provenance pins the versions they were derived from).
- The **writer** recalls the findings, corrects one (a new version, conditional on the version it read), tries
  to read researcher-a's private note through its tools (refused by the kernel, and in researcher-a's audit log),
  and answers the plan's question with the local model through a memory-aware graph (``assemble_context ->
  generate -> write back``); in round 2 the promoted finding reaches the model as a KV cache.

The model is small (SmolLM2-135M): its drafts are short and not to be trusted; what matters is which memory it
was given and what was written back. Every memory an agent writes names the agent, the thread and the message.

Run it with ``memos run examples/research_team.py`` (``make run``) or ``python examples/research_team.py``.
"""

# No ``from __future__ import annotations`` here: LangGraph reads the state's annotations at run time, and
# ``memos run`` loads this file as a module that is not in sys.modules, where string annotations cannot resolve.
import operator
import threading
import time
import uuid
from collections import Counter, defaultdict
from datetime import UTC, datetime
from typing import Annotated, Any

from langchain_core.messages import AnyMessage, HumanMessage, ToolMessage
from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.store.base import BaseStore
from typing_extensions import TypedDict

from memos.agents import MemoryAgent, MemoryTools, MemosChatModel, MemosStore, call_tool
from memos.client import Memos
from memos.runtime import Runtime
from memos.types import Kind

TEAM_ROOT = "team/research"
PLANNER, WRITER = "agent:planner", "agent:writer"
RESEARCHERS = ("agent:researcher-a", "agent:researcher-b")
MAX_NEW_TOKENS = 24  # the local model writes ~20 tokens/s on 2 CPU cores

# What each researcher reads in each round (the sources stand in for documents and web pages).
SOURCES = {
    "agent:researcher-a": [
        ["Solid-state batteries use a solid electrolyte instead of a liquid one, which lowers fire risk.",
         "The pilot line in Nagoya produced 1,200 solid-state cells per day in its first quarter.",
         "Dendrite growth at the lithium anode is the main failure mode that limits cycle life."],
        ["Solid-state cells are expected to cost twice as much per kWh as LFP cells until 2030."],
    ],
    "agent:researcher-b": [
        ["Sodium-ion cells cost about 30% less per kWh than lithium iron phosphate cells at pack level.",
         "Sodium-ion energy density is still roughly 160 Wh/kg, below the 250 Wh/kg of NMC cells.",
         "Grid storage buyers care more about cost per cycle than about energy density."],
        ["Sodium-ion cells keep 90% of their capacity at -20 C, where LFP cells keep 70%."],
    ],
}
# What each researcher, in round 2, looks up in the other's findings.
CROSS_CHECKS = {
    "agent:researcher-a": "How much do sodium-ion cells cost per kWh?",
    "agent:researcher-b": "How many solid-state cells does the pilot line produce?",
}
QUESTION = "Which battery chemistry is cheaper per kWh for grid storage?"
ROUNDS = 2


def _merge(a: dict[str, str], b: dict[str, str]) -> dict[str, str]:
    return {**a, **b}


class TeamState(TypedDict, total=False):
    round: int
    messages: Annotated[list[AnyMessage], add_messages]  # the team's transcript: every tool call, result, answer
    private_notes: Annotated[dict[str, str], _merge]  # agent -> note id: knowing an id grants nothing
    recalls: Annotated[list[dict[str, Any]], operator.add]
    denials: Annotated[list[dict[str, Any]], operator.add]
    corrections: Annotated[list[str], operator.add]
    migrations: Annotated[list[dict[str, Any]], operator.add]
    generations: Annotated[list[dict[str, Any]], operator.add]


class TimedTransport:
    """Times every syscall the team makes (the runtime owns and closes the transport it wraps)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.seconds: dict[str, list[float]] = defaultdict(list)
        self._lock = threading.Lock()

    def call(self, principal: str, syscall: dict[str, Any], trace_id: str | None = None) -> dict[str, Any]:
        start = time.perf_counter()
        try:
            return self.inner.call(principal, syscall, trace_id)
        finally:
            with self._lock:
                self.seconds[syscall.get("op", "?")].append(time.perf_counter() - start)

    def call_batch(self, principal: str, syscalls: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [self.call(principal, s) for s in syscalls]

    def close(self) -> None:
        """Nothing to close: the runtime closes the transport this one wraps."""


def _recalled(agent: str, result: ToolMessage) -> list[dict[str, Any]]:
    return [{"by": agent, "id": m["id"], "content": m["content"]} for m in result.artifact]


def _act(tools: MemoryTools, name: str, args: dict[str, Any], config: RunnableConfig, agent: str
         ) -> tuple[list[AnyMessage], ToolMessage]:
    """One deterministic tool call by ``agent``: the messages for the transcript and the result."""
    request, result = call_tool(getattr(tools, name), args, config, agent=agent)
    return [request, result], result


class ResearchTeam:
    """The agents, their tools and the workflow graph of one run."""

    def __init__(self, transport: TimedTransport, run_id: str) -> None:
        self.clients = {a: Memos(transport, a) for a in (PLANNER, *RESEARCHERS, WRITER)}
        self.team = f"{TEAM_ROOT}/{run_id}"
        self.plan_namespace = (*self.team.split("/"), "plan")
        self.plan_cube = f"{self.team}/plan"
        self.private = {a: f"agent/{a.split(':')[1]}/notes" for a in RESEARCHERS}
        self.tools = {a: MemoryTools(c, cube=self.team) for a, c in self.clients.items()}
        # Each agent reads the planner's plan through a store acting as itself (the planner grants the read).
        self.stores = {a: MemosStore(c) for a, c in self.clients.items()}
        writer = self.clients[WRITER]
        self.writer_agent = MemoryAgent(
            writer, MemosChatModel(client=writer, max_new_tokens=MAX_NEW_TOKENS), cubes=[self.team],
            write_cube=self.team, token_budget=160, k=3, tags=("draft",),
            system_prompt="You are the writer of a research team. Answer in one short sentence.",
        ).compile()

    # ------------------------------------------------------------------------------------------ nodes

    def planner(self, state: TeamState, config: RunnableConfig, store: BaseStore) -> dict[str, Any]:
        me, tools, round_ = PLANNER, self.tools[PLANNER], state.get("round", 0) + 1
        update: dict[str, Any] = {"round": round_, "messages": [], "recalls": [], "migrations": []}
        if round_ == 1:
            self.clients[me].create_cube(self.team, "findings of the research team, one run")
            for member in (*RESEARCHERS, WRITER):
                self.clients[me].grant(self.team, member, "write")
            plan = {"question": QUESTION, "assignments": {a: QUESTION for a in RESEARCHERS}}
        else:
            messages, drafts = _act(tools, "recall", {"query": QUESTION, "tags": ["draft"], "k": 1}, config, me)
            update["messages"] += messages
            update["recalls"] += _recalled(me, drafts)
            hot = self._promote_most_read()
            update["migrations"].append(hot)
            plan = {"question": f"Our most used finding is: {hot['content']} What does it mean for grid storage?",
                    "assignments": CROSS_CHECKS}
        # The plan is a LangGraph store item: round 2's plan is version 2 of the same memory.
        store.put(self.plan_namespace, "plan", {"round": round_, **plan})
        if round_ == 1:
            for member in (*RESEARCHERS, WRITER):
                self.clients[me].grant(self.plan_cube, member, "read")
        return update

    def _promote_most_read(self) -> dict[str, Any]:
        """Migrate the team's most-read finding to activation memory (a policy would do this on a schedule)."""
        findings = self.clients[PLANNER].list(self.team, tags=["finding"], limit=1000)
        hottest = max(findings, key=lambda m: (m.reads, -m.created_at.timestamp()))
        planner = self.clients[PLANNER]
        # The same question with the same memory, before (its text is prefilled) and after (its KV cache is
        # injected): the time to first token is what activation memory buys; the first token is the same.
        before = planner.generate(QUESTION, memory=[hottest.id], max_new_tokens=1)
        (migrated,) = planner.migrate(hottest.id, Kind.ACTIVATION)
        after = planner.generate(QUESTION, memory=[hottest.id], max_new_tokens=1)
        return {"id": migrated.id, "content": migrated.content, "reads": hottest.reads, "kind": migrated.kind,
                "version": migrated.version, "by": PLANNER,
                "ttft_s": {"as_text": round(before.ttft_s, 4), "as_kv_cache": round(after.ttft_s, 4)},
                "prompt_tokens": {"as_text": before.prompt_tokens, "as_kv_cache": after.prompt_tokens},
                "cached_tokens": after.cached_tokens, "same_first_token": before.text == after.text}

    def researcher(self, me: str) -> Any:
        def node(state: TeamState, config: RunnableConfig) -> dict[str, Any]:
            round_, tools = state["round"], self.tools[me]
            update: dict[str, Any] = {"messages": [], "recalls": [], "private_notes": {}}
            based_on: list[str] = []
            if round_ > 1:
                query = self.stores[me].get(self.plan_namespace, "plan").value["assignments"][me]
                messages, found = _act(tools, "recall", {"query": query, "tags": ["finding"], "k": 1}, config, me)
                update["messages"] += messages
                update["recalls"] += _recalled(me, found)
                based_on = [m["id"] for m in found.artifact]
            for fact in SOURCES[me][round_ - 1]:
                messages, _ = _act(tools, "remember", {"content": fact, "tags": ["finding", f"round-{round_}"],
                                                       "based_on": based_on}, config, me)
                update["messages"] += messages
            if round_ == 1:
                self.clients[me].create_cube(self.private[me], "private scratchpad", exist_ok=True)
                hunch = f"Private hunch of {me}: the Nagoya numbers may be optimistic."
                messages, note = _act(tools, "remember", {"content": hunch, "cube": self.private[me]}, config, me)
                update["messages"] += messages
                update["private_notes"][me] = note.artifact["id"]
            return update

        return node

    def writer(self, state: TeamState, config: RunnableConfig) -> dict[str, Any]:
        me, tools, round_ = WRITER, self.tools[WRITER], state["round"]
        plan = self.stores[me].get(self.plan_namespace, "plan").value
        update: dict[str, Any] = {"messages": [], "recalls": [], "denials": [], "corrections": []}
        messages, found = _act(tools, "recall", {"query": plan["question"], "tags": ["finding"], "k": 3}, config, me)
        update["messages"] += messages
        update["recalls"] += _recalled(me, found)
        if round_ == 1:
            # A correction: version 2 of a finding, conditional on the version the writer read.
            messages, hit = _act(tools, "recall", {"query": "energy density of sodium-ion cells", "k": 1,
                                                   "tags": ["finding"]}, config, me)
            wrong = hit.artifact[0]
            messages2, fixed = _act(tools, "update_memory", {
                "memory_id": wrong["id"], "content": wrong["content"].replace("160", "175"),
                "expected_version": wrong["version"]}, config, me)
            update["messages"] += messages + messages2
            update["corrections"].append(fixed.artifact["id"])
            # Knowing a private note's id grants nothing: the kernel refuses, and audits, every attempt.
            note = state["private_notes"]["agent:researcher-a"]
            for name, args in (("recall", {"query": "Nagoya", "cubes": [self.private["agent:researcher-a"]]}),
                               ("memory_history", {"memory_id": note})):
                messages, refused = _act(tools, name, args, config, me)
                update["messages"] += messages
                update["denials"].append({"agent": me, "tool": name, "status": refused.status,
                                          "error": refused.content})
        question = HumanMessage(plan["question"], name=PLANNER)
        out = self.writer_agent.invoke({"messages": [question]}, config)
        answer = out["messages"][-1]
        meta = answer.response_metadata
        uses = Counter(i["use"] for i in out["context"]["items"])
        update["messages"] += out["messages"]
        update["generations"] = [{
            "round": round_, "agent": me, "question": question.content, "answer": answer.content,
            "memory": {"kv": uses["kv"], "text": uses["text"], "skipped": uses["skip"]},
            "prompt_tokens": meta["prompt_tokens"], "cached_tokens": meta["cached_tokens"],
            "ttft_s": round(meta["ttft_s"], 3), "written": out["written"],
        }]
        return update

    def graph(self) -> Any:
        builder = StateGraph(TeamState)
        builder.add_node("planner", self.planner)
        for name in RESEARCHERS:
            builder.add_node(name.split(":")[1], self.researcher(name))
        builder.add_node("writer", self.writer)
        builder.add_edge(START, "planner")
        for name in RESEARCHERS:
            builder.add_edge("planner", name.split(":")[1])
        builder.add_edge([n.split(":")[1] for n in RESEARCHERS], "writer")
        builder.add_conditional_edges("writer", lambda s: "planner" if s["round"] < ROUNDS else END)
        return builder.compile(store=self.stores[PLANNER])


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)


def run(runtime: Runtime) -> dict[str, Any]:
    """Run the workflow on ``runtime`` (which needs the model host); return a summary (printed by ``memos run``)."""
    started = datetime.now(UTC)
    run_id = uuid.uuid4().hex[:8]
    thread = f"research-{run_id}"
    transport = TimedTransport(runtime.transport)
    team = ResearchTeam(transport, run_id)
    planner = team.clients[PLANNER]
    graph = team.graph()
    state = graph.invoke({}, {"configurable": {"thread_id": thread}})

    memories = planner.list(team.team, states=("active", "archived", "deleted"), limit=1000)
    by_kind: dict[str, Counter[str]] = defaultdict(Counter)
    for m in memories:
        by_kind[m.kind][m.state] += 1
    history = [(m, v) for m in memories for v in planner.history(m.id)]
    (plan,) = planner.list(team.plan_cube)
    corrected = planner.history(state["corrections"][0])
    owner_a = team.clients["agent:researcher-a"]
    audited = [f"{r.principal} {r.op} on {r.cube}: {r.outcome}"
               for r in owner_a.audit(team.private["agent:researcher-a"], limit=1000)
               if r.outcome != "ok" and r.at >= started]
    # Who wrote each recalled memory: the author of its first version (a migration's author is whoever migrated).
    writers = {i: planner.history(i)[0].provenance.author for i in {r["id"] for r in state["recalls"]}}
    seconds = transport.seconds
    quick = [s for op, times in seconds.items() if op not in ("generate", "migrate") for s in times]
    return {
        "thread": thread,
        "team_cube": team.team,
        "rounds": state["round"],
        "transcript_messages": len(state["messages"]),
        "plan_versions": [(v.version, v.provenance.author, v.provenance.source_refs[0])
                          for v in planner.history(plan.id)],
        "recalled_across_agents": sorted({(r["by"], writers[r["id"]], r["content"]) for r in state["recalls"]
                                          if r["by"] != writers[r["id"]]}),
        "corrected": {"id": corrected[0].id,
                      "versions": [(v.version, v.provenance.author, v.content) for v in corrected]},
        "denials": state["denials"],
        "audited_denials": audited,
        "migrations": state["migrations"],
        "generations": state["generations"],
        "team_cube_history": [
            f"{m.id} v{v.version} {v.kind} {v.provenance.operation} by {v.provenance.author} "
            f"[{', '.join(v.provenance.source_refs)}]: {v.content[:60]}"
            for m, v in history
        ],
        "versions_by_agent": {a: sum(1 for _, v in history if v.provenance.author == a)
                              for a in (PLANNER, *RESEARCHERS, WRITER)},
        "memories_by_kind": {kind: dict(states) for kind, states in by_kind.items()},
        "latency_ms": {
            "syscalls": sum(len(t) for t in seconds.values()),
            "p50": _percentile(quick, 0.5),
            "p95": _percentile(quick, 0.95),
            "generate": [round(s * 1000) for s in seconds["generate"]],
            "migrate": [round(s * 1000) for s in seconds["migrate"]],
        },
    }


def report(summary: dict[str, Any]) -> Any:
    """The run as a person reads it (``memos run`` prints this; ``memos run --json`` prints ``summary``)."""
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text
    from rich.tree import Tree

    def table(title: str, *columns: str) -> Table:
        t = Table(title=title, title_justify="left", title_style="bold", box=box.SIMPLE_HEAD, show_edge=False)
        for column in columns:
            t.add_column(column, overflow="fold")
        return t

    def short(text: str, n: int = 70) -> str:
        return text if len(text) <= n else text[: n - 1] + "…"

    parts: list[Any] = [Text(f"Research team, {summary['rounds']} rounds, thread {summary['thread']}, "
                             f"team cube {summary['team_cube']}", style="bold")]
    agents = Tree("agents (versions they wrote in the team cube)")
    roles = {PLANNER: "plans, promotes the most-read finding", WRITER: "corrects, drafts answers with the model",
             **{a: "remembers findings, keeps a private note" for a in RESEARCHERS}}
    for agent, count in summary["versions_by_agent"].items():
        agents.add(f"{agent}: {roles[agent]} (versions: {count})")
    parts.append(agents)

    recalls = table("Who recalled whose memory", "recalled by", "written by", "memory")
    for by, author, content in summary["recalled_across_agents"]:
        recalls.add_row(by, author, short(content))
    parts.append(recalls)

    corrected = table(f"The correction ({summary['corrected']['id']})", "version", "author", "content")
    for version, author, content in summary["corrected"]["versions"]:
        corrected.add_row(str(version), author, short(content))
    parts.append(corrected)

    denials = table("Refused (and audited in the owner's log)", "agent", "tool", "answer")
    for d in summary["denials"]:
        denials.add_row(d["agent"], d["tool"], short(d["error"], 90))
    parts.append(denials)
    parts.append(Text("audit: " + "; ".join(summary["audited_denials"])))

    migrations = table("Migration to activation memory (the same question, the same memory)", "memory", "reads",
                       "TTFT as text", "TTFT as KV cache", "gain", "first token same")
    for m in summary["migrations"]:
        text_s, kv_s = m["ttft_s"]["as_text"], m["ttft_s"]["as_kv_cache"]
        migrations.add_row(f"{m['id']} v{m['version']}: {short(m['content'], 40)}", str(m["reads"]),
                           f"{text_s * 1000:.0f} ms", f"{kv_s * 1000:.0f} ms ({m['cached_tokens']} tokens cached)",
                           f"{text_s / kv_s:.1f}x" if kv_s > 0 else "-", "yes" if m["same_first_token"] else "no")
    parts.append(migrations)

    generations = table("The writer's answers (local model)", "round", "memory", "prompt / cached tokens", "TTFT",
                        "answer")
    for g in summary["generations"]:
        memory = f"{g['memory']['kv']} as KV, {g['memory']['text']} as text, {g['memory']['skipped']} skipped"
        generations.add_row(str(g["round"]), memory, f"{g['prompt_tokens']} / {g['cached_tokens']}",
                            f"{g['ttft_s'] * 1000:.0f} ms", short(g["answer"], 60))
    parts.append(generations)

    kinds = ", ".join(f"{kind}: " + ", ".join(f"{n} {state}" for state, n in states.items())
                      for kind, states in summary["memories_by_kind"].items())
    latency = summary["latency_ms"]
    parts.append(Text(f"memories by kind: {kinds}\nsyscalls: {latency['syscalls']}, p50 {latency['p50']} ms, "
                      f"p95 {latency['p95']} ms (without generate and migrate)"))
    return Group(*parts)


if __name__ == "__main__":
    from memos.cli import main

    raise SystemExit(main(["run", __file__]))
