"""The MCP server, driven by the SDK's own client: in memory, over streamable HTTP behind API keys (uvicorn on
127.0.0.1), and over stdio in a child process. The kernel is in-process on the hashing embedder."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import anyio
import httpx
import httpx2
import pytest
from live_server import in_process_transport, live_server
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from memos.client import Memos
from memos.server.http import create_app
from memos.server.keys import KeyRing, add_key
from memos.server.mcp import build_server

pytestmark = pytest.mark.integration

TOOLS = {"remember", "remember_many", "recall", "update", "forget", "history", "list_cubes", "ingest"}
ALICE_KEY, BOB_KEY = "memos_mcp-alice", "memos_mcp-bob"


@pytest.fixture
def transport(tmp_path):
    transport = in_process_transport(tmp_path)
    Memos(transport, "agent:alice").create_cube("agent/alice")
    yield transport
    transport.close()


def text(result) -> str:
    return " ".join(block.text for block in result.content)


def test_the_tools_are_listed_and_a_memory_round_trips(transport):
    server = build_server(transport, principal="agent:alice", default_cube="agent/alice")

    async def session():
        async with Client(server) as client:
            assert {tool.name for tool in (await client.list_tools()).tools} == TOOLS

            stored = await client.call_tool("remember", {"content": "The launch is on Friday", "tags": ["plan"]})
            assert not stored.is_error, text(stored)
            memory = stored.structured_content
            assert (memory["version"], memory["author"], memory["trust"]) == (1, "agent:alice", "trusted")

            recalled = await client.call_tool("recall", {"query": "when is the launch?"})
            assert [h["memory"]["id"] for h in recalled.structured_content["hits"]] == [memory["id"]]

            changed = await client.call_tool(
                "update", {"id": memory["id"], "content": "The launch moved to Monday", "expected_version": 1}
            )
            assert changed.structured_content["version"] == 2
            stale = await client.call_tool("update", {"id": memory["id"], "content": "late", "expected_version": 1})
            assert stale.is_error and "conflict:" in text(stale)

            versions = (await client.call_tool("history", {"id": memory["id"]})).structured_content["versions"]
            assert [v["content"] for v in versions] == ["The launch is on Friday", "The launch moved to Monday"]

            gone = await client.call_tool("forget", {"id": memory["id"]})
            assert gone.structured_content["state"] == "deleted"
            after = await client.call_tool("recall", {"query": "when is the launch?"})
            assert after.structured_content["hits"] == []

            cubes = (await client.call_tool("list_cubes", {})).structured_content["cubes"]
            assert [c["name"] for c in cubes] == ["agent/alice"]

            many = await client.call_tool("remember_many", {"contents": ["The ferry leaves at dawn", "x" * 40000]})
            assert not many.is_error, text(many)
            written, refused = many.structured_content["results"]
            assert many.structured_content["written"] == 1 and refused.startswith("too_large:")
            ferry = await client.call_tool("recall", {"query": "when does the ferry leave?"})
            assert [h["memory"]["id"] for h in ferry.structured_content["hits"]] == [written]

    anyio.run(session)


def test_tool_errors_carry_the_memos_code(transport):
    Memos(transport, "agent:bob").create_cube("agent/bob")
    server = build_server(transport, principal="agent:alice")

    async def session():
        async with Client(server) as client:
            no_cube = await client.call_tool("remember", {"content": "where does this go?"})
            assert no_cube.is_error and "invalid:" in text(no_cube)
            foreign = await client.call_tool("remember", {"content": "x", "cube": "agent/bob"})
            assert foreign.is_error and "denied:" in text(foreign)
            unreadable = await client.call_tool("recall", {"query": "anything", "cubes": ["agent/bob"]})
            assert unreadable.is_error and "denied:" in text(unreadable)

    anyio.run(session)


def test_over_http_each_request_acts_as_its_key(transport):
    Memos(transport, "agent:bob").create_cube("agent/bob")
    secret = Memos(transport, "agent:alice").write("agent/alice", "alice's private note")
    keys = KeyRing.of_keys({ALICE_KEY: "agent:alice", BOB_KEY: "agent:bob"})

    def client(url: str, key: str) -> Client:
        headers = {"Authorization": f"Bearer {key}"}
        return Client(streamable_http_client(f"{url}/mcp", http_client=httpx2.AsyncClient(headers=headers)))

    async def session(url: str):
        async with client(url, BOB_KEY) as bob:
            assert {tool.name for tool in (await bob.list_tools()).tools} == TOOLS
            cubes = (await bob.call_tool("list_cubes", {})).structured_content["cubes"]
            assert [c["name"] for c in cubes] == ["agent/bob"]
            hidden = await bob.call_tool("history", {"id": secret.id})
            assert hidden.is_error and "not_found:" in text(hidden)
            mine = await bob.call_tool("remember", {"content": "bob's note", "cube": "agent/bob"})
            assert mine.structured_content["author"] == "agent:bob"
        async with client(url, ALICE_KEY) as alice:
            hits = (await alice.call_tool("recall", {"query": "private note"})).structured_content["hits"]
            assert [h["memory"]["id"] for h in hits] == [secret.id]

    initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}
    with live_server(create_app(transport, keys, mcp=True)) as url:
        anyio.run(session, url)
        for headers in ({}, {"Authorization": "Bearer memos_wrong-key"}):
            refused = httpx.post(f"{url}/mcp", json=initialize, headers=headers)
            assert refused.status_code == 401 and refused.json()["error"]["code"] == "denied"


STDIO_SERVER = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from live_server import in_process_transport
    from memos.client import Memos
    from memos.server.keys import load_keys
    from memos.server.mcp import run_stdio, stdio_principal

    home, keys_file = Path(sys.argv[1]), sys.argv[2]
    principal = stdio_principal(load_keys(keys_file), os.environ.get("MEMOS_API_KEY"))
    transport = in_process_transport(home)
    Memos(transport, principal).create_cube("agent/writer", exist_ok=True)
    run_stdio(transport, principal, default_cube="agent/writer")
    """
)


def test_over_stdio_the_key_given_at_start_decides_the_principal(tmp_path):
    keys_file = tmp_path / "keys.yaml"
    key = add_key(keys_file, "agent:writer")
    tests_dir = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "MEMOS_API_KEY": key,
           "PYTHONPATH": os.pathsep.join(p for p in (tests_dir, os.environ.get("PYTHONPATH")) if p)}
    params = StdioServerParameters(
        command=sys.executable, args=["-c", STDIO_SERVER, str(tmp_path), str(keys_file)], env=env
    )

    async def session():
        with anyio.fail_after(60):  # the child starts a Python and a kernel; a hang must fail, not stall CI
            async with Client(params) as client:
                assert {tool.name for tool in (await client.list_tools()).tools} == TOOLS
                stored = await client.call_tool("remember", {"content": "Stdio works", "tags": ["smoke"]})
                assert stored.structured_content["author"] == "agent:writer"
                hits = (await client.call_tool("recall", {"query": "does stdio work"})).structured_content["hits"]
                assert hits[0]["memory"]["content"] == "Stdio works"

    anyio.run(session)
