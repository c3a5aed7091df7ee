"""How agents name the conversation a memory came from: the thread and the message, in ``source_refs``.

Every memory an agent writes through ``memos.agents`` (tools, the memory-aware graph, the store) carries
``thread/<thread_id>/msg/<message_id>`` in its provenance's ``source_refs`` and ``{"thread": <thread_id>}`` in its
metadata (so a search can be scoped to one conversation); the kernel itself records the author, the agent's
principal. The thread is LangGraph's ``config["configurable"]["thread_id"]``.
"""

from __future__ import annotations

from typing import Any

from langgraph.config import get_config


def thread_of(config: Any = None, default: str | None = None) -> str | None:
    """The thread id of ``config`` (or of the LangGraph run this is called from), else ``default``."""
    if config is None:
        try:
            config = get_config()
        except RuntimeError:  # not inside a LangGraph/LangChain run: there is no config to read
            return default
    thread = ((config or {}).get("configurable") or {}).get("thread_id")
    return str(thread) if thread is not None else default


def require_thread(config: Any = None, default: str | None = None) -> str:
    """Like :func:`thread_of`, for writes: a memory written by an agent must name its thread.

    Raises:
        ValueError: no thread id in the config and no default.
    """
    thread = thread_of(config, default)
    if thread is None:
        raise ValueError(
            "memory written by an agent must name its thread: run the graph with "
            "config={'configurable': {'thread_id': ...}} or give the agent a default thread_id"
        )
    return thread


def message_ref(thread: str, message_id: str | None) -> str:
    """``thread/<thread>/msg/<message_id>``, or ``thread/<thread>`` when there is no message id."""
    return f"thread/{thread}/msg/{message_id}" if message_id else f"thread/{thread}"
