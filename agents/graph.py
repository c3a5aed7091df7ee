"""A memory-aware agent as a LangGraph graph: assemble_context -> respond -> write_back, with any chat model.

    agent = MemoryAgent(runtime.client("agent:writer"), MemosChatModel(client=...), cubes=["team/research"],
                        write_cube="team/research")
    agent.compile().invoke({"messages": [("user", "Which chemistry is cheaper?")]},
                           {"configurable": {"thread_id": "t-1"}})

The three nodes are deterministic and issue the memory syscalls themselves, so the agent works with a model that
cannot call tools (the local model host):
1. ``assemble``: ``assemble_context`` for the last human message over ``cubes`` within ``token_budget``; the plan
   (which memories, as KV cache or text, and why) goes to the state's ``context``.
2. ``respond``: the chat model answers. ``MemosChatModel`` gets the chosen memory ids and the kernel injects them
   (activation memories as KV caches); any other model gets their text (read at the planned versions) in the
   system message.
3. ``write_back``: what was learned (by default the answer; ``learn`` decides) is written to ``write_cube`` as the
   agent, with source ``generated`` (the model's own words: untrusted, and search ranks it below observed facts of
   equal relevance), ``derived_from`` the exact memory versions used, with ``source_refs`` naming the thread and the messages
   (``thread/<thread>/msg/<human id>``, ``.../msg/<answer id>``) and ``{"thread": ...}`` in metadata; the ids go
   to the state's ``written``.

The nodes are public methods, so they can also be added to a larger graph whose state has these keys.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AnyMessage, HumanMessage, SystemMessage
from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.graph.state import CompiledStateGraph

from memos.agents.chat import MemosChatModel
from memos.agents.provenance import message_ref, require_thread
from memos.client import Memos
from memos.syscalls import MAX_QUERY_CHARS
from memos.types import ContextPlan, Source

DEFAULT_PROMPT = "You are a helpful member of a research team. Answer briefly, using what you remember."


class MemoryState(MessagesState):
    context: dict[str, Any] | None
    """The last turn's context plan (``ContextPlan`` as JSON)."""
    written: list[str]
    """Ids of the memories the last turn wrote back."""


def _last(messages: Sequence[AnyMessage], kind: type) -> Any:
    return next((m for m in reversed(messages) if isinstance(m, kind)), None)


def answer_text(message: AIMessage) -> list[str]:
    """The default of what an agent learned from a turn: its answer, if not blank."""
    text = message.text.strip()
    return [text] if text else []


class MemoryAgent:
    """The nodes and graph of one memory-aware agent (see the module docstring).

    Args:
        client: a client bound to the agent's principal.
        model: any LangChain chat model; ``MemosChatModel`` gets memory injected by the kernel.
        cubes: where memory is chosen from. write_cube: where what was learned goes.
        learn: what to remember from an answer (default: the answer itself; return ``[]`` to write nothing).
        thread_id: the thread to name when the run's config has none.
    """

    def __init__(
        self,
        client: Memos,
        model: BaseChatModel,
        *,
        cubes: Sequence[str],
        write_cube: str,
        token_budget: int = 256,
        k: int = 4,
        system_prompt: str = DEFAULT_PROMPT,
        learn: Callable[[AIMessage], Sequence[str]] = answer_text,
        tags: Sequence[str] = ("learned",),
        thread_id: str | None = None,
    ) -> None:
        self.client = client
        self.model = model
        self.cubes = tuple(cubes)
        self.write_cube = write_cube
        self.token_budget = token_budget
        self.k = k
        self.system_prompt = system_prompt
        self.learn = learn
        self.tags = tuple(tags)
        self.thread_id = thread_id

    def assemble(self, state: MemoryState) -> dict[str, Any]:
        """Choose memory for the last human message.

        Raises:
            ValueError: the state has no human message. MemosError: the syscall's error (e.g. PermissionDenied).
        """
        question = _last(state["messages"], HumanMessage)
        if question is None:
            raise ValueError("a memory-aware agent answers the last human message and the state has none")
        plan = self.client.assemble_context(
            question.text[:MAX_QUERY_CHARS], self.cubes, token_budget=self.token_budget, k=self.k
        )
        return {"context": plan.model_dump(mode="json")}

    def respond(self, state: MemoryState, config: RunnableConfig) -> dict[str, Any]:
        """Answer with the chosen memory (see the module docstring)."""
        plan = ContextPlan.model_validate(state["context"])
        used = [i.memory_id for i in plan.used]
        prompt = [SystemMessage(self.system_prompt), *state["messages"]]
        if isinstance(self.model, MemosChatModel):
            answer = self.model.invoke(prompt, config, memory=used)
        else:
            remembered = [self.client.read(i.memory_id, i.version).content for i in plan.used]
            if remembered:
                notes = "\n".join(f"- {text}" for text in remembered)
                prompt[0] = SystemMessage(f"{self.system_prompt}\n\nWhat you remember, most relevant first:\n{notes}")
            answer = self.model.invoke(prompt, config)
        return {"messages": [answer.model_copy(update={"name": self.client.principal})]}

    def write_back(self, state: MemoryState, config: RunnableConfig) -> dict[str, Any]:
        """Write what was learned, derived from the memory used, naming the thread and messages.

        Raises:
            ValueError: no thread id (see memos.agents.provenance), or the last message is not the answer.
        """
        thread = require_thread(config, self.thread_id)
        answer = state["messages"][-1]
        if not isinstance(answer, AIMessage):
            raise ValueError(f"write_back expects the answer as the last message, got {type(answer).__name__}")
        question = _last(state["messages"], HumanMessage)
        plan = ContextPlan.model_validate(state["context"])
        parents = [(i.memory_id, i.version) for i in plan.used]
        refs = [message_ref(thread, m.id) for m in (question, answer) if m is not None]
        written = [
            self.client.write(
                self.write_cube, fact, tags=self.tags, source=Source.GENERATED,
                derived_from=parents, source_refs=refs, metadata={"thread": thread},
            ).id
            for fact in self.learn(answer)
        ]
        return {"written": written}

    def builder(self) -> StateGraph:
        """The uncompiled graph: START -> assemble -> respond -> write_back -> END."""
        graph = StateGraph(MemoryState)
        graph.add_node("assemble", self.assemble)
        graph.add_node("respond", self.respond)
        graph.add_node("write_back", self.write_back)
        graph.add_edge(START, "assemble")
        graph.add_edge("assemble", "respond")
        graph.add_edge("respond", "write_back")
        graph.add_edge("write_back", END)
        return graph

    def compile(self, **kwargs: Any) -> CompiledStateGraph:
        """The compiled graph; ``kwargs`` go to ``StateGraph.compile`` (checkpointer, store, ...)."""
        return self.builder().compile(**kwargs)
