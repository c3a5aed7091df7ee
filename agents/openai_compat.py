"""A minimal LangChain chat model for any OpenAI-compatible ``/chat/completions`` endpoint (vLLM, llama.cpp
server, Ollama, OpenAI itself), over httpx: for real use, where the local model host is too small.

    model = OpenAICompatibleChatModel(base_url="http://127.0.0.1:8000/v1", model="qwen2.5-7b-instruct")
    model.bind_tools(MemoryTools(client, cube="team/research").tools).invoke("What do we know about X?")

It speaks the subset agents need: system/user/assistant/tool messages, tool calls (``bind_tools``), ``stop``,
``temperature``, ``max_tokens``, and token usage. The API key is sent only if given (never read from the
environment: a key must not leak to an endpoint it was not meant for). The wire protocol and its error translation
(``BackendError`` naming the URL and status) are ``memos.models.llm_openai.post_chat_completion``, shared with the
language-model port.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import httpx
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.exceptions import OutputParserException
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.output_parsers.openai_tools import make_invalid_tool_call, parse_tool_call
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import PrivateAttr, SecretStr

from memos.models.llm_openai import post_chat_completion


def to_openai_messages(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    """LangChain messages in the OpenAI chat format.

    Raises:
        ValueError: a message type the format has no role for.
    """
    out: list[dict[str, Any]] = []
    for m in messages:
        if isinstance(m, SystemMessage):
            out.append({"role": "system", "content": m.text})
        elif isinstance(m, HumanMessage):
            out.append({"role": "user", "content": m.text})
        elif isinstance(m, AIMessage):
            entry: dict[str, Any] = {"role": "assistant", "content": m.text or None}
            if m.tool_calls:
                entry["tool_calls"] = [
                    {"id": c["id"], "type": "function",
                     "function": {"name": c["name"], "arguments": json.dumps(c["args"], ensure_ascii=False)}}
                    for c in m.tool_calls
                ]
            out.append(entry)
        elif isinstance(m, ToolMessage):
            out.append({"role": "tool", "tool_call_id": m.tool_call_id, "content": m.text})
        else:
            raise ValueError(f"no OpenAI chat role for {type(m).__name__}")
    return out


def _ai_message(choice: dict[str, Any], usage: dict[str, Any] | None, model: str) -> AIMessage:
    message = choice.get("message") or {}
    calls, invalid = [], []
    for raw in message.get("tool_calls") or ():
        try:
            parsed = parse_tool_call(raw, return_id=True)
        except OutputParserException as exc:  # the endpoint produced arguments that are not JSON
            invalid.append(make_invalid_tool_call(raw, str(exc)))
            continue
        if parsed is not None:
            calls.append(parsed)
    usage_metadata = None
    if usage:
        usage_metadata = {
            "input_tokens": int(usage.get("prompt_tokens", 0)),
            "output_tokens": int(usage.get("completion_tokens", 0)),
            "total_tokens": int(usage.get("total_tokens", 0)),
        }
    return AIMessage(
        content=message.get("content") or "", tool_calls=calls, invalid_tool_calls=invalid,
        usage_metadata=usage_metadata,
        response_metadata={"model_name": model, "finish_reason": choice.get("finish_reason")},
    )


class OpenAICompatibleChatModel(BaseChatModel):
    """A chat model behind an OpenAI-compatible HTTP endpoint (see the module docstring)."""

    base_url: str
    """The API root, e.g. ``http://127.0.0.1:8000/v1`` (``/chat/completions`` is appended)."""
    model: str
    api_key: SecretStr | None = None
    temperature: float = 0.0
    max_tokens: int | None = None
    timeout: float = 120.0
    _http: httpx.Client | None = PrivateAttr(default=None)

    @property
    def _llm_type(self) -> str:
        return "openai-compatible"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"base_url": self.base_url, "model": self.model, "temperature": self.temperature}

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Offer ``tools`` to the model; ``tool_choice`` is passed through ("auto", "required", "none")."""
        extra = {"tool_choice": tool_choice} if tool_choice else {}
        return self.bind(tools=[convert_to_openai_tool(t) for t in tools], **extra, **kwargs)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        """One POST to ``{base_url}/chat/completions``; ``kwargs`` (tools, tool_choice, ...) join the request.

        Raises:
            BackendError: the endpoint cannot be reached, answers with an HTTP error, or not with a completion.
            ValueError: a message type the OpenAI format has no role for.
        """
        body: dict[str, Any] = {
            "model": self.model, "messages": to_openai_messages(messages), "temperature": self.temperature, **kwargs,
        }
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        if stop:
            body["stop"] = stop
        # One client per model: connections and the TLS context are reused across calls.
        self._http = self._http or httpx.Client(timeout=self.timeout)
        api_key = self.api_key.get_secret_value() if self.api_key else None
        data = post_chat_completion(self._http, self.base_url, body, api_key=api_key)
        choice = data["choices"][0]
        message = _ai_message(choice, data.get("usage"), data.get("model", self.model))
        return ChatResult(generations=[ChatGeneration(message=message)])
