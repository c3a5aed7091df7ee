"""LangChain tools for the memory syscalls an agent needs, bound to the agent's own principal.

``MemoryTools(client, cube=...)`` gives ``remember``, ``recall``, ``update_memory``, ``forget``, ``share``,
``memory_history`` and ``ingest`` (extract facts from conversation messages, docs/memory.md). Each is a thin wrapper over one or two client calls; the client's principal is the agent, so
the kernel's ACLs apply to the agent exactly as to any caller, and every refusal is in the audit log.

Contracts:
- Tools that write (``remember``, ``update_memory``) must be invoked with a full tool call (``{"type":
  "tool_call", "id": ..., ...}``, which is what LangGraph's ``ToolNode`` does): the call id is the message the
  memory came from. They record ``thread/<thread>/msg/<tool call id>`` in ``source_refs`` and ``{"thread": ...}``
  in metadata; the thread is the run's ``configurable.thread_id``, else the toolkit's ``thread_id``, else the
  call fails with ``ValueError`` (see memos.agents.provenance).
- A refused or failed syscall (``MemosError``) becomes a ``ToolException`` whose text starts with the error's
  stable code (``denied: ...``, ``not_found: ...``): the agent gets it as a ``ToolMessage`` with
  ``status="error"``; it is never turned into an empty result.
- Results are ``(text for the model, artifact)``: the artifact holds the memories as JSON dicts for programs.

``call_tool`` issues one tool call from a deterministic graph node (for models that cannot call tools): it
returns the ``AIMessage`` carrying the call and the tool's ``ToolMessage``, ready for a transcript.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Literal

from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool, InjectedToolCallId, StructuredTool, ToolException

from memos.agents.provenance import message_ref, require_thread
from memos.client import Memos
from memos.errors import MemosError
from memos.types import Memory, Source


def _describe(memory: Memory) -> str:
    return f"{memory.id} v{memory.version} by {memory.provenance.author}: {memory.content}"


def _syscall_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Report a refused syscall to the agent as a tool error carrying the stable code (the kernel audited it)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except MemosError as exc:
            raise ToolException(f"{exc.code}: {exc.message}") from exc

    return wrapper


class MemoryTools:
    """The memory tools of one agent.

    Args:
        client: a client bound to the agent's principal (``runtime.client("agent:writer")``).
        cube: where ``remember`` writes by default.
        recall_cubes: where ``recall`` searches by default (default: ``[cube]``).
        thread_id: the thread to name in provenance when the run's config has none.
        source: the provenance source of what the agent remembers (``conversation`` by default; ``document``
            or ``tool`` make the memories untrusted, see docs/syscalls.md).
    """

    def __init__(
        self,
        client: Memos,
        *,
        cube: str,
        recall_cubes: Sequence[str] = (),
        thread_id: str | None = None,
        source: Source | str = Source.CONVERSATION,
    ) -> None:
        self.client = client
        self.cube = cube
        self.recall_cubes = tuple(recall_cubes) or (cube,)
        self.thread_id = thread_id
        self.source = Source(source)
        self.remember = self._remember_tool()
        self.recall = self._recall_tool()
        self.update_memory = self._update_tool()
        self.forget = self._forget_tool()
        self.share = self._share_tool()
        self.memory_history = self._history_tool()
        self.ingest = self._ingest_tool()

    @property
    def tools(self) -> list[BaseTool]:
        return [self.remember, self.recall, self.update_memory, self.forget, self.share, self.memory_history,
                self.ingest]

    def _tool(self, fn: Callable[..., Any]) -> BaseTool:
        return StructuredTool.from_function(
            _syscall_errors(fn), name=fn.__name__, response_format="content_and_artifact", handle_tool_error=True
        )

    def _remember_tool(self) -> BaseTool:
        def remember(
            content: str,
            tool_call_id: Annotated[str, InjectedToolCallId],
            config: RunnableConfig,
            tags: list[str] | None = None,
            cube: str | None = None,
            based_on: list[str] | None = None,
        ) -> tuple[str, dict[str, Any]]:
            """Remember a fact: write it as a new memory (in your default cube unless `cube` is given).
            `based_on` lists the ids of memories this fact was derived from."""
            thread = require_thread(config, self.thread_id)
            # Provenance pins the exact versions the fact was derived from, as they are now.
            parents = [self.client.read(i).ref for i in based_on or ()]
            memory = self.client.write(
                cube or self.cube, content, tags=tags or (), source=self.source, derived_from=parents,
                source_refs=[message_ref(thread, tool_call_id)], metadata={"thread": thread},
            )
            return f"remembered {_describe(memory)}", memory.model_dump(mode="json")

        return self._tool(remember)

    def _recall_tool(self) -> BaseTool:
        def recall(
            query: str,
            config: RunnableConfig,
            cubes: list[str] | None = None,
            k: int = 5,
            tags: list[str] | None = None,
            this_thread_only: bool = False,
        ) -> tuple[str, list[dict[str, Any]]]:
            """Recall memories relevant to `query`, best first (hybrid search by meaning and words).
            `tags` keeps only memories carrying all of them; `this_thread_only` only those from this conversation.
            Cubes of `cubes` that do not exist or that you may not read are skipped, and the answer says so."""
            metadata = {}
            if this_thread_only:
                metadata["thread"] = require_thread(config, self.thread_id)
            present, skipped = self._usable_cubes(cubes or self.recall_cubes)
            note = "".join(f"skipped cube {c}: {why}\n" for c, why in skipped)
            hits = self.client.search(query, present, k=k, tags=tags or (), metadata=metadata)
            text = note + ("\n".join(f"[{h.score:.4f}] {_describe(h.memory)}" for h in hits) or "no memories found")
            return text, [{**h.memory.model_dump(mode="json"), "score": h.score} for h in hits]

        return self._tool(recall)

    def _usable_cubes(self, cubes: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
        """The cubes of a list the agent may read, and the others with why (each refusal is audited by the kernel).
        A list in which no cube is usable fails with the first cube's error, as one cube would.

        Raises:
            MemosError: no cube of the list is usable.
        """
        readable = {c.name for c in self.client.cubes()}
        present, skipped, first = [], [], None
        for cube in dict.fromkeys(cubes):
            if cube in readable:
                present.append(cube)
                continue
            try:
                self.client.cube_info(cube)
                present.append(cube)
            except MemosError as exc:
                first = first or exc
                skipped.append((cube, f"{exc.code}: {exc.message}"))
        if not present and first is not None:
            raise first
        return present, skipped

    def _update_tool(self) -> BaseTool:
        def update_memory(
            memory_id: str,
            content: str,
            tool_call_id: Annotated[str, InjectedToolCallId],
            config: RunnableConfig,
            expected_version: int | None = None,
        ) -> tuple[str, dict[str, Any]]:
            """Correct a memory: write a new version with `content`. With `expected_version`, only if the memory
            is still at that version (otherwise someone changed it: recall it again)."""
            thread = require_thread(config, self.thread_id)
            memory = self.client.update(
                memory_id, content=content, expected_version=expected_version,
                source_refs=[message_ref(thread, tool_call_id)],
            )
            return f"updated {_describe(memory)}", memory.model_dump(mode="json")

        return self._tool(update_memory)

    def _forget_tool(self) -> BaseTool:
        def forget(memory_id: str, expected_version: int | None = None) -> tuple[str, dict[str, Any]]:
            """Forget a memory: it is no longer recalled (its history is kept)."""
            memory = self.client.delete(memory_id, expected_version=expected_version)
            return f"forgot {memory.id} (now v{memory.version}, {memory.state})", memory.model_dump(mode="json")

        return self._tool(forget)

    def _share_tool(self) -> BaseTool:
        def share(cube: str, principal: str, right: Literal["read", "write"] = "read") -> tuple[str, dict[str, Any]]:
            """Share a cube you administer: give `principal` (e.g. "agent:writer") the right to read or write it."""
            info = self.client.grant(cube, principal, right)
            return f"{principal} may now {right} {cube}", info.model_dump(mode="json")

        return self._tool(share)

    def _ingest_tool(self) -> BaseTool:
        def ingest(
            messages: list[dict[str, Any]],
            tool_call_id: Annotated[str, InjectedToolCallId],
            config: RunnableConfig,
            cube: str | None = None,
            dry_run: bool = False,
        ) -> tuple[str, dict[str, Any]]:
            """Extract facts from conversation `messages` (each {content, speaker?, id?, at?}) into memory: each
            fact is added, updates a memory, supersedes one it contradicts, or is skipped as known. Says why."""
            thread = require_thread(config, self.thread_id)
            named = [{**m, "id": m.get("id") or f"{message_ref(thread, tool_call_id)}#{i}"} for i, m in enumerate(messages)]
            result = self.client.ingest(cube or self.cube, named, source=self.source, dry_run=dry_run)
            text = "\n".join(f"{d.action}: {d.text} ({d.reason})" for d in result.decisions) or "no facts found"
            return text, result.model_dump(mode="json")

        return self._tool(ingest)

    def _history_tool(self) -> BaseTool:
        def memory_history(memory_id: str) -> tuple[str, list[dict[str, Any]]]:
            """Every version of a memory, oldest first, with who wrote it, how and from which messages."""
            versions = self.client.history(memory_id)
            text = "\n".join(
                f"v{v.version} {v.provenance.operation} by {v.provenance.author} "
                f"({', '.join(v.provenance.source_refs) or 'no refs'}): {v.content}"
                for v in versions
            )
            return text, [v.model_dump(mode="json") for v in versions]

        return self._tool(memory_history)


def call_tool(
    tool: BaseTool, args: dict[str, Any], config: RunnableConfig | None = None, *, agent: str | None = None
) -> tuple[AIMessage, ToolMessage]:
    """Issue one tool call the way a tool-calling model would, from deterministic code.

    The returned ``AIMessage`` (named ``agent``) carries the call; its id is the call's id, so the provenance
    reference ``thread/<t>/msg/<id>`` names a message of the transcript.

    Raises:
        ValueError: a writing tool has no thread to name (see memos.agents.provenance). Other exceptions of the
            tool propagate; refused syscalls come back as a ``ToolMessage`` with ``status="error"``.
    """
    call_id = f"call_{uuid.uuid4().hex[:16]}"
    call = {"type": "tool_call", "name": tool.name, "args": args, "id": call_id}
    request = AIMessage(content="", tool_calls=[call], name=agent, id=call_id)
    result = tool.invoke(call, config)
    return request, result


__all__ = ["MemoryTools", "call_tool"]
