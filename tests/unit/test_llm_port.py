"""The language-model port: the rule-based fallback, an OpenAI-compatible endpoint (a local fake server), the local
model through a fake model host, chaining to the fallback, and the choice by settings."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from memos.config import Settings
from memos.errors import BackendError, InvalidSyscall, ModelUnavailable
from memos.models.llm import (
    FACTS_INSTRUCTION,
    FACTS_SCHEMA,
    SUMMARY_SCHEMA,
    Chained,
    check_schema,
    open_language_model,
)
from memos.models.llm_local import LocalLanguageModel
from memos.models.llm_openai import OpenAICompatibleLanguageModel
from memos.models.llm_rules import RuleBasedLanguageModel, attribute_dates, fact_pattern, split_sentences
from memos.models.port import Generation

TURNS = {"turns": [{"id": "t1", "speaker": "Ana", "content": "I moved to Lisbon last month. Do you like it?",
                    "at": "2024-03-10T09:00:00"}]}


def test_rules_split_attribute_and_date_facts():
    assert split_sentences("Dr. Who came. I left! Why?") == ["Dr. Who came.", "I left!", "Why?"]
    from datetime import date

    assert attribute_dates("I ran 3 weeks ago and yesterday", date(2024, 3, 10)) == \
        "I ran 3 weeks ago (18 February 2024) and yesterday (9 March 2024)"
    out = RuleBasedLanguageModel().extract(FACTS_INSTRUCTION, TURNS, FACTS_SCHEMA)
    assert out.by == "rules"
    assert out.data["facts"] == [{
        "text": "[10 March 2024] Ana moved to Lisbon last month (February 2024).", "refs": ["t1"], "speaker": "Ana",
        "at": "2024-03-10T09:00:00", "subject": "Ana", "attribute": "lives in", "value": "lisbon",
    }]
    assert fact_pattern("Bo's favourite food is ramen, sadly") == ("Bo", "favorite food", "ramen")
    assert fact_pattern("Bo likes ramen") is None


def test_rules_summarise_extractively_and_refuse_free_text_and_unknown_schemas():
    rules = RuleBasedLanguageModel()
    texts = ["Ana lives in Lisbon. She paints.", "Ana paints tiles in Lisbon.", "Bo runs."]
    summary = rules.extract("", {"texts": texts}, SUMMARY_SCHEMA).data["summary"]
    assert summary.startswith("Ana lives in Lisbon.") and "Ana paints tiles in Lisbon." in summary
    with pytest.raises(ModelUnavailable):
        rules.complete([{"role": "user", "content": "hi"}])
    with pytest.raises(InvalidSyscall, match="'facts' and 'summary'"):
        rules.extract("", {}, {"title": "poem", "type": "object"})


def test_check_schema_names_the_path():
    check_schema({"facts": [{"text": "x", "refs": []}]}, FACTS_SCHEMA)
    with pytest.raises(BackendError, match=r"\$\.facts\[0\]: missing required key 'refs'"):
        check_schema({"facts": [{"text": "x"}]}, FACTS_SCHEMA)


class _Endpoint(BaseHTTPRequestHandler):
    answers: list[str] = []
    requests: list[dict] = []

    def do_POST(self):  # noqa: N802 - the http.server API
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
        answer = type(self).answers.pop(0)
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": answer}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def endpoint():
    _Endpoint.answers, _Endpoint.requests = [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Endpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_openai_backend_extracts_json_from_a_fake_server(endpoint):
    fact = {"text": "Ana lives in Lisbon.", "refs": ["t1"], "subject": "Ana", "attribute": "lives in", "value": "lisbon"}
    _Endpoint.answers = ["Sure! ```json\n" + json.dumps({"facts": [fact]}) + "\n```", "plain words"]
    lm = OpenAICompatibleLanguageModel(endpoint, "tiny", api_key="k")
    out = lm.extract(FACTS_INSTRUCTION, TURNS, FACTS_SCHEMA)
    assert out.data == {"facts": [fact]} and out.by == "openai:tiny"
    sent = _Endpoint.requests[0]
    assert sent["path"] == "/v1/chat/completions" and sent["auth"] == "Bearer k"
    assert sent["body"]["response_format"] == {"type": "json_object"} and sent["body"]["temperature"] == 0.0
    assert "Lisbon" in sent["body"]["messages"][1]["content"]
    assert lm.complete([{"role": "user", "content": "hi"}]) == "plain words"


def test_a_model_answer_that_is_not_the_schema_goes_to_the_fallback(endpoint):
    _Endpoint.answers = ['{"facts": [{"text": "no refs"}]}']
    lm = open_language_model(Settings(llm="openai", llm_url=endpoint, llm_model="tiny", llm_fallback="rules"))
    assert isinstance(lm, Chained)
    out = lm.extract(FACTS_INSTRUCTION, TURNS, FACTS_SCHEMA)
    assert out.by == "rules" and out.data["facts"][0]["refs"] == ["t1"]
    _Endpoint.answers = ['{"facts": [{"text": "no refs"}]}']
    with pytest.raises(BackendError, match="missing required key 'refs'"):
        OpenAICompatibleLanguageModel(endpoint, "tiny").extract(FACTS_INSTRUCTION, TURNS, FACTS_SCHEMA)


class _FakeHost:
    def __init__(self, text: str) -> None:
        self.text, self.calls = text, 0

    def generate(self, messages, *, kv, texts, max_new_tokens, adapter=None):
        self.calls += 1
        return Generation(text=self.text, finish_reason="stop", prompt_tokens=1, cached_tokens=0, ttft_s=0, total_s=0)


def test_local_backend_opens_the_model_host_lazily():
    opened = []

    def open_host():
        opened.append(1)
        return _FakeHost('{"summary": "Ana lives in Lisbon."}')

    lm = LocalLanguageModel(open_host, model_name="smollm2")
    assert opened == []
    assert lm.extract("", {"texts": ["x"]}, SUMMARY_SCHEMA).data == {"summary": "Ana lives in Lisbon."}
    lm.complete([{"role": "user", "content": "again"}])
    assert opened == [1]
    with pytest.raises(ModelUnavailable):
        LocalLanguageModel(None).complete([{"role": "user", "content": "hi"}])


def test_settings_choose_the_backend(monkeypatch):
    assert open_language_model(Settings()).name == "rules"
    monkeypatch.setenv("MEMOS_LLM", "local")
    assert open_language_model(Settings.from_env(), _FakeHost("")).name == "local:smollm2"
    with pytest.raises(InvalidSyscall, match="MEMOS_LLM_URL"):
        open_language_model(Settings(llm="openai"))
