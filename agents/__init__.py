"""memos.agents: LangGraph agents and workflows over memos syscalls (langgraph is imported only in here).

- ``MemoryTools``: LangChain tools (remember, recall, update_memory, forget, share, memory_history) bound to an
  agent's principal; ``call_tool`` issues one from deterministic code (memos.agents.tools).
- ``MemoryAgent``: a graph assemble_context -> respond -> write_back for any chat model (memos.agents.graph).
- ``MemosChatModel``: the local model host with memory injected (memos.agents.chat);
  ``OpenAICompatibleChatModel``: any OpenAI-compatible endpoint (memos.agents.openai_compat).
- ``MemosStore``: memos as a LangGraph ``BaseStore``, namespaces as cubes (memos.agents.store).
"""

from memos.agents.chat import MemosChatModel
from memos.agents.graph import MemoryAgent, MemoryState
from memos.agents.openai_compat import OpenAICompatibleChatModel
from memos.agents.store import MemosStore
from memos.agents.tools import MemoryTools, call_tool

__all__ = [
    "MemoryAgent",
    "MemoryState",
    "MemoryTools",
    "MemosChatModel",
    "MemosStore",
    "OpenAICompatibleChatModel",
    "call_tool",
]
