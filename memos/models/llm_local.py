"""The ``local`` backend of the language-model port: the bundled local model, through the model host.

The model host (``ModelPort``) is opened lazily, on the first call, when it is given as a function: a kernel that
never extracts with the model never loads it. The bundled model is small (SmolLM2-135M): its JSON is often not
valid for the schema, which ``extract`` reports as ``BackendError``; chain it to the rule-based fallback
(``MEMOS_LLM_FALLBACK=rules``) to use it where it answers well and the rules elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from memos.errors import ModelUnavailable
from memos.models.llm import Extracted, parse_json_object, schema_prompt
from memos.models.port import ModelPort


class LocalLanguageModel:
    def __init__(self, model: ModelPort | Callable[[], ModelPort] | None, *, model_name: str = "smollm2") -> None:
        self._model = model
        self.name = f"local:{model_name}"

    def _port(self) -> ModelPort:
        if self._model is None:
            raise ModelUnavailable("MEMOS_LLM=local needs the model host (MEMOS_MODEL is none)")
        if callable(self._model) and not hasattr(self._model, "generate"):
            self._model = self._model()
        return self._model  # type: ignore[return-value]

    def complete(self, messages: list[dict[str, str]], *, max_tokens: int = 256) -> str:
        out = self._port().generate(messages, kv=[], texts=[], max_new_tokens=max_tokens)
        return out.text

    def extract(self, instruction: str, payload: dict[str, Any], schema: dict[str, Any]) -> Extracted:
        text = self.complete(schema_prompt(instruction, payload, schema), max_tokens=512)
        return Extracted(data=parse_json_object(text, schema), by=self.name)
