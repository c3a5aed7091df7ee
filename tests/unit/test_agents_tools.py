"""The memory tools: thin wrappers over syscalls, acting as the agent (ACLs apply), naming thread and message in
provenance, reporting refusals to the agent as errors that the audit log also holds."""

from __future__ import annotations

import pytest
from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition

from memos.agents.tools import MemoryTools, call_tool

THREAD = {"configurable": {"thread_id": "t-7"}}


@pytest.fixture
def alice(mem) -> MemoryTools:
    mem.create_cube("team/research")
    mem.create_cube("agent/alice/notes")
    mem.grant("team/research", "agent:bob", "write")
    return MemoryTools(mem, cube="team/research")


@pytest.fixture
def bob(mem, alice) -> MemoryTools:
    return MemoryTools(mem.as_principal("agent:bob"), cube="team/research")


def test_remember_writes_as_the_agent_naming_thread_and_message(alice, mem):
    request, result = call_tool(alice.remember, {"content": "Sodium-ion is cheaper", "tags": ["finding"]}, THREAD,
                                agent="alice")
    assert result.status == "success" and request.id == result.tool_call_id
    memory = mem.read(result.artifact["id"])
    assert memory.cube == "team/research" and memory.tags == ("finding",)
    assert memory.provenance.author == "agent:alice"
    assert memory.provenance.source_refs == (f"thread/t-7/msg/{request.id}",)
    assert memory.metadata == {"thread": "t-7"}


def test_remember_pins_the_versions_it_was_based_on(alice, mem):
    source = mem.write("team/research", "Cells cost 100 per kWh")
    mem.update(source.id, content="Cells cost 90 per kWh")
    _, result = call_tool(alice.remember, {"content": "Cheaper than last year", "based_on": [source.id]}, THREAD)
    assert mem.read(result.artifact["id"]).provenance.derived_from[0].model_dump() == {"id": source.id, "version": 2}


def test_a_write_without_a_thread_fails_loudly_unless_the_toolkit_has_one(mem, alice):
    with pytest.raises(ValueError, match="must name its thread"):
        call_tool(alice.remember, {"content": "orphan"})
    with_default = MemoryTools(mem, cube="team/research", thread_id="t-default")
    _, result = call_tool(with_default.remember, {"content": "has a thread"})
    assert mem.read(result.artifact["id"]).provenance.source_refs[0].startswith("thread/t-default/msg/call_")


def test_recall_finds_by_meaning_and_filters_by_tags_and_thread(alice, mem):
    call_tool(alice.remember, {"content": "the borrow checker rejects dangling references", "tags": ["rust"]}, THREAD)
    call_tool(alice.remember, {"content": "green tea is steeped at eighty degrees"}, {"configurable": {"thread_id": "t-8"}})
    _, result = call_tool(alice.recall, {"query": "borrow checker"}, THREAD)
    assert result.content.splitlines()[0].endswith("by agent:alice: the borrow checker rejects dangling references")
    assert result.artifact[0]["score"] > 0
    _, tagged = call_tool(alice.recall, {"query": "tea", "tags": ["rust"]}, THREAD)
    assert [m["tags"] for m in tagged.artifact] == [["rust"]]
    _, scoped = call_tool(alice.recall, {"query": "tea", "this_thread_only": True}, THREAD)
    assert [m["metadata"]["thread"] for m in scoped.artifact] == ["t-7"]
    _, nothing = call_tool(alice.recall, {"query": "tea", "cubes": ["agent/alice/notes"]}, THREAD)
    assert (nothing.content, nothing.artifact, nothing.status) == ("no memories found", [], "success")


def test_update_is_a_new_version_and_refuses_a_stale_expected_version(alice, bob, mem):
    _, written = call_tool(alice.remember, {"content": "density is 160 Wh/kg"}, THREAD)
    memory_id = written.artifact["id"]
    request, updated = call_tool(bob.update_memory, {"memory_id": memory_id, "content": "density is 175 Wh/kg",
                                                     "expected_version": 1}, THREAD)
    assert updated.artifact["version"] == 2
    _, stale = call_tool(bob.update_memory, {"memory_id": memory_id, "content": "x", "expected_version": 1}, THREAD)
    assert stale.status == "error" and stale.content.startswith("conflict:")
    _, history = call_tool(alice.memory_history, {"memory_id": memory_id}, THREAD)
    lines = history.content.splitlines()
    assert lines[0].startswith("v1 write by agent:alice (thread/t-7/msg/call_")
    assert lines[1] == f"v2 update by agent:bob (thread/t-7/msg/{request.id}): density is 175 Wh/kg"


def test_forget_tombstones_and_recall_no_longer_finds_it(alice, mem):
    _, written = call_tool(alice.remember, {"content": "temporary fact about zebras"}, THREAD)
    _, forgotten = call_tool(alice.forget, {"memory_id": written.artifact["id"]}, THREAD)
    assert forgotten.artifact["state"] == "deleted"
    _, recalled = call_tool(alice.recall, {"query": "zebras"}, THREAD)
    assert recalled.artifact == []


def test_share_gives_a_teammate_access_to_a_private_cube(alice, bob, mem):
    mem.write("agent/alice/notes", "the Nagoya numbers may be optimistic")
    _, before = call_tool(bob.recall, {"query": "Nagoya", "cubes": ["agent/alice/notes"]}, THREAD)
    assert before.status == "error"
    _, shared = call_tool(alice.share, {"cube": "agent/alice/notes", "principal": "agent:bob"}, THREAD)
    assert shared.status == "success"
    _, after = call_tool(bob.recall, {"query": "Nagoya", "cubes": ["agent/alice/notes"]}, THREAD)
    assert after.artifact[0]["content"] == "the Nagoya numbers may be optimistic"


def test_no_tool_lets_an_agent_into_another_agents_private_cube_and_every_attempt_is_audited(alice, bob, mem):
    note = mem.write("agent/alice/notes", "private hunch")
    attempts = {
        "recall": {"query": "hunch", "cubes": ["agent/alice/notes"]},
        "memory_history": {"memory_id": note.id},
        "update_memory": {"memory_id": note.id, "content": "overwritten"},
        "forget": {"memory_id": note.id},
        "remember": {"content": "planted", "cube": "agent/alice/notes"},
        "share": {"cube": "agent/alice/notes", "principal": "agent:bob", "right": "write"},
        "ingest": {"messages": [{"content": "I planted a fake fact here."}], "cube": "agent/alice/notes"},
    }
    assert set(attempts) == {t.name for t in bob.tools}
    for tool in bob.tools:
        _, result = call_tool(tool, attempts[tool.name], THREAD)
        assert result.status == "error", tool.name
        assert result.content.split(":")[0] in ("denied", "not_found"), result.content
        assert "private hunch" not in result.content
    assert mem.read(note.id).version == 1 and mem.read(note.id).content == "private hunch"
    denials = [r for r in mem.audit("agent/alice/notes") if r.outcome == "denied"]
    assert len(denials) == len(attempts) and {r.principal for r in denials} == {"agent:bob"}


def test_tools_run_in_a_langgraph_tool_node_with_the_runs_thread(alice, mem):
    script = FakeMessagesListChatModel(responses=[
        AIMessage(content="", tool_calls=[{"name": "remember", "args": {"content": "LFP cells are cheap"}, "id": "c1"}]),
        AIMessage(content="noted"),
    ])
    builder = StateGraph(MessagesState)
    builder.add_node("agent", lambda state: {"messages": [script.invoke(state["messages"])]})
    builder.add_node("tools", ToolNode(alice.tools))
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", tools_condition)
    builder.add_edge("tools", "agent")
    out = builder.compile().invoke({"messages": [HumanMessage("remember that LFP is cheap")]},
                                   {"configurable": {"thread_id": "t-graph"}})
    assert [m.type for m in out["messages"]] == ["human", "ai", "tool", "ai"]
    memory = mem.read(out["messages"][2].artifact["id"])
    assert memory.provenance.source_refs == ("thread/t-graph/msg/c1",)


def test_recall_skips_a_missing_cube_of_a_list_and_says_so(alice, bob, mem):
    call_tool(alice.remember, {"content": "the borrow checker rejects dangling references"}, THREAD)
    _, result = call_tool(alice.recall, {"query": "borrow checker", "cubes": ["team/research", "team/gone"]}, THREAD)
    assert result.status == "success"
    assert result.content.splitlines()[0].startswith("skipped cube team/gone: not_found:")
    assert result.artifact[0]["content"] == "the borrow checker rejects dangling references"
    _, denied = call_tool(bob.recall, {"query": "x", "cubes": ["agent/alice/notes", "team/research"]}, THREAD)
    assert denied.status == "success" and denied.content.startswith("skipped cube agent/alice/notes: denied:")
    _, none = call_tool(alice.recall, {"query": "x", "cubes": ["team/gone"]}, THREAD)
    assert none.status == "error" and none.content.startswith("not_found:")


def test_ingest_tool_extracts_facts_naming_the_thread_and_message(alice, mem):
    request, result = call_tool(alice.ingest, {"messages": [{"speaker": "Ana", "content": "I live in Lisbon. Hi!"}]},
                                THREAD)
    assert result.status == "success" and result.content.startswith("add: Ana lives in Lisbon.")
    (decision,) = result.artifact["decisions"]
    memory = mem.read(decision["memory"]["id"])
    assert memory.provenance.source_refs == (f"thread/t-7/msg/{request.id}#0",)
    assert memory.provenance.operation == "ingest:rules"
