"""Chat models: the adapter over memos' generate (a kernel with a recording fake model host), and the
OpenAI-compatible model against a tiny local HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fakes import HashingEmbedder
from langchain_core.messages import HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool

from memos.agents.chat import MemosChatModel
from memos.agents.graph import MemoryAgent
from memos.agents.openai_compat import OpenAICompatibleChatModel
from memos.client import Memos
from memos.errors import BackendError, ModelUnavailable, NotFound
from memos.kernel import Kernel
from memos.models.port import Generation
from memos.service import KernelService
from memos.storage.sqlite import SqliteStore
from memos.storage.vector import InMemoryVectorIndex
from memos.transports import InProcessTransport
from memos.types import Fingerprint

# ------------------------------------------------------------------------------------------ the memos model host


class RecordingModel:
    """A model host that answers with what it was given, and records every generation request."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def fingerprint(self) -> Fingerprint:
        return Fingerprint(model_id="fake", config_hash="0", tokenizer_hash="0", dtype="float32")

    def count_tokens(self, texts: list[str]) -> list[int]:
        return [len(t.split()) + 4 for t in texts]

    def context_length(self) -> int:
        return 2048

    def generate(self, messages, *, kv, texts, max_new_tokens, adapter=None) -> Generation:
        self.calls.append({"messages": messages, "texts": texts, "max_new_tokens": max_new_tokens})
        return Generation(text=f"I know {len(texts)} things. END more", finish_reason="length", prompt_tokens=42,
                          cached_tokens=0, ttft_s=0.01, total_s=0.02)


@pytest.fixture
def model() -> RecordingModel:
    return RecordingModel()


@pytest.fixture
def writer(tmp_path, clock, model) -> Memos:
    kernel = Kernel(SqliteStore(tmp_path / "m.sqlite3", synchronous="NORMAL"), InMemoryVectorIndex(), HashingEmbedder(),
                    clock=clock, model=model)
    client = Memos(InProcessTransport(KernelService(kernel)), "agent:writer")
    client.create_cube("team/research")
    client.write("team/research", "Sodium-ion cells cost about 30% less per kWh")
    client.write("team/research", "Dendrites limit the cycle life of solid-state cells")
    yield client
    kernel.close()


def test_invoke_generates_with_exactly_the_given_memory(writer, model):
    note = writer.search("sodium-ion cost", "team/research", k=1)[0].memory
    chat = MemosChatModel(client=writer, max_new_tokens=8)
    answer = chat.invoke([SystemMessage("be brief"), HumanMessage("what is cheaper?")], memory=[note.id])
    assert answer.content == "I know 1 things. END more"
    assert model.calls[-1] == {"messages": [{"role": "system", "content": "be brief"},
                                            {"role": "user", "content": "what is cheaper?"}],
                               "texts": [note.content], "max_new_tokens": 8}
    meta = answer.response_metadata
    assert (meta["prompt_tokens"], meta["finish_reason"]) == (42, "length")
    assert [i["memory_id"] for i in meta["plan"]["items"]] == [note.id]


def test_the_kernel_chooses_memory_from_the_models_cubes_unless_memory_is_given(writer, model):
    chat = MemosChatModel(client=writer, cubes=("team/research",))
    chat.invoke("Which chemistry costs less per kWh?")
    assert len(model.calls[-1]["texts"]) == 2
    chat.invoke("Which chemistry costs less per kWh?", memory=[])
    assert model.calls[-1]["texts"] == []
    MemosChatModel(client=writer).invoke("no cubes")
    assert model.calls[-1]["texts"] == []


def test_stop_cuts_the_answer(writer):
    answer = MemosChatModel(client=writer).invoke("hi", stop=[" END"])
    assert (answer.content, answer.response_metadata["finish_reason"]) == ("I know 0 things.", "stop")


def test_what_the_host_cannot_take_is_refused(writer):
    chat = MemosChatModel(client=writer)
    with pytest.raises(ValueError, match="ToolMessage"):
        chat.invoke([HumanMessage("hi"), ToolMessage("result", tool_call_id="c1")])
    with pytest.raises(NotImplementedError):
        chat.bind_tools([])
    with pytest.raises(ValueError, match="takes no"):
        chat.invoke("hi", temperature=0.5)


def test_memory_the_agent_cannot_read_is_not_injected(writer, model):
    secret = writer.as_principal("agent:other")
    secret.create_cube("agent/other/notes")
    note = secret.write("agent/other/notes", "private")
    with pytest.raises(NotFound):
        MemosChatModel(client=writer).invoke("tell me", memory=[note.id])
    assert model.calls == []


def test_without_a_model_host_generate_is_unavailable(mem):
    with pytest.raises(ModelUnavailable):
        MemosChatModel(client=mem).invoke("hi")


def test_memory_agent_injects_the_planned_memory_through_the_kernel(writer, model):
    agent = MemoryAgent(writer, MemosChatModel(client=writer), cubes=["team/research"], write_cube="team/research",
                        token_budget=64, k=1)
    out = agent.compile().invoke({"messages": [HumanMessage("Which chemistry costs less per kWh?")]},
                                 {"configurable": {"thread_id": "t-1"}})
    assert model.calls[-1]["texts"] == ["Sodium-ion cells cost about 30% less per kWh"]
    (written,) = out["written"]
    memory = writer.read(written)
    assert memory.content == "I know 1 things. END more"
    assert memory.provenance.derived_from[0].id == out["context"]["items"][0]["memory_id"]


# ------------------------------------------------------------------------------------------ OpenAI-compatible


class FakeOpenAI(BaseHTTPRequestHandler):
    """POST /v1/chat/completions: answers from ``self.server.replies`` and records each request."""

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        status, reply = self.server.replies.pop(0)
        data = json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:  # keep test output clean
        pass


@pytest.fixture(scope="module")
def http_server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def server(http_server):
    http_server.requests, http_server.replies = [], []
    return http_server


def completion(message: dict, finish: str = "stop") -> dict:
    return {"model": "tiny", "choices": [{"index": 0, "message": {"role": "assistant", **message},
                                          "finish_reason": finish}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}}


def model_for(server, **kwargs) -> OpenAICompatibleChatModel:
    return OpenAICompatibleChatModel(base_url=f"http://127.0.0.1:{server.server_port}/v1", model="tiny", **kwargs)


def test_openai_compatible_chat_sends_the_conversation_and_reads_the_answer(server):
    server.replies.append((200, completion({"content": "Sodium-ion."})))
    chat = model_for(server, api_key="sk-test", max_tokens=16)
    answer = chat.invoke([SystemMessage("be brief"), HumanMessage("cheaper?")], stop=["\n"])
    assert answer.content == "Sodium-ion."
    assert answer.usage_metadata == {"input_tokens": 11, "output_tokens": 3, "total_tokens": 14}
    (request,) = server.requests
    assert request["path"] == "/v1/chat/completions" and request["auth"] == "Bearer sk-test"
    assert request["body"] == {"model": "tiny", "temperature": 0.0, "max_tokens": 16, "stop": ["\n"],
                               "messages": [{"role": "system", "content": "be brief"},
                                            {"role": "user", "content": "cheaper?"}]}


def test_openai_compatible_chat_calls_tools_and_takes_their_results(server):
    @tool
    def recall(query: str) -> str:
        """Recall memories."""
        return "Sodium-ion is cheaper"

    call = {"id": "call_1", "type": "function", "function": {"name": "recall", "arguments": '{"query": "cost"}'}}
    server.replies += [(200, completion({"content": None, "tool_calls": [call]}, "tool_calls")),
                       (200, completion({"content": "Sodium-ion."}))]
    chat = model_for(server).bind_tools([recall])
    first = chat.invoke([HumanMessage("cheaper?")])
    assert first.tool_calls == [{"name": "recall", "args": {"query": "cost"}, "id": "call_1", "type": "tool_call"}]
    assert server.requests[0]["body"]["tools"][0]["function"]["name"] == "recall"
    assert server.requests[0]["auth"] is None
    result = recall.invoke(first.tool_calls[0])
    chat.invoke([HumanMessage("cheaper?"), first, result])
    sent = server.requests[1]["body"]["messages"]
    assert sent[1] == {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "recall", "arguments": '{"query": "cost"}'}}]}
    assert sent[2] == {"role": "tool", "tool_call_id": "call_1", "content": "Sodium-ion is cheaper"}


def test_openai_compatible_chat_keeps_unparsable_tool_calls_as_invalid(server):
    bad = {"id": "call_2", "type": "function", "function": {"name": "recall", "arguments": "{not json"}}
    server.replies.append((200, completion({"content": "", "tool_calls": [bad]})))
    answer = model_for(server).invoke("hi")
    assert answer.tool_calls == [] and answer.invalid_tool_calls[0]["id"] == "call_2"


def test_openai_compatible_endpoint_failures_are_backend_errors(server):
    server.replies += [(500, {"error": "overloaded"}), (200, {"unexpected": True})]
    with pytest.raises(BackendError, match="HTTP 500") as info:
        model_for(server).invoke("hi")
    assert info.value.details["status"] == 500
    with pytest.raises(BackendError, match="did not answer with a chat completion"):
        model_for(server).invoke("hi")
    unreachable = OpenAICompatibleChatModel(base_url="http://127.0.0.1:9/v1", model="tiny", timeout=2)
    with pytest.raises(BackendError, match="failed"):
        unreachable.invoke("hi")


def test_openai_compatible_chat_answers_in_a_memory_agent(server, mem):
    mem.create_cube("team/research")
    mem.write("team/research", "Sodium-ion cells cost about 30% less per kWh")
    server.replies.append((200, completion({"content": "Sodium-ion is cheaper."})))
    agent = MemoryAgent(mem, model_for(server), cubes=["team/research"], write_cube="team/research")
    agent.compile().invoke({"messages": [HumanMessage("Which costs less per kWh?")]}, {"configurable": {"thread_id": "t"}})
    system = server.requests[0]["body"]["messages"][0]["content"]
    assert "- Sodium-ion cells cost about 30% less per kWh" in system
