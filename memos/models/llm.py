"""The language-model port for memory work: extraction, summarising and contradiction checks go through it.

One interface, three backends, chosen by ``Settings.llm`` (``MEMOS_LLM``):

| setting | backend | module |
|---|---|---|
| ``rules`` (default) | deterministic rule-based fallback: no model, offline, reproducible | ``memos.models.llm_rules`` |
| ``local`` | the bundled local model, through the model host (``ModelPort.generate``), opened lazily | ``memos.models.llm_local`` |
| ``openai`` | any OpenAI-compatible ``/chat/completions`` endpoint (``MEMOS_LLM_URL``, ``MEMOS_LLM_MODEL``) | ``memos.models.llm_openai`` |

The interface (``LanguageModel``):
- ``complete(messages, max_tokens) -> str``: free text. The rule-based fallback writes no free text and raises
  ``ModelUnavailable`` (nothing in memos needs ``complete`` to run offline);
- ``extract(instruction, payload, schema) -> Extracted``: structured output. ``payload`` is JSON data (the turns
  of a conversation, the texts to summarise); ``schema`` a JSON schema with a ``title`` naming the task
  (``FACTS_SCHEMA``, ``SUMMARY_SCHEMA``). Model backends render instruction, payload and schema into a prompt and
  parse the first JSON object of the answer; every backend's answer is checked with ``check_schema``. The rule-based
  fallback fills the schemas it knows by title and refuses others with ``InvalidSyscall``.

A model backend can be chained to the fallback (``Chained``: ``MEMOS_LLM_FALLBACK=rules``): when the model's answer
is not JSON of the schema, the fallback answers, and ``Extracted.by`` says which one did (it becomes the
``operation`` of what the kernel writes, e.g. ``ingest:rules``).

The kernel never imports a backend: it is given a ``LanguageModel`` by the composition root (``open_kernel``), and
this module imports none of them at import time.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, ConfigDict

from memos.errors import BackendError, InvalidSyscall

if TYPE_CHECKING:
    from memos.config import Settings
    from memos.models.port import ModelPort

#: A fact extracted from conversation turns. ``refs`` are the ids of the turns it comes from; ``subject``,
#: ``attribute`` and ``value`` are filled when the fact is one value of a single-valued property (where someone
#: lives, a favourite thing, a job): a later fact with the same subject and attribute and another value contradicts it.
FACTS_SCHEMA: dict[str, Any] = {
    "title": "facts",
    "type": "object",
    "required": ["facts"],
    "properties": {
        "facts": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["text", "refs"],
                "properties": {
                    "text": {"type": "string"},
                    "refs": {"type": "array", "items": {"type": "string"}},
                    "speaker": {"type": "string"},
                    "at": {"type": "string"},
                    "subject": {"type": "string"},
                    "attribute": {"type": "string"},
                    "value": {"type": "string"},
                },
            },
        },
    },
}

#: One summary of several texts (``payload = {"texts": [...]}``).
SUMMARY_SCHEMA: dict[str, Any] = {
    "title": "summary",
    "type": "object",
    "required": ["summary"],
    "properties": {"summary": {"type": "string"}},
}

FACTS_INSTRUCTION = (
    "Extract the durable facts stated in these conversation turns, one short standalone sentence each, naming people "
    "instead of pronouns and absolute dates instead of relative ones. Give the ids of the turns each fact comes from. "
    "For a single-valued property (where someone lives, their job, a favourite thing) also give subject, attribute "
    "and value. Skip greetings, questions and small talk."
)
SUMMARY_INSTRUCTION = "Summarise these memories in at most three sentences, keeping names, numbers and dates."


class Extracted(BaseModel):
    """What ``extract`` returns: the JSON object (valid for the schema) and the backend that produced it."""

    model_config = ConfigDict(frozen=True)

    data: dict[str, Any]
    by: str


class LanguageModel(Protocol):
    """The port. ``name`` identifies the backend in provenance (``rules``, ``local:smollm2``, ``openai:<model>``)."""

    name: str

    def complete(self, messages: list[dict[str, str]], *, max_tokens: int = 256) -> str:
        """Answer chat ``messages`` (``{"role", "content"}``) with free text.

        Raises:
            ModelUnavailable: the backend writes no free text or its model cannot be loaded. BackendError: it failed.
        """
        ...

    def extract(self, instruction: str, payload: dict[str, Any], schema: dict[str, Any]) -> Extracted:
        """Structured output for ``payload`` that satisfies ``schema``.

        Raises:
            InvalidSyscall: a schema this backend cannot fill. BackendError: the answer is not JSON of the schema.
        """
        ...


# ------------------------------------------------------------------------------------------------------- schema

_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,), "array": (list, tuple), "string": (str,), "number": (int, float), "integer": (int,),
    "boolean": (bool,),
}


def check_schema(value: Any, schema: dict[str, Any], path: str = "$") -> None:
    """Check ``value`` against the subset of JSON schema memos uses (type, required, properties, items).

    Raises:
        BackendError: the first mismatch, naming its path.
    """
    expected = schema.get("type")
    if expected is not None:
        if isinstance(value, bool) and expected in ("number", "integer"):
            raise BackendError(f"{path}: expected {expected}, got boolean")
        if not isinstance(value, _JSON_TYPES[expected]):
            raise BackendError(f"{path}: expected {expected}, got {type(value).__name__}")
    if isinstance(value, dict):
        for key in schema.get("required", ()):
            if key not in value:
                raise BackendError(f"{path}: missing required key {key!r}")
        for key, sub in schema.get("properties", {}).items():
            if key in value and value[key] is not None:
                check_schema(value[key], sub, f"{path}.{key}")
    if isinstance(value, (list, tuple)) and "items" in schema:
        for i, item in enumerate(value):
            check_schema(item, schema["items"], f"{path}[{i}]")


def schema_prompt(instruction: str, payload: dict[str, Any], schema: dict[str, Any]) -> list[dict[str, str]]:
    """The chat messages a model backend sends for ``extract``."""
    return [
        {"role": "system", "content": "You answer with one JSON object and nothing else. It must match this JSON "
                                      f"schema:\n{json.dumps(schema, ensure_ascii=False)}"},
        {"role": "user", "content": f"{instruction}\n\nInput:\n{json.dumps(payload, ensure_ascii=False)}"},
    ]


def parse_json_object(text: str, schema: dict[str, Any]) -> dict[str, Any]:
    """The first JSON object in a model's answer (code fences and chatter around it are ignored), checked.

    Raises:
        BackendError: no JSON object in ``text``, or one that does not match ``schema``.
    """
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\{", text):
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            check_schema(value, schema)
            return value
    raise BackendError(f"the model answered no JSON object for schema {schema.get('title')!r}: {text[:200]!r}")


class Chained:
    """A model backend whose unusable structured answers are answered by a fallback instead (see module docs)."""

    def __init__(self, primary: LanguageModel, fallback: LanguageModel) -> None:
        self.primary = primary
        self.fallback = fallback
        self.name = f"{primary.name}+{fallback.name}"

    def complete(self, messages: list[dict[str, str]], *, max_tokens: int = 256) -> str:
        return self.primary.complete(messages, max_tokens=max_tokens)

    def extract(self, instruction: str, payload: dict[str, Any], schema: dict[str, Any]) -> Extracted:
        try:
            return self.primary.extract(instruction, payload, schema)
        except BackendError:
            return self.fallback.extract(instruction, payload, schema)


def open_language_model(settings: Settings, model: ModelPort | Callable[[], ModelPort] | None = None) -> LanguageModel:
    """The backend ``settings.llm`` names (the composition root calls this; the kernel is given the result).

    ``model`` is the model host (or a function that opens it on first use) for ``llm="local"``.

    Raises:
        InvalidSyscall: ``openai`` without ``llm_url``/``llm_model``.
    """
    backend: LanguageModel
    if settings.llm == "rules":
        from memos.models.llm_rules import RuleBasedLanguageModel

        return RuleBasedLanguageModel()
    if settings.llm == "local":
        from memos.models.llm_local import LocalLanguageModel

        backend = LocalLanguageModel(model, model_name=settings.model or "none")
    else:
        from memos.models.llm_openai import OpenAICompatibleLanguageModel

        if not settings.llm_url or not settings.llm_model:
            raise InvalidSyscall("MEMOS_LLM=openai needs MEMOS_LLM_URL (the API root) and MEMOS_LLM_MODEL")
        backend = OpenAICompatibleLanguageModel(settings.llm_url, settings.llm_model, api_key=settings.llm_api_key)
    if settings.llm_fallback == "rules":
        from memos.models.llm_rules import RuleBasedLanguageModel

        return Chained(backend, RuleBasedLanguageModel())
    return backend
