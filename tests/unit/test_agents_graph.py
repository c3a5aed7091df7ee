"""The memory-aware agent graph with langchain_core's fake chat models: assemble_context -> respond -> write_back,
with provenance naming the agent, the thread and the messages."""

from __future__ import annotations

import itertools

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.checkpoint.memory import InMemorySaver

from memos.agents.graph import MemoryAgent
from memos.errors import PermissionDenied


class Prompts(BaseCallbackHandler):
    """Records the messages every chat model call was given."""

    def __init__(self) -> None:
        self.seen: list[list] = []

    def on_chat_model_start(self, serialized, messages, **kwargs) -> None:
        self.seen.extend(messages)


def fake(*answers: str) -> GenericFakeChatModel:
    return GenericFakeChatModel(messages=itertools.cycle(AIMessage(a) for a in answers))


@pytest.fixture
def team(mem):
    mem.create_cube("team/research")
    facts = [mem.write("team/research", text) for text in (
        "Sodium-ion cells cost about 30% less per kWh than LFP cells",
        "Dendrite growth limits the cycle life of solid-state cells",
        "The pilot line in Nagoya produced 1,200 cells per day",
    )]
    return mem, facts


def config(thread: str, prompts: Prompts | None = None) -> dict:
    return {"configurable": {"thread_id": thread}, "callbacks": [prompts] if prompts else []}


def test_the_answer_uses_the_assembled_memory_and_is_written_back_with_provenance(team):
    mem, facts = team
    prompts = Prompts()
    agent = MemoryAgent(mem, fake("Sodium-ion is cheaper per kWh."), cubes=["team/research"],
                        write_cube="team/research", k=2)
    out = agent.compile().invoke({"messages": [HumanMessage("Which cells cost less per kWh?")]},
                                 config("t-1", prompts))
    used = [i for i in out["context"]["items"] if i["use"] != "skip"]
    assert used and used[0]["memory_id"] == facts[0].id
    (system, question) = prompts.seen[0]
    assert f"- {facts[0].content}" in system.content and question.content == "Which cells cost less per kWh?"
    human, answer = out["messages"]
    assert answer.name == "agent:alice"
    (written,) = out["written"]
    memory = mem.read(written)
    assert memory.content == "Sodium-ion is cheaper per kWh." and memory.tags == ("learned",)
    assert memory.provenance.author == "agent:alice" and memory.provenance.source == "generated"
    assert memory.provenance.trust == "untrusted"  # the model's own words, not an observed fact
    assert memory.provenance.source_refs == (f"thread/t-1/msg/{human.id}", f"thread/t-1/msg/{answer.id}")
    assert [(r.id, r.version) for r in memory.provenance.derived_from] == [(i["memory_id"], i["version"]) for i in used]
    assert memory.metadata == {"thread": "t-1"}


def test_what_was_learned_in_one_thread_is_recalled_in_another(team):
    mem, _ = team
    mem.create_cube("agent/alice/notes")
    agent = MemoryAgent(mem, fake("The launch moved to Monday."), cubes=["agent/alice/notes"],
                        write_cube="agent/alice/notes")
    graph = agent.compile(checkpointer=InMemorySaver())
    graph.invoke({"messages": [HumanMessage("When is the launch?")]}, config("t-1"))
    prompts = Prompts()
    out = graph.invoke({"messages": [HumanMessage("Remind me: when is the launch?")]}, config("t-2", prompts))
    assert "- The launch moved to Monday." in prompts.seen[0][0].content
    assert len(out["messages"]) == 2  # a new thread starts a new conversation; memory crosses threads


def test_learn_decides_what_is_written(team):
    mem, _ = team
    agent = MemoryAgent(mem, fake("Fact one. Fact two."), cubes=["team/research"], write_cube="team/research",
                        learn=lambda answer: [s.strip() + "." for s in answer.text.split(".") if s.strip()])
    out = agent.compile().invoke({"messages": [HumanMessage("facts?")]}, config("t-1"))
    assert [mem.read(i).content for i in out["written"]] == ["Fact one.", "Fact two."]
    silent = MemoryAgent(mem, fake("nothing new"), cubes=["team/research"], write_cube="team/research",
                         learn=lambda answer: [])
    assert silent.compile().invoke({"messages": [HumanMessage("facts?")]}, config("t-1"))["written"] == []


def test_a_turn_without_memory_is_still_generated(mem):
    mem.create_cube("empty")
    agent = MemoryAgent(mem, fake("hello"), cubes=["empty"], write_cube="empty")
    out = agent.compile().invoke({"messages": [HumanMessage("hi")]}, config("t-1"))
    memory = mem.read(out["written"][0])
    assert memory.provenance.source == "generated" and memory.provenance.derived_from == ()
    assert memory.provenance.trust == "untrusted"


def test_a_learned_answer_ranks_below_an_observed_fact_of_equal_relevance(mem):
    mem.create_cube("team/x")
    agent = MemoryAgent(mem, fake("The launch is on Monday."), cubes=["team/x"], write_cube="team/x")
    (learned,) = agent.compile().invoke({"messages": [HumanMessage("launch?")]}, config("t-1"))["written"]
    observed = mem.write("team/x", "The launch is on Monday.")
    assert [h.memory.id for h in mem.search("launch Monday", "team/x")] == [observed.id, learned]
    assert mem.write("team/x", "x y z", source="generated", trust="trusted").provenance.trust == "untrusted"


def test_write_back_needs_a_thread(team):
    mem, _ = team
    agent = MemoryAgent(mem, fake("x"), cubes=["team/research"], write_cube="team/research")
    with pytest.raises(ValueError, match="must name its thread"):
        agent.compile().invoke({"messages": [HumanMessage("hi")]})
    with_default = MemoryAgent(mem, fake("x"), cubes=["team/research"], write_cube="team/research", thread_id="t-0")
    out = with_default.compile().invoke({"messages": [HumanMessage("hi")]})
    assert mem.read(out["written"][0]).provenance.source_refs[0].startswith("thread/t-0/msg/")


def test_the_agent_reads_only_what_its_principal_may(team):
    mem, _ = team
    outsider = MemoryAgent(mem.as_principal("agent:mallory"), fake("x"), cubes=["team/research"], write_cube="team/research")
    with pytest.raises(PermissionDenied):
        outsider.compile().invoke({"messages": [HumanMessage("secrets?")]}, config("t-1"))
    assert [r.principal for r in mem.audit("team/research") if r.outcome == "denied"] == ["agent:mallory"]
