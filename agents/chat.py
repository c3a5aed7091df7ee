"""A LangChain chat model over memos' ``generate``: the local model host, with memory injected by the kernel.

``MemosChatModel(client=runtime.client("agent:writer"))`` answers with the model host's model (SmolLM2-135M by
default: small, for demos and tests, not for wisdom). Memory reaches the model in one of two ways:
- ``model.invoke(messages, memory=[ids])``: exactly these memories, none for ``[]`` (the memory-aware graph passes
  the ones ``assemble_context`` chose); activation memories are injected as KV caches, the rest as text blocks;
- otherwise, ``MemosChatModel(..., cubes=["team/research"])``: the kernel chooses memory for the last user
  message (no cubes: no memory).
Either way the agent's principal needs read on the memories. The answer's ``response_metadata`` carries the
kernel's context plan, token counts and time to first token.

The model host cannot call tools: ``bind_tools`` raises ``NotImplementedError`` (LangChain's default), so agents
over this model issue memory syscalls from deterministic graph nodes (memos.agents.graph, memos.agents.tools).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import ConfigDict, Field

from memos.client import Memos

_ROLES: tuple[tuple[type[BaseMessage], str], ...] = (
    (SystemMessage, "system"),
    (HumanMessage, "user"),
    (AIMessage, "assistant"),
)


def to_chat_messages(messages: Sequence[BaseMessage]) -> list[dict[str, str]]:
    """LangChain messages as memos chat messages (system, user, assistant; text content only).

    Raises:
        ValueError: a message of another type (e.g. a ToolMessage: the model host cannot use tools).
    """
    out = []
    for message in messages:
        role = next((r for cls, r in _ROLES if isinstance(message, cls)), None)
        if role is None:
            raise ValueError(
                f"the memos model host takes system, human and AI messages, not {type(message).__name__}"
            )
        out.append({"role": role, "content": message.text})
    return out


class MemosChatModel(BaseChatModel):
    """The memos model host as a LangChain chat model (see the module docstring)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    client: Memos = Field(exclude=True)
    """A client bound to the agent's principal: generation and memory reads are the agent's."""
    cubes: tuple[str, ...] = ()
    """Choose memory from these cubes for each call (unless ``memory=`` is given to the call)."""
    max_new_tokens: int = 64
    token_budget: int | None = None
    """Tokens the memory may take in the prompt (cached or not); None: half the model's context."""
    k: int = 8

    @property
    def _llm_type(self) -> str:
        return "memos"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"principal": self.client.principal, "cubes": self.cubes, "max_new_tokens": self.max_new_tokens}

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        *,
        memory: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        """One ``generate`` syscall. ``stop`` cuts the answer at the first stop string (the host has no stop list).

        Raises:
            ValueError: a message type the host cannot take, or unknown keyword arguments.
            MemosError: the syscall's typed error (``ModelUnavailable`` without a model host, ``NotFound`` for a
                memory the principal cannot read, ...).
        """
        if kwargs:
            raise ValueError(f"MemosChatModel takes no {sorted(kwargs)}; pass memory=[memory ids] or set cubes")
        result = self.client.generate(
            to_chat_messages(messages), cubes=self.cubes if memory is None else (), memory=memory or (),
            token_budget=self.token_budget, k=self.k, max_new_tokens=self.max_new_tokens,
        )
        text = result.text
        for s in stop or ():
            text = text.split(s, 1)[0]
        metadata = {
            "model_name": "memos",
            "finish_reason": "stop" if text != result.text else result.finish_reason,
            "prompt_tokens": result.prompt_tokens,
            "cached_tokens": result.cached_tokens,
            "ttft_s": result.ttft_s,
            "total_s": result.total_s,
            "plan": result.plan.model_dump(mode="json") if result.plan else None,
        }
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=text, response_metadata=metadata))])
