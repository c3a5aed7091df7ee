"""Quick start of docs/agents.md: memos in an ordinary LangGraph tool-calling app, as tools and as the store.

Two agents, alice and bob, run the same graph (agent -> tools -> agent) but each is compiled with **its own**
``MemosStore`` and ``MemoryTools`` over **its own** client: one identity per agent. The kernel checks every call
against that principal, writes it into the provenance of what the agent remembers, and audits what it refuses; a
store or toolkit shared by two agents would make them one principal to memos.

- alice remembers a finding in the team cube (a tool call) and keeps her last question in her private notes
  (a store item, ``("agent", "alice", "notes")`` is the cube ``agent/alice/notes``);
- bob recalls the finding from the team cube (his recall finds alice's memory, with her as its author), and his
  store is refused alice's notes (PermissionDenied, in alice's audit log).

The chat model is a scripted tool caller (``ToolCallingScript``): it turns "remember: ..." and "recall: ..." into
the tool calls a real model would make, so this file runs without a model server. For a real model, replace it
with ``OpenAICompatibleChatModel(base_url=..., model=...)``; the graph's ``bind_tools`` call stays as it is.

Run it: ``.venv/bin/python examples/agents_quickstart.py [DATA_DIR]`` (default: $MEMOS_HOME or ~/.memos; no Ray,
no language model: only the embedder). tests/integration/test_examples.py runs it.
"""

import sys
import uuid
from pathlib import Path
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition
from langgraph.store.base import BaseStore

from memos.agents import MemoryTools, MemosStore
from memos.client import Memos
from memos.config import Settings
from memos.errors import PermissionDenied
from memos.runtime import Runtime

TEAM = "team/quickstart"


class ToolCallingScript(BaseChatModel):
    """A stand-in for a tool-calling chat model: "remember: X" -> ``remember(content=X, cube=TEAM)``,
    "recall: Q" -> ``recall(query=Q)``; after a tool result it answers with that result."""

    def bind_tools(self, tools: Any, **kwargs: Any) -> "ToolCallingScript":
        return self  # the script knows its tools; a real model gets their schemas here

    @property
    def _llm_type(self) -> str:
        return "tool-calling-script"

    def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None,
                  **kwargs: Any) -> ChatResult:
        last = messages[-1]
        if isinstance(last, ToolMessage):
            reply = AIMessage(content=f"({last.name}) {last.content}")
        else:
            verb, _, text = str(last.content).partition(": ")
            args = {"content": text, "cube": TEAM} if verb == "remember" else {"query": text, "cubes": [TEAM]}
            reply = AIMessage(content="", tool_calls=[{"name": verb, "args": args, "id": f"call-{uuid.uuid4().hex[:8]}"}])
        return ChatResult(generations=[ChatGeneration(message=reply)])


def build_agent(client: Memos) -> Any:
    """One agent: its own tools and its own store, both acting as ``client.principal``."""
    name = client.principal.split(":", 1)[1]
    notes = ("agent", name, "notes")
    client.create_cube("/".join(notes), exist_ok=True)
    tools = MemoryTools(client, cube="/".join(notes), recall_cubes=[TEAM])
    model = ToolCallingScript().bind_tools(tools.tools)

    def agent(state: MessagesState, *, store: BaseStore) -> dict[str, Any]:
        question = state["messages"][-1]
        if isinstance(question, HumanMessage):  # the store: a plain LangGraph store item, kept as a memos version
            store.put(notes, "last_question", {"text": question.content})
        return {"messages": [model.invoke(state["messages"])]}

    builder = StateGraph(MessagesState)
    builder.add_node("agent", agent)
    builder.add_node("tools", ToolNode(tools.tools))
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", tools_condition)
    builder.add_edge("tools", "agent")
    return builder.compile(store=MemosStore(client), checkpointer=InMemorySaver())


def run(runtime: Runtime) -> dict[str, Any]:
    alice, bob = runtime.client("agent:alice"), runtime.client("agent:bob")
    alice.create_cube(TEAM, exist_ok=True)
    alice.grant(TEAM, "agent:bob", "write")
    thread = {"configurable": {"thread_id": f"quickstart-{uuid.uuid4().hex[:8]}"}}  # named in every provenance

    said = build_agent(alice).invoke(
        {"messages": [("user", "remember: The sodium-ion pilot cells reached 160 Wh/kg")]}, thread)
    answer = build_agent(bob).invoke({"messages": [("user", "recall: sodium-ion energy density")]}, thread)
    recalled = next(m for m in answer["messages"] if isinstance(m, ToolMessage)).artifact
    try:
        MemosStore(bob).get(("agent", "alice", "notes"), "last_question")
        refused = None
    except PermissionDenied as exc:
        refused = f"{exc.code}: {exc.message}"
    return {
        "alice": said["messages"][-1].content,
        "bob": answer["messages"][-1].content,
        "bob_recalled": [(m["content"], m["provenance"]["author"], m["provenance"]["source_refs"]) for m in recalled],
        "alice_last_question": MemosStore(alice).get(("agent", "alice", "notes"), "last_question").value,
        "bob_reading_alices_notes": refused,
    }


if __name__ == "__main__":
    settings = Settings.from_env(home=Path(sys.argv[1]).expanduser() if len(sys.argv) > 1 else None)
    with Runtime.start(settings, mode="inprocess") as rt:
        for key, value in run(rt).items():
            print(f"{key}: {value}")
