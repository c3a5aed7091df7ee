"""The ``openai`` backend of the language-model port: any OpenAI-compatible ``/chat/completions`` endpoint (vLLM,
llama.cpp server, Ollama, OpenAI itself), over httpx.

``post_chat_completion`` is the one place memos speaks that wire protocol; the LangChain chat model of the agents
(``memos.agents.openai_compat``) uses it too. The API key is sent only if given (never read from the environment by
this module: a key must not leak to an endpoint it was not meant for). Transport and HTTP errors are translated
once, here, into ``BackendError`` naming the URL and status.
"""

from __future__ import annotations

from typing import Any

import httpx

from memos.errors import BackendError
from memos.models.llm import Extracted, parse_json_object, schema_prompt


def post_chat_completion(
    http: httpx.Client, base_url: str, body: dict[str, Any], *, api_key: str | None = None
) -> dict[str, Any]:
    """POST ``body`` to ``{base_url}/chat/completions``; the decoded response, which has at least one choice.

    Raises:
        BackendError: the endpoint cannot be reached, answers with an HTTP error, or not with a completion.
    """
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    url = base_url.rstrip("/") + "/chat/completions"
    try:
        response = http.post(url, json=body, headers=headers)
        response.raise_for_status()
        data = response.json()
        data["choices"][0]["message"]  # noqa: B018 - the shape is checked here, once
    except httpx.HTTPStatusError as exc:
        raise BackendError(
            f"chat endpoint {url} answered HTTP {exc.response.status_code}: {exc.response.text[:500]}",
            url=url, status=exc.response.status_code,
        ) from exc
    except httpx.HTTPError as exc:
        raise BackendError(f"chat endpoint {url} failed: {exc}", url=url) from exc
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise BackendError(f"chat endpoint {url} did not answer with a chat completion: {exc!r}", url=url) from exc
    return data


class OpenAICompatibleLanguageModel:
    """``complete`` and ``extract`` through an OpenAI-compatible endpoint (temperature 0: reproducible where the
    server is). ``extract`` asks for ``response_format: json_object`` and still parses defensively."""

    def __init__(self, base_url: str, model: str, *, api_key: str | None = None, timeout: float = 120.0) -> None:
        self.base_url = base_url
        self.model = model
        self.api_key = api_key
        self.name = f"openai:{model}"
        self._http = httpx.Client(timeout=timeout)

    def _chat(self, messages: list[dict[str, str]], max_tokens: int, **extra: Any) -> str:
        body = {"model": self.model, "messages": messages, "temperature": 0.0, "max_tokens": max_tokens, **extra}
        data = post_chat_completion(self._http, self.base_url, body, api_key=self.api_key)
        return str(data["choices"][0]["message"].get("content") or "")

    def complete(self, messages: list[dict[str, str]], *, max_tokens: int = 256) -> str:
        return self._chat(messages, max_tokens)

    def extract(self, instruction: str, payload: dict[str, Any], schema: dict[str, Any]) -> Extracted:
        text = self._chat(schema_prompt(instruction, payload, schema), 1024, response_format={"type": "json_object"})
        return Extracted(data=parse_json_object(text, schema), by=self.name)
