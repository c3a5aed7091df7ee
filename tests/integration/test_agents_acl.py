"""Agents over the Ray-hosted kernel: no tool, store or graph lets an agent into another agent's private cube (and
the kernel audits every attempt); every memory an agent writes names the agent and the thread."""

from __future__ import annotations

import itertools
import uuid

import pytest
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.graph import START, StateGraph
from langgraph.store.base import BaseStore
from typing_extensions import TypedDict

from memos.agents import MemoryAgent, MemoryTools, MemosStore, call_tool
from memos.errors import PermissionDenied

pytestmark = pytest.mark.integration


@pytest.fixture
def agents(ray_runtime):
    """Two agents with unique names (the Ray runtime is shared by the session), each with a private cube."""
    run = uuid.uuid4().hex[:8]
    owner, intruder = (ray_runtime.client(f"agent:{who}-{run}") for who in ("owner", "intruder"))
    owner.create_cube(f"agent/owner-{run}/notes")
    intruder.create_cube(f"agent/intruder-{run}/notes")
    return owner, intruder, f"agent/owner-{run}/notes", f"agent/intruder-{run}/notes"


def fake(answer: str) -> GenericFakeChatModel:
    return GenericFakeChatModel(messages=itertools.repeat(AIMessage(answer)))


def test_no_tool_store_or_graph_reads_another_agents_private_cube_and_every_attempt_is_audited(agents):
    owner, intruder, private, own = agents
    note = owner.write(private, "the Nagoya numbers may be optimistic")
    config = {"configurable": {"thread_id": "t-intruder"}}
    tools = MemoryTools(intruder, cube=own)
    attempts = {
        "recall": {"query": "Nagoya", "cubes": [private]},
        "memory_history": {"memory_id": note.id},
        "update_memory": {"memory_id": note.id, "content": "overwritten"},
        "forget": {"memory_id": note.id},
        "remember": {"content": "planted", "cube": private},
        "share": {"cube": private, "principal": intruder.principal, "right": "read"},
        "ingest": {"messages": [{"content": "Nagoya ships 40 units", "speaker": "mallory"}], "cube": private},
    }
    assert set(attempts) == {t.name for t in tools.tools}
    for tool in tools.tools:
        _, result = call_tool(tool, attempts[tool.name], config)
        assert result.status == "error" and result.content.split(":")[0] in ("denied", "not_found"), result.content
        assert "Nagoya numbers" not in result.content
    namespace = tuple(private.split("/"))
    store = MemosStore(intruder)
    with pytest.raises(PermissionDenied):
        store.get(namespace, note.id)
    assert store.search(namespace) == [] and namespace not in store.list_namespaces()
    with pytest.raises(PermissionDenied):
        MemoryAgent(intruder, fake("x"), cubes=[private], write_cube=own).compile().invoke(
            {"messages": [HumanMessage("What does the owner suspect?")]}, config)

    assert [(v.version, v.content) for v in owner.history(note.id)] == [(1, "the Nagoya numbers may be optimistic")]
    denied = [r for r in owner.audit(private, limit=1000) if r.outcome == "denied"]
    assert {r.principal for r in denied} == {intruder.principal}
    assert sorted(r.op for r in denied) == sorted(
        ["cube_info", "history", "update", "delete", "write", "ingest", "grant", "list", "assemble_context"])


class Visits(TypedDict):
    count: int


def test_every_memory_an_agent_writes_names_the_agent_and_the_thread(agents):
    owner, _, private, _ = agents
    thread = f"t-{uuid.uuid4().hex[:8]}"
    config = {"configurable": {"thread_id": thread}}
    tools = MemoryTools(owner, cube=private)
    _, remembered = call_tool(tools.remember, {"content": "Sodium-ion cells cost less per kWh"}, config)
    call_tool(tools.update_memory, {"memory_id": remembered.artifact["id"], "content": "Sodium-ion costs 30% less"},
              config)
    MemoryAgent(owner, fake("Sodium-ion is cheaper."), cubes=[private], write_cube=private).compile().invoke(
        {"messages": [HumanMessage("Which is cheaper?")]}, config)

    def count(state: Visits, store: BaseStore) -> dict:
        store.put(tuple(private.split("/")), "visits", {"n": state.get("count", 0) + 1})
        return {"count": 1}

    builder = StateGraph(Visits)
    builder.add_node("count", count)
    builder.add_edge(START, "count")
    builder.compile(store=MemosStore(owner)).invoke({"count": 0}, config)

    versions = [v for m in owner.list(private, limit=1000) for v in owner.history(m.id)]
    assert len(versions) == 4  # remember v1, its update v2, the graph's answer, the store's item
    for version in versions:
        assert version.provenance.author == owner.principal
        assert version.provenance.source_refs and all(r.startswith(f"thread/{thread}") for r in version.provenance.source_refs)
        assert version.metadata["thread"] == thread
